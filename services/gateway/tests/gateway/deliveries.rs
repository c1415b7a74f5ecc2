//! Deliveries from push (docs/protocol.md §2.5): a burst larger than a
//! socket's outgoing queue reaches a client that reads it; the queue bound
//! is for clients that do not read.

use crate::support::{GatewayApp, connect_user, user_id};
use natter_platform::presence::{LiveSocket, PresenceReader};
use natter_protocol::events::{Delivery, DeliveryBatch};
use natter_testkit::bus_signed;
use serde_json::json;
use std::time::{Duration, Instant};

/// `name`'s one live socket, once presence holds it.
async fn live_socket(app: &GatewayApp, name: &str) -> LiveSocket {
    let redis = natter_platform::cache::connect(&app.config)
        .await
        .expect("redis");
    let reader = PresenceReader::new(redis, app.config.namespace());
    let user = user_id(name);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = reader.live_sockets(&[user]).await.expect("presence");
        if let Some(socket) = live.get(&user).and_then(|s| s.first()) {
            return socket.clone();
        }
        assert!(Instant::now() < deadline, "{name} never became live");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A backlog that push hands over at once (after an outage, say) may hold
/// more frames for one socket than its queue takes. Once a bus message has
/// filled a socket's queue to half, the gateway lets the socket write
/// before it takes the next, so a client that reads gets every frame, in
/// order, and stays connected.
#[tokio::test]
async fn a_burst_larger_than_the_queue_reaches_a_client_that_reads_it() {
    const QUEUE: usize = 16;
    const PER_MESSAGE: usize = QUEUE / 4;
    const MESSAGES: usize = 80;
    let app = GatewayApp::spawn_with(|c| c.ws_queue = QUEUE).await;
    let (_, mut ws) = connect_user(&app, "alice").await;
    let live = live_socket(&app, "alice").await;
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let subject = app.config.namespace().gateway_subject(&live.gateway);
    for m in 0..MESSAGES {
        let items = (0..PER_MESSAGE)
            .map(|i| Delivery::Frame {
                sockets: vec![live.socket],
                frame: json!({"type": "burst", "n": m * PER_MESSAGE + i}).to_string(),
            })
            .collect();
        let payload = serde_json::to_vec(&DeliveryBatch { items }).expect("serialize");
        nats.publish_with_headers(
            subject.clone(),
            bus_signed(&subject, &payload),
            payload.into(),
        )
        .await
        .expect("publish");
    }
    nats.flush().await.expect("flush");
    for n in 0..MESSAGES * PER_MESSAGE {
        let Some(push) = ws.push_within("burst", Duration::from_secs(10)).await else {
            let closed = ws.closed_within(Duration::from_secs(1)).await;
            panic!(
                "frame {n} never came: closed {} {}",
                closed.code, closed.reason
            );
        };
        assert_eq!(push["n"], n);
    }
    assert_eq!(ws.call("keep_alive", json!({})).await, Ok(json!({})));
}
