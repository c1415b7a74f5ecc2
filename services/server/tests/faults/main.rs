//! The fault suite: natter as real processes on dependencies of the
//! test's own, under a steady writer and receivers on both gateways,
//! while the suite kills, stops and restarts services and dependencies.
//! It holds when nothing is lost or shown twice (exact seqs 1..N at the
//! writer and at every receiver), at least 95 % of deliveries arrive
//! live, and delivery is live again within 5 s of a dependency's return.
//! Every test prints its figures (`--nocapture` shows them). The tests
//! run one at a time (a nextest test group) and take a few minutes.

mod clients;
mod load;
mod outages;
mod replicas;
mod system;

use std::time::{Duration, Instant};

/// How soon after a dependency returns delivery must be live again.
const BACK_TO_LIVE: Duration = Duration::from_secs(5);

/// How long the suite waits for receivers to be live again before it
/// calls a recovery missing.
const RECOVERY_WAIT: Duration = Duration::from_secs(30);

/// One thing the suite did: how soon delivery was live again after it,
/// and the deliveries (live, filled) counted from the previous one's
/// recovery to this one's.
struct Recovery {
    what: String,
    back: Option<Duration>,
    live: usize,
    filled: usize,
}

/// The time back to live delivery after each thing the suite did.
#[derive(Default)]
struct Recoveries {
    done: Vec<Recovery>,
    counted: (usize, usize),
}

impl Recoveries {
    /// Waits for every receiver's first live delivery after `since`.
    async fn measure(&mut self, load: &load::Load, what: impl Into<String>, since: Instant) {
        let back = load.back_to_live(since, RECOVERY_WAIT).await;
        let (live, filled) = load.totals();
        self.done.push(Recovery {
            what: what.into(),
            back,
            live: live - self.counted.0,
            filled: filled - self.counted.1,
        });
        self.counted = (live, filled);
    }

    fn print(&self) {
        for r in &self.done {
            let (what, live, filled) = (&r.what, r.live, r.filled);
            match r.back {
                Some(back) => println!(
                    "faults:   {what}: live again {back:.2?} after its return ({live} live, {filled} filled up to then)"
                ),
                None => println!(
                    "faults:   {what}: not live again within {RECOVERY_WAIT:?} ({live} live, {filled} filled)"
                ),
            }
        }
    }

    /// Every recovery came within `limit`.
    fn assert_within(&self, limit: Duration) {
        for Recovery { what, back, .. } in &self.done {
            assert!(
                back.is_some_and(|b| b <= limit),
                "after {what}, delivery was live again only after {back:?} (limit {limit:?})"
            );
        }
    }
}

/// Lets the load run for `duration`.
async fn run_for(duration: Duration) {
    tokio::time::sleep(duration).await;
}
