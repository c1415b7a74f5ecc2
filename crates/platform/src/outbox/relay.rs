//! The outbox relay: publishes outbox rows to JetStream and deletes them.
//! Every message instance runs one.
//!
//! One relay per database publishes: the one holding the lease (a row of
//! `outbox_relay_lease` renewed every second, lost within seconds by a
//! holder that dies, freezes or loses its connection: `outbox/lease.rs`); the
//! others wait as standbys and take it over when it expires. The active
//! relay publishes in id order, so a channel's events keep their seq
//! order, pipelined (all publishes of a batch in flight, acks awaited
//! together). Each publish carries `Nats-Msg-Id` = the row's `msg_id`, so a
//! crash between publish and delete republishes a row that JetStream then
//! drops as a duplicate; for the same reason the delete does not wait for
//! its commit to reach the disk. It wakes on `LISTEN natter_outbox` (a trigger
//! notifies on insert), with a slow timer only as a safety net.
//!
//! A failure is one of two kinds:
//! - **transient** (NATS unreachable, an ack that times out, JetStream
//!   without a leader for the stream): the batch stops at that row, which
//!   is retried, in order, until it goes through. Nothing is skipped, so an
//!   outage only delays events; the relay reports itself failing on
//!   `/readyz` meanwhile;
//! - **permanent** (larger than the server's largest message, a subject no
//!   stream takes, an invalid subject): retrying cannot help, so the row is
//!   **parked** ([`super::parked`]) with the reason and counted
//!   (`natter.outbox.parked`), and the rows behind it go on.

use super::lease::{Lease, Lost};
use super::{nats_headers, parked};
use crate::lifecycle::Condition;
use anyhow::Context;
use async_nats::jetstream::{self, context::PublishErrorKind};
use futures::future::join_all;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Rows published per round.
const BATCH: i64 = 1000;
/// What the outbox's insert trigger notifies (migrations/0001).
const NOTIFY_CHANNEL: &str = "natter_outbox";
/// Safety-net poll when no notification arrives.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often a standby asks whether the lease is free.
const STANDBY_POLL: Duration = Duration::from_secs(1);
/// Back-off after a failure (NATS or Postgres).
const RETRY: Duration = Duration::from_millis(500);

/// Runs the relay until `shutdown`, retrying on failure; `health` fails
/// while it cannot publish (or, as a standby, cannot reach Postgres).
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    health: Condition,
    shutdown: CancellationToken,
) {
    let lease = Lease::new(pool.clone());
    while !shutdown.is_cancelled() {
        if let Err(e) = lead_when_possible(&pool, &js, &lease, &health, &shutdown).await {
            health.failing(&e);
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
    lease.release().await;
}

/// Waits as a standby until this relay holds the lease, then publishes
/// until it loses it (`Ok`) or fails (`Err`).
async fn lead_when_possible(
    pool: &PgPool,
    js: &jetstream::Context,
    lease: &Lease,
    health: &Condition,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    while !lease.acquire().await? {
        health.ok();
        tokio::select! {
            () = tokio::time::sleep(STANDBY_POLL) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!(holder = lease.holder(), "outbox relay is active");
    tokio::select! {
        lost = lease.keep() => {
            match &lost {
                Lost::Taken => tracing::warn!(%lost, "outbox relay is a standby again"),
                Lost::Expired(_) => health.failing(&anyhow::Error::new(lost)),
            }
            Ok(())
        }
        published = publish_while_leading(pool, js, lease, health, shutdown) => published,
    }
}

async fn publish_while_leading(
    pool: &PgPool,
    js: &jetstream::Context,
    lease: &Lease,
    health: &Condition,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    // The previous round's rows, being deleted (or parked) while the next
    // round is published; that round skips them.
    let mut settling: Option<(Vec<i64>, JoinHandle<anyhow::Result<()>>)> = None;
    let result = async {
        while lease.is_held() {
            let skip = settling.as_ref().map_or(&[][..], |(ids, _)| ids.as_slice());
            let (round, settle) = publish_round(pool, js, skip).await?;
            if let Some((_, previous)) = settling.take() {
                previous.await.context("settling an outbox round")??;
            }
            let pause = match &round.stalled {
                Some(e) => {
                    health.failing(e);
                    RETRY
                }
                None => {
                    health.ok();
                    IDLE_POLL
                }
            };
            let full = round.published + round.parked >= BATCH as usize;
            if !settle.is_empty() {
                let ids = settle.ids();
                let pool = pool.clone();
                settling = Some((ids, tokio::spawn(async move { settle.run(&pool).await })));
            }
            if full && round.stalled.is_none() {
                continue;
            }
            tokio::select! {
                n = listener.recv(), if pause == IDLE_POLL => { n.context("outbox notification")?; }
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
        Ok(())
    }
    .await;
    // The last round is settled whatever stopped the loop; the loop's own
    // error, if any, is the one reported.
    let settled = match settling {
        Some((_, last)) => last
            .await
            .context("settling an outbox round")
            .and_then(|settled| settled),
        None => Ok(()),
    };
    result.and(settled)
}

/// What one round did.
#[derive(Debug)]
pub struct Round {
    /// Rows JetStream stored, deleted from the outbox.
    pub published: usize,
    /// Rows NATS refused for good, moved to `outbox_parked`.
    pub parked: usize,
    /// The transient failure that stopped the round early: the rows from
    /// there on stay in the outbox, in order, for the next round.
    pub stalled: Option<anyhow::Error>,
}

/// One row as the relay reads it.
struct Row {
    id: i64,
    msg_id: uuid::Uuid,
    subject: String,
    payload: Vec<u8>,
    headers: String,
}

/// What a round leaves to do in Postgres: the rows JetStream stored, to
/// delete, and those NATS refused for good, to park (with the subject and
/// reason, for the log).
struct Settle {
    done: Vec<i64>,
    to_park: Vec<(i64, String, String)>,
}

impl Settle {
    fn is_empty(&self) -> bool {
        self.done.is_empty() && self.to_park.is_empty()
    }

    fn ids(&self) -> Vec<i64> {
        self.done
            .iter()
            .copied()
            .chain(self.to_park.iter().map(|(id, ..)| *id))
            .collect()
    }

    /// Deletes the published rows and parks the refused ones, in one
    /// transaction (one statement when nothing is parked).
    async fn run(self, pool: &PgPool) -> anyhow::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        // Not waiting for the commit's WAL flush: a delete lost in a crash
        // only means those rows are published again, and JetStream drops
        // them as duplicates of their `Nats-Msg-Id`.
        if self.to_park.is_empty() {
            // The usual round: one statement, so one round trip instead of
            // BEGIN, DELETE and COMMIT. It is its own transaction, and
            // `set_config(…, true)` holds until that transaction commits.
            sqlx::query(
                "WITH unsynced AS MATERIALIZED \
                     (SELECT set_config('synchronous_commit', 'off', true)) \
                 DELETE FROM outbox WHERE id = ANY($1) AND EXISTS (SELECT FROM unsynced)",
            )
            .bind(&self.done)
            .execute(pool)
            .await?;
            return Ok(());
        }
        let mut tx = pool
            .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
            .await?;
        let (ids, errors): (Vec<i64>, Vec<String>) = self
            .to_park
            .iter()
            .map(|(id, _, error)| (*id, error.clone()))
            .unzip();
        parked::park(&mut tx, &ids, &errors).await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&self.done)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        for (id, subject, error) in &self.to_park {
            tracing::error!(
                id,
                subject,
                error,
                "outbox row parked: NATS refused it for good"
            );
        }
        crate::metrics::get()
            .outbox_parked
            .add(self.to_park.len() as u64, &[]);
        Ok(())
    }
}

/// Publishes up to `BATCH` rows, deletes those JetStream acknowledged (a
/// prefix, in order), parks those it refused for good, and says what it
/// did.
///
/// # Errors
/// When Postgres fails.
pub async fn publish_batch(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<Round> {
    let (round, settle) = publish_round(pool, js, &[]).await?;
    settle.run(pool).await?;
    Ok(round)
}

/// Publishes up to `BATCH` rows in id order, but for those in `skip` (the
/// previous round's, still being settled), and says what it did and what
/// is left to settle. Only the active relay calls it.
#[tracing::instrument(level = "debug", skip_all)]
async fn publish_round(
    pool: &PgPool,
    js: &jetstream::Context,
    skip: &[i64],
) -> anyhow::Result<(Round, Settle)> {
    let rows: Vec<Row> = sqlx::query_as::<_, (i64, uuid::Uuid, String, Vec<u8>, String)>(
        "SELECT id, msg_id, subject, payload, headers::text FROM outbox \
         WHERE id <> ALL($2) ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .bind(skip)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(id, msg_id, subject, payload, headers)| Row {
        id,
        msg_id,
        subject,
        payload,
        headers,
    })
    .collect();
    let mut to_park: Vec<(i64, String, String)> = Vec::new();
    let mut stalled = None;
    let mut pending = Vec::with_capacity(rows.len());
    for row in &rows {
        let publish = jetstream::message::PublishMessage::build()
            .headers(nats_headers(&row.headers))
            .message_id(row.msg_id.to_string())
            .payload(row.payload.clone().into());
        match js.send_publish(row.subject.clone(), publish).await {
            Ok(ack) => pending.push((row, ack)),
            Err(e) => {
                let e = anyhow::Error::new(e);
                if refused_for_good(&e) {
                    to_park.push((row.id, row.subject.clone(), format!("{e:#}")));
                } else {
                    stalled = Some(e.context("publishing an outbox row"));
                    break;
                }
            }
        }
    }
    let (sent, acks): (Vec<&Row>, Vec<_>) = pending.into_iter().unzip();
    let acks = join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
    let mut done = Vec::with_capacity(acks.len());
    for (row, ack) in sent.into_iter().zip(acks) {
        match ack {
            Ok(_) => done.push(row.id),
            Err(e) => {
                let e = anyhow::Error::new(e);
                if refused_for_good(&e) || no_stream_takes(js, &row.subject, &e).await {
                    to_park.push((row.id, row.subject.clone(), format!("{e:#}")));
                } else {
                    stalled = Some(e.context("an outbox row was not acknowledged"));
                    break;
                }
            }
        }
    }
    let parked = to_park.len();
    crate::metrics::get()
        .outbox_backlog
        .record((rows.len() - done.len() - parked) as u64, &[]);
    let round = Round {
        published: done.len(),
        parked,
        stalled,
    };
    Ok((round, Settle { done, to_park }))
}

/// Whether NATS refused a publish in a way no retry can change: larger
/// than the server's largest message or the stream's, or a subject that is
/// not a valid publish subject.
fn refused_for_good(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(publish) = cause.downcast_ref::<jetstream::context::PublishError>() {
            return publish.kind() == PublishErrorKind::MaxPayloadExceeded;
        }
        if cause
            .downcast_ref::<async_nats::subject::SubjectError>()
            .is_some()
        {
            return true;
        }
        cause.downcast_ref::<jetstream::Error>().is_some_and(|js| {
            matches!(
                js.error_code(),
                jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    | jetstream::ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
            )
        })
    })
}

/// Whether a publish that found no responder went to a subject no stream
/// takes. JetStream answers nothing both then and while it is down (a
/// restart, a cluster without a leader), so ask it: only its own answer
/// that no stream matches makes the row unpublishable.
async fn no_stream_takes(js: &jetstream::Context, subject: &str, e: &anyhow::Error) -> bool {
    let no_responders = e.chain().any(|cause| {
        cause
            .downcast_ref::<jetstream::context::PublishError>()
            .is_some_and(|p| p.kind() == PublishErrorKind::StreamNotFound)
    });
    if !no_responders {
        return false;
    }
    match js.stream_by_subject(subject).await {
        Err(e) => e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound,
        Ok(_) => false,
    }
}
