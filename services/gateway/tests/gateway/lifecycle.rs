use crate::support::{GatewayApp, connect, connect_user, token, user_id, ws_url};
use natter_testkit::ws;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn an_upgrade_without_a_valid_token_is_refused_with_401() {
    let app = GatewayApp::spawn().await;
    for token in [None, Some("garbage")] {
        let (status, body) = match ws::connect(&ws_url(&app), token).await {
            Ok(_) => panic!("socket opened without a valid token"),
            Err(refusal) => refusal,
        };
        assert_eq!(status, 401);
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["code"], "unauthorized");
    }
}

#[tokio::test]
async fn the_socket_is_recorded_in_redis_presence_until_it_closes() {
    let app = GatewayApp::spawn().await;
    let (_, ws) = connect_user(&app, "alice").await;
    let ns = app.config.namespace();
    let client = redis::Client::open(app.config.redis_url.as_str()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let key = ns.presence_key(user_id("alice"));
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("hgetall");
    assert_eq!(fields.len(), 1, "{fields:?}");
    ws.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: usize = redis::cmd("HLEN")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .expect("hlen");
        if n == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "presence not cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_sends_reconnect_and_closes_with_1012() {
    let mut app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    app.stop_service().await;
    let push = ws.push("reconnect").await;
    assert!(push["reason"].is_string());
    assert_eq!(ws.closed_within(Duration::from_secs(5)).await.code, 1012);
}

#[tokio::test]
async fn a_silent_socket_is_closed_with_1001() {
    let app = GatewayApp::spawn_with(|c| {
        c.ws_ping_secs = 1;
        c.ws_idle_secs = 1;
    })
    .await;
    let token = token(&app, "alice");
    // A raw client that never answers pings: tungstenite answers them only
    // while it is read, so not reading keeps it silent.
    let mut ws = connect(&app, &token).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ws.closed_within(Duration::from_secs(5)).await.code, 1001);
}

#[tokio::test]
async fn presence_lost_in_redis_is_registered_again_by_the_heartbeat() {
    let app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    let ns = app.config.namespace();
    let client = redis::Client::open(app.config.redis_url.as_str()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", ns.redis_prefix()))
        .query_async(&mut redis)
        .await
        .expect("keys");
    assert!(!keys.is_empty());
    // As if Redis had been flushed.
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .expect("del");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let back: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}presence:*", ns.redis_prefix()))
            .query_async(&mut redis)
            .await
            .expect("keys");
        if back.len() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence was not restored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
}
