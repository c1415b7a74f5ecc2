//! Channel members, from Postgres, cached in memory per channel.
//!
//! Every message needs its channel's members, and membership changes are
//! rare next to messages, so the members are loaded once and kept until an
//! event says they changed (`ChannelCreated`, `MemberJoined`,
//! `MemberLeft`). The instance that handles such an event drops its entry
//! at once and broadcasts the channel id on core NATS so every other push
//! instance drops its own. Core NATS may lose a broadcast, so entries also
//! expire after [`MAX_AGE`] as a safety net.
//!
//! Read positions (`last_read_seq`) are never cached: they move with every
//! `read`, and only the few members who get an `unread` need theirs.

use anyhow::Context;
use natter_protocol::{ChannelId, Seq, UserId};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an entry is trusted without an invalidation.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Most channels kept; past it an arbitrary entry makes room.
const CAPACITY: usize = 100_000;

/// The members of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    /// Every member, ascending.
    pub users: Vec<UserId>,
}

struct Entry {
    members: Arc<Members>,
    loaded: Instant,
}

/// The cache and the pool it loads from; cheap to clone.
#[derive(Clone)]
pub struct Membership {
    pool: PgPool,
    entries: Arc<Mutex<HashMap<ChannelId, Entry>>>,
    /// Bumped by every invalidation. A load that started before one must
    /// not install what it read: it may predate the change.
    epoch: Arc<AtomicU64>,
}

impl Membership {
    /// An empty cache over `pool`.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            entries: Arc::default(),
            epoch: Arc::default(),
        }
    }

    /// The members of `channel` (none if it does not exist).
    ///
    /// # Errors
    /// When Postgres does not answer.
    pub async fn members(&self, channel: ChannelId) -> anyhow::Result<Arc<Members>> {
        if let Some(hit) = self.cached(channel) {
            return Ok(hit);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let members = Arc::new(self.load(channel).await?);
        let mut entries = self.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            if entries.len() >= CAPACITY
                && let Some(victim) = entries.keys().next().copied()
            {
                entries.remove(&victim);
            }
            entries.insert(
                channel,
                Entry {
                    members: Arc::clone(&members),
                    loaded: Instant::now(),
                },
            );
        }
        Ok(members)
    }

    /// Forgets `channel`'s members: they changed.
    pub fn invalidate(&self, channel: ChannelId) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(&channel);
    }

    /// `last_read_seq` of those of `users` who are members of `channel`, in
    /// one query.
    ///
    /// # Errors
    /// When Postgres does not answer.
    #[tracing::instrument(level = "debug", skip(self, users), fields(users = users.len()))]
    pub async fn last_read(
        &self,
        channel: ChannelId,
        users: &[UserId],
    ) -> anyhow::Result<HashMap<UserId, Seq>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<i64> = users.iter().map(|u| u.0).collect();
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT user_id, last_read_seq FROM channel_members \
             WHERE channel_id = $1 AND user_id = ANY($2)",
        )
        .bind(channel.0)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .context("reading last_read_seq")?;
        Ok(rows
            .into_iter()
            .map(|(user, read)| (UserId(user), Seq(read)))
            .collect())
    }

    fn cached(&self, channel: ChannelId) -> Option<Arc<Members>> {
        let mut entries = self.lock();
        match entries.get(&channel) {
            Some(e) if e.loaded.elapsed() < MAX_AGE => Some(Arc::clone(&e.members)),
            Some(_) => {
                entries.remove(&channel);
                None
            }
            None => None,
        }
    }

    #[tracing::instrument(level = "debug", skip(self))]
    async fn load(&self, channel: ChannelId) -> anyhow::Result<Members> {
        let users: Vec<i64> = sqlx::query_scalar(
            "SELECT user_id FROM channel_members WHERE channel_id = $1 ORDER BY user_id",
        )
        .bind(channel.0)
        .fetch_all(&self.pool)
        .await
        .context("loading channel members")?;
        Ok(Members {
            users: users.into_iter().map(UserId).collect(),
        })
    }

    /// The map is only touched between awaits; a panic while holding it
    /// cannot leave it half-updated, so a poisoned lock is still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
