//! The whole system through real sockets: writes enter through one
//! gateway, go through message, the outbox relay, JetStream and push, and
//! come out of two gateways.

use natter_protocol::ChannelId;
use natter_protocol::http::paths;
use natter_protocol::partition::PartitionKey;
use natter_server::Service;
use natter_server::testing::{TestApp, WsClient, start_part, ws};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A second gateway instance on the same app.
struct SecondGateway {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl SecondGateway {
    async fn start(app: &TestApp) -> Self {
        let mut config = app.config.clone();
        config.gateway_id = Some(format!("{}-two", app.config.gateway_id()));
        let stop = CancellationToken::new();
        let (addr, task) = start_part(Service::Gateway, &config, stop.clone()).await;
        Self { addr, stop, task }
    }

    async fn ws(&self, token: &str) -> WsClient {
        let url = format!("ws://{}{}", self.addr, paths::WEBSOCKET);
        ws::connect(&url, Some(token))
            .await
            .expect("the second gateway accepts the socket")
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task
            .await
            .expect("gateway task")
            .expect("the second gateway stopped cleanly");
    }
}

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

async fn enter(ws: &mut WsClient, channel: &Value) {
    ws.call("enter", json!({"channel_id": channel}))
        .await
        .expect("enter");
}

async fn write(ws: &mut WsClient, channel: &Value, client_msg_id: &str) -> i64 {
    ws.call(
        "write_message",
        json!({"channel_id": channel, "client_msg_id": client_msg_id, "content": client_msg_id}),
    )
    .await
    .expect("write_message")["seq"]
        .as_i64()
        .expect("seq")
}

/// The seqs of the next `n` message pushes.
async fn seqs(ws: &mut WsClient, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(ws.push("message").await["seq"].as_i64().expect("seq"));
    }
    out
}

/// Alice (writer) and Bob in one channel, both entered: the channel id and
/// their sockets.
async fn pair(app: &TestApp) -> (Value, WsClient, WsClient) {
    let (_, mut alice) = app.ws_user("alice").await;
    let (_, mut bob) = app.ws_user("bob").await;
    befriend(&mut alice, "alice", &mut bob).await;
    let channel = alice
        .call("create", json!({"title": "pair", "usernames": ["bob"]}))
        .await
        .expect("create")["channel_id"]
        .clone();
    bob.push("channel_joined").await;
    enter(&mut alice, &channel).await;
    enter(&mut bob, &channel).await;
    (channel, alice, bob)
}

#[tokio::test]
async fn every_entered_session_on_both_gateways_gets_each_message_once_in_order() {
    let app = TestApp::spawn().await;
    let two = SecondGateway::start(&app).await;
    let alice_token = app.user("alice").await;
    let (mut alice, mut alice_too) = (app.ws(&alice_token).await, two.ws(&alice_token).await);
    let bob_token = app.user("bob").await;
    let mut bob = two.ws(&bob_token).await;
    let carol_token = app.user("carol").await;
    let (mut carol, mut carol_lobby) = (app.ws(&carol_token).await, two.ws(&carol_token).await);
    let dave_token = app.user("dave").await;
    let (mut dave, mut dave_too) = (app.ws(&dave_token).await, two.ws(&dave_token).await);
    befriend(&mut alice, "alice", &mut bob).await;
    befriend(&mut alice, "alice", &mut carol).await;
    befriend(&mut alice, "alice", &mut dave).await;

    let created = alice
        .call(
            "create",
            json!({"title": "team", "usernames": ["bob", "carol", "dave"]}),
        )
        .await
        .expect("create");
    let channel = created["channel_id"].clone();
    for ws in [
        &mut bob,
        &mut carol,
        &mut carol_lobby,
        &mut dave,
        &mut dave_too,
    ] {
        assert_eq!(ws.push("channel_joined").await["channel_id"], channel);
    }
    for ws in [&mut alice, &mut alice_too] {
        ws.expect_no_push("channel_joined", Duration::from_millis(300))
            .await;
    }
    for ws in [&mut alice, &mut alice_too, &mut bob, &mut carol] {
        enter(ws, &channel).await;
    }

    let mut written = Vec::new();
    for i in 0..20 {
        written.push(write(&mut alice, &channel, &format!("m{i}")).await);
    }
    assert_eq!(written, (1..=20).collect::<Vec<_>>());
    for ws in [&mut alice_too, &mut bob, &mut carol] {
        assert_eq!(seqs(ws, 20).await, written, "each message once, in order");
        ws.expect_no_push("message", Duration::from_millis(500))
            .await;
    }
    alice
        .expect_no_push("message", Duration::from_millis(200))
        .await;

    // Dave never entered: both of his sockets hear of each message as an
    // unread count. Carol is reading it on another socket: no unread.
    for ws in [&mut dave, &mut dave_too] {
        let mut last = Value::Null;
        for _ in 0..20 {
            last = ws.push("unread").await;
        }
        assert_eq!(last["channel_id"], channel);
        assert_eq!(last["title"], "team");
        assert_eq!(last["last_seq"], 20);
        assert_eq!(last["unread"], 20);
        ws.expect_no_push("message", Duration::from_millis(200))
            .await;
    }
    for kind in ["unread", "message"] {
        carol_lobby
            .expect_no_push(kind, Duration::from_millis(200))
            .await;
    }
    two.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn members_who_have_not_entered_get_unread_counts_from_their_read_position() {
    let app = TestApp::spawn().await;
    let (channel, mut alice, mut bob) = pair(&app).await;
    bob.call("leave", json!({})).await.expect("leave");
    write(&mut alice, &channel, "one").await;
    let first = bob.push("unread").await;
    assert_eq!(
        (first["last_seq"].clone(), first["unread"].clone()),
        (json!(1), json!(1))
    );
    bob.call("read", json!({"channel_id": channel, "seq": 1}))
        .await
        .expect("read");
    write(&mut alice, &channel, "two").await;
    write(&mut alice, &channel, "three").await;
    bob.push("unread").await;
    let third = bob.push("unread").await;
    assert_eq!(
        (third["last_seq"].clone(), third["unread"].clone()),
        (json!(3), json!(2))
    );
    alice
        .expect_no_push("unread", Duration::from_millis(300))
        .await;
    bob.expect_no_push("message", Duration::from_millis(100))
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_write_repeated_with_the_same_client_msg_id_is_delivered_once() {
    let app = TestApp::spawn().await;
    let (channel, mut alice, mut bob) = pair(&app).await;
    let seqs_written: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(write(&mut alice, &channel, "same").await);
        }
        v
    };
    assert_eq!(seqs_written, vec![1, 1, 1]);
    assert_eq!(seqs(&mut bob, 1).await, vec![1]);
    bob.expect_no_push("message", Duration::from_secs(1)).await;
    app.stop().await;
}

#[tokio::test]
async fn messages_written_while_push_is_down_are_delivered_after_it_returns() {
    let mut app = TestApp::spawn().await;
    let (channel, alice, mut bob) = pair(&app).await;
    // Four sockets of Alice's, so 200 writes stay under each socket's rate
    // limit (burst 100).
    let token = app.token("alice").await;
    let mut writers = vec![alice];
    for _ in 0..3 {
        writers.push(app.ws(&token).await);
    }
    app.stop_part(Service::Push).await;
    for i in 0..200 {
        write(&mut writers[i % 4], &channel, &format!("m{i}")).await;
    }
    bob.expect_no_push("message", Duration::from_millis(300))
        .await;
    app.start(Service::Push).await;
    assert_eq!(seqs(&mut bob, 200).await, (1..=200).collect::<Vec<_>>());
    bob.expect_no_push("message", Duration::from_secs(1)).await;
    app.stop().await;
}

/// Publishes `payload` to `channel`'s subject of the events stream, in
/// its partition, as the outbox relay would.
async fn publish_raw(app: &TestApp, channel: &Value, payload: Vec<u8>) {
    let ns = app.config.namespace();
    let channel = ChannelId(channel.as_i64().expect("a channel id"));
    let partition = PartitionKey::Channel(channel).partition(ns.partitions());
    let subject = ns.partition_subject(partition, &format!("channel.{channel}"));
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .message_id(uuid::Uuid::new_v4().to_string())
        .payload(payload.into());
    async_nats::jetstream::new(nats)
        .send_publish(subject, msg)
        .await
        .expect("publish")
        .await
        .expect("stored");
}

#[tokio::test]
async fn a_poison_event_does_not_hold_back_the_channel() {
    let app = TestApp::spawn().await;
    let (channel, mut alice, mut bob) = pair(&app).await;
    publish_raw(&app, &channel, b"\x00garbage".to_vec()).await;
    write(&mut alice, &channel, "after").await;
    assert_eq!(seqs(&mut bob, 1).await, vec![1]);
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let dlq = async_nats::jetstream::new(nats)
        .get_stream(app.config.namespace().dlq_stream())
        .await
        .expect("dlq");
    let mut count = 0;
    for _ in 0..50 {
        count = dlq.get_info().await.expect("info").state.messages;
        if count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, 1);
    drop((alice, bob));
    app.stop().await;
}

#[tokio::test]
async fn replay_redelivers_stored_messages_from_a_sequence_and_only_messages() {
    let app = TestApp::spawn().await;
    let (channel, mut alice, mut bob) = pair(&app).await;
    for id in ["r1", "r2", "r3"] {
        write(&mut alice, &channel, id).await;
    }
    assert_eq!(seqs(&mut bob, 3).await, vec![1, 2, 3]);
    // Read what the first delivery left unread, so only the replay's
    // pushes remain to be seen.
    for ws in [&mut alice, &mut bob] {
        ws.expect_no_push("none", Duration::from_millis(300)).await;
        ws.take_pushes();
    }

    let replayed = natter_push::replay(&app.config, natter_push::ReplayFrom::Sequence(1))
        .await
        .expect("replay");
    assert_eq!(replayed, 3);
    assert_eq!(seqs(&mut bob, 3).await, vec![1, 2, 3]);
    // From a time after everything stored: nothing to re-deliver.
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let none = natter_push::replay(&app.config, natter_push::ReplayFrom::Time(later))
        .await
        .expect("replay from a time");
    assert_eq!(none, 0);
    // Invitations and channel_joined are not shown to people twice.
    bob.expect_no_push("channel_joined", Duration::from_millis(300))
        .await;
    alice
        .expect_no_push("invite_accepted", Duration::from_millis(300))
        .await;
    app.stop().await;
}

/// `NATTER_REDIS_URL` listing the nodes of a Redis Cluster (three real
/// `redis-server --cluster-enabled yes`): gateways admit and register
/// sockets there, the per-user limit still counts every socket of a user
/// (one hash, one slot), and push finds each member's sockets whichever
/// node holds them.
#[tokio::test]
async fn presence_on_a_redis_cluster_admits_limits_and_delivers() {
    let cluster = natter_testkit::private::PrivateRedisCluster::start();
    let app = TestApp::spawn_with(|c| {
        c.redis_url = cluster.url();
        c.sockets_per_user = 2;
    })
    .await;
    let two = SecondGateway::start(&app).await;
    let (channel, mut alice, mut bob) = pair(&app).await;
    let bob_token = app.token("bob").await;
    let mut bob_too = two.ws(&bob_token).await;
    enter(&mut bob_too, &channel).await;
    let url = format!("ws://{}{}", two.addr, paths::WEBSOCKET);
    match ws::connect(&url, Some(&bob_token)).await {
        Ok(_) => panic!("a third socket of bob's opened past the limit of 2"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert!(body.contains("rate_limited"), "{body}");
        }
    }

    let mut written = Vec::new();
    for i in 0..10 {
        written.push(write(&mut alice, &channel, &format!("c{i}")).await);
    }
    for ws in [&mut bob, &mut bob_too] {
        assert_eq!(seqs(ws, 10).await, written, "each message once, in order");
    }
    two.stop().await;
    app.stop().await;
}
