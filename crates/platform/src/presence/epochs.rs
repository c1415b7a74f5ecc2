//! Presence epochs: a counter per bucket of users, bumped after every
//! write to a user's presence hash, so that a reader holding a copy of a
//! hash can tell from one small read whether the copy is still what Redis
//! holds (push's reader, `presence/hashes.rs`).
//!
//! One key, `<ns>:presence-epochs`, a string used through `BITFIELD` as
//! an array of big-endian u32s: slot 0 is the **era**, a random non-zero
//! number a reader writes when it finds none; slot `1 + user mod`
//! [`BUCKETS`] is the counter of the user's bucket. A key that Redis lost
//! (a flush, a restart without persistence) reads as era 0, so a reader
//! never takes counters that started again from zero for the ones it
//! remembers.
//!
//! The order that makes a copy safe: a writer bumps *after* its write
//! has been applied, and a reader reads the counters *before* the hashes
//! it copies. A copy then carries a count from before any write it
//! lacks, and that write's bump shows as a change at the next check.
//!
//! On a Redis Cluster the key lives in one slot, so every presence write
//! also touches that one node: one `BITFIELD` per write, a few per
//! socket's life.

use natter_protocol::UserId;
use natter_protocol::subjects::Namespace;
use redis::Cmd;
use std::collections::BTreeSet;

/// Buckets users are spread over. A reader re-reads every user of a
/// bucket that changed, so more buckets mean fewer needless re-reads; the
/// whole key is 4 bytes per bucket (16 KiB), read whole only by readers
/// asking about more than 512 users.
pub const BUCKETS: u64 = 4096;

/// Above this many users a reader fetches the whole key (one bulk
/// string) rather than one integer per user.
const WHOLE_READ: usize = 512;

/// The epochs key of `ns`.
#[must_use]
pub fn key(ns: &Namespace) -> String {
    format!("{}presence-epochs", ns.redis_prefix())
}

/// The slot of `user`'s bucket (slot 0 is the era).
#[must_use]
pub fn slot(user: UserId) -> u64 {
    1 + user.0.unsigned_abs() % BUCKETS
}

/// One command bumping the buckets of `users` (each bucket once).
#[must_use]
pub fn bump(key: &str, users: impl IntoIterator<Item = UserId>) -> Cmd {
    let slots: BTreeSet<u64> = users.into_iter().map(slot).collect();
    let mut cmd = redis::cmd("BITFIELD");
    cmd.arg(key);
    for slot in slots {
        cmd.arg("INCRBY").arg("u32").arg(format!("#{slot}")).arg(1);
    }
    cmd
}

/// One command writing `era` (non-zero) as the key's era.
#[must_use]
pub fn set_era(key: &str, era: u32) -> Cmd {
    let mut cmd = redis::cmd("BITFIELD");
    cmd.arg(key).arg("SET").arg("u32").arg("#0").arg(era);
    cmd
}

/// What one read of the key says: its era and the counter of each
/// user asked about, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// 0 when the key holds none.
    pub era: u32,
    /// Per user asked about.
    pub epochs: Vec<u32>,
}

/// Reads the era and the counters of `users`: one integer each for a few
/// users, the whole key for many.
///
/// # Errors
/// When Redis does not answer.
pub async fn read(
    redis: &mut impl redis::aio::ConnectionLike,
    key: &str,
    users: &[UserId],
) -> redis::RedisResult<Reading> {
    if users.len() > WHOLE_READ {
        let whole: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(redis).await?;
        return Ok(decode_whole(whole.as_deref().unwrap_or_default(), users));
    }
    let mut cmd = redis::cmd("BITFIELD_RO");
    cmd.arg(key).arg("GET").arg("u32").arg("#0");
    for user in users {
        cmd.arg("GET").arg("u32").arg(format!("#{}", slot(*user)));
    }
    let values: Vec<u32> = cmd.query_async(redis).await?;
    let mut values = values.into_iter();
    Ok(Reading {
        era: values.next().unwrap_or_default(),
        epochs: values.collect(),
    })
}

/// [`read`] of the whole key: slot `n` is bytes `4n..4n + 4`, big-endian
/// (`BITFIELD`'s order); bytes past the end read as zero, as Redis does.
fn decode_whole(bytes: &[u8], users: &[UserId]) -> Reading {
    let at = |slot: u64| {
        let start = usize::try_from(slot * 4).unwrap_or(usize::MAX);
        let mut word = [0_u8; 4];
        for (i, byte) in word.iter_mut().enumerate() {
            *byte = bytes.get(start + i).copied().unwrap_or_default();
        }
        u32::from_be_bytes(word)
    };
    Reading {
        era: at(0),
        epochs: users.iter().map(|user| at(slot(*user))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_buckets_after_the_era() {
        assert_eq!(slot(UserId(0)), 1);
        assert_eq!(slot(UserId(4095)), 4096);
        assert_eq!(slot(UserId(4096)), 1);
        assert_eq!(slot(UserId(-1)), 2);
    }

    #[test]
    fn a_whole_read_finds_each_slot_big_endian_and_zero_past_the_end() {
        let mut bytes = vec![0_u8; 12];
        bytes[0..4].copy_from_slice(&7_u32.to_be_bytes());
        bytes[8..12].copy_from_slice(&0x0102_0304_u32.to_be_bytes());
        let users = [UserId(1), UserId(0), UserId(9)];
        assert_eq!(
            decode_whole(&bytes, &users),
            Reading {
                era: 7,
                epochs: vec![0x0102_0304, 0, 0],
            }
        );
        assert_eq!(
            decode_whole(&[], &users),
            Reading {
                era: 0,
                epochs: vec![0, 0, 0],
            }
        );
    }

    #[test]
    fn a_bump_names_each_bucket_once() {
        let cmd = bump("k", [UserId(1), UserId(4097), UserId(2)]);
        let args: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            args,
            [
                "BITFIELD", "k", "INCRBY", "u32", "#2", "1", "INCRBY", "u32", "#3", "1"
            ]
        );
    }
}
