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
//! A round is one statement on the relay's own (listening) connection: it
//! deletes what the previous round published and reads the next rows. Two
//! statements per round through the pool (a read, then a delete, each
//! pinged by sqlx when the connection went back) had cost Postgres about
//! 10 % more CPU per stored message. Published rows therefore stay in the
//! outbox until the next round (at most `IDLE_POLL`, 1 s, when no row
//! comes) or until the relay stops publishing, whether it stops, loses
//! its lease or fails; only a relay that dies leaves them, to be published
//! again and dropped by JetStream as duplicates.
//!
//! Pipelined publishes are not stored all or nothing: one lost with a
//! dropped connection, or refused while a clustered stream had no leader,
//! can be followed by later ones that JetStream stored, and retrying it
//! would store it after them, out of the outbox's order and so out of its
//! channel's seq order. So every row for the events stream is published
//! expecting the stream to end where the rows before it left it
//! (`Nats-Expected-Last-Sequence`, counted on from the stream's last
//! sequence): once one is not stored, JetStream refuses each one behind
//! it, and a later round publishes them in order behind it. JetStream
//! keeps the stream's last sequence on every replica, also one that caught
//! up from another, so the check holds in a cluster. The count holds only
//! while the relay is the stream's one publisher: natter's own tools put
//! what they send into the outbox (`dlq redrive` too), and the lease makes
//! one relay publish at a time. A message published beside the relay
//! breaks it: with the stream k messages past the count, the round's
//! first k events rows are refused and the next one is stored ahead of
//! them. The stream's end is read from JetStream before the first round
//! with events rows after taking the lease, and again after any round that
//! did not store every events row where counted (a failure, a duplicate,
//! a message published beside the relay): a refusal for a wrong last
//! sequence ends the round at that row, is logged, and the next round
//! starts at once from the end as read again. Session revocations are
//! published without it: they are a set, in no order anyone reads.
//!
//! Besides such a refusal, which only ends the round early, a failure is
//! one of two kinds:
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
use natter_protocol::subjects::Namespace;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::time::Duration;
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
    ns: Namespace,
    health: Condition,
    shutdown: CancellationToken,
) {
    let lease = Lease::new(pool.clone());
    while !shutdown.is_cancelled() {
        let mut events = EventsEnd::new(&ns);
        if let Err(e) =
            lead_when_possible(&pool, &js, &mut events, &lease, &health, &shutdown).await
        {
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
    events: &mut EventsEnd,
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
    // Rows JetStream stored in the last round, not yet deleted: the next
    // round's statement deletes them. Owned here, outside the loop that a
    // lost lease cancels, so that whatever ends the loop they are deleted
    // below (a relay that dies first leaves them to be published again,
    // which JetStream drops as duplicates within its window).
    let mut published: Vec<i64> = Vec::new();
    let result = tokio::select! {
        lost = lease.keep() => {
            match &lost {
                Lost::Taken => tracing::warn!(%lost, "outbox relay is a standby again"),
                Lost::Expired(_) => health.failing(&anyhow::Error::new(lost)),
            }
            Ok(())
        }
        result = publish_while_leading(pool, js, events, lease, health, shutdown, &mut published) => result,
    };
    // Through the pool: the loop may have stopped because the relay's own
    // connection failed. The loop's error, if any, is the one reported.
    let settled = Settle {
        done: published,
        to_park: Vec::new(),
    }
    .run(pool)
    .await
    .context("deleting the last round's rows");
    result.and(settled)
}

/// Publishes round after round while `lease` is held, leaving in
/// `published` what the last round published and no statement deleted.
async fn publish_while_leading(
    pool: &PgPool,
    js: &jetstream::Context,
    events: &mut EventsEnd,
    lease: &Lease,
    health: &Condition,
    shutdown: &CancellationToken,
    published: &mut Vec<i64>,
) -> anyhow::Result<()> {
    // The relay's own connection: it waits for notifications and runs every
    // round's statement, so a round takes no connection from the pool and
    // pays no ping when giving one back (sqlx pings on every release).
    // Reconnecting is left to the next round's statement, outside any
    // `select!` that could cancel it halfway (sqlx's eager reconnect inside
    // `recv` could be cancelled after moving the notification buffer away,
    // and a notification during a later statement would then fail it).
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(NOTIFY_CHANNEL).await?;
    while lease.is_held() {
        // Notifications that came during the last statement are for commits
        // this round's snapshot sees: one round answers them all.
        while listener.next_buffered().is_some() {}
        let rows = next_rows(&mut listener, published).await?;
        published.clear();
        let (round, settle) = publish_rows(js, events, &rows).await;
        let Settle { done, to_park } = settle;
        *published = done;
        // Rare: parking moves rows to another table, in a transaction of
        // its own.
        if !to_park.is_empty() {
            Settle {
                done: Vec::new(),
                to_park,
            }
            .run(pool)
            .await?;
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
        if (full || round.resync) && round.stalled.is_none() {
            continue;
        }
        // A lost connection (`Ok(None)`) also starts a round: its statement
        // reconnects, and picks up what was committed meanwhile.
        tokio::select! {
            n = listener.try_recv(), if pause == IDLE_POLL => { n.context("outbox notification")?; }
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

/// What one round did.
#[derive(Debug)]
pub struct Round {
    /// Rows JetStream stored, to be deleted from the outbox (by the relay's
    /// next round, or at once by [`publish_batch`]).
    pub published: usize,
    /// Rows NATS refused for good, moved to `outbox_parked`.
    pub parked: usize,
    /// The transient failure that stopped the round early: the rows from
    /// there on stay in the outbox, in order, for the next round.
    pub stalled: Option<anyhow::Error>,
    /// JetStream refused an events row because the stream did not end
    /// where the relay counted (a row before it not stored or stored in an
    /// earlier round, or a message published beside the relay, which
    /// breaks the order: module docs): the round stopped there, and the
    /// next starts at once from the stream's end read again.
    pub resync: bool,
}

/// Where the relay expects the events stream to end: its last sequence
/// once the rows published so far are stored (module docs: order).
struct EventsEnd {
    stream: String,
    prefix: String,
    /// Known after a round that stored every event row as expected;
    /// otherwise read from JetStream before the next.
    last: Option<u64>,
}

impl EventsEnd {
    fn new(ns: &Namespace) -> Self {
        Self {
            stream: ns.events_stream(),
            prefix: ns.events_prefix(),
            last: None,
        }
    }

    /// Whether a row for `subject` goes to the events stream.
    fn takes(&self, subject: &str) -> bool {
        subject.starts_with(&self.prefix)
    }

    /// The stream's last sequence, read from JetStream unless the last
    /// round left it known; `None` when there is no such stream (its rows
    /// then go without an expectation and are parked, as no stream takes
    /// them).
    async fn read(&mut self, js: &jetstream::Context) -> anyhow::Result<Option<u64>> {
        if self.last.is_none() {
            self.last = match js.get_stream(&self.stream).await {
                Ok(stream) => Some(stream.cached_info().state.last_sequence),
                Err(e) if crate::nats::is_not_found(&e) => None,
                Err(e) => return Err(e).context("reading where the events stream ends"),
            };
        }
        Ok(self.last)
    }
}

/// One row as the relay reads it.
#[derive(sqlx::FromRow)]
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
#[derive(Default)]
struct Settle {
    done: Vec<i64>,
    to_park: Vec<(i64, String, String)>,
}

impl Settle {
    fn is_empty(&self) -> bool {
        self.done.is_empty() && self.to_park.is_empty()
    }

    /// Deletes the published rows and parks the refused ones, in one
    /// transaction (one statement when nothing is parked, or nothing is
    /// to delete).
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
        if !self.done.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(&self.done)
                .execute(&mut *tx)
                .await?;
        }
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
pub async fn publish_batch(
    pool: &PgPool,
    js: &jetstream::Context,
    ns: &Namespace,
) -> anyhow::Result<Round> {
    let rows = next_rows(pool, &[]).await?;
    let (round, settle) = publish_rows(js, &mut EventsEnd::new(ns), &rows).await;
    settle.run(pool).await?;
    Ok(round)
}

/// Deletes `published` (the last round's rows, which JetStream stored) and
/// reads the next `BATCH` rows in id order, in one statement: one round
/// trip and one transaction per round. The read's snapshot still sees the
/// rows its own statement deletes, hence `<> ALL`. The delete does not wait
/// for its commit's WAL flush: a delete lost in a crash only means those
/// rows are published again, and JetStream drops them as duplicates of
/// their `Nats-Msg-Id`. (`set_config(…, true)` holds until the statement's
/// own transaction commits.)
async fn next_rows<'c, E>(conn: E, published: &[i64]) -> anyhow::Result<Vec<Row>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_as(
        "WITH unsynced AS MATERIALIZED \
             (SELECT set_config('synchronous_commit', 'off', true)), \
         gone AS (DELETE FROM outbox WHERE id = ANY($2) AND EXISTS (SELECT FROM unsynced)) \
         SELECT id, msg_id, subject, payload, headers::text AS headers FROM outbox \
         WHERE id <> ALL($2) ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .bind(published)
    .fetch_all(conn)
    .await
    .context("reading the outbox")
}

/// Publishes `rows` (in id order) pipelined, those for the events stream
/// each expecting the stream's end the rows before it made, and says what
/// it did and what is left to settle: the acknowledged prefix to delete,
/// the rows NATS refused for good to park. Only the active relay calls it.
#[tracing::instrument(level = "debug", skip_all)]
async fn publish_rows(
    js: &jetstream::Context,
    events: &mut EventsEnd,
    rows: &[Row],
) -> (Round, Settle) {
    let mut round = Round {
        published: 0,
        parked: 0,
        stalled: None,
        resync: false,
    };
    // A round of revocations alone needs nothing of the events stream.
    let has_events = rows.iter().any(|row| events.takes(&row.subject));
    let mut expected = if has_events {
        match events.read(js).await {
            Ok(last) => last,
            Err(e) => {
                round.stalled = Some(e);
                return (round, Settle::default());
            }
        }
    } else {
        events.last
    };
    // Known again only if every event row is stored where expected.
    events.last = None;
    let mut as_expected = true;
    let mut to_park: Vec<(i64, String, String)> = Vec::new();
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        let ordered = events.takes(&row.subject);
        let mut publish = jetstream::message::PublishMessage::build()
            .headers(nats_headers(&row.headers))
            .message_id(row.msg_id.to_string())
            .payload(row.payload.clone().into());
        if ordered && let Some(last) = expected {
            publish = publish.expected_last_sequence(last);
        }
        match js.send_publish(row.subject.clone(), publish).await {
            Ok(ack) => {
                if ordered {
                    expected = expected.map(|last| last + 1);
                }
                pending.push(((row, ordered), ack));
            }
            Err(e) => {
                let e = anyhow::Error::new(e);
                if refused_for_good(&e) {
                    to_park.push((row.id, row.subject.clone(), format!("{e:#}")));
                } else {
                    round.stalled = Some(e.context("publishing an outbox row"));
                    break;
                }
            }
        }
    }
    let (sent, acks): (Vec<(&Row, bool)>, Vec<_>) = pending.into_iter().unzip();
    let acks = join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await;
    let mut done = Vec::with_capacity(acks.len());
    for ((row, ordered), ack) in sent.into_iter().zip(acks) {
        match ack {
            Ok(ack) => {
                as_expected &= !(ordered && ack.duplicate);
                done.push(row.id);
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                tracing::warn!(
                    subject = row.subject,
                    error = %e,
                    "the events stream did not end where the relay counted \
                     (a row before this one not stored or stored before, or a message \
                     published beside the relay); reading its end again"
                );
                round.resync = true;
                break;
            }
            Err(e) => {
                as_expected &= !ordered;
                let e = anyhow::Error::new(e);
                if refused_for_good(&e) || no_stream_takes(js, &row.subject, &e).await {
                    to_park.push((row.id, row.subject.clone(), format!("{e:#}")));
                } else {
                    round.stalled = Some(e.context("an outbox row was not acknowledged"));
                    break;
                }
            }
        }
    }
    if as_expected && !round.resync && round.stalled.is_none() {
        events.last = expected;
    }
    round.published = done.len();
    round.parked = to_park.len();
    crate::metrics::get()
        .outbox_backlog
        .record((rows.len() - round.published - round.parked) as u64, &[]);
    (round, Settle { done, to_park })
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
