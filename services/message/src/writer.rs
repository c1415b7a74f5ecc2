//! The batching writer of `write_message` (ARCHITECTURE.md "Hot paths").
//!
//! Postgres stores ~20× more messages per second in 100-message
//! transactions than one at a time, so requests are not written where they
//! arrive: they queue here, a collector takes what has queued (at most
//! [`MAX_BATCH`]) as soon as the commit slot is free, and one call stores the
//! lot ([`store::messages::write_batch`]). Each writer gets its own answer after
//! the commit. One batch is in flight at a time; a batch that meets a
//! deadlock, or a concurrent batch that stored the same `client_msg_id`, is
//! re-run whole (and once on a fresh connection when Postgres has ended
//! the kept one); one that fails otherwise is re-run a write at a time.

use crate::error::DomainError;
use crate::store;
use crate::store::messages::WriteRequest;
use natter_protocol::frames::results::Written;
use natter_protocol::subjects::Namespace;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Most writes in one transaction.
const MAX_BATCH: usize = 256;
/// The one commit slot, and the connection its batches are written on,
/// kept from one batch to the next: a connection taken from the pool for
/// each batch was pinged when it went back (sqlx tests every released
/// connection), a second round trip per batch.
///
/// One slot: a call of `write_messages` costs Postgres ~300 µs of CPU
/// whatever its size (starting its statements, the commit), and while it
/// runs the next batch gathers everything that arrives. Measured A/B on
/// the 2-core machine with `bench/run`, one slot instead of two stored
/// 10,300–12,700 messages/s instead of 9,000–11,300, with 13 % less
/// Postgres CPU, and at a steady 5,000/s the median write → delivered fell
/// from 6–11 ms to 5–8 ms (p99 unchanged within the noise); at 1,000/s
/// nothing changed. Batches that share a channel would take turns on its
/// row lock anyway.
type Slot = OwnedMutexGuard<Option<PoolConnection<Postgres>>>;
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
///
/// A batch takes a commit slot before it is gathered, not after: while
/// every slot is busy, writes pile up in the queue and the next batch
/// takes them all (group commit). Under load batches grow with the load,
/// and Postgres spends its fixed cost per call on many messages; when a
/// slot is free, what has queued goes at once. (A collector that waited a
/// millisecond for more writes cost every write ~1.6 ms at 1,000
/// messages/s, tokio's timer rounding a millisecond up, and gained
/// nothing under load, where no slot is free anyway.)
pub(crate) async fn run(pool: PgPool, ns: Namespace, queue: Queue) {
    let Queue(mut rx) = queue;
    let slot = Arc::new(Mutex::new(None));
    let tasks = TaskTracker::new();
    while let Some(first) = rx.recv().await {
        let slot = slot.clone().lock_owned().await;
        // A gateway batch's writes are handed in together, possibly on the
        // other worker thread: one turn of the scheduler lets them all in.
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (pool, ns) = (pool.clone(), ns.clone());
        tasks.spawn(async move { commit(&pool, &ns, jobs, slot).await });
    }
    tasks.close();
    tasks.wait().await;
}

/// Stores one batch and answers each of its writers, holding `slot` while
/// it commits. A batch that fails
/// for a reason a re-run cannot cure (Postgres refused one of its values)
/// is written again one request at a time, so that request fails alone
/// instead of taking every other writer of the batch with it; the slot is
/// given back first, so the batches behind it do not wait for that.
async fn commit(pool: &PgPool, ns: &Namespace, jobs: Vec<Job>, mut slot: Slot) {
    let (requests, replies): (Vec<WriteRequest>, Vec<_>) =
        jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
    let answers = match write_retrying(pool, &mut slot, ns, &requests).await {
        Ok(answers) => answers,
        Err(e)
            if requests.len() > 1
                && !(e.is_retryable() || e.is_unique_violation() || e.is_unavailable()) =>
        {
            drop(slot);
            tracing::warn!(error = ?e, writes = requests.len(), "a write batch failed; writing its requests one by one");
            let mut answers = Vec::with_capacity(requests.len());
            let mut conn = None;
            // Once Postgres has gone, the rest are not tried: each would
            // wait out the pool's acquire timeout in turn.
            let mut gone: Option<DomainError> = None;
            for request in &requests {
                if let Some(e) = &gone {
                    answers.push(Err(answer_for(e)));
                    continue;
                }
                let answer = match write_retrying(
                    pool,
                    &mut conn,
                    ns,
                    std::slice::from_ref(request),
                )
                .await
                {
                    Ok(mut one) => one.pop().unwrap_or_else(|| Err(failed_write())),
                    Err(e) => {
                        log_failure(&e, 1);
                        let answer = answer_for(&e);
                        if e.is_unavailable() {
                            gone = Some(e);
                        }
                        Err(answer)
                    }
                };
                answers.push(answer);
            }
            answers
        }
        Err(e) => {
            log_failure(&e, requests.len());
            requests.iter().map(|_| Err(answer_for(&e))).collect()
        }
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        // A writer that stopped waiting (its request timed out) is not an
        // error: its message is stored all the same.
        let _ = reply.send(answer);
    }
}

/// Runs [`store::messages::write_batch`] on `conn` (taken from the pool
/// when there is none), re-running it after a deadlock or a concurrent
/// batch's duplicate key, and once on a fresh connection when the kept one
/// turns out to be gone (Postgres restarted, or ended the idle session,
/// since the last batch: the pool pings a connection that sat idle for a
/// second before it hands it out, a kept one is not pinged).
/// A re-run is safe whether or not the failed call committed: a stored
/// `client_msg_id` gets its first answer. A connection that failed
/// otherwise is not kept either.
async fn write_retrying(
    pool: &PgPool,
    conn: &mut Option<PoolConnection<Postgres>>,
    ns: &Namespace,
    requests: &[WriteRequest],
) -> Result<Vec<Result<Written, DomainError>>, DomainError> {
    let mut tries = 1;
    loop {
        let kept = conn.is_some();
        let c = match conn {
            Some(c) => c,
            None => conn.insert(pool.acquire().await?),
        };
        match store::messages::write_batch(c, ns, requests).await {
            Ok(answers) => return Ok(answers),
            Err(e) => {
                let rerun = e.is_retryable() || e.is_unique_violation();
                if !rerun {
                    *conn = None;
                }
                if (rerun || (kept && e.is_connection_lost())) && tries < ATTEMPTS {
                    tracing::debug!(error = %e, tries, "re-running a write batch");
                    tries += 1;
                } else {
                    return Err(e);
                }
            }
        }
    }
}

/// Each writer's answer when the batch (or the lone write) holding its
/// request failed with `error`: `unavailable` when Postgres was out of
/// reach or too slow (the client retries, and its `client_msg_id` makes
/// the retry safe), else `internal`.
fn answer_for(error: &DomainError) -> DomainError {
    if error.is_unavailable() {
        DomainError::Unavailable(error.to_string())
    } else {
        failed_write()
    }
}

fn failed_write() -> DomainError {
    DomainError::Internal(anyhow::anyhow!("the write failed"))
}

/// Logs a failed write of `writes` requests once: an error, unless
/// Postgres was out of reach, which `/readyz` and its log already say.
fn log_failure(error: &DomainError, writes: usize) {
    if error.is_unavailable() {
        tracing::debug!(error = ?error, writes, "a write failed: Postgres did not answer");
    } else {
        tracing::error!(error = ?error, writes, "a write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::ErrorCode;
    use natter_protocol::rpc::SocketRef;
    use natter_protocol::{ChannelId, UserId};

    #[test]
    fn writers_of_a_batch_postgres_did_not_answer_are_told_to_retry() {
        let postmaster_gone = DomainError::from(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(
            answer_for(&postmaster_gone).into_body().code,
            ErrorCode::Unavailable
        );
        let pool_timed_out = DomainError::from(sqlx::Error::PoolTimedOut);
        assert_eq!(
            answer_for(&pool_timed_out).into_body().code,
            ErrorCode::Unavailable
        );
        let refused = DomainError::from(sqlx::Error::RowNotFound);
        assert_eq!(answer_for(&refused).into_body().code, ErrorCode::Internal);
    }

    async fn seeded() -> (natter_testkit::TestDatabase, PgPool, Vec<i64>, i64) {
        let db = natter_testkit::TestDatabase::create().await;
        let pool = db.pool().await;
        let users: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, invite_code) \
             SELECT n, 'x', 'code-' || n FROM UNNEST(ARRAY['alice', 'bob', 'carol']) AS n \
             RETURNING id",
        )
        .fetch_all(&pool)
        .await
        .expect("users");
        let channel: i64 = sqlx::query_scalar(
            "INSERT INTO channels (title, invite_code, head_count, created_by) \
             VALUES ('room', 'room-code', 3, $1) RETURNING id",
        )
        .bind(users[0])
        .fetch_one(&pool)
        .await
        .expect("channel");
        sqlx::query(
            "INSERT INTO channel_members (channel_id, user_id) SELECT $1, u FROM UNNEST($2::bigint[]) AS u",
        )
        .bind(channel)
        .bind(&users)
        .execute(&pool)
        .await
        .expect("members");
        (db, pool, users, channel)
    }

    fn job(
        user: i64,
        channel: i64,
        key: &str,
        content: &str,
    ) -> (Job, oneshot::Receiver<Result<Written, DomainError>>) {
        let (reply, answer) = oneshot::channel();
        let request = WriteRequest {
            user_id: UserId(user),
            username: format!("user{user}"),
            origin: SocketRef {
                gateway_id: "gw".into(),
                socket_id: natter_protocol::SocketId(1),
            },
            channel_id: ChannelId(channel),
            client_msg_id: key.into(),
            content: content.into(),
            traceparent: None,
        };
        (Job { request, reply }, answer)
    }

    /// A write Postgres refuses (here a NUL character, which the protocol
    /// check would have caught earlier) fails alone, not its whole batch.
    #[tokio::test]
    async fn a_write_postgres_refuses_does_not_fail_its_batch() {
        let (_db, pool, users, channel) = seeded().await;
        let (jobs, answers): (Vec<Job>, Vec<_>) = [
            job(users[0], channel, "a", "first"),
            job(users[1], channel, "b", "bad\u{0}content"),
            job(users[2], channel, "c", "third"),
            job(users[0], channel, "a", "first again"),
        ]
        .into_iter()
        .unzip();
        let slot = Arc::new(Mutex::new(None)).lock_owned().await;
        commit(&pool, &Namespace::new("writer-test"), jobs, slot).await;
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.expect("answered"));
        }
        let seqs: Vec<Option<i64>> = results
            .iter()
            .map(|r| r.as_ref().ok().map(|w| w.seq.0))
            .collect();
        assert_eq!(seqs, [Some(1), None, Some(2), Some(1)]);
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(stored, 2);
    }

    /// The slot keeps its connection between batches; when Postgres has
    /// ended that session meanwhile (a restart, an operator's
    /// `pg_terminate_backend`), the next batch is written on a fresh one
    /// instead of failing its writers.
    #[tokio::test]
    async fn a_batch_after_its_kept_connection_was_ended_is_written_on_a_fresh_one() {
        let (_db, pool, users, channel) = seeded().await;
        let ns = Namespace::new("writer-test");
        let slot = Arc::new(Mutex::new(None));
        let (first, answer) = job(users[0], channel, "a", "first");
        commit(&pool, &ns, vec![first], slot.clone().lock_owned().await).await;
        assert_eq!(answer.await.expect("answered").expect("stored").seq.0, 1);

        let kept_pid: i32 = {
            let mut kept = slot.lock().await;
            let conn = kept.as_mut().expect("the slot keeps its connection");
            sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut **conn)
                .await
                .expect("pid")
        };
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(kept_pid)
            .fetch_one(&pool)
            .await
            .expect("terminate");
        assert!(ended);

        let (second, answer) = job(users[1], channel, "b", "second");
        commit(&pool, &ns, vec![second], slot.clone().lock_owned().await).await;
        assert_eq!(answer.await.expect("answered").expect("stored").seq.0, 2);
    }
}
