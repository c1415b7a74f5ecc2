//! Sockets per user (docs/protocol.md §2.6): counted in Redis presence over
//! every gateway, refused with 429 at the upgrade, and never leaked by a
//! socket that closed or a gateway that died.

use crate::support::{GatewayApp, token, user_id, ws_url};
use natter_gateway::Gateway;
use natter_platform::presence::{self, PresenceWriter};
use natter_protocol::SocketId;
use natter_protocol::http::paths;
use natter_testkit::{Running, WsClient, ws};
use serde_json::Value;
use std::time::Duration;

/// Opens a socket at `url`: the socket, or the refusal's status and body.
async fn open(url: &str, token: &str) -> Result<WsClient, (u16, Value)> {
    ws::connect(url, Some(token))
        .await
        .map_err(|(status, body)| (status, serde_json::from_str(&body).unwrap_or(Value::Null)))
}

/// Asserts that the upgrade is refused with 429 `rate_limited` and
/// `Retry-After`.
async fn refused(url: &str, token: &str) {
    match open(url, token).await {
        Ok(_) => panic!("a socket past the limit opened"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["code"], "rate_limited");
        }
    }
}

/// Opens a socket, retrying while the user is still at the limit (a
/// closed socket leaves presence as soon as the gateway sees it close).
async fn opens_again(url: &str, token: &str) -> WsClient {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open(url, token).await {
            Ok(ws) => return ws,
            Err((429, _)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(refusal) => panic!("refused: {refusal:?}"),
        }
    }
}

#[tokio::test]
async fn a_user_past_the_socket_limit_gets_429_until_one_closes() {
    let app = GatewayApp::spawn_with(|c| c.sockets_per_user = 3).await;
    let url = ws_url(&app);
    // Three sessions of one user: the limit is the user's, not a session's.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(token(&app, "alice").await);
    }
    let mut held = Vec::new();
    for t in &tokens {
        held.push(open(&url, t).await.expect("within the limit"));
    }
    refused(&url, &tokens[0]).await;
    let response = reqwest::Client::new()
        .get(format!("http://{}{}", app.addr(), paths::WEBSOCKET))
        .bearer_auth(&tokens[0])
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    // Another user is not affected.
    let bob = open(&url, &token(&app, "bob").await).await.expect("bob");
    held.pop().expect("a socket").close().await;
    held.push(opens_again(&url, &tokens[1]).await);
    refused(&url, &tokens[2]).await;
    drop(bob);
}

#[tokio::test]
async fn the_socket_limit_counts_sockets_on_every_gateway() {
    let app = GatewayApp::spawn_with(|c| c.sockets_per_user = 3).await;
    let mut config = app.config.clone();
    config.gateway_id = Some(format!("{}-2", app.config.gateway_id()));
    let second = Running::start::<Gateway>(&config).await;
    let urls = [
        ws_url(&app),
        format!("ws://{}{}", second.addr(), paths::WEBSOCKET),
    ];
    let token = token(&app, "alice").await;
    let _held = [
        open(&urls[0], &token).await.expect("first"),
        open(&urls[1], &token).await.expect("second"),
        open(&urls[1], &token).await.expect("third"),
    ];
    refused(&urls[0], &token).await;
    refused(&urls[1], &token).await;
}

#[tokio::test]
async fn sockets_of_a_gateway_that_died_stop_counting() {
    let app = GatewayApp::spawn_with(|c| c.sockets_per_user = 2).await;
    let ns = app.config.namespace();
    let alice = user_id("alice");
    let client = redis::Client::open(app.config.redis_url.as_str()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    // Two sockets on a gateway that crashed: its liveness key is gone.
    let key = presence::user_key(&ns, alice);
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg(presence::socket_field(
            "gw-crashed",
            natter_protocol::SocketId(1),
        ))
        .arg("")
        .arg(presence::socket_field(
            "gw-crashed",
            natter_protocol::SocketId(2),
        ))
        .arg("")
        .query_async(&mut redis)
        .await
        .expect("hset");
    let token = token(&app, "alice").await;
    let url = ws_url(&app);
    let _held = [
        open(&url, &token).await.expect("first"),
        open(&url, &token).await.expect("second"),
    ];
    refused(&url, &token).await;
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("hkeys");
    assert!(
        fields.iter().all(|f| !f.starts_with("gw-crashed:")),
        "{fields:?}"
    );
}

#[tokio::test]
async fn sockets_of_a_gateways_previous_incarnation_stop_counting() {
    let app = GatewayApp::spawn_with(|c| c.sockets_per_user = 2).await;
    let ns = app.config.namespace();
    let alice = user_id("alice");
    let redis = natter_platform::cache::connect(&app.config)
        .await
        .expect("redis");
    // Two sockets written by a gateway that then restarted under the same
    // name: its liveness key exists, but names the new incarnation.
    let before = PresenceWriter::new(redis.clone(), ns.clone(), "gw-restarted".into());
    before.register().await.expect("alive");
    for socket in [1, 2] {
        before.set(alice, SocketId(socket), None).await;
    }
    PresenceWriter::new(redis.clone(), ns.clone(), "gw-restarted".into())
        .register()
        .await
        .expect("alive again");
    let token = token(&app, "alice").await;
    let url = ws_url(&app);
    let _held = [
        open(&url, &token).await.expect("first"),
        open(&url, &token).await.expect("second"),
    ];
    refused(&url, &token).await;
    let mut conn = redis.clone();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(presence::user_key(&ns, alice))
        .query_async(&mut conn)
        .await
        .expect("hkeys");
    assert!(
        fields.iter().all(|f| !f.starts_with("gw-restarted:")),
        "{fields:?}"
    );
}
