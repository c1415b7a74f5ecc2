//! Users' presence hashes as Redis holds them, read through a cache that
//! [`super::epochs`] keeps honest.
//!
//! Push reads the presence of every member of a channel for every
//! message: for a channel of 2,000 that was 2,000 `HGETALL`s per message,
//! and parsing their replies was a sixth of a gateway-and-push core in
//! the fan-out benchmark. Presence changes far more rarely than messages
//! arrive, so a reader that caches keeps each user's hash with the epoch
//! of its bucket, and per read asks only for the epochs (one command) and
//! the hashes of the users whose bucket moved.
//!
//! A copy is used only when all of these hold:
//! - the key's era is the one the copy was made under (a lost key reads
//!   as era 0: nothing is cached until a reader has written a new era,
//!   and what was cached before is dropped);
//! - its bucket's epoch is the one read before the copy was made;
//! - it is younger than [`MAX_AGE`], and no Redis command of a read has
//!   failed since it was made. A Redis failover to a replica that missed
//!   recent writes can set counters back, after which they could count up
//!   to a value remembered for different contents; a failover usually
//!   shows as a failed command (which drops every copy), and the age
//!   bounds the case where this reader saw none.
//!
//! A write whose bump fails (it is sent after the write on a cluster)
//! stays unseen by copies until the gateway's next heartbeat, at most
//! [`super::HEARTBEAT`] later, registers its sockets again and bumps.
//!
//! Liveness is not cached here: entries are judged against their
//! gateway's liveness at every read, as without a cache.

use super::epochs;
use crate::cache::Redis;
use anyhow::Context;
use natter_protocol::UserId;
use natter_protocol::subjects::Namespace;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A user's presence hash: its well-formed fields, parsed.
pub(super) type Hash = Vec<super::Field>;

/// The longest a copy is used, whatever the epochs say.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Most users remembered; past it the cache starts again empty (a push
/// instance serving more users than this re-reads some of them).
const CAPACITY: usize = 1 << 18;

/// The cache; shared by a reader's clones.
#[derive(Default)]
pub(super) struct Cache {
    era: u32,
    users: HashMap<UserId, Remembered, foldhash::fast::RandomState>,
}

/// One user's hash as last read.
struct Remembered {
    epoch: u32,
    read_at: Instant,
    hash: Arc<Hash>,
}

/// Where hashes are read from, and whether through a cache.
#[derive(Clone)]
pub(super) struct Hashes {
    redis: Redis,
    prefix: String,
    epochs_key: String,
    cache: Option<Arc<Mutex<Cache>>>,
}

impl Hashes {
    pub(super) fn new(redis: Redis, ns: &Namespace) -> Self {
        Self {
            redis,
            prefix: ns.redis_prefix(),
            epochs_key: epochs::key(ns),
            cache: None,
        }
    }

    /// The same, reusing copies as the module says.
    pub(super) fn cached(self) -> Self {
        Self {
            cache: Some(Arc::default()),
            ..self
        }
    }

    /// The hashes of `users`, in order.
    pub(super) async fn read(&self, users: &[UserId]) -> anyhow::Result<Vec<Arc<Hash>>> {
        match &self.cache {
            Some(cache) => self.read_through(cache, users).await,
            None => self.fetch(users).await,
        }
    }

    /// Forgets every copy; the reader calls it after any failed Redis
    /// command of a read, as a failover may lie behind it.
    pub(super) fn clear(&self) {
        if let Some(cache) = &self.cache {
            *lock(cache) = Cache::default();
        }
    }

    /// Forgets the copies of `users` (their hashes were just changed by
    /// this reader, which bumps no epoch).
    pub(super) fn forget(&self, users: impl IntoIterator<Item = UserId>) {
        if let Some(cache) = &self.cache {
            let mut cache = lock(cache);
            for user in users {
                cache.users.remove(&user);
            }
        }
    }

    async fn read_through(
        &self,
        cache: &Mutex<Cache>,
        users: &[UserId],
    ) -> anyhow::Result<Vec<Arc<Hash>>> {
        let mut conn = self.redis.clone();
        let reading = epochs::read(&mut conn, &self.epochs_key, users)
            .await
            .context("reading presence epochs")?;
        if reading.era == 0 {
            let era = u32::try_from(crate::random::seed() >> 32)
                .unwrap_or(1)
                .max(1);
            // Without an era nothing is reused, so a Redis that refuses the
            // write (read-only, out of memory) costs reuse, not delivery.
            let started: redis::RedisResult<()> = epochs::set_era(&self.epochs_key, era)
                .query_async(&mut conn)
                .await;
            if let Err(e) = started {
                tracing::warn!(error = %e, "cannot start a presence era; reading presence uncached");
            }
            return self.fetch(users).await;
        }
        let mut hashes: Vec<Option<Arc<Hash>>> = Vec::with_capacity(users.len());
        let mut missing = Vec::new();
        let now = Instant::now();
        {
            let mut cache = lock(cache);
            if cache.era != reading.era {
                cache.users.clear();
                cache.era = reading.era;
            }
            for (user, epoch) in users.iter().zip(&reading.epochs) {
                let copy = cache
                    .users
                    .get(user)
                    .filter(|c| c.epoch == *epoch && now.duration_since(c.read_at) < MAX_AGE);
                if copy.is_none() {
                    missing.push(*user);
                }
                hashes.push(copy.map(|c| Arc::clone(&c.hash)));
            }
        }
        if missing.is_empty() {
            return Ok(hashes.into_iter().flatten().collect());
        }
        let fetched = self.fetch(&missing).await?;
        let read_at = Instant::now();
        let mut fetched = fetched.into_iter();
        let mut cache = lock(cache);
        let keep = cache.era == reading.era;
        if keep && cache.users.len() + missing.len() > CAPACITY {
            cache.users.clear();
        }
        let mut out = Vec::with_capacity(users.len());
        for ((user, epoch), hash) in users.iter().zip(&reading.epochs).zip(hashes) {
            let hash = match hash {
                Some(hash) => hash,
                None => {
                    let hash = fetched.next().unwrap_or_default();
                    if keep {
                        cache.users.insert(
                            *user,
                            Remembered {
                                epoch: *epoch,
                                read_at,
                                hash: Arc::clone(&hash),
                            },
                        );
                    }
                    hash
                }
            };
            out.push(hash);
        }
        Ok(out)
    }

    /// Reads the hashes of `users` from Redis, pipelined.
    async fn fetch(&self, users: &[UserId]) -> anyhow::Result<Vec<Arc<Hash>>> {
        let commands = users
            .iter()
            .map(|user| {
                let mut hgetall = redis::cmd("HGETALL");
                hgetall.arg(super::user_key_under(&self.prefix, *user));
                hgetall
            })
            .collect();
        // Field-value pairs, not a map per user: building 2,000 hash maps
        // per message was a measurable share of a gateway-and-push core in
        // fan-out.
        let hashes: Vec<Vec<(String, String)>> = self
            .redis
            .each(commands)
            .await
            .context("reading presence")?;
        Ok(hashes
            .into_iter()
            .map(|hash| {
                let fields = hash
                    .into_iter()
                    .filter_map(|(name, value)| super::Field::parse(name, value))
                    .collect();
                Arc::new(fields)
            })
            .collect())
    }
}

fn lock(cache: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}
