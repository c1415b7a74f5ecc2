use natter_platform::presence::PresenceReader;
use natter_protocol::http::paths;
use natter_protocol::{UserId, close};
use natter_testkit::{Part, TestApp, ws};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn an_upgrade_without_a_valid_token_is_refused_with_401() {
    let app = TestApp::spawn().await;
    for token in [None, Some("garbage")] {
        let (status, body) = match ws::connect(&app.ws_url(), token).await {
            Ok(_) => panic!("socket opened without a valid token"),
            Err(refusal) => refusal,
        };
        assert_eq!(status, 401);
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["code"], "unauthorized");
    }
}

#[tokio::test]
async fn logout_closes_the_sessions_sockets_and_the_token_cannot_reconnect() {
    let app = TestApp::spawn().await;
    let (token, mut first) = app.ws_user("alice").await;
    let mut second = app.ws(&token).await;
    let other_token = app.token("alice").await;
    let mut other = app.ws(&other_token).await;

    let r = app.post(paths::LOGOUT, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 204);
    for socket in [&mut first, &mut second] {
        socket.push("session_revoked").await;
        assert_eq!(
            socket.closed_within(Duration::from_secs(5)).await.code,
            close::POLICY_VIOLATION
        );
    }
    let refusal = ws::connect(&app.ws_url(), Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.0, 401);
    assert_eq!(other.call("keep_alive", json!({})).await, Ok(json!({})));
}

#[tokio::test]
async fn unregister_closes_every_socket_of_the_user() {
    let app = TestApp::spawn().await;
    let (token, mut ws) = app.ws_user("alice").await;
    let r = app.post(paths::UNREGISTER, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 204);
    ws.push("session_revoked").await;
    assert_eq!(
        ws.closed_within(Duration::from_secs(5)).await.code,
        close::POLICY_VIOLATION
    );
}

#[tokio::test]
async fn a_gateway_started_after_a_logout_still_refuses_the_token() {
    let mut app = TestApp::spawn().await;
    let token = app.user("alice").await;
    app.post(paths::LOGOUT, &json!({}), Some(&token)).await;
    // Let the relay publish the revocation, then start a fresh gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop_part(Part::Gateway).await;
    app.start(Part::Gateway).await;
    let refusal = ws::connect(&app.ws_url(), Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.0, 401);
}

/// Presence as push and message read it.
async fn reader(app: &TestApp) -> PresenceReader {
    let redis = natter_platform::cache::connect(&app.config.redis_url)
        .await
        .expect("redis");
    PresenceReader::new(redis, app.config.namespace())
}

async fn user_id(app: &TestApp, name: &str) -> UserId {
    let id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .expect("user");
    UserId(id)
}

/// Waits until `user` has `n` live sockets.
async fn live_sockets_become(reader: &PresenceReader, user: UserId, n: usize, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let live = reader.live_sockets(&[user]).await.expect("presence");
        if live.get(&user).map_or(0, Vec::len) == n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user} has {live:?}, not {n} live sockets"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_socket_is_recorded_in_redis_presence_until_it_closes() {
    let app = TestApp::spawn().await;
    let (_, ws) = app.ws_user("alice").await;
    let alice = user_id(&app, "alice").await;
    let reader = reader(&app).await;
    let live = reader.live_sockets(&[alice]).await.expect("presence");
    let sockets = live.get(&alice).cloned().unwrap_or_default();
    assert_eq!(sockets.len(), 1, "{live:?}");
    assert_eq!(sockets[0].gateway, app.config.gateway_id());
    assert_eq!(sockets[0].entered, None);
    ws.close().await;
    live_sockets_become(&reader, alice, 0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_sends_reconnect_and_closes_with_1012() {
    let mut app = TestApp::spawn().await;
    let (_, mut ws) = app.ws_user("alice").await;
    app.stop_part(Part::Gateway).await;
    let push = ws.push("reconnect").await;
    assert!(push["reason"].is_string());
    assert_eq!(
        ws.closed_within(Duration::from_secs(5)).await.code,
        close::SERVICE_RESTART
    );
}

#[tokio::test]
async fn a_silent_socket_is_closed_with_1001() {
    let app = TestApp::spawn_with(|c| {
        c.ws_ping_secs = 1;
        c.ws_idle_secs = 1;
    })
    .await;
    let token = app.user("alice").await;
    // A raw client that never answers pings: tungstenite answers them only
    // while it is read, so not reading keeps it silent.
    let mut ws = app.ws(&token).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ws.closed_within(Duration::from_secs(5)).await.code,
        close::GOING_AWAY
    );
}

#[tokio::test]
async fn presence_lost_in_redis_is_registered_again_by_the_heartbeat() {
    let app = TestApp::spawn().await;
    let (_, mut ws) = app.ws_user("alice").await;
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
    let reader = reader(&app).await;
    let alice = user_id(&app, "alice").await;
    live_sockets_become(&reader, alice, 1, Duration::from_secs(15)).await;
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
}
