//! push alone, plus the means to act as message (publish events, seed
//! Postgres) and as gateways (presence, liveness, delivery subjects).

use async_nats::jetstream;
use futures::StreamExt;
use natter_platform::presence::{self, PresenceWriter};
use natter_protocol::events::{Delivery, DeliveryBatch, Event, UnreadTarget};
use natter_protocol::rpc::SocketRef;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, Seq, SocketId, UserId};
use natter_push::Push;
use natter_testkit::TestService;
use redis::aio::ConnectionManager;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;

/// How long a delivery may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to listen before concluding nothing comes.
pub const QUIET: Duration = Duration::from_millis(700);

pub struct Harness {
    pub app: TestService<Push>,
    pub ns: Namespace,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub redis: ConnectionManager,
    /// One presence writer per gateway acted as: its entries count only
    /// for the incarnation that marked it alive.
    gateways: Mutex<HashMap<String, PresenceWriter>>,
}

impl Harness {
    pub async fn spawn() -> Self {
        let app = TestService::<Push>::spawn().await;
        let ns = app.config.namespace();
        let nats = async_nats::connect(&app.config.nats_url)
            .await
            .expect("NATS answers");
        let js = jetstream::new(nats.clone());
        let redis = natter_platform::cache::connect(&app.config.redis_url)
            .await
            .expect("Redis answers");
        Self {
            app,
            ns,
            nats,
            js,
            redis,
            gateways: Mutex::default(),
        }
    }

    /// A user row, as auth would write it.
    pub async fn user(&self, name: &str) -> UserId {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, invite_code) VALUES ($1, 'x', $2) RETURNING id",
        )
        .bind(name)
        .bind(uuid::Uuid::new_v4().to_string())
        .fetch_one(&self.app.pool)
        .await
        .expect("insert user");
        UserId(id)
    }

    /// A channel with these members (the first is the creator).
    pub async fn channel(&self, title: &str, members: &[UserId]) -> ChannelId {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO channels (title, invite_code, head_count, created_by) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(title)
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(i32::try_from(members.len()).expect("small"))
        .bind(members[0].0)
        .fetch_one(&self.app.pool)
        .await
        .expect("insert channel");
        for m in members {
            self.add_member(ChannelId(id), *m).await;
        }
        ChannelId(id)
    }

    pub async fn add_member(&self, channel: ChannelId, user: UserId) {
        sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
            .bind(channel.0)
            .bind(user.0)
            .execute(&self.app.pool)
            .await
            .expect("insert member");
    }

    pub async fn remove_member(&self, channel: ChannelId, user: UserId) {
        sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
            .bind(channel.0)
            .bind(user.0)
            .execute(&self.app.pool)
            .await
            .expect("delete member");
    }

    pub async fn set_last_read(&self, channel: ChannelId, user: UserId, seq: i64) {
        sqlx::query(
            "UPDATE channel_members SET last_read_seq = $3 WHERE channel_id = $1 AND user_id = $2",
        )
        .bind(channel.0)
        .bind(user.0)
        .bind(seq)
        .execute(&self.app.pool)
        .await
        .expect("update last_read_seq");
    }

    /// Presence writes as `gateway` makes them.
    fn gateway(&self, gateway: &str) -> PresenceWriter {
        self.gateways
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(gateway.to_owned())
            .or_insert_with(|| {
                PresenceWriter::new(self.redis.clone(), self.ns.clone(), gateway.into())
            })
            .clone()
    }

    /// Marks a gateway alive, as its heartbeat would, for longer than any
    /// test runs (there is no heartbeat here to refresh it).
    pub async fn gateway_alive(&self, gateway: &str) {
        self.gateway(gateway)
            .register()
            .await
            .expect("set liveness");
    }

    /// Registers a socket of `user` on `gateway` (which must be made alive
    /// separately), in `entered` or in none.
    pub async fn online(
        &self,
        user: UserId,
        gateway: &str,
        socket: u64,
        entered: Option<ChannelId>,
    ) {
        self.gateway(gateway)
            .set(user, SocketId(socket), entered)
            .await;
    }

    pub async fn presence_fields(&self, user: UserId) -> Vec<String> {
        let mut conn = self.redis.clone();
        redis::cmd("HKEYS")
            .arg(presence::user_key(&self.ns, user))
            .query_async(&mut conn)
            .await
            .expect("read presence")
    }

    /// Publishes an event the way the outbox relay does.
    pub async fn publish(&self, event: &Event) {
        let payload = serde_json::to_vec(event).expect("encode event");
        self.publish_raw(&event.subject_suffix(), payload).await;
    }

    /// Publishes a typing notice the way message does: core NATS, outside
    /// the events stream.
    pub async fn publish_typing(&self, event: &Event) {
        let Event::Typing { channel_id, .. } = event else {
            panic!("not a typing notice: {event:?}");
        };
        let payload = serde_json::to_vec(event).expect("encode event");
        self.nats
            .publish(self.ns.typing_subject(*channel_id), payload.into())
            .await
            .expect("publish");
        self.nats.flush().await.expect("flush");
    }

    pub async fn publish_raw(&self, suffix: &str, payload: Vec<u8>) {
        let msg = jetstream::message::PublishMessage::build()
            .message_id(uuid::Uuid::new_v4().to_string())
            .payload(payload.into());
        self.js
            .send_publish(self.ns.event_subject(suffix), msg)
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// Listens as gateway `id` would.
    pub async fn tap(&self, gateway: &str) -> Tap {
        let sub = self
            .nats
            .subscribe(self.ns.gateway_subject(gateway))
            .await
            .expect("subscribe");
        self.nats.flush().await.expect("flush");
        Tap { sub }
    }
}

pub struct Tap {
    sub: async_nats::Subscriber,
}

impl Tap {
    /// The next batch.
    pub async fn next(&mut self) -> DeliveryBatch {
        self.within(WAIT).await.expect("a delivery batch arrives")
    }

    pub async fn within(&mut self, wait: Duration) -> Option<DeliveryBatch> {
        let msg = tokio::time::timeout(wait, self.sub.next()).await.ok()??;
        Some(serde_json::from_slice(&msg.payload).expect("a DeliveryBatch"))
    }

    pub async fn expect_nothing(&mut self) {
        if let Some(b) = self.within(QUIET).await {
            panic!("unexpected delivery: {b:?}");
        }
    }
}

/// The frames of a batch, decoded, with their sockets.
pub fn frames(batch: &DeliveryBatch) -> Vec<(Vec<u64>, Value)> {
    batch
        .items
        .iter()
        .filter_map(|d| match d {
            Delivery::Frame { sockets, frame } => Some((
                sockets.iter().map(|s| s.0).collect(),
                serde_json::from_str(frame).expect("frame is JSON"),
            )),
            _ => None,
        })
        .collect()
}

/// The `unread` targets of a batch.
pub fn unreads(batch: &DeliveryBatch) -> Vec<UnreadTarget> {
    batch
        .items
        .iter()
        .flat_map(|d| match d {
            Delivery::Unread { targets, .. } => targets.clone(),
            _ => Vec::new(),
        })
        .collect()
}

pub fn origin(gateway: &str, socket_id: u64) -> SocketRef {
    SocketRef {
        gateway_id: gateway.into(),
        socket_id: SocketId(socket_id),
    }
}

pub fn message(channel: ChannelId, seq: i64, writer: UserId, from: SocketRef) -> Event {
    Event::MessageStored {
        channel_id: channel,
        title: "general".into(),
        seq: Seq(seq),
        user_id: writer,
        username: "alice".into(),
        content: format!("message {seq}"),
        sent_at: OffsetDateTime::now_utc(),
        origin: from,
    }
}
