//! The outbox relay: publishes outbox rows to JetStream and deletes them.
//! Every message instance runs one.
//!
//! One relay per database publishes (it holds a Postgres advisory lock,
//! whose connection it checks every round; other instances wait as
//! standbys), in id order so a channel's events keep their seq order,
//! pipelined (all publishes of a batch in flight, acks awaited together)
//! and stopping at the first failure. Each publish carries
//! `Nats-Msg-Id` = the row's `msg_id`, so a crash between publish and delete
//! republishes a row that JetStream then drops as a duplicate. It wakes on
//! `LISTEN natter_outbox` (a trigger notifies on insert), with a slow timer
//! only as a safety net.

use super::nats_headers;
use anyhow::Context;
use async_nats::jetstream;
use futures::future::join_all;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rows published per round.
const BATCH: i64 = 1000;
/// Advisory lock key: "natter outbox relay".
const LOCK_KEY: i64 = 0x6e61_7474_6572_0001;
/// What the outbox's insert trigger notifies (migrations/0001).
const NOTIFY_CHANNEL: &str = "natter_outbox";
/// Safety-net poll when no notification arrives.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Back-off after a failure (NATS or Postgres).
const RETRY: Duration = Duration::from_millis(500);

/// Runs the relay until `shutdown`, retrying on failure.
pub async fn run(pool: PgPool, js: jetstream::Context, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        if let Err(e) = run_once(&pool, &js, &shutdown).await {
            tracing::warn!(error = ?e, "outbox relay failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }
}

async fn run_once(
    pool: &PgPool,
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut lock_conn = pool.acquire().await?.detach();
    while !try_lock(&mut lock_conn).await? {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!("outbox relay is active");
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    loop {
        // The lock lives only as long as its connection. If that one alone
        // died, another relay may hold the lock by now: stop publishing and
        // let `run` take the lock again or wait as a standby.
        still_locked(&mut lock_conn).await?;
        let published = publish_batch(pool, js).await?;
        if published as i64 >= BATCH {
            continue;
        }
        tokio::select! {
            n = listener.recv() => { n.context("outbox notification")?; }
            () = tokio::time::sleep(IDLE_POLL) => {}
            () = shutdown.cancelled() => break,
        }
    }
    lock_conn.close().await.ok();
    Ok(())
}

async fn try_lock(conn: &mut PgConnection) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await?)
}

/// Fails when the lock connection no longer answers.
async fn still_locked(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT 1")
        .execute(conn)
        .await
        .context("the outbox relay's lock connection is gone")?;
    Ok(())
}

/// Publishes up to `BATCH` rows, deletes those JetStream acknowledged
/// (a prefix, in order), and returns how many.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn publish_batch(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<usize> {
    let rows: Vec<(i64, uuid::Uuid, String, Vec<u8>, String)> = sqlx::query_as(
        "SELECT id, msg_id, subject, payload, headers::text FROM outbox ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        crate::metrics::get().outbox_backlog.record(0, &[]);
        return Ok(0);
    }
    let mut pending = Vec::with_capacity(rows.len());
    for (_, msg_id, subject, payload, headers) in &rows {
        let publish = jetstream::message::PublishMessage::build()
            .headers(nats_headers(headers))
            .message_id(msg_id.to_string())
            .payload(payload.clone().into());
        match js.send_publish(subject.clone(), publish).await {
            Ok(ack) => pending.push(ack),
            Err(e) => {
                tracing::warn!(error = %e, "outbox publish failed");
                break;
            }
        }
    }
    let acks = join_all(pending.into_iter().map(|ack| ack.into_future())).await;
    let done = acks.iter().take_while(|a| a.is_ok()).count();
    if let Some(Err(e)) = acks.get(done) {
        tracing::warn!(error = %e, "outbox publish not acknowledged");
    }
    let ids: Vec<i64> = rows[..done].iter().map(|r| r.0).collect();
    if !ids.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&ids)
            .execute(pool)
            .await?;
    }
    crate::metrics::get()
        .outbox_backlog
        .record((rows.len() - done) as u64, &[]);
    Ok(done)
}
