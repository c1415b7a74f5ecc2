//! `fetch_members` (docs/protocol.md §2.7): who is in a channel and who of
//! them is online, under the same rules as `fetch_messages`.

use crate::support::{channel, channel_code, rpc_user, user};
use natter_protocol::http::paths;
use natter_server::testing::TestApp;
use serde_json::json;

#[tokio::test]
async fn members_are_listed_by_name_with_whether_each_is_online() {
    let app = TestApp::spawn().await;
    let mut carol = user(&app, "carol").await;
    let mut alice = user(&app, "alice").await;
    // Bob talks to the message service straight over NATS: he has no
    // socket anywhere, so he is offline.
    let mut bob = rpc_user(&app, "bob", "gw-none", 1).await;
    let id = channel(&mut carol, &mut [&mut alice, &mut bob]).await;

    let expected = json!({"members": [
        {"username": "alice", "online": true},
        {"username": "bob", "online": false},
        {"username": "carol", "online": true},
    ]});
    assert_eq!(
        alice.ok("fetch_members", json!({"channel_id": id})).await,
        expected
    );
    assert_eq!(
        bob.ok("fetch_members", json!({"channel_id": id})).await,
        expected
    );
}

#[tokio::test]
async fn fetch_members_checks_the_channel_exists_before_membership() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;

    assert_eq!(
        eve.err("fetch_members", json!({"channel_id": id})).await,
        "not_joined"
    );
    assert_eq!(
        eve.err("fetch_members", json!({"channel_id": id + 1000}))
            .await,
        "not_found"
    );
    assert_eq!(
        alice
            .err("fetch_members", json!({"channel_id": id + 1000}))
            .await,
        "not_found"
    );
    assert_eq!(
        alice.err("fetch_members", json!({"channel_id": "x"})).await,
        "invalid_request"
    );
}

#[tokio::test]
async fn members_who_quit_or_unregister_are_no_longer_listed_and_joiners_are() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let mut dave = user(&app, "dave").await;
    let id = channel(&mut alice, &mut [&mut bob, &mut carol]).await;
    let code = channel_code(&mut alice, id).await;
    dave.ok("join", json!({"invite_code": code})).await;
    bob.ok("quit", json!({"channel_id": id})).await;
    let r = app
        .post(paths::UNREGISTER, &json!({}), Some(&carol.token))
        .await;
    assert_eq!(r.status(), 204);

    let names: Vec<String> = alice.ok("fetch_members", json!({"channel_id": id})).await["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["username"].as_str().expect("username").to_owned())
        .collect();
    assert_eq!(names, ["alice", "dave"]);
    assert_eq!(
        bob.err("fetch_members", json!({"channel_id": id})).await,
        "not_joined"
    );
}

#[tokio::test]
async fn the_list_is_bounded_by_the_head_limit() {
    let app = TestApp::spawn_with(|c| c.head_limit = 3).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let dave = user(&app, "dave").await;
    let id = channel(&mut alice, &mut [&mut bob, &mut carol]).await;
    // A fourth member is only possible if the limit was lowered after they
    // joined; the list still holds no more than the limit.
    sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
        .bind(id)
        .bind(dave.id)
        .execute(&app.pool)
        .await
        .expect("a member past the limit");

    let members = alice.ok("fetch_members", json!({"channel_id": id})).await;
    assert_eq!(members["members"].as_array().expect("members").len(), 3);
}
