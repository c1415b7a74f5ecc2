use crate::support::{GatewayApp, connect, connect_user, token, user_id, ws_url};
use natter_platform::presence::{PresenceReader, REPAIR_WAIT};
use natter_protocol::{UserId, close};
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

/// Presence as push and message read it.
async fn reader(app: &GatewayApp) -> PresenceReader {
    let redis = natter_platform::cache::connect(&app.config)
        .await
        .expect("redis");
    PresenceReader::new(redis, app.config.namespace())
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
    let app = GatewayApp::spawn().await;
    let (_, ws) = connect_user(&app, "alice").await;
    let alice = user_id("alice");
    let reader = reader(&app).await;
    let live = reader.live_sockets(&[alice]).await.expect("presence");
    let sockets = live.get(&alice).cloned().unwrap_or_default();
    assert_eq!(sockets.len(), 1, "{live:?}");
    assert_eq!(*sockets[0].gateway, *app.config.gateway_id());
    assert_eq!(sockets[0].entered, None);
    ws.close().await;
    live_sockets_become(&reader, alice, 0, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn shutdown_sends_reconnect_and_closes_with_1012() {
    let mut app = GatewayApp::spawn().await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    app.stop_service().await;
    let push = ws.push("reconnect").await;
    assert!(push["reason"].is_string());
    assert_eq!(
        ws.closed_within(Duration::from_secs(5)).await.code,
        close::SERVICE_RESTART
    );
}

#[tokio::test]
async fn a_silent_socket_is_closed_with_1001() {
    let app = GatewayApp::spawn_with(|c| {
        c.ws_ping_secs = 1;
        c.ws_idle_secs = 1;
    })
    .await;
    let token = token(&app, "alice").await;
    // A raw client that never answers pings: tungstenite answers them only
    // while it is read, so not reading keeps it silent.
    let mut ws = connect(&app, &token).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ws.closed_within(Duration::from_secs(5)).await.code,
        close::GOING_AWAY
    );
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
    let reader = reader(&app).await;
    let alice = user_id("alice");
    live_sockets_become(&reader, alice, 1, Duration::from_secs(15)).await;
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
}

/// Waits until `/readyz` answers `status`: its body.
async fn readyz_becomes(app: &GatewayApp, status: u16) -> Value {
    let url = format!("{}/readyz", app.url());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.http.get(&url).send().await.expect("readyz answers");
        if r.status() == status {
            return r.json().await.expect("JSON");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed {} instead of {status}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn without_redis_the_gateway_is_unready_and_recovers_on_its_own() {
    let mut redis = natter_testkit::private::PrivateRedis::start();
    let url = redis.url();
    let app = GatewayApp::spawn_with(|c| c.redis_url = url).await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    readyz_becomes(&app, 200).await;
    redis.kill();
    let body = readyz_becomes(&app, 503).await;
    assert!(
        body["failing"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("redis"))),
        "{body}"
    );
    // The socket lives on; presence cannot be written meanwhile.
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
    let (_, _bob) = connect_user(&app, "bob").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = readyz_becomes(&app, 503).await;
        if body["failing"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("presence")))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "an unwritten socket does not show: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.restart();
    readyz_becomes(&app, 200).await;
    // The restarted Redis is empty: the heartbeat registers every socket
    // again, including the one opened while it was down.
    let reader = reader(&app).await;
    live_sockets_become(&reader, user_id("alice"), 1, Duration::from_secs(20)).await;
    live_sockets_become(&reader, user_id("bob"), 1, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn presence_a_restarted_redis_lost_is_repaired_before_a_waiting_reader_answers() {
    let mut redis = natter_testkit::private::PrivateRedis::start();
    let url = redis.url();
    let app = GatewayApp::spawn_with(|c| c.redis_url = url).await;
    let (_, _ws) = connect_user(&app, "alice").await;
    let alice = user_id("alice");
    // Push's reader: it must not fan a held-back backlog out to an empty
    // presence the moment Redis is back.
    let reader = reader(&app).await.waiting_for_repair(REPAIR_WAIT);
    live_sockets_become(&reader, alice, 1, Duration::from_secs(20)).await;
    redis.kill();
    assert!(
        reader.live_sockets(&[alice]).await.is_err(),
        "Redis is down"
    );
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let live = loop {
        if let Ok(live) = reader.live_sockets(&[alice]).await {
            break live;
        }
        assert!(std::time::Instant::now() < deadline, "Redis never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        live.get(&alice).map_or(0, Vec::len),
        1,
        "the first answer after the outage has the socket again"
    );
}

#[tokio::test]
async fn a_half_sent_upgrade_request_is_dropped_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = GatewayApp::spawn_with(|c| c.http_timeout_secs = 1).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr())
        .await
        .expect("connect");
    stream
        .write_all(b"GET /ws/v1/message HTTP/1.1\r\nHost: natter\r\nUpgrade: websocket\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the half-sent upgrade was dropped")
        .expect("read");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let (_, mut ws) = connect_user(&app, "alice").await;
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
}
