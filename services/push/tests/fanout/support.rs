//! push alone, plus the means to act as message (publish events, seed
//! Postgres) and as gateways (presence, liveness, delivery subjects).

use async_nats::jetstream;
use futures::StreamExt;
use natter_platform::Config;
use natter_platform::cache::Redis;
use natter_platform::lifecycle;
use natter_platform::presence::{self, PresenceWriter};
use natter_protocol::events::{Delivery, DeliveryBatch, Event, UnreadTarget};
use natter_protocol::rpc::SocketRef;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, Seq, SocketId, UserId};
use natter_push::Push;
use natter_testkit::TestService;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::process::{Child, Command};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// How long a delivery may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to listen before concluding nothing comes.
pub const QUIET: Duration = Duration::from_millis(700);

pub struct Harness {
    pub app: TestService<Push>,
    pub ns: Namespace,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub redis: Redis,
    /// One presence writer per gateway acted as: its entries count only
    /// for the incarnation that marked it alive.
    gateways: Mutex<HashMap<String, PresenceWriter>>,
}

impl Harness {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// push started after `tweak` adjusts the configuration.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let app = TestService::<Push>::spawn_with(tweak).await;
        let ns = app.config.namespace();
        let nats = async_nats::connect(&app.config.nats_url)
            .await
            .expect("NATS answers");
        let js = jetstream::new(nats.clone());
        let redis = natter_platform::cache::connect(&app.config)
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

    /// A new Redis connection, after the test restarted Redis; the gateways
    /// acted as start over with it, as new incarnations (the restarted
    /// Redis forgot the old ones).
    pub async fn reconnect_redis(&mut self) {
        self.redis = natter_platform::cache::connect(&self.app.config)
            .await
            .expect("Redis answers");
        self.gateways
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
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

    /// Publishes an event the way the outbox relay does; its stream
    /// sequence.
    pub async fn publish(&self, event: &Event) -> u64 {
        let payload = serde_json::to_vec(event).expect("encode event");
        self.publish_to(self.ns.event_subject(event), payload).await
    }

    /// Publishes events of one partition as one message, on the first's
    /// subject, the way the outbox relay publishes what one
    /// `write_messages` call stored in a partition; its stream sequence.
    pub async fn publish_together(&self, events: &[Event]) -> u64 {
        let payload = serde_json::to_vec(events).expect("encode events");
        self.publish_to(self.ns.event_subject(&events[0]), payload)
            .await
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

    /// Publishes `payload` to `subject` of the events stream; its stream
    /// sequence.
    pub async fn publish_to(&self, subject: String, payload: Vec<u8>) -> u64 {
        let msg = jetstream::message::PublishMessage::build()
            .message_id(uuid::Uuid::new_v4().to_string())
            .payload(payload.into());
        self.js
            .send_publish(subject, msg)
            .await
            .expect("publish")
            .await
            .expect("stored")
            .sequence
    }

    /// Each partition's lease holder, as the leases bucket says now.
    pub async fn owners(&self) -> BTreeMap<u16, String> {
        let leases = self
            .js
            .get_key_value(self.ns.push_leases_bucket())
            .await
            .expect("the leases bucket");
        let mut owners = BTreeMap::new();
        for partition in 0..self.ns.partitions() {
            if let Ok(Some(holder)) = leases.get(format!("partition.{partition}")).await {
                owners.insert(partition, String::from_utf8_lossy(&holder).into_owned());
            }
        }
        owners
    }

    /// How many partitions each instance holds, largest first, once every
    /// partition has a holder.
    pub async fn shares(&self) -> Option<Vec<usize>> {
        let owners = self.owners().await;
        if owners.len() < usize::from(self.ns.partitions()) {
            return None;
        }
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for holder in owners.into_values() {
            *counts.entry(holder).or_default() += 1;
        }
        let mut shares: Vec<usize> = counts.into_values().collect();
        shares.sort_unstable_by(|a, b| b.cmp(a));
        Some(shares)
    }

    /// Writes a partition's committed position, as its owner would.
    pub async fn commit_offset(&self, partition: u16, sequence: u64) {
        self.js
            .get_key_value(self.ns.push_offsets_bucket())
            .await
            .expect("the offsets bucket")
            .put(
                format!("partition.{partition}"),
                sequence.to_string().into(),
            )
            .await
            .expect("commit");
    }

    /// Events in the dead-letter stream.
    pub async fn dead_letters(&self) -> u64 {
        let mut dlq = self
            .js
            .get_stream(self.ns.dlq_stream())
            .await
            .expect("the DLQ stream");
        dlq.info().await.expect("info").state.messages
    }

    /// The first message of the dead-letter stream, which must be there.
    pub async fn first_dead_letter(&self) -> jetstream::message::StreamMessage {
        self.js
            .get_stream(self.ns.dlq_stream())
            .await
            .expect("the DLQ stream")
            .get_raw_message(1)
            .await
            .expect("a dead letter")
    }

    /// Listens as gateway `id` would.
    pub async fn tap(&self, gateway: &str) -> Tap {
        let sub = self
            .nats
            .subscribe(self.ns.gateway_subject(gateway))
            .await
            .expect("subscribe");
        self.nats.flush().await.expect("flush");
        Tap {
            sub,
            frames: VecDeque::new(),
            batches: 0,
        }
    }
}

/// What push publishes to one gateway. Events handled together share one
/// batch: a test that publishes several before reading takes their frames
/// with [`Tap::next_frame`].
pub struct Tap {
    sub: async_nats::Subscriber,
    /// Frames of batches read, not yet taken.
    frames: VecDeque<(Vec<u64>, Value)>,
    /// Batches read so far.
    pub batches: usize,
}

impl Tap {
    /// The next batch.
    pub async fn next(&mut self) -> DeliveryBatch {
        assert!(self.frames.is_empty(), "frames of a batch were left");
        self.within(WAIT).await.expect("a delivery batch arrives")
    }

    pub async fn within(&mut self, wait: Duration) -> Option<DeliveryBatch> {
        let msg = tokio::time::timeout(wait, self.sub.next()).await.ok()??;
        self.batches += 1;
        Some(serde_json::from_slice(&msg.payload).expect("a DeliveryBatch"))
    }

    /// The next frame, with its sockets, of whichever batch it came in.
    pub async fn next_frame(&mut self) -> (Vec<u64>, Value) {
        while self.frames.is_empty() {
            let batch = self.within(WAIT).await.expect("a delivery batch arrives");
            self.frames.extend(frames(&batch));
        }
        self.frames.pop_front().expect("a frame")
    }

    pub async fn expect_nothing(&mut self) {
        assert!(self.frames.is_empty(), "frames left: {:?}", self.frames);
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
        traceparent: None,
    }
}

/// Polls `check` until it holds; panics naming `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What push at `addr` answers on `/readyz`: the status and what fails.
pub async fn readyz(addr: SocketAddr) -> (u16, Vec<String>) {
    let response = reqwest::get(format!("http://{addr}/readyz"))
        .await
        .expect("/readyz answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON body");
    let failing = body["failing"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (status, failing)
}

/// One more push instance, on a runtime of its own so that it can be
/// killed: dropping the runtime drops every task mid-flight, as SIGKILL
/// would — nothing is committed or released, and its leases must expire.
pub struct Instance {
    runtime: Option<Runtime>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Instance {
    pub async fn start(config: &Config) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let stop = CancellationToken::new();
        let (config, token) = (config.clone(), stop.clone());
        let started = runtime
            .spawn(async move { lifecycle::start::<Push>(&config, token).await })
            .await
            .expect("joined")
            .expect("push starts");
        Self {
            runtime: Some(runtime),
            stop,
            task: Some(started.task),
        }
    }

    /// Stops it gracefully: it commits and releases its partitions.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("joined").expect("stopped cleanly");
        }
    }

    /// Drops it without a goodbye.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A Redis server of the test's own, on a free port, that the test may
/// kill and start again (on the same port, empty, as after a crash).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { port, child: None };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) and waits until it answers.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let url = self.url();
        eventually("the private Redis answers", WAIT, || async {
            match redis::Client::open(url.as_str()) {
                Ok(client) => client.get_multiplexed_async_connection().await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("redis-server killed");
        }
    }
}
