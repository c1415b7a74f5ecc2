//! The ceilings natter is compared with, measured on the same machine in
//! the same run: Postgres inserting message-shaped rows in 100-row
//! transactions (through sqlx, rows sent by the client as arrays and
//! expanded with `unnest`), and JetStream taking pipelined publishes (a
//! window of acks outstanding) on a file-backed stream like natter's.

use anyhow::Context;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

/// `--connections` connections each insert `--batch`-row transactions into
/// a table shaped like `messages` (primary key (channel_id, seq)) for
/// `--seconds`: rows/s committed.
pub async fn postgres(
    database_url: &str,
    connections: usize,
    batch: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(u32::try_from(connections)?)
        .connect(database_url)
        .await
        .context("connect to Postgres")?;
    sqlx::query("DROP TABLE IF EXISTS bench_ceiling_messages")
        .execute(&pool)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_ceiling_messages (channel_id bigint NOT NULL, seq bigint NOT NULL, \
         user_id bigint NOT NULL, client_msg_id text NOT NULL, content text NOT NULL, \
         sent_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (channel_id, seq))",
    )
    .execute(&pool)
    .await?;
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let pool = pool.clone();
        tasks.spawn(async move {
            let channel = i64::try_from(c)?;
            let mut seq = 0i64;
            let mut rows = 0u64;
            while Instant::now() < stop_at {
                let seqs: Vec<i64> = (seq + 1..=seq + i64::try_from(batch)?).collect();
                seq += i64::try_from(batch)?;
                let ids: Vec<String> = seqs.iter().map(|s| format!("{channel}-{s}")).collect();
                let contents: Vec<String> =
                    seqs.iter().map(|s| format!("ceiling message {s}")).collect();
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO bench_ceiling_messages (channel_id, seq, user_id, client_msg_id, content) \
                     SELECT $1, s, $1, i, t FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(s, i, t)",
                )
                .bind(channel)
                .bind(&seqs)
                .bind(&ids)
                .bind(&contents)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                rows += batch as u64;
            }
            anyhow::Ok(rows)
        });
    }
    let mut rows = 0;
    while let Some(r) = tasks.join_next().await {
        rows += r??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_ceiling_messages")
        .execute(&pool)
        .await?;
    Ok(json!({
        "method": "sqlx, INSERT … SELECT FROM unnest(arrays), one transaction per batch",
        "connections": connections, "batch": batch, "rows": rows,
        "rows_per_s": (rows as f64 / elapsed).round(),
    }))
}

/// Publishes ~200-byte messages to a fresh file-backed stream for
/// `seconds`, `window` acks outstanding: acknowledged publishes/s.
pub async fn jetstream(
    nats_url: &str,
    namespace: &str,
    window: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let name = format!("{namespace}_CEILING");
    let subject = format!("{namespace}.ceiling");
    let _ = js.delete_stream(&name).await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut acked = 0u64;
    while Instant::now() < stop_at {
        while pending.len() < window.max(1) {
            pending.push(
                js.publish(subject.clone(), payload.clone())
                    .await?
                    .into_future(),
            );
        }
        if let Some(ack) = pending.next().await {
            ack?;
            acked += 1;
        }
    }
    while let Some(ack) = pending.next().await {
        ack?;
        acked += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok(json!({
        "method": "async-nats, publish with a window of outstanding acks, file storage",
        "window": window, "publishes": acked,
        "publishes_per_s": (acked as f64 / elapsed).round(),
    }))
}
