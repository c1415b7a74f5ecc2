//! The message service's SQL, by aggregate. Lock order everywhere:
//! channels ascending, then users ascending, each with an explicit
//! `SELECT … ORDER BY id FOR NO KEY UPDATE` (`FOR SHARE` where a user row
//! only has to stay alive). Every writing transaction goes through
//! [`retrying`], so a deadlock that slips through is retried, not answered.

pub(crate) mod channels;
pub(crate) mod connections;
pub(crate) mod messages;
pub(crate) mod users;

use crate::error::DomainError;
use std::future::Future;

/// How often a transaction is re-run after a deadlock or serialization
/// failure before the error is answered.
const ATTEMPTS: u32 = 5;

/// Runs `attempt` until it succeeds, fails for a reason other than a
/// deadlock/serialization failure, or has been tried [`ATTEMPTS`] times.
pub(crate) async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, DomainError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DomainError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_retryable() && tries < ATTEMPTS => {
                tracing::debug!(error = %e, tries, "retrying a transaction");
                tries += 1;
            }
            other => return other,
        }
    }
}
