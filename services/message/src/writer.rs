//! The batching writer of `write_message` (DESIGN "Hot paths").
//!
//! Postgres stores ~20× more messages per second in 100-message
//! transactions than one at a time, so requests are not written where they
//! arrive: they queue here, a collector gathers what arrives within about a
//! millisecond (at most [`MAX_BATCH`]), and one transaction stores the lot
//! ([`store::messages::write_batch`]). Each writer gets its own answer after
//! the commit. A few batches may be in flight at once; a batch that meets a
//! deadlock, or a concurrent batch that stored the same `client_msg_id`, is
//! re-run whole.

use crate::error::DomainError;
use crate::store;
use crate::store::messages::WriteRequest;
use natter_protocol::frames::results::Written;
use natter_protocol::subjects::Namespace;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Most writes in one transaction.
const MAX_BATCH: usize = 256;
/// How long the collector waits for more writes after the first.
const WINDOW: Duration = Duration::from_millis(1);
/// Batches committing at once (each holds a pool connection).
const CONCURRENT_BATCHES: usize = 4;
/// Writes waiting for the collector.
const QUEUE: usize = 4096;
/// Times a batch is run before its writers get `internal`.
const ATTEMPTS: u32 = 5;

struct Job {
    request: WriteRequest,
    reply: oneshot::Sender<Result<Written, DomainError>>,
}

/// Where handlers hand in writes; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer(mpsc::Sender<Job>);

/// The collector's end, consumed by [`run`].
pub(crate) struct Queue(mpsc::Receiver<Job>);

/// A connected writer handle and queue.
pub(crate) fn channel() -> (Writer, Queue) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Writer(tx), Queue(rx))
}

impl Writer {
    /// Queues a write and waits for its committed answer.
    pub(crate) async fn write(&self, request: WriteRequest) -> Result<Written, DomainError> {
        let (reply, answer) = oneshot::channel();
        self.0
            .send(Job { request, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the message writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the message writer dropped a write"))?
    }
}

/// Collects and commits batches until every [`Writer`] is dropped, then
/// finishes the batches in flight.
pub(crate) async fn run(pool: PgPool, ns: Namespace, queue: Queue) {
    let Queue(mut rx) = queue;
    let slots = Arc::new(Semaphore::new(CONCURRENT_BATCHES));
    let tasks = TaskTracker::new();
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + WINDOW;
        while jobs.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (pool, ns) = (pool.clone(), ns.clone());
        tasks.spawn(async move {
            commit(&pool, &ns, jobs).await;
            drop(slot);
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Stores one batch and answers each of its writers.
async fn commit(pool: &PgPool, ns: &Namespace, jobs: Vec<Job>) {
    let (requests, replies): (Vec<WriteRequest>, Vec<_>) =
        jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
    let mut tries = 1;
    let outcome = loop {
        match store::messages::write_batch(pool, ns, &requests).await {
            Err(e) if (e.is_retryable() || e.is_unique_violation()) && tries < ATTEMPTS => {
                tracing::debug!(error = %e, tries, "re-running a write batch");
                tries += 1;
            }
            other => break other,
        }
    };
    match outcome {
        Ok(answers) => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A writer that stopped waiting (its request timed out) is
                // not an error: its message is stored all the same.
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            tracing::error!(error = ?e, writes = replies.len(), "a write batch failed");
            for reply in replies {
                let _ = reply.send(Err(DomainError::Internal(anyhow::anyhow!(
                    "the write batch failed"
                ))));
            }
        }
    }
}
