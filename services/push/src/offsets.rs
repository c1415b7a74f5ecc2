//! Each partition's committed position: the stream sequence of the last
//! event whose deliveries were all published, in the key-value bucket
//! `<NS>_PUSH_OFFSETS` (key `partition.<k>`, history 1, kept forever). A
//! new owner resumes after it, so everything after the last commit is
//! delivered again: at least once across a handover.
//!
//! Commits never move a position back. They are compare-and-set on the
//! revision this owner last read or wrote; if someone else wrote in
//! between (a previous owner that was paused past its lease and committed
//! late), the higher of the two positions stays.

use crate::leases::declare;
use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation};
use natter_protocol::partition::Partition;
use natter_protocol::subjects::Namespace;

/// Declares the offsets bucket if it does not exist.
///
/// # Errors
/// When JetStream refuses.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    ns: &Namespace,
    replicas: u16,
) -> anyhow::Result<kv::Store> {
    declare(js, &ns.push_offsets_bucket(), None, replicas).await
}

/// A position as this owner knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The last stream sequence handled (0: none).
    pub sequence: u64,
    /// The key's revision, for the next compare-and-set; `None` while the
    /// key has never been written.
    revision: Option<u64>,
}

/// The offsets bucket; cheap to clone.
#[derive(Clone)]
pub struct Offsets {
    kv: kv::Store,
}

impl Offsets {
    /// Over `kv`.
    #[must_use]
    pub fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// `partition`'s committed position.
    ///
    /// # Errors
    /// When NATS does not answer, or the stored value is not a sequence.
    pub async fn read(&self, partition: Partition) -> anyhow::Result<Committed> {
        let entry = self
            .kv
            .entry(key(partition))
            .await
            .with_context(|| format!("reading the offset of partition {partition}"))?;
        Ok(match entry {
            None => Committed {
                sequence: 0,
                revision: None,
            },
            Some(e) if e.operation != Operation::Put => Committed {
                sequence: 0,
                revision: Some(e.revision),
            },
            Some(e) => Committed {
                sequence: std::str::from_utf8(&e.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| {
                        format!("the offset of partition {partition} is not a sequence")
                    })?,
                revision: Some(e.revision),
            },
        })
    }

    /// Moves `partition`'s position to `sequence` (never back) and returns
    /// what is now committed.
    ///
    /// # Errors
    /// When NATS does not answer.
    pub async fn commit(
        &self,
        partition: Partition,
        known: Committed,
        sequence: u64,
    ) -> anyhow::Result<Committed> {
        let mut known = known;
        for _ in 0..3 {
            if known.sequence >= sequence && known.revision.is_some() {
                return Ok(known);
            }
            let value = sequence.to_string().into();
            let written = match known.revision {
                Some(revision) => self.kv.update(key(partition), value, revision).await,
                None => self
                    .kv
                    .create(key(partition), value)
                    .await
                    .map_err(|e| match e.kind() {
                        kv::CreateErrorKind::AlreadyExists => {
                            kv::UpdateError::new(kv::UpdateErrorKind::WrongLastRevision)
                        }
                        _ => kv::UpdateError::with_source(kv::UpdateErrorKind::Other, e),
                    }),
            };
            match written {
                Ok(revision) => {
                    return Ok(Committed {
                        sequence,
                        revision: Some(revision),
                    });
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    known = self.read(partition).await?;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("committing the offset of partition {partition}")
                    });
                }
            }
        }
        anyhow::bail!("the offset of partition {partition} keeps changing under this owner")
    }
}

fn key(partition: Partition) -> String {
    format!("partition.{partition}")
}
