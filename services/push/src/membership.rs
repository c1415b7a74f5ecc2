//! Channel members, from Postgres, cached in memory per channel.
//!
//! Every message needs its channel's members, and membership changes are
//! rare next to messages, so the members are loaded once and kept until an
//! event says they changed (`ChannelCreated`, `MemberJoined`,
//! `MemberLeft`). The instance that handles such an event drops its entry
//! at once and broadcasts the channel id on core NATS so every other push
//! instance drops its own. A channel's events are handled in order by the
//! owner of its partition, so the owner's own cache is always exact; an
//! instance that takes a partition over drops every entry of it first,
//! since broadcasts it missed may have left them stale. Typing notices use
//! the cache on any instance: core NATS may lose a broadcast, so entries
//! also expire after [`MAX_AGE`] as a safety net.
//!
//! Read positions (`last_read_seq`) are never cached: they move with every
//! `read`, and only the few members who get an `unread` need theirs.

use anyhow::Context;
use natter_protocol::partition::{Partition, PartitionKey};
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

    /// Forgets the members of every channel in `partition` (of
    /// `partitions`): this instance has just taken the partition, and
    /// while another instance owned it, changes to its channels were
    /// announced only by broadcasts this instance may have missed.
    pub fn invalidate_partition(&self, partition: Partition, partitions: u16) {
        let mut entries = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.retain(|channel, _| {
            PartitionKey::Channel(*channel).partition(partitions) != partition
        });
    }

    /// `last_read_seq` of each (channel, user) pair that is a membership,
    /// in one query.
    ///
    /// # Errors
    /// When Postgres does not answer.
    #[tracing::instrument(level = "debug", skip_all, fields(pairs = pairs.len()))]
    pub async fn last_read(
        &self,
        pairs: &[(ChannelId, UserId)],
    ) -> anyhow::Result<HashMap<(ChannelId, UserId), Seq>> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let channels: Vec<i64> = pairs.iter().map(|(c, _)| c.0).collect();
        let users: Vec<i64> = pairs.iter().map(|(_, u)| u.0).collect();
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT m.channel_id, m.user_id, m.last_read_seq FROM channel_members m \
             JOIN UNNEST($1::bigint[], $2::bigint[]) AS w(channel_id, user_id) \
             USING (channel_id, user_id)",
        )
        .bind(&channels)
        .bind(&users)
        .fetch_all(&self.pool)
        .await
        .context("reading last_read_seq")?;
        Ok(rows
            .into_iter()
            .map(|(channel, user, read)| ((ChannelId(channel), UserId(user)), Seq(read)))
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
