//! Event partitions: which of a deployment's `NATTER_PARTITIONS` an event
//! belongs to. Order matters only within a channel (and within what one
//! user is told), so a channel's events — and a user's own events — always
//! share a partition, and push consumes each partition in order under one
//! owner at a time (`services/push`).
//!
//! The publisher computes the partition and writes it into the subject
//! (`<ns>.evt.p<k>.…`, see `crate::subjects::Namespace::event_subject`), so
//! the function must give the same answer in every process and every
//! version: it is written out here (a fixed 64-bit mixer, then a modulo)
//! rather than borrowed from a hasher whose output may change, and its
//! values are pinned by a test. Changing the count moves most keys: it is
//! a migration (README "Changing NATTER_PARTITIONS").

use crate::{ChannelId, UserId};
use std::fmt;

/// Partitions when `NATTER_PARTITIONS` is not set.
pub const DEFAULT_PARTITIONS: u16 = 16;

/// One partition, `0..partitions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(pub u16);

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What decides an event's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKey {
    /// Everything that happens in a channel.
    Channel(ChannelId),
    /// What is addressed to one user outside any channel.
    User(UserId),
}

impl PartitionKey {
    /// The partition of this key among `partitions` (0 is read as 1).
    #[must_use]
    pub fn partition(self, partitions: u16) -> Partition {
        let id = match self {
            Self::Channel(ChannelId(id)) | Self::User(UserId(id)) => id,
        };
        let bucket = mix(id.cast_unsigned()) % u64::from(partitions.max(1));
        Partition(u16::try_from(bucket).unwrap_or(0))
    }

    /// The subject suffix under `<ns>.evt.p<k>.`: a channel's events go
    /// on its subject, user events by user. A bus message of several
    /// channels' `message_stored` events goes on its first event's
    /// (migration 0014), so read a channel's events from the whole
    /// partition, not from its subject alone.
    #[must_use]
    pub fn subject_suffix(self) -> String {
        match self {
            Self::Channel(channel) => format!("channel.{channel}"),
            Self::User(user) => format!("user.{user}"),
        }
    }
}

/// The SplitMix64 finalizer (Steele, Lea, Flood 2014): consecutive ids
/// spread evenly, and the constants are part of the wire contract.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(id: i64, partitions: u16) -> u16 {
        PartitionKey::Channel(ChannelId(id)).partition(partitions).0
    }

    /// Publishers and consumers of different versions must agree: these
    /// values may never change.
    #[test]
    fn partitions_are_pinned_across_versions() {
        let first: Vec<u16> = (1..=12).map(|id| channel(id, 16)).collect();
        assert_eq!(first, [5, 10, 0, 4, 12, 12, 4, 8, 7, 9, 13, 12]);
        assert_eq!(channel(1_000_000_007, 16), 0);
        assert_eq!(channel(42, 1024), 546);
        assert_eq!(channel(i64::MAX, 16), 13);
    }

    #[test]
    fn a_user_key_hashes_its_id_like_a_channel_key() {
        for id in [1, 7, 99, 123_456] {
            assert_eq!(
                PartitionKey::User(UserId(id)).partition(16),
                PartitionKey::Channel(ChannelId(id)).partition(16)
            );
        }
    }

    #[test]
    fn consecutive_ids_spread_over_every_partition() {
        let mut counts = [0u32; 16];
        for id in 1..=16_000 {
            counts[usize::from(channel(id, 16))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn every_partition_is_below_the_count_and_one_partition_takes_all() {
        for id in 1..1000 {
            assert!(channel(id, 7) < 7);
            assert_eq!(channel(id, 1), 0);
            assert_eq!(channel(id, 0), 0);
        }
    }
}
