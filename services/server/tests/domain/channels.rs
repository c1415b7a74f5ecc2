//! Channels: create, join, fetch_channels, invite codes, enter, quit, and
//! every error of their rules.

use crate::support::{channel, channel_code, connect, heads, rpc_user, user};
use natter_server::testing::TestApp;
use serde_json::json;

#[tokio::test]
async fn create_adds_the_creator_and_the_named_connections() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    connect(&mut alice, &mut bob).await;
    connect(&mut carol, &mut alice).await;
    let created = alice
        .ok(
            "create",
            json!({"title": "ops", "usernames": ["bob", "carol"]}),
        )
        .await;
    assert_eq!(created["title"], "ops");
    assert_eq!(created["head_count"], 3);
    let id = created["channel_id"].as_i64().expect("id");
    assert_eq!(heads(&app, id).await, (3, 3));
    let listed = bob.ok("fetch_channels", json!({})).await;
    assert_eq!(
        listed,
        json!({"channels": [{"channel_id": id, "title": "ops", "head_count": 3,
                              "last_seq": 0, "last_read_seq": 0}]})
    );
    let joined = bob.ws().push("channel_joined").await;
    assert_eq!(joined["channel_id"], id);
}

#[tokio::test]
async fn create_refuses_bad_input_unknown_and_unconnected_users_then_the_head_limit() {
    let app = TestApp::spawn_with(|c| c.head_limit = 2).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let _dave = user(&app, "dave").await;
    connect(&mut alice, &mut bob).await;
    connect(&mut alice, &mut carol).await;
    for bad in [
        json!({"title": "t", "usernames": ["alice"]}),
        json!({"title": "t", "usernames": ["bob", "bob"]}),
        json!({"title": "t", "usernames": []}),
        json!({"title": "", "usernames": ["bob"]}),
        json!({"title": "   ", "usernames": ["bob"]}),
        json!({"title": "x".repeat(101), "usernames": ["bob"]}),
    ] {
        assert_eq!(
            alice.err("create", bad.clone()).await,
            "invalid_request",
            "{bad}"
        );
    }
    let unknown = alice
        .call(
            "create",
            json!({"title": "t", "usernames": ["Ghost", "bob", "no such"]}),
        )
        .await
        .expect_err("unknown users");
    assert_eq!(unknown.code, "unknown_users");
    assert!(unknown.message.contains("Ghost") && unknown.message.contains("no such"));
    assert!(!unknown.message.contains("bob"));
    let unconnected = alice
        .call(
            "create",
            json!({"title": "t", "usernames": ["bob", "dave"]}),
        )
        .await
        .expect_err("unconnected");
    assert_eq!(unconnected.code, "unconnected_users");
    assert!(unconnected.message.contains("dave") && !unconnected.message.contains("bob"));
    assert_eq!(
        alice
            .err(
                "create",
                json!({"title": "t", "usernames": ["bob", "carol"]})
            )
            .await,
        "over_limit"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM channels")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(count, 0);
    alice
        .ok("create", json!({"title": "pair", "usernames": ["bob"]}))
        .await;
}

#[tokio::test]
async fn join_by_code_then_refuses_members_unknown_codes_and_full_channels() {
    let app = TestApp::spawn_with(|c| c.head_limit = 3).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let mut dave = user(&app, "dave").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let code = channel_code(&mut alice, id).await;
    assert_eq!(
        carol.err("join", json!({"invite_code": "nope"})).await,
        "not_found"
    );
    assert_eq!(
        carol.ok("join", json!({"invite_code": code})).await,
        json!({"channel_id": id, "title": "room", "head_count": 3})
    );
    assert_eq!(
        carol.err("join", json!({"invite_code": code})).await,
        "already_joined"
    );
    assert_eq!(
        dave.err("join", json!({"invite_code": code})).await,
        "over_limit"
    );
    assert_eq!(heads(&app, id).await, (3, 3));
}

#[tokio::test]
async fn invite_code_enter_and_quit_check_existence_then_membership() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    for kind in ["fetch_channel_invite_code", "enter", "quit"] {
        assert_eq!(
            eve.err(kind, json!({"channel_id": 999_999})).await,
            "not_found"
        );
        assert_eq!(eve.err(kind, json!({"channel_id": id})).await, "not_joined");
    }
    let code = channel_code(&mut bob, id).await;
    assert_eq!(code.len(), 22);
    assert_eq!(
        bob.ok("enter", json!({"channel_id": id})).await,
        json!({"channel_id": id, "title": "room", "last_read_seq": 0, "last_seq": 0})
    );
    assert_eq!(
        bob.ok("quit", json!({"channel_id": id})).await,
        json!({"channel_id": id})
    );
    assert_eq!(heads(&app, id).await, (1, 1));
    assert_eq!(
        bob.err("enter", json!({"channel_id": id})).await,
        "not_joined"
    );
    assert_eq!(
        bob.err("quit", json!({"channel_id": id})).await,
        "not_joined"
    );
    assert_eq!(
        bob.ok("fetch_channels", json!({})).await,
        json!({"channels": []})
    );
}

#[tokio::test]
async fn user_invite_code_keep_alive_and_leave_answer() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let code = alice.ok("fetch_user_invite_code", json!({})).await;
    let stored: String = sqlx::query_scalar("SELECT invite_code FROM users WHERE id = $1")
        .bind(alice.id)
        .fetch_one(&app.pool)
        .await
        .expect("code");
    assert_eq!(code, json!({"invite_code": stored}));
    assert_eq!(alice.ok("keep_alive", json!({})).await, json!({}));
    assert_eq!(alice.ok("leave", json!({})).await, json!({}));
}

/// A `create` naming tens of thousands of users (the message service takes
/// them from any caller on NATS, where frames may be 1 MB) is answered in
/// linear time: quadratic matching would take minutes.
#[tokio::test]
async fn create_with_a_huge_name_list_is_answered_quickly() {
    let app = TestApp::spawn().await;
    let mut alice = rpc_user(&app, "alice", "gw-x", 1).await;
    const N: i64 = 50_000;
    sqlx::query(
        "INSERT INTO users (username, password_hash, invite_code) \
         SELECT 'm-' || i, 'x', 'code-' || i FROM generate_series(1, $1) AS i",
    )
    .bind(N)
    .execute(&app.pool)
    .await
    .expect("users");
    sqlx::query(
        "INSERT INTO user_connections (user_low, user_high, status, inviter) \
         SELECT $1, id, 'accepted', $1 FROM users WHERE username LIKE 'm-%'",
    )
    .bind(alice.id)
    .execute(&app.pool)
    .await
    .expect("connections");
    let mut names: Vec<String> = (1..=N).map(|i| format!("m-{i}")).collect();
    let started = std::time::Instant::now();
    assert_eq!(
        alice
            .err("create", json!({"title": "all", "usernames": names}))
            .await,
        "over_limit"
    );
    // The rule order holds at this size too.
    names.push("No Body".into());
    assert_eq!(
        alice
            .err("create", json!({"title": "all", "usernames": names}))
            .await,
        "unknown_users"
    );
    names.pop();
    sqlx::query("UPDATE user_connections SET status = 'rejected' WHERE user_high = (SELECT id FROM users WHERE username = 'm-7')")
        .execute(&app.pool)
        .await
        .expect("unconnect one");
    let message = match alice
        .call("create", json!({"title": "all", "usernames": names}))
        .await
    {
        Ok(v) => panic!("create succeeded: {v}"),
        Err(e) => e,
    };
    assert_eq!(message.code, "unconnected_users");
    assert_eq!(message.message, "not connected with: m-7");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
