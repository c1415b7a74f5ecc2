//! Visible members (docs/protocol.md §2.7) through the whole system:
//! `member_joined` and `member_left` reach the other members' sockets
//! inside the channel, `connection_ended` every socket of the partner.
//!
//! Where a test shows that someone got nothing, a later push to the same
//! socket serves as the barrier: a channel's events, and a user's, are
//! delivered in order, so anything sent before it has arrived by then.

use natter_protocol::http::paths;
use natter_server::testing::{TestApp, WsClient};
use serde_json::{Value, json};

/// `a` invites `b` and `b` accepts.
async fn befriend(a: &mut WsClient, a_name: &str, b: &mut WsClient) {
    let code = b
        .call("fetch_user_invite_code", json!({}))
        .await
        .expect("invite code")["invite_code"]
        .clone();
    a.call("invite", json!({"invite_code": code}))
        .await
        .expect("invite");
    b.call("accept", json!({"username": a_name}))
        .await
        .expect("accept");
}

async fn create(creator: &mut WsClient, usernames: &[&str]) -> Value {
    creator
        .call("create", json!({"title": "room", "usernames": usernames}))
        .await
        .expect("create")["channel_id"]
        .clone()
}

async fn enter(ws: &mut WsClient, channel: &Value) {
    ws.call("enter", json!({"channel_id": channel}))
        .await
        .expect("enter");
}

/// The types of the pushes `ws` has received and not yet been asked for.
fn queued(ws: &mut WsClient) -> Vec<Value> {
    ws.take_pushes()
        .into_iter()
        .map(|p| p["type"].clone())
        .collect()
}

#[tokio::test]
async fn a_join_is_announced_to_the_members_inside_the_channel_only() {
    let app = TestApp::spawn().await;
    let (_, mut alice) = app.ws_user("alice").await;
    let (_, mut bob) = app.ws_user("bob").await;
    let (_, mut carol) = app.ws_user("carol").await;
    befriend(&mut alice, "alice", &mut bob).await;
    let channel = create(&mut alice, &["bob"]).await;
    bob.push("channel_joined").await;
    enter(&mut alice, &channel).await;
    let code = alice
        .call("fetch_channel_invite_code", json!({"channel_id": channel}))
        .await
        .expect("code")["invite_code"]
        .clone();

    carol
        .call("join", json!({"invite_code": code}))
        .await
        .expect("join");

    assert_eq!(
        alice.push("member_joined").await,
        json!({"type": "member_joined", "channel_id": channel, "username": "carol"})
    );
    alice
        .call(
            "write_message",
            json!({"channel_id": channel, "client_msg_id": "m1", "content": "welcome"}),
        )
        .await
        .expect("write");
    for outside in [&mut bob, &mut carol] {
        outside.push("unread").await;
        assert!(
            !queued(outside).contains(&json!("member_joined")),
            "only sockets inside the channel hear of the join"
        );
    }
}

#[tokio::test]
async fn quitting_and_unregistering_are_announced_with_their_reason() {
    let app = TestApp::spawn().await;
    let (_, mut alice) = app.ws_user("alice").await;
    let (bob_token, mut bob) = app.ws_user("bob").await;
    let (_, mut carol) = app.ws_user("carol").await;
    let (_, mut dave) = app.ws_user("dave").await;
    let mut alice_outside = app.ws(&app.token("alice").await).await;
    befriend(&mut alice, "alice", &mut bob).await;
    befriend(&mut alice, "alice", &mut carol).await;
    befriend(&mut alice, "alice", &mut dave).await;
    let channel = create(&mut alice, &["bob", "carol", "dave"]).await;
    enter(&mut alice, &channel).await;
    enter(&mut bob, &channel).await;

    carol
        .call("quit", json!({"channel_id": channel}))
        .await
        .expect("quit");
    let quit = json!({"type": "member_left", "channel_id": channel, "username": "carol", "reason": "quit"});
    assert_eq!(alice.push("member_left").await, quit);
    assert_eq!(bob.push("member_left").await, quit);

    let r = app
        .post(paths::UNREGISTER, &json!({}), Some(&bob_token))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        alice.push("member_left").await,
        json!({"type": "member_left", "channel_id": channel, "username": "bob",
               "reason": "unregistered"})
    );
    // Bob's connections ended with him: every socket of each partner hears.
    for partner in [&mut alice, &mut alice_outside] {
        assert_eq!(
            partner.push("connection_ended").await,
            json!({"type": "connection_ended", "username": "bob"})
        );
    }
    // Dave is a member, but not inside the channel.
    alice
        .call(
            "write_message",
            json!({"channel_id": channel, "client_msg_id": "m1", "content": "bye"}),
        )
        .await
        .expect("write");
    dave.push("unread").await;
    assert!(!queued(&mut dave).contains(&json!("member_left")));
}

#[tokio::test]
async fn a_disconnect_is_told_to_every_socket_of_the_partner_and_clearing_a_rejection_to_no_one() {
    let app = TestApp::spawn().await;
    let (_, mut alice) = app.ws_user("alice").await;
    let (bob_token, mut bob) = app.ws_user("bob").await;
    let mut bob_too = app.ws(&bob_token).await;
    let (_, mut carol) = app.ws_user("carol").await;
    befriend(&mut alice, "alice", &mut bob).await;

    alice
        .call("disconnect", json!({"username": "bob"}))
        .await
        .expect("disconnect");
    for socket in [&mut bob, &mut bob_too] {
        assert_eq!(
            socket.push("connection_ended").await,
            json!({"type": "connection_ended", "username": "alice"})
        );
    }
    carol
        .call(
            "invite",
            json!({"invite_code": invite_code(&mut alice).await}),
        )
        .await
        .expect("invite");
    alice.push("invite_received").await;
    assert!(
        !queued(&mut alice).contains(&json!("connection_ended")),
        "the one who disconnected is not told"
    );

    // Carol was never told that Alice rejected her, so she is not told
    // when Alice clears the rejection either.
    alice
        .call("reject", json!({"username": "carol"}))
        .await
        .expect("reject");
    alice
        .call("disconnect", json!({"username": "carol"}))
        .await
        .expect("clear the rejection");
    alice
        .call(
            "invite",
            json!({"invite_code": invite_code(&mut carol).await}),
        )
        .await
        .expect("invite");
    carol.push("invite_received").await;
    assert!(!queued(&mut carol).contains(&json!("connection_ended")));
}

async fn invite_code(ws: &mut WsClient) -> Value {
    ws.call("fetch_user_invite_code", json!({}))
        .await
        .expect("code")["invite_code"]
        .clone()
}
