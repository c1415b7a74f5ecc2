//! Whether push is making progress, told once per outage through the
//! [`HELD_BACK`] readiness condition: `/readyz` is unready while any
//! partition is held back, and the log says so when the first partition is
//! held back and when the last one moves again — not once per retry. Also
//! the retry pace.

use natter_platform::lifecycle::{Condition, Readiness};
use natter_protocol::partition::Partition;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The `/readyz` condition while events are held back.
pub const HELD_BACK: &str = "events held back";

/// Which partitions of this instance are held back by a failing
/// dependency. Cheap to clone.
#[derive(Clone)]
pub struct Progress {
    held_back: Condition,
    partitions: Arc<Mutex<BTreeSet<Partition>>>,
}

impl Progress {
    /// Reports through `readiness`.
    #[must_use]
    pub fn new(readiness: &Readiness) -> Self {
        Self {
            held_back: readiness.condition(HELD_BACK),
            partitions: Arc::default(),
        }
    }

    /// `partition` cannot move past an event because of `error`.
    pub fn held_back(&self, partition: Partition, error: &anyhow::Error) {
        let mut partitions = self.lock();
        if !partitions.insert(partition) {
            return;
        }
        if partitions.len() == 1 {
            self.held_back
                .failing(&anyhow::anyhow!("{error:#}").context(format!(
                    "partition {} retries until the dependency answers",
                    partition.0
                )));
        } else {
            tracing::debug!(partition = partition.0, error = %error, "another partition held back");
        }
    }

    /// `partition` moves again, or is no longer this instance's.
    pub fn moving(&self, partition: Partition) {
        let mut partitions = self.lock();
        if partitions.remove(&partition) && partitions.is_empty() {
            self.held_back.ok();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<Partition>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One thing that can fail for a while (the leases bucket, a partition's
/// offset commits): logged when it starts failing and when it recovers.
pub struct Outage {
    what: &'static str,
    since: Option<Instant>,
}

impl Outage {
    /// An outage tracker for `what` (named in the log lines).
    #[must_use]
    pub fn new(what: &'static str) -> Self {
        Self { what, since: None }
    }

    /// It failed; logged if it was working.
    pub fn failed(&mut self, error: &anyhow::Error) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            tracing::warn!(what = self.what, error = ?error, "failing; retrying");
        }
    }

    /// It worked; logged if it was failing.
    pub fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(what = self.what, after = ?since.elapsed(), "working again");
        }
    }
}

/// Retry pauses: doubling from [`Backoff::FIRST`] up to [`Backoff::CAP`],
/// so a blip costs milliseconds and a long outage a retry every two
/// seconds — which also bounds how long after a dependency returns its
/// events flow again.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_millis(50);
    /// The longest pause.
    pub const CAP: Duration = Duration::from_secs(2);

    /// Starts at [`Backoff::FIRST`].
    #[must_use]
    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        pause
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stay_there() {
        let mut b = Backoff::new();
        let pauses: Vec<u64> = (0..9)
            .map(|_| u64::try_from(b.next_pause().as_millis()).expect("small"))
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn readiness_is_down_while_any_partition_is_held_back() {
        let readiness = Readiness::default();
        let progress = Progress::new(&readiness);
        let error = anyhow::anyhow!("redis away");
        progress.held_back(Partition(1), &error);
        progress.held_back(Partition(2), &error);
        progress.held_back(Partition(1), &error);
        assert_eq!(readiness.failing_conditions(), [HELD_BACK]);
        progress.moving(Partition(1));
        assert_eq!(
            readiness.failing_conditions(),
            [HELD_BACK],
            "partition 2 still waits"
        );
        progress.moving(Partition(3));
        progress.moving(Partition(2));
        assert!(readiness.failing_conditions().is_empty());
    }
}
