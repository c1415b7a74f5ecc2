//! Presence across a gateway crash: a gateway restarted under the same
//! name (a StatefulSet pod, a fixed NATTER_GATEWAY_ID) does not bring its
//! predecessor's sockets back to life.

use crate::process::ServerProcess;
use natter_platform::presence::PresenceReader;
use natter_protocol::UserId;
use natter_protocol::http::paths;
use natter_server::Service;
use natter_server::testing::{start_part, ws};
use natter_testkit::{AuthClient, Sandbox};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn live_sockets(reader: &PresenceReader, user: UserId) -> usize {
    reader
        .live_sockets(&[user])
        .await
        .expect("presence")
        .get(&user)
        .map_or(0, Vec::len)
}

/// Waits until `user` has `n` live sockets (presence is written just
/// after the upgrade).
async fn live_sockets_become(reader: &PresenceReader, user: UserId, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = live_sockets(reader, user).await;
        if live == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} has {live} live sockets, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_gateway_restarted_under_its_name_clears_what_its_predecessor_left() {
    let sandbox = Sandbox::new(|_| {}).await;
    let config = sandbox.config().clone();
    let pool = sandbox.pool().await;
    let stop = CancellationToken::new();
    let (auth, _auth_task) = start_part(Service::Auth, &config, stop.clone()).await;
    let token = AuthClient::new(reqwest::Client::new(), format!("http://{auth}"))
        .user("alice")
        .await;
    let alice = UserId(
        sqlx::query_scalar("SELECT id FROM users WHERE username = 'alice'")
            .fetch_one(&pool)
            .await
            .expect("alice"),
    );
    let redis = natter_platform::cache::connect(&config)
        .await
        .expect("redis");
    let reader = PresenceReader::new(redis, config.namespace());

    let first = ServerProcess::start("gateway", &config).await;
    let url = format!("ws://127.0.0.1:{}{}", first.port, paths::WEBSOCKET);
    let _socket = ws::connect(&url, Some(&token)).await.expect("a socket");
    live_sockets_become(&reader, alice, 1).await;
    first.signal("-KILL");
    drop(first);

    let second = ServerProcess::start("gateway", &config).await;
    assert_eq!(
        live_sockets(&reader, alice).await,
        0,
        "alice shows online through a socket nobody holds"
    );
    let url = format!("ws://127.0.0.1:{}{}", second.port, paths::WEBSOCKET);
    let socket = ws::connect(&url, Some(&token)).await.expect("a socket");
    live_sockets_become(&reader, alice, 1).await;
    socket.close().await;
    live_sockets_become(&reader, alice, 0).await;
    stop.cancel();
}
