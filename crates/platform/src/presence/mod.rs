//! Presence: which sockets each user has, on which gateway, in which
//! channel. The Redis schema lives here and nowhere else; the gateway
//! writes through [`PresenceWriter`], push and message read through
//! [`PresenceReader`].
//!
//! Keys (all under the namespace, see [`user_key`] and [`gateway_key`]):
//! - `<ns>:presence:{<user>}`, a hash: one field `<gateway>:<socket>` per
//!   live socket, valued `<entered>@<incarnation>`: the entered channel id
//!   (decimal) or nothing, and the incarnation of the gateway that wrote
//!   it;
//! - `<ns>:gw:<gateway>`, the gateway's liveness key, valued by its
//!   current incarnation, set with a [`GATEWAY_TTL`] and refreshed every
//!   [`HEARTBEAT`];
//! - `<ns>:presence-epochs`, a counter per bucket of users that every
//!   write above bumps once it is applied ([`epochs`]), so that push can
//!   reuse the hashes it read for earlier messages while their counters
//!   stand still (see [`PresenceReader::caching_hashes`]).
//!
//! Liveness rule: Redis 7.0 has no per-field TTL, so a crashed gateway's
//! fields stay behind; an entry counts only while its gateway's liveness
//! key exists *and names the incarnation that wrote the entry*, and
//! readers delete the fields of dead gateways they come across. The
//! incarnation is new each time a gateway starts: one restarted under the
//! same name (a StatefulSet pod, a fixed `NATTER_GATEWAY_ID`) writes its
//! own into the liveness key before it serves, which at once clears its
//! predecessor's sockets from presence, however many users they belonged
//! to. (An entry without an incarnation, from a gateway older than this
//! rule, counts while its gateway's key exists.)
//!
//! The same hash counts a user's sockets for the per-user limit
//! (docs/protocol.md §2.6): [`PresenceWriter::admit`] counts the live
//! fields — by the same liveness rule, incarnation included — and adds
//! the new one in one script, atomic across gateways, so the count is what
//! the hash holds: a closed socket's field is removed, a dead gateway's or
//! a dead incarnation's stop counting with its liveness, and it cannot
//! leak.
//!
//! Redis Cluster (see [`crate::cache`]): a user's hash is the only key a
//! script or a multi-key command touches, and its hash tag `{<user>}`
//! names its slot. The liveness keys live wherever their own slots are,
//! so they are read before the admission script (which then touches only
//! the user's hash), and commands about many users go out through
//! [`Redis::each`], never as one cross-slot pipeline.
//!
//! Nothing here is the only copy of anything: if Redis loses it (flush,
//! failover), the heartbeat finds its liveness key missing and registers
//! every local socket again. A write that fails in a Redis blip is
//! repaired by the next heartbeat the same way; until then the writer
//! reports its `presence` condition failing (see
//! [`PresenceWriter::reporting_to`]), logged once when it begins and once
//! when it ends, not once per socket.

pub mod epochs;
mod hashes;

use crate::cache::Redis;
use crate::lifecycle::Condition;
use anyhow::Context;
use hashes::Hashes;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, SocketId, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a gateway refreshes its liveness key, and so how soon it
/// finds that Redis lost it (a restart, a failover) and registers its
/// sockets again: one `SET` a second per gateway.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How soon a gateway tries again after a failed heartbeat, so that
/// presence Redis lost (a restart, a failover) is back moments after
/// Redis is.
pub const HEARTBEAT_RETRY: Duration = Duration::from_millis(250);
/// How long push waits, once Redis answers again after failing, before it
/// trusts presence: by then every gateway's next (or retried) heartbeat
/// has registered its sockets again, so a backlog held back through the
/// outage is not fanned out to an empty presence (and lost to live
/// delivery).
pub const REPAIR_WAIT: Duration = Duration::from_secs(2);
/// Liveness key TTL: a few missed heartbeats and the gateway counts as gone.
pub const GATEWAY_TTL: Duration = Duration::from_secs(20);
/// How long push trusts a liveness answer: the check then costs a round
/// trip per second, not one per event.
pub const LIVENESS_CACHE: Duration = Duration::from_millis(1500);

/// The hash of `user`'s live sockets; `{<user>}` is its Redis Cluster
/// hash tag.
#[must_use]
pub fn user_key(ns: &Namespace, user: UserId) -> String {
    user_key_under(&ns.redis_prefix(), user)
}

/// [`user_key`] with the namespace's prefix made once, for reads of
/// thousands of users.
fn user_key_under(prefix: &str, user: UserId) -> String {
    format!("{prefix}presence:{{{user}}}")
}

/// The liveness key of `gateway`.
#[must_use]
pub fn gateway_key(ns: &Namespace, gateway: &str) -> String {
    format!("{}gw:{gateway}", ns.redis_prefix())
}

/// The field of one socket in its user's hash: `<gateway>:<socket>`.
#[must_use]
pub fn socket_field(gateway: &str, socket: SocketId) -> String {
    format!("{gateway}:{socket}")
}

/// Splits a field back into gateway and socket; `None` when it is
/// malformed or names a gateway that could not be a NATS subject token
/// (push publishes to `<ns>.gw.<gateway>`).
#[must_use]
pub fn parse_socket_field(field: &str) -> Option<(&str, SocketId)> {
    let (gateway, socket) = field.rsplit_once(':')?;
    let valid = !gateway.is_empty()
        && gateway
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    valid.then_some((gateway, SocketId(socket.parse().ok()?)))
}

/// [`PresenceWriter::admit`], run on `KEYS[1]`, the user's hash, with
/// `ARGV[1]` the limit and `ARGV[2]`, `ARGV[3]` the new socket's field and
/// value. With `ARGV[4]` = `quick`, it admits at once when the hash has
/// fewer fields than the limit, dead or alive (the usual case, one round
/// trip), and otherwise returns -1: the caller then reads the gateways'
/// liveness and runs it again with `ARGV[4]` = `checked` and `ARGV[5..]`
/// the fields it found dead, each with the value it was judged by. Then it
/// deletes those that still have that value and counts the other fields
/// that look like sockets (`<gateway>:<socket>`, as
/// [`parse_socket_field`] reads them): below the limit it sets the field
/// and returns 1, else 0. One script, so two gateways admitting the same
/// user's sockets at once cannot both pass the limit. It touches only the
/// user's hash (one Redis Cluster slot): a field written since its
/// gateway was checked counts, and a dead field rewritten since (a
/// restarted gateway reusing a socket id) is kept.
const ADMIT_SCRIPT: &str = r"
local limit = tonumber(ARGV[1])
if ARGV[4] == 'quick' then
  if redis.call('HLEN', KEYS[1]) < limit then
    redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
    return 1
  end
  return -1
end
local dead = {}
for i = 5, #ARGV, 2 do
  dead[ARGV[i]] = ARGV[i + 1]
end
local live = 0
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local field, value = entries[i], entries[i + 1]
  if dead[field] == value then
    redis.call('HDEL', KEYS[1], field)
  elseif string.match(field, '^[%w_%-]+:%d+$') then
    live = live + 1
  end
end
if live >= limit then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
";

/// Deletes field `ARGV[1]` of the hash `KEYS[1]` if it still holds the
/// value `ARGV[2]`.
const CLEAN_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
";

/// A field's value: the entered channel (or nothing) and the incarnation
/// of the gateway writing it.
fn entry_value(entered: Option<ChannelId>, incarnation: &str) -> String {
    let entered = entered.map(|c| c.to_string()).unwrap_or_default();
    format!("{entered}@{incarnation}")
}

/// Reads a field's value: the entered channel (an unreadable one counts
/// as "not entered") and the incarnation, if the value names one.
fn parse_value(value: &str) -> (Option<ChannelId>, Option<&str>) {
    let (entered, incarnation) = match value.rsplit_once('@') {
        Some((entered, incarnation)) => (entered, Some(incarnation)),
        None => (value, None),
    };
    (entered.parse().ok().map(ChannelId), incarnation)
}

/// One live socket of a user, as presence reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSocket {
    /// The gateway holding it (shared by the read's sockets on it).
    pub gateway: Arc<str>,
    /// Its id on that gateway.
    pub socket: SocketId,
    /// The channel it has entered, if any.
    pub entered: Option<ChannelId>,
}

/// Live sockets by user; users with none are absent. Hashed with
/// foldhash: push builds one per batch over thousands of users, and the
/// ids come from our own database, so nobody can aim collisions at it.
pub type LiveSockets = HashMap<UserId, Vec<LiveSocket>, FastHash>;

/// The hasher of the maps a presence read builds per batch.
type FastHash = foldhash::fast::RandomState;

/// One socket a gateway holds, as its heartbeat re-registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalSocket {
    /// Its user.
    pub user: UserId,
    /// Its id on this gateway.
    pub socket: SocketId,
    /// The channel it has entered, if any.
    pub entered: Option<ChannelId>,
}

/// What a gateway's heartbeat needs to know of the sockets it holds.
pub trait LocalSockets: Send + Sync + 'static {
    /// Every socket held now.
    fn snapshot(&self) -> Vec<LocalSocket>;
    /// Whether `socket` is still held.
    fn holds(&self, socket: SocketId) -> bool;
}

/// One gateway's presence writes and heartbeat; cheap to clone.
#[derive(Clone)]
pub struct PresenceWriter {
    redis: Redis,
    ns: Namespace,
    gateway: String,
    /// New at every start: see the module's liveness rule.
    incarnation: String,
    /// [`epochs::key`], bumped after every write.
    epochs_key: String,
    /// A write failed: re-register every socket on the next heartbeat.
    dirty: Arc<AtomicBool>,
    /// Removals that failed, retried on the next heartbeat.
    stale: Arc<Mutex<Vec<(UserId, SocketId)>>>,
    /// Failing while presence is not as the gateway holds it.
    health: Condition,
}

impl PresenceWriter {
    /// Writes for gateway `gateway`, as a new incarnation of it.
    #[must_use]
    pub fn new(redis: Redis, ns: Namespace, gateway: String) -> Self {
        Self {
            epochs_key: epochs::key(&ns),
            redis,
            ns,
            gateway,
            incarnation: crate::random::token(6),
            dirty: Arc::default(),
            stale: Arc::default(),
            health: Condition::detached("presence"),
        }
    }

    /// Reports failed writes through `health` (the gateway's `/readyz`)
    /// until the heartbeat has repaired them.
    #[must_use]
    pub fn reporting_to(mut self, health: Condition) -> Self {
        self.health = health;
        self
    }

    /// Records a socket and what it has entered, then bumps the user's
    /// epoch (in one round trip on a single Redis). A failure is logged
    /// and left to the next heartbeat to repair.
    pub async fn set(&self, user: UserId, socket: SocketId, entered: Option<ChannelId>) {
        let mut hset = redis::cmd("HSET");
        hset.arg(user_key(&self.ns, user))
            .arg(socket_field(&self.gateway, socket))
            .arg(entry_value(entered, &self.incarnation));
        let bump = epochs::bump(&self.epochs_key, [user]);
        if let Err(e) = self.redis.in_order(vec![hset, bump]).await {
            self.dirty.store(true, Ordering::Relaxed);
            self.health.failing(
                &anyhow::Error::new(e)
                    .context("presence update failed; the heartbeat will repair it"),
            );
        }
    }

    /// Records a new socket (not in a channel) unless its user already has
    /// `limit` live sockets on any gateway: whether it was admitted. Fields
    /// of dead gateways, and of gateways' dead incarnations, do not count,
    /// and are deleted once the user's hash is full (readers delete those
    /// they meet before). Redis failing does not lock users
    /// out: the socket is admitted, the `presence` condition fails, and the
    /// heartbeat registers it once it runs.
    pub async fn admit(&self, user: UserId, socket: SocketId, limit: usize) -> bool {
        let admitted = async {
            let admitted = self.try_admit(user, socket, limit).await?;
            if admitted {
                self.bump([user]).await?;
            }
            Ok::<_, redis::RedisError>(admitted)
        };
        admitted.await.unwrap_or_else(|e| {
            self.dirty.store(true, Ordering::Relaxed);
            self.health.failing(
                &anyhow::Error::new(e).context("presence admission failed; admitting the socket"),
            );
            true
        })
    }

    /// [`Self::admit`]: [`ADMIT_SCRIPT`] at once, and when the user has as
    /// many fields as the limit, again after reading the liveness of the
    /// gateways they name, with the fields found dead.
    async fn try_admit(
        &self,
        user: UserId,
        socket: SocketId,
        limit: usize,
    ) -> redis::RedisResult<bool> {
        let key = user_key(&self.ns, user);
        let admit = |mode: &str| {
            let mut script = redis::cmd("EVAL");
            script
                .arg(ADMIT_SCRIPT)
                .arg(1)
                .arg(&key)
                .arg(limit)
                .arg(socket_field(&self.gateway, socket))
                .arg(entry_value(None, &self.incarnation))
                .arg(mode);
            script
        };
        let mut conn = self.redis.clone();
        let quick: i64 = admit("quick").query_async(&mut conn).await?;
        if quick >= 0 {
            return Ok(quick == 1);
        }
        let hash: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let entries: Vec<(Entry, &str, &str)> = hash
            .iter()
            .filter_map(|(field, value)| {
                Some((Entry::parse(field, value)?, field.as_str(), value.as_str()))
            })
            .collect();
        let gateways: HashSet<&str> = entries.iter().map(|(e, _, _)| e.gateway).collect();
        let gateways: Vec<&str> = gateways.into_iter().collect();
        let alive = liveness(&self.redis, &self.ns, &gateways).await?;
        let mut checked = admit("checked");
        for (entry, field, value) in &entries {
            let current = gateways
                .iter()
                .position(|g| *g == entry.gateway)
                .and_then(|i| alive.get(i))
                .and_then(Option::as_deref);
            if !entry.is_live(current) {
                checked.arg(*field).arg(*value);
            }
        }
        let admitted: i64 = checked.query_async(&mut conn).await?;
        Ok(admitted == 1)
    }

    /// Forgets a socket later, without waiting: for a socket admitted but
    /// never run (its upgrade failed), from code that cannot await. The
    /// next heartbeat removes it.
    pub fn forget_later(&self, user: UserId, socket: SocketId) {
        self.stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((user, socket));
    }

    /// Forgets a socket; a failed removal is retried by the heartbeat.
    pub async fn remove(&self, user: UserId, socket: SocketId) {
        if let Err(e) = self.remove_all(&[(user, socket)]).await {
            self.stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((user, socket));
            self.health.failing(
                &anyhow::Error::new(e)
                    .context("presence removal failed; the heartbeat will retry it"),
            );
        }
    }

    async fn remove_all(&self, sockets: &[(UserId, SocketId)]) -> redis::RedisResult<()> {
        let commands = sockets
            .iter()
            .map(|(user, socket)| {
                let mut hdel = redis::cmd("HDEL");
                hdel.arg(user_key(&self.ns, *user))
                    .arg(socket_field(&self.gateway, *socket));
                hdel
            })
            .collect();
        self.redis.each::<()>(commands).await?;
        self.bump(sockets.iter().map(|(user, _)| *user)).await
    }

    /// Bumps the epochs of `users`, whose hashes were just written: what
    /// tells caching readers to read them again.
    async fn bump(&self, users: impl IntoIterator<Item = UserId>) -> redis::RedisResult<()> {
        let mut conn = self.redis.clone();
        epochs::bump(&self.epochs_key, users)
            .query_async(&mut conn)
            .await
    }

    /// Refreshes the liveness key; returns whether it had expired, been
    /// lost or been overwritten (then every local socket must be
    /// registered again).
    async fn beat(&self) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        let previous: Option<String> = redis::cmd("SET")
            .arg(gateway_key(&self.ns, &self.gateway))
            .arg(&self.incarnation)
            .arg("EX")
            .arg(GATEWAY_TTL.as_secs())
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        Ok(previous.as_deref() != Some(self.incarnation.as_str()))
    }

    /// Registers every local socket again, pipelined; a socket that closed
    /// meanwhile is removed again, so no stale entry is written back.
    async fn register_all(&self, local: &impl LocalSockets) -> redis::RedisResult<()> {
        let sockets = local.snapshot();
        let commands = sockets
            .iter()
            .map(|s| {
                let mut hset = redis::cmd("HSET");
                hset.arg(user_key(&self.ns, s.user))
                    .arg(socket_field(&self.gateway, s.socket))
                    .arg(entry_value(s.entered, &self.incarnation));
                hset
            })
            .collect();
        self.redis.each::<()>(commands).await?;
        self.bump(sockets.iter().map(|s| s.user)).await?;
        let gone: Vec<(UserId, SocketId)> = sockets
            .iter()
            .filter(|s| !local.holds(s.socket))
            .map(|s| (s.user, s.socket))
            .collect();
        if gone.is_empty() {
            Ok(())
        } else {
            self.remove_all(&gone).await
        }
    }

    /// One heartbeat: refreshes the liveness key and repairs what failed
    /// since the last one.
    async fn heartbeat(&self, local: &impl LocalSockets) -> anyhow::Result<()> {
        let lost = self.beat().await.context("presence heartbeat failed")?;
        if lost || self.dirty.swap(false, Ordering::Relaxed) {
            if lost {
                tracing::warn!("gateway liveness key was lost; re-registering sockets");
            }
            if let Err(e) = self.register_all(local).await {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(e).context("re-registering presence failed");
            }
        }
        let stale = std::mem::take(&mut *self.stale.lock().unwrap_or_else(PoisonError::into_inner));
        if !stale.is_empty()
            && let Err(e) = self.remove_all(&stale).await
        {
            self.stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(stale);
            return Err(e).context("removing stale presence failed");
        }
        Ok(())
    }

    /// Marks the gateway alive now as this incarnation, once: what the
    /// heartbeat does first and then keeps doing, for code that acts as a
    /// gateway without running one (tests).
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn register(&self) -> redis::RedisResult<()> {
        self.beat().await.map(|_| ())
    }

    /// Marks the gateway alive now (before it serves), as this incarnation,
    /// so whatever a predecessor of the same name left in presence stops
    /// counting; then keeps it alive every [`HEARTBEAT`] until `shutdown`,
    /// repairing what failed (after a failed beat, every
    /// [`HEARTBEAT_RETRY`] until one succeeds).
    ///
    /// # Errors
    /// When the first beat fails: a gateway Redis cannot see must not serve.
    pub async fn start_heartbeat<L: LocalSockets>(
        self,
        local: Arc<L>,
        shutdown: CancellationToken,
    ) -> redis::RedisResult<tokio::task::JoinHandle<()>> {
        self.beat().await?;
        Ok(tokio::spawn(async move {
            let mut pause = HEARTBEAT;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => break,
                }
                match self.heartbeat(local.as_ref()).await {
                    Ok(()) => {
                        self.health.ok();
                        pause = HEARTBEAT;
                    }
                    Err(e) => {
                        self.health.failing(&e);
                        pause = HEARTBEAT_RETRY;
                    }
                }
            }
        }))
    }

    /// Deletes the liveness key: readers drop this gateway's entries at
    /// once.
    pub async fn retire(&self) {
        let mut conn = self.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(gateway_key(&self.ns, &self.gateway))
            .query_async(&mut conn)
            .await;
    }
}

/// The incarnation each of `gateways` names in its liveness key, `None`
/// for those not alive; one round trip (liveness keys lie in many
/// cluster slots: see [`Redis::each`]).
async fn liveness(
    redis: &Redis,
    ns: &Namespace,
    gateways: &[&str],
) -> redis::RedisResult<Vec<Option<String>>> {
    let commands = gateways
        .iter()
        .map(|gw| {
            let mut get = redis::cmd("GET");
            get.arg(gateway_key(ns, gw));
            get
        })
        .collect();
    redis.each(commands).await
}

/// One field of a presence hash, parsed; borrows the field and value
/// Redis returned, so reading thousands of hashes copies none of them.
struct Entry<'a> {
    gateway: &'a str,
    socket: SocketId,
    entered: Option<ChannelId>,
    /// The gateway incarnation that wrote it, if it says.
    incarnation: Option<&'a str>,
}

impl<'a> Entry<'a> {
    fn parse(field: &'a str, value: &'a str) -> Option<Self> {
        let (gateway, socket) = parse_socket_field(field)?;
        let (entered, incarnation) = parse_value(value);
        Some(Self {
            gateway,
            socket,
            entered,
            incarnation,
        })
    }

    /// Whether it counts, given its gateway's liveness key (`None`: gone).
    fn is_live(&self, gateway: Option<&str>) -> bool {
        match (gateway, self.incarnation) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(current), Some(mine)) => current == mine,
        }
    }
}

/// A field of a presence hash as a read returns it: parsed once, when it
/// is read from Redis (push's cache keeps it so), owning its text.
pub(super) struct Field {
    /// As Redis holds it, `<gateway>:<socket>`, for deleting it.
    name: String,
    /// Where the gateway ends in `name`.
    gateway_len: usize,
    socket: SocketId,
    entered: Option<ChannelId>,
    /// Its value as read, so that it is deleted only while it holds it.
    value: String,
    /// Where the incarnation starts in `value`, if it names one.
    incarnation_at: Option<usize>,
}

impl Field {
    /// `None` when the field is malformed, as [`Entry::parse`] says.
    fn parse(name: String, value: String) -> Option<Self> {
        let e = Entry::parse(&name, &value)?;
        let (gateway_len, socket, entered) = (e.gateway.len(), e.socket, e.entered);
        let incarnation_at = e.incarnation.map(|i| value.len() - i.len());
        Some(Self {
            name,
            gateway_len,
            socket,
            entered,
            value,
            incarnation_at,
        })
    }

    fn gateway(&self) -> &str {
        &self.name[..self.gateway_len]
    }

    fn entry(&self) -> Entry<'_> {
        Entry {
            gateway: self.gateway(),
            socket: self.socket,
            entered: self.entered,
            incarnation: self.incarnation_at.map(|i| &self.value[i..]),
        }
    }
}

/// A gateway named in a presence read: its name, shared by its sockets,
/// and its current incarnation (`None`: not alive).
struct Known<'a> {
    name: Arc<str>,
    current: Option<&'a str>,
    /// Whether `current` was asked for in this read, not remembered.
    fresh: bool,
}

/// A gateway's liveness as [`PresenceReader::alive`] answers it: its
/// current incarnation (`None`: not alive), and whether that was asked
/// for now rather than remembered.
type Answer = (Option<String>, bool);

/// Gateway id → (its incarnation if alive, when asked).
type Liveness = HashMap<String, (Option<String>, Instant)>;

/// Presence lookups; cheap to clone (clones share the liveness cache).
#[derive(Clone)]
pub struct PresenceReader {
    redis: Redis,
    ns: Namespace,
    /// Users' hashes, read through a cache or not.
    hashes: Hashes,
    /// How long a liveness answer is reused; zero asks every time.
    cache_for: Duration,
    /// What was last heard of each gateway.
    liveness: Arc<Mutex<Liveness>>,
    /// How long to distrust presence once Redis answers after failing
    /// (zero: never).
    repair_wait: Duration,
    /// Whether the last read failed, and when one succeeded after a
    /// failure; shared by clones, as the partitions of one push instance
    /// read concurrently.
    outage: Arc<Mutex<Outage>>,
}

/// A reader's memory of the last Redis failure.
#[derive(Default)]
struct Outage {
    failing: bool,
    answered_again: Option<Instant>,
}

impl PresenceReader {
    /// Lookups that ask Redis about every gateway's liveness each time.
    #[must_use]
    pub fn new(redis: Redis, ns: Namespace) -> Self {
        Self {
            hashes: Hashes::new(redis.clone(), &ns),
            redis,
            ns,
            cache_for: Duration::ZERO,
            liveness: Arc::default(),
            repair_wait: Duration::ZERO,
            outage: Arc::default(),
        }
    }

    /// Once Redis answers again after a failed read, waits until `wait`
    /// has passed since and reads again before answering (push: see
    /// [`REPAIR_WAIT`]), so what Redis lost is repaired first.
    #[must_use]
    pub fn waiting_for_repair(mut self, wait: Duration) -> Self {
        self.repair_wait = wait;
        self
    }

    /// Reuses users' hashes while their epochs say Redis holds the same
    /// (push, which reads a channel's members for every message): see
    /// [`epochs`] and `hashes.rs` for why that is safe.
    #[must_use]
    pub fn caching_hashes(mut self) -> Self {
        self.hashes = self.hashes.cached();
        self
    }

    /// Reuses each gateway's liveness answer for `ttl` (push: see
    /// [`LIVENESS_CACHE`]): a gateway that dies then still counts as alive
    /// for up to `ttl`, and what is sent to it meanwhile is lost with it.
    #[must_use]
    pub fn caching_liveness(mut self, ttl: Duration) -> Self {
        self.cache_for = ttl;
        self
    }

    /// The live sockets of `users`: every hash in one pipelined round
    /// trip, then the liveness of the gateways they name (those not in the
    /// cache) in another. Fields of dead gateways found on the way are
    /// deleted.
    ///
    /// # Errors
    /// When Redis does not answer.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn live_sockets(&self, users: &[UserId]) -> anyhow::Result<LiveSockets> {
        if users.is_empty() {
            return Ok(LiveSockets::default());
        }
        let read = self.read_live_sockets(users).await;
        if read.is_err() {
            self.hashes.clear();
        }
        if self.repair_wait.is_zero() {
            return read;
        }
        let repairing = {
            let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
            if read.is_err() {
                outage.failing = true;
            } else if std::mem::take(&mut outage.failing) {
                outage.answered_again = Some(Instant::now());
            }
            outage
                .answered_again
                .map(|at| self.repair_wait.saturating_sub(at.elapsed()))
                .filter(|left| !left.is_zero())
        };
        match (read, repairing) {
            (Ok(_), Some(left)) => {
                tokio::time::sleep(left).await;
                self.read_live_sockets(users).await
            }
            (read, _) => read,
        }
    }

    async fn read_live_sockets(&self, users: &[UserId]) -> anyhow::Result<LiveSockets> {
        let hashes = self.hashes.read(users).await?;
        let alive = self
            .alive(
                hashes
                    .iter()
                    .flat_map(|hash| hash.iter().map(Field::gateway)),
            )
            .await?;
        // Each gateway's name is shared by its sockets, not copied per
        // socket: a read of a channel of thousands names a few gateways.
        let gateways: HashMap<&str, Known, FastHash> = alive
            .iter()
            .map(|(gw, (current, fresh))| {
                let known = Known {
                    name: Arc::from(gw.as_str()),
                    current: current.as_deref(),
                    fresh: *fresh,
                };
                (gw.as_str(), known)
            })
            .collect();
        let mut sockets = LiveSockets::with_capacity_and_hasher(users.len(), FastHash::default());
        let mut dead = Vec::new();
        let mut doubted = Vec::new();
        for (user, hash) in users.iter().zip(&hashes) {
            for field in hash.iter() {
                let e = field.entry();
                match gateways.get(e.gateway) {
                    Some(known) if e.is_live(known.current) => {
                        sockets.entry(*user).or_default().push(LiveSocket {
                            gateway: Arc::clone(&known.name),
                            socket: e.socket,
                            entered: e.entered,
                        });
                    }
                    // Judged dead by a remembered answer, which may be
                    // older than a restart of its gateway: skipped now,
                    // asked about afresh next time, deleted only then.
                    Some(known) if !known.fresh => doubted.push(e.gateway),
                    _ => dead.push((*user, field)),
                }
            }
        }
        if !doubted.is_empty() {
            let mut cache = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
            for gw in doubted {
                cache.remove(gw);
            }
        }
        if !dead.is_empty() {
            self.clean(&dead).await;
        }
        Ok(sockets)
    }

    /// Every user with a live socket, and their sockets: the admin's view.
    /// Walks the namespace's presence keys with `SCAN` (no blocking
    /// `KEYS`), then reads them as [`PresenceReader::live_sockets`] does.
    /// On a Redis Cluster `SCAN` walks the node it is routed to only, so
    /// the view there is partial.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn everyone(&self) -> anyhow::Result<LiveSockets> {
        // `<prefix>presence:{<user>}`: glob treats the braces literally.
        let prefix = format!("{}presence:", self.ns.redis_prefix());
        let prefix = prefix.as_str();
        let mut conn = self.redis.clone();
        let mut users = Vec::new();
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .context("listing presence")?;
            users.extend(
                keys.iter()
                    .filter_map(|k| {
                        k.strip_prefix(prefix)?
                            .strip_prefix('{')?
                            .strip_suffix('}')?
                            .parse()
                            .ok()
                    })
                    .map(UserId),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        users.sort_unstable();
        users.dedup();
        self.live_sockets(&users).await
    }

    /// The subset of `users` with at least one live socket.
    ///
    /// # Errors
    /// When Redis does not answer.
    pub async fn online(&self, users: &[UserId]) -> anyhow::Result<HashSet<UserId>> {
        Ok(self.live_sockets(users).await?.into_keys().collect())
    }

    /// Each gateway's current incarnation, `None` for those not alive:
    /// cached answers, and one pipelined `GET` round trip for the gateways
    /// not asked about lately.
    async fn alive<'a>(
        &self,
        gateways: impl Iterator<Item = &'a str>,
    ) -> anyhow::Result<HashMap<String, Answer, FastHash>> {
        let mut known = HashMap::default();
        let mut unknown = Vec::new();
        {
            let cache = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
            for gw in gateways {
                if known.contains_key(gw) || unknown.iter().any(|u| u == gw) {
                    continue;
                }
                match cache.get(gw) {
                    Some((incarnation, at)) if at.elapsed() < self.cache_for => {
                        known.insert(gw.to_owned(), (incarnation.clone(), false));
                    }
                    _ => unknown.push(gw.to_owned()),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(known);
        }
        let asked: Vec<&str> = unknown.iter().map(String::as_str).collect();
        let answers = liveness(&self.redis, &self.ns, &asked)
            .await
            .context("checking gateway liveness")?;
        let now = Instant::now();
        let mut cache = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
        for (gw, incarnation) in unknown.into_iter().zip(answers) {
            if !self.cache_for.is_zero() {
                cache.insert(gw.clone(), (incarnation.clone(), now));
            }
            known.insert(gw, (incarnation, true));
        }
        Ok(known)
    }

    /// Deletes fields of dead gateways, each only while it still holds
    /// the value it was judged by (a restarted gateway may have written
    /// the same field since). Best effort: a failure only means they are
    /// skipped again next time.
    async fn clean(&self, dead: &[(UserId, &Field)]) {
        let commands = dead
            .iter()
            .map(|(user, field)| {
                let mut script = redis::cmd("EVAL");
                script
                    .arg(CLEAN_SCRIPT)
                    .arg(1)
                    .arg(user_key(&self.ns, *user))
                    .arg(&field.name)
                    .arg(&field.value);
                script
            })
            .collect();
        if let Err(e) = self.redis.each::<()>(commands).await {
            tracing::debug!(error = %e, "cleaning stale presence failed");
            self.hashes.clear();
        } else {
            tracing::debug!(fields = dead.len(), "cleaned presence of dead gateways");
        }
        // No epoch moves for this: copies that still hold these fields
        // are forgotten here, and elsewhere the fields are judged dead.
        self.hashes.forget(dead.iter().map(|(user, _)| *user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_namespace() {
        let ns = Namespace::new("Test.1");
        assert_eq!(user_key(&ns, UserId(3)), "test_1:presence:{3}");
        assert_eq!(gateway_key(&ns, "gw-a"), "test_1:gw:gw-a");
        assert!(user_key(&ns, UserId(3)).starts_with(&ns.redis_prefix()));
    }

    #[test]
    fn socket_fields_round_trip() {
        let field = socket_field("gw-a", SocketId(42));
        assert_eq!(field, "gw-a:42");
        assert_eq!(parse_socket_field(&field), Some(("gw-a", SocketId(42))));
    }

    #[test]
    fn malformed_fields_and_unsafe_gateway_ids_are_refused() {
        for bad in ["no-socket", "gw:x", "gw.evil.>:1", ":1", "gw:-1"] {
            assert_eq!(parse_socket_field(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_name_the_entered_channel_or_none_and_the_incarnation() {
        assert_eq!(entry_value(Some(ChannelId(7)), "inc1"), "7@inc1");
        assert_eq!(entry_value(None, "inc1"), "@inc1");
        assert_eq!(parse_value("7@inc1"), (Some(ChannelId(7)), Some("inc1")));
        assert_eq!(parse_value("@inc1"), (None, Some("inc1")));
        assert_eq!(parse_value("garbage@inc1"), (None, Some("inc1")));
        // Written before incarnations.
        assert_eq!(parse_value("7"), (Some(ChannelId(7)), None));
        assert_eq!(parse_value(""), (None, None));
    }

    #[test]
    fn an_entry_counts_only_for_the_incarnation_that_wrote_it() {
        let entry = Entry::parse("gw-a:42", "7@now").expect("valid");
        assert!(entry.is_live(Some("now")));
        assert!(!entry.is_live(Some("later")), "a restarted gateway's");
        assert!(!entry.is_live(None), "a dead gateway's");
        let older = Entry::parse("gw-a:42", "7").expect("valid");
        assert!(older.is_live(Some("now")));
        assert!(!older.is_live(None));
    }

    #[test]
    fn an_entry_names_its_gateway_socket_and_channel() {
        let entry = Entry::parse("gw-a:42", "7@inc").expect("valid");
        assert_eq!(entry.gateway, "gw-a");
        assert_eq!(entry.socket, SocketId(42));
        assert_eq!(entry.entered, Some(ChannelId(7)));
        assert_eq!(entry.incarnation, Some("inc"));
        assert!(Entry::parse("gw.x:1", "").is_none());
    }
}
