//! Unregistering releases connections and seats; messages stay, with a
//! null username.

use crate::support::{channel, connect, connection_count, heads, user};
use natter_protocol::http::paths;
use natter_testkit::TestApp;
use serde_json::json;

#[tokio::test]
async fn unregister_releases_connections_and_seats_and_keeps_messages_anonymous() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let id = channel(&mut alice, &mut [&mut bob, &mut carol]).await;
    alice
        .ok(
            "write_message",
            json!({"channel_id": id, "client_msg_id": "a1", "content": "bye"}),
        )
        .await;
    assert_eq!(connection_count(&app, bob.id).await, 1);
    let r = app
        .post(paths::UNREGISTER, &json!({}), Some(&alice.token))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(connection_count(&app, bob.id).await, 0);
    assert_eq!(connection_count(&app, carol.id).await, 0);
    assert_eq!(heads(&app, id).await, (2, 2));
    let page = bob.ok("fetch_messages", json!({"channel_id": id})).await;
    assert_eq!(page["messages"][0]["content"], "bye");
    assert_eq!(page["messages"][0]["username"], serde_json::Value::Null);
    // The name is unknown now, and so is an old connection with it.
    assert_eq!(
        bob.err("disconnect", json!({"username": "alice"})).await,
        "not_connected"
    );
    let accepted = bob
        .ok("fetch_connections", json!({"status": "accepted"}))
        .await;
    assert_eq!(accepted, json!({"connections": []}));
    // A new alice is somebody else.
    let mut alice2 = user(&app, "alice").await;
    connect(&mut bob, &mut alice2).await;
    let page = bob.ok("fetch_messages", json!({"channel_id": id})).await;
    assert_eq!(page["messages"][0]["username"], serde_json::Value::Null);
}
