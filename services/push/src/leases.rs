//! Who consumes which partition: every partition has at most one owner at a
//! time, and the push instances share the partitions fairly.
//!
//! The state is a JetStream key-value bucket, `<NS>_PUSH_LEASES`, history
//! 1, `max_age` = the lease TTL (`NATTER_PUSH_LEASE_SECS`). NATS 2.9 has no
//! per-key TTL, but with one value per key the bucket's age limit is one:
//! a key not written for a TTL disappears. It holds
//! - `partition.<k>` = the owner's instance id: the lease. Taken with
//!   `create` (only if absent), renewed with `update` on the revision the
//!   owner last wrote (compare-and-set: a renewal fails if anyone else
//!   wrote in between), released with a delete on that revision;
//! - `instance.<id>`: a live instance's heartbeat, so everyone knows how
//!   many share the partitions.
//!
//! The [`Coordinator`] of each instance writes its heartbeat and renews its
//! leases every TTL / 5 (at most a second) and follows the bucket with a
//! watch. Expiry makes
//! no watch event, so a key counts as present only for a TTL after it was
//! last seen written. Each instance aims for ceil(partitions / live
//! instances): below that it takes free partitions, above it it releases
//! the extras ([`plan`]). Which ones is decided by a score of (instance,
//! partition), so instances mostly want different partitions and an
//! instance that comes back mostly wants its old ones.
//!
//! Safety rests on the consumer checking its [`Lease`] before every
//! delivery: a lease is trusted until `sent + TTL − TTL / 5`, where `sent`
//! is when its last successful write was sent — NATS expires it no earlier
//! than `sent + TTL`, and nobody can take it before. A renewal that finds a
//! different revision means someone else took the partition: the lease is
//! lost at once. A renewal that fails for another reason (NATS away) just
//! does not extend it; past its deadline the consumer stops by itself.

use crate::consumer::Consumers;
use crate::progress::Outage;
use anyhow::Context;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::{self, stream, stream::StorageType};
use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use natter_protocol::partition::Partition;
use natter_protocol::subjects::Namespace;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const PARTITION_KEY: &str = "partition.";
const INSTANCE_KEY: &str = "instance.";

/// Declares the leases bucket, or brings an existing one to `ttl` and
/// `replicas` (`NATTER_STREAM_REPLICAS`, as every natter stream).
///
/// # Errors
/// When JetStream refuses.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    ttl: Duration,
    replicas: u16,
) -> anyhow::Result<kv::Store> {
    declare(js, &ns.push_leases_bucket(), Some(ttl), replicas).await
}

/// Creates a key-value bucket with one value per key, or updates it to
/// `max_age` and `replicas` (a bucket on one server would lose the leases
/// or offsets with it, however many replicas the events have). The bucket's stream is declared directly, as the key-value
/// convention lays it out: async-nats's own bucket creation first asks for
/// account details that NATS 2.9 does not send. Instances that start
/// together may race to create it; the loser finds it created.
pub(crate) async fn declare(
    js: &jetstream::Context,
    bucket: &str,
    max_age: Option<Duration>,
    replicas: u16,
) -> anyhow::Result<kv::Store> {
    let max_age = max_age.unwrap_or_default();
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        // JetStream refuses a window longer than the age limit.
        duplicate_window: if max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            max_age.min(Duration::from_secs(120))
        },
        storage: StorageType::File,
        num_replicas: usize::from(replicas.max(1)),
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    let mut attempt = 0;
    loop {
        let declared = match js.create_or_update_stream(config.clone()).await {
            Ok(_) => js.get_key_value(bucket).await.map_err(anyhow::Error::new),
            Err(e) => Err(anyhow::Error::new(e)),
        };
        match declared {
            Ok(store) => return Ok(store),
            Err(e) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(error = %e, bucket, "retrying bucket declaration");
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("declaring bucket {bucket}")),
        }
    }
}

/// This process's name among the push instances: the host name (the pod
/// name in Kubernetes) and a random suffix, so a restarted pod is a new
/// instance and never mistakes its predecessor's leases for its own.
#[must_use]
pub fn instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "push".into());
    let raw = format!("{}-{}", host.trim(), natter_platform::random::token(6));
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A partition's lease as its consumer sees it: held until a deadline that
/// renewals move forward, or until the coordinator finds it lost. Cheap to
/// clone.
#[derive(Clone)]
pub struct Lease(Arc<LeaseState>);

struct LeaseState {
    deadline: Mutex<Instant>,
    lost: CancellationToken,
}

impl Lease {
    pub(crate) fn new(deadline: Instant) -> Self {
        Self(Arc::new(LeaseState {
            deadline: Mutex::new(deadline),
            lost: CancellationToken::new(),
        }))
    }

    fn deadline(&self) -> Instant {
        *self
            .0
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the partition may still be worked on: checked before every
    /// delivery.
    #[must_use]
    pub fn is_held(&self) -> bool {
        !self.0.lost.is_cancelled() && Instant::now() < self.deadline()
    }

    /// Resolves once the lease is lost or has run out unrenewed.
    pub async fn lost(&self) {
        loop {
            let deadline = self.deadline();
            if self.0.lost.is_cancelled() || Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = self.0.lost.cancelled() => return,
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    fn extend(&self, deadline: Instant) {
        let mut current = self
            .0
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *current = (*current).max(deadline);
    }

    pub(crate) fn lose(&self) {
        self.0.lost.cancel();
    }
}

/// What one instance should do next to reach its fair share.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free partitions to try to take, most wanted first.
    pub acquire: Vec<Partition>,
    /// Owned partitions to give up, least wanted first.
    pub release: Vec<Partition>,
}

/// The fair-share decision of instance `me`, from what it sees: the live
/// instances (`me` counts even if unseen), every live lease by partition
/// and the partitions it owns and is not already releasing. Pure, so the
/// rule is unit-tested.
#[must_use]
pub fn plan(
    me: &str,
    partitions: u16,
    instances: &BTreeSet<String>,
    holders: &BTreeMap<Partition, String>,
    owned: &BTreeSet<Partition>,
) -> Plan {
    let live = instances.len() + usize::from(!instances.contains(me));
    let target = usize::from(partitions).div_ceil(live);
    let mut plan = Plan::default();
    if owned.len() > target {
        let mut mine: Vec<Partition> = owned.iter().copied().collect();
        mine.sort_by_key(|p| score(me, *p));
        mine.truncate(owned.len() - target);
        plan.release = mine;
    } else if owned.len() < target {
        let mut free: Vec<Partition> = (0..partitions)
            .map(Partition)
            .filter(|p| !owned.contains(p) && !holders.contains_key(p))
            .collect();
        free.sort_by_key(|p| std::cmp::Reverse(score(me, *p)));
        free.truncate(target - owned.len());
        plan.acquire = free;
    }
    plan
}

/// How much `instance` wants `partition` (rendezvous hashing): FNV-1a over
/// both, finished with a mixer.
fn score(instance: &str, partition: Partition) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance.bytes().chain(partition.0.to_le_bytes()) {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// A key as last seen written through the watch.
struct Seen {
    value: String,
    at: Instant,
}

/// One owned partition.
struct Held {
    /// The revision this instance last wrote: the next renewal's
    /// compare-and-set.
    revision: u64,
    lease: Lease,
    /// Asks the consumer to finish its batch, commit and stop.
    stop: CancellationToken,
    /// Tells this holding from a later one of the same partition.
    generation: u64,
    /// Asked to stop; the lease is deleted once the consumer has.
    releasing: bool,
}

/// A consumer task that ended: its partition and holding, and whether it
/// panicked.
struct Ended {
    partition: Partition,
    generation: u64,
    panicked: bool,
}

/// One instance's side of the lease protocol: heartbeat, renewals, the
/// watch, fair share, and the consumer task of each owned partition.
pub struct Coordinator {
    kv: kv::Store,
    me: String,
    partitions: u16,
    ttl: Duration,
    consumers: Consumers,
    held: BTreeMap<Partition, Held>,
    seen: HashMap<String, Seen>,
    /// Whether the watch has run for a period, so that it has delivered
    /// the bucket's state (a watch cannot tell when it has: NATS 2.9
    /// miscounts what is pending on a bucket of one value per key). Before
    /// that the view is not worth planning with.
    synced: bool,
    /// When the watch last delivered anything: it shows this instance's
    /// own heartbeat every period, so a silent watch is a broken one.
    last_watched: Instant,
    generation: u64,
    ended_tx: mpsc::UnboundedSender<Ended>,
    ended_rx: mpsc::UnboundedReceiver<Ended>,
    bucket: Outage,
}

impl Coordinator {
    /// A coordinator for instance `me` over `kv` (whose requests should
    /// time out well within a renewal period), starting `consumers` for the
    /// partitions it owns.
    #[must_use]
    pub fn new(
        kv: kv::Store,
        me: String,
        partitions: u16,
        ttl: Duration,
        consumers: Consumers,
    ) -> Self {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Self {
            kv,
            me,
            partitions,
            ttl,
            consumers,
            held: BTreeMap::new(),
            seen: HashMap::new(),
            synced: false,
            last_watched: Instant::now(),
            generation: 0,
            ended_tx,
            ended_rx,
            bucket: Outage::new("the push leases bucket"),
        }
    }

    /// How often heartbeats and renewals are written: five times per TTL,
    /// and at least every second, so that a new instance is counted soon
    /// even with long leases.
    fn period(&self) -> Duration {
        (self.ttl / 5).min(Duration::from_secs(1))
    }

    /// Runs until `intake` is cancelled, then stops every consumer (each
    /// commits what it delivered), releases the leases and removes the
    /// heartbeat, so the other instances take over at once.
    ///
    /// # Errors
    /// When a consumer task panicked: a bug, and the process should be
    /// restarted rather than retry it forever.
    pub async fn run(mut self, intake: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(instance = %self.me, partitions = self.partitions, "push instance joins");
        self.heartbeat().await;
        let mut watch = None;
        let mut ticks = tokio::time::interval(self.period());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                () = intake.cancelled(), if !stopping => {
                    stopping = true;
                    for held in self.held.values_mut() {
                        held.releasing = true;
                        held.stop.cancel();
                    }
                }
                Some(ended) = self.ended_rx.recv() => {
                    self.ended(ended).await?;
                }
                entry = next_entry(&mut watch) => {
                    if self.observe(entry, &mut watch) && !stopping {
                        self.balance().await;
                    }
                }
                _ = ticks.tick() => {
                    self.synced |= watch.is_some();
                    if watch.is_some() && self.last_watched.elapsed() > 3 * self.period() {
                        self.bucket.failed(&anyhow::anyhow!("the bucket's watch went silent"));
                        watch = None;
                    }
                    if watch.is_none() {
                        watch = self.watch().await;
                        self.last_watched = Instant::now();
                    }
                    self.tick(stopping).await;
                }
            }
            if stopping && self.held.is_empty() {
                break;
            }
        }
        if let Err(e) = self.kv.delete(self.instance_key()).await {
            tracing::debug!(error = %e, "removing the push heartbeat");
        }
        tracing::info!(instance = %self.me, "push instance left");
        Ok(())
    }

    fn instance_key(&self) -> String {
        format!("{INSTANCE_KEY}{}", self.me)
    }

    async fn watch(&mut self) -> Option<kv::Watch> {
        match self.kv.watch_with_history(">").await {
            Ok(watch) => Some(watch),
            Err(e) => {
                self.bucket
                    .failed(&anyhow::Error::new(e).context("watching"));
                None
            }
        }
    }

    /// Takes in one watched change; whether it may free a partition or
    /// change the number of instances, so that a plan should be made now.
    fn observe(
        &mut self,
        entry: Option<Result<kv::Entry, kv::WatcherError>>,
        watch: &mut Option<kv::Watch>,
    ) -> bool {
        let entry = match entry {
            Some(Ok(entry)) => {
                self.last_watched = Instant::now();
                entry
            }
            Some(Err(e)) => {
                self.bucket
                    .failed(&anyhow::Error::new(e).context("following the bucket"));
                *watch = None;
                return false;
            }
            None => {
                self.bucket
                    .failed(&anyhow::anyhow!("the bucket's watch ended"));
                *watch = None;
                return false;
            }
        };
        let matters = match entry.operation {
            Operation::Put => {
                let value = String::from_utf8_lossy(&entry.value).into_owned();
                let fresh = entry.key.starts_with(INSTANCE_KEY)
                    && self
                        .seen
                        .get(&entry.key)
                        .is_none_or(|s| s.at.elapsed() >= self.ttl);
                self.seen.insert(
                    entry.key,
                    Seen {
                        value,
                        at: Instant::now(),
                    },
                );
                fresh
            }
            Operation::Delete | Operation::Purge => self.seen.remove(&entry.key).is_some(),
        };
        self.synced && matters
    }

    /// The live instances and leases, as the watch has shown them.
    fn view(&self) -> (BTreeSet<String>, BTreeMap<Partition, String>) {
        let mut instances = BTreeSet::new();
        let mut holders = BTreeMap::new();
        for (key, seen) in &self.seen {
            if seen.at.elapsed() >= self.ttl {
                continue;
            }
            if let Some(id) = key.strip_prefix(INSTANCE_KEY) {
                instances.insert(id.to_owned());
            } else if let Some(p) = key.strip_prefix(PARTITION_KEY).and_then(|p| p.parse().ok()) {
                holders.insert(Partition(p), seen.value.clone());
            }
        }
        (instances, holders)
    }

    /// Every period: heartbeat, renewals, then the fair share.
    async fn tick(&mut self, stopping: bool) {
        // Keys not written for a TTL are gone from NATS too (a dead
        // instance's heartbeat and leases): forget them.
        let ttl = self.ttl;
        self.seen.retain(|_, seen| seen.at.elapsed() < ttl);
        let sent = Instant::now();
        let (beat, renewals) = tokio::join!(
            self.kv.put(self.instance_key(), self.me.clone().into()),
            join_all(self.held.iter().map(|(p, held)| {
                self.kv
                    .update(lease_key(*p), self.me.clone().into(), held.revision)
            })),
        );
        let partitions: Vec<Partition> = self.held.keys().copied().collect();
        let trusted_until = sent + self.trusted();
        let mut failure = beat
            .err()
            .map(|e| anyhow::Error::new(e).context("heartbeat"));
        for (partition, renewed) in partitions.into_iter().zip(renewals) {
            match renewed {
                Ok(revision) => {
                    if let Some(held) = self.held.get_mut(&partition) {
                        held.revision = revision;
                        held.lease.extend(trusted_until);
                    }
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.check_ownership(partition).await;
                }
                Err(e) => {
                    failure = Some(anyhow::Error::new(e).context(format!("renewing {partition}")));
                }
            }
        }
        match failure {
            Some(e) => self.bucket.failed(&e),
            None => self.bucket.recovered(),
        }
        // A lease that ran out unrenewed: its consumer has stopped by itself.
        let expired: Vec<Partition> = self
            .held
            .iter()
            .filter(|(_, held)| !held.lease.is_held())
            .map(|(p, _)| *p)
            .collect();
        for partition in expired {
            self.drop_lost(partition, "its renewals failed for too long");
        }
        if !stopping {
            self.balance().await;
        }
    }

    /// How long after a successful write a lease is trusted: short of the
    /// TTL by a fifth, for the time a delivery takes to land and for
    /// clocks that run at slightly different rates.
    fn trusted(&self) -> Duration {
        self.ttl - self.ttl / 5
    }

    /// A renewal met another revision: an earlier renewal that timed out
    /// may have landed (the key still names this instance, which nobody
    /// else writes), or someone took the partition.
    async fn check_ownership(&mut self, partition: Partition) {
        match self.kv.entry(lease_key(partition)).await {
            Ok(Some(entry))
                if entry.operation == Operation::Put && entry.value == self.me.as_bytes() =>
            {
                if let Some(held) = self.held.get_mut(&partition) {
                    held.revision = entry.revision;
                }
            }
            Ok(_) => self.drop_lost(partition, "another instance took it"),
            Err(e) => self
                .bucket
                .failed(&anyhow::Error::new(e).context(format!("reading lease {partition}"))),
        }
    }

    /// Stops a partition whose lease is gone, at once and without
    /// committing: the next owner starts from the last commit.
    fn drop_lost(&mut self, partition: Partition, why: &str) {
        if let Some(held) = self.held.remove(&partition) {
            held.lease.lose();
            held.stop.cancel();
            self.consumers.forget(partition);
            tracing::warn!(partition = partition.0, why, "lease on a partition lost");
        }
    }

    /// Takes free partitions or releases extras, toward the fair share.
    async fn balance(&mut self) {
        if !self.synced {
            return;
        }
        let (instances, mut holders) = self.view();
        // A lease the watch last saw under this instance's own id but that
        // it no longer holds ran out here while NATS was away (a NATS
        // restart, a partition): nobody else has written it since, so it
        // is free to this instance now — `create`, or `reclaim` by
        // compare-and-set if NATS kept it — instead of a TTL later.
        holders.retain(|p, holder| *holder != self.me || self.held.contains_key(p));
        let owned: BTreeSet<Partition> = self
            .held
            .iter()
            .filter(|(_, held)| !held.releasing)
            .map(|(p, _)| *p)
            .collect();
        let plan = plan(&self.me, self.partitions, &instances, &holders, &owned);
        for partition in plan.release {
            if let Some(held) = self.held.get_mut(&partition) {
                tracing::info!(partition = partition.0, "releasing a partition");
                held.releasing = true;
                held.stop.cancel();
            }
        }
        if plan.acquire.is_empty() {
            return;
        }
        let sent = Instant::now();
        let taken = join_all(
            plan.acquire
                .iter()
                .map(|p| self.kv.create(lease_key(*p), self.me.clone().into())),
        )
        .await;
        for (partition, created) in plan.acquire.into_iter().zip(taken) {
            match created {
                Ok(revision) => self.start(partition, revision, sent + self.trusted()),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    self.reclaim(partition).await;
                }
                Err(e) => self
                    .bucket
                    .failed(&anyhow::Error::new(e).context(format!("taking {partition}"))),
            }
        }
    }

    /// A partition the view showed free was not: usually another instance
    /// took it since. But if the key still names this instance — its
    /// lease ran out here while NATS was away, yet NATS kept it — nobody
    /// else has held it since, and it is taken back by compare-and-set
    /// rather than waiting for it to expire.
    async fn reclaim(&mut self, partition: Partition) {
        if self.held.contains_key(&partition) {
            return;
        }
        let entry = match self.kv.entry(lease_key(partition)).await {
            Ok(Some(entry)) => entry,
            Ok(None) => return,
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("reading lease {partition}"));
                return self.bucket.failed(&e);
            }
        };
        if entry.operation != Operation::Put || entry.value != self.me.as_bytes() {
            return;
        }
        let sent = Instant::now();
        match self
            .kv
            .update(lease_key(partition), self.me.clone().into(), entry.revision)
            .await
        {
            Ok(revision) => self.start(partition, revision, sent + self.trusted()),
            Err(e) => tracing::debug!(partition = partition.0, error = %e, "taking back a lease"),
        }
    }

    fn start(&mut self, partition: Partition, revision: u64, deadline: Instant) {
        self.generation += 1;
        let (lease, stop) = (Lease::new(deadline), CancellationToken::new());
        let consuming = self
            .consumers
            .clone()
            .consume(partition, lease.clone(), stop.clone());
        let (generation, ended) = (self.generation, self.ended_tx.clone());
        tokio::spawn(async move {
            let panicked = AssertUnwindSafe(consuming).catch_unwind().await.is_err();
            let _ = ended.send(Ended {
                partition,
                generation,
                panicked,
            });
        });
        tracing::info!(partition = partition.0, "took a partition");
        self.held.insert(
            partition,
            Held {
                revision,
                lease,
                stop,
                generation,
                releasing: false,
            },
        );
    }

    /// A consumer task ended: after a release its lease is deleted (on the
    /// revision last written, so never someone else's).
    async fn ended(&mut self, ended: Ended) -> anyhow::Result<()> {
        if ended.panicked {
            anyhow::bail!("the consumer of partition {} panicked", ended.partition);
        }
        let current = self
            .held
            .get(&ended.partition)
            .is_some_and(|h| h.generation == ended.generation);
        if !current {
            return Ok(());
        }
        let Some(held) = self.held.remove(&ended.partition) else {
            return Ok(());
        };
        self.consumers.forget(ended.partition);
        if let Err(e) = self
            .kv
            .delete_expect_revision(lease_key(ended.partition), Some(held.revision))
            .await
        {
            tracing::debug!(partition = ended.partition.0, error = %e, "releasing a lease; it will expire");
        }
        tracing::info!(partition = ended.partition.0, "released a partition");
        Ok(())
    }

    async fn heartbeat(&mut self) {
        match self
            .kv
            .put(self.instance_key(), self.me.clone().into())
            .await
        {
            Ok(_) => self.bucket.recovered(),
            Err(e) => self
                .bucket
                .failed(&anyhow::Error::new(e).context("heartbeat")),
        }
    }
}

fn lease_key(partition: Partition) -> String {
    format!("{PARTITION_KEY}{partition}")
}

/// The next watched change, or never while there is no watch.
async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    fn parts(ps: impl IntoIterator<Item = u16>) -> BTreeSet<Partition> {
        ps.into_iter().map(Partition).collect()
    }

    fn held_by(who: &str, ps: &BTreeSet<Partition>) -> BTreeMap<Partition, String> {
        ps.iter().map(|p| (*p, who.to_owned())).collect()
    }

    #[test]
    fn an_instance_alone_takes_every_free_partition() {
        let p = plan("a", 8, &set(&["a"]), &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            p.acquire.iter().copied().collect::<BTreeSet<_>>(),
            parts(0..8)
        );
        assert!(p.release.is_empty());
        let unseen = plan("a", 8, &BTreeSet::new(), &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(unseen.acquire.len(), 8, "an instance counts itself");
    }

    #[test]
    fn an_owner_of_everything_releases_all_but_its_share_when_another_joins() {
        let owned = parts(0..16);
        let p = plan("a", 16, &set(&["a", "b"]), &held_by("a", &owned), &owned);
        assert_eq!(p.release.len(), 8);
        assert!(p.acquire.is_empty());
        let newcomer = plan(
            "b",
            16,
            &set(&["a", "b"]),
            &held_by("a", &owned),
            &parts([]),
        );
        assert!(newcomer.acquire.is_empty(), "nothing is free yet");
    }

    #[test]
    fn partitions_held_by_others_are_never_taken() {
        let theirs = parts(0..5);
        let p = plan(
            "b",
            8,
            &set(&["a", "b"]),
            &held_by("a", &theirs),
            &parts([]),
        );
        assert_eq!(
            p.acquire.iter().copied().collect::<BTreeSet<_>>(),
            parts(5..8)
        );
    }

    #[test]
    fn the_share_is_rounded_up_so_every_partition_has_a_taker() {
        let owned = parts(0..6);
        let p = plan(
            "a",
            16,
            &set(&["a", "b", "c"]),
            &held_by("a", &owned),
            &owned,
        );
        assert_eq!(p, Plan::default(), "6 = ceil(16 / 3)");
        let p = plan("a", 2, &set(&["a", "b", "c"]), &BTreeMap::new(), &parts([]));
        assert_eq!(p.acquire.len(), 1);
    }

    #[test]
    fn what_an_instance_wants_does_not_depend_on_what_it_sees() {
        let a = plan("a", 16, &set(&["a", "b"]), &BTreeMap::new(), &parts([]));
        let again = plan("a", 16, &set(&["a", "b"]), &BTreeMap::new(), &parts([]));
        assert_eq!(a, again);
        let b = plan("b", 16, &set(&["a", "b"]), &BTreeMap::new(), &parts([]));
        assert_ne!(
            a.acquire, b.acquire,
            "instances prefer different partitions"
        );
    }

    /// Instances that each follow [`plan`] against one lease table (taking
    /// only what is free, in turn) end with every partition owned and none
    /// above its share, whatever order they join in.
    #[test]
    fn instances_that_follow_the_plan_converge_on_a_fair_cover() {
        for (partitions, ids) in [
            (16, vec!["x", "y"]),
            (16, vec!["p1", "p2", "p3"]),
            (7, vec!["one", "two", "three", "four"]),
            (3, vec!["a", "b", "c", "d", "e"]),
        ] {
            let mut table: BTreeMap<Partition, String> = BTreeMap::new();
            let mut live = BTreeSet::new();
            for id in &ids {
                live.insert((*id).to_owned());
                for _ in 0..6 {
                    for me in &live {
                        let owned: BTreeSet<Partition> = table
                            .iter()
                            .filter(|(_, who)| *who == me)
                            .map(|(p, _)| *p)
                            .collect();
                        let p = plan(me, partitions, &live, &table, &owned);
                        for r in p.release {
                            table.remove(&r);
                        }
                        for a in p.acquire {
                            table.entry(a).or_insert_with(|| me.clone());
                        }
                    }
                }
            }
            let share = usize::from(partitions).div_ceil(ids.len());
            assert_eq!(table.len(), usize::from(partitions), "{ids:?}");
            for id in &ids {
                let n = table.values().filter(|who| *who == id).count();
                assert!(n <= share, "{id} owns {n} of {partitions}, share {share}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_runs_out_at_its_deadline_unless_extended() {
        let lease = Lease::new(Instant::now() + Duration::from_secs(4));
        assert!(lease.is_held());
        tokio::time::advance(Duration::from_secs(3)).await;
        lease.extend(Instant::now() + Duration::from_secs(4));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(lease.is_held(), "extended");
        let waited = Instant::now();
        lease.lost().await;
        assert_eq!(waited.elapsed(), Duration::from_secs(1));
        assert!(!lease.is_held());
    }

    #[tokio::test]
    async fn a_lost_lease_is_not_held_even_before_its_deadline() {
        let lease = Lease::new(Instant::now() + Duration::from_secs(60));
        lease.lose();
        assert!(!lease.is_held());
        lease.lost().await;
    }
}
