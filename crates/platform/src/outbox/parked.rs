//! Parked rows: outbox rows NATS refused for good (larger than its
//! largest message, a subject no stream takes), moved to `outbox_parked`
//! (migrations/0004) with the reason, so the rows behind them are
//! published. The relay parks them; an operator lists them and puts them
//! back (`natter-server dlq list|redrive`).

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

/// One parked row, as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ParkedRow {
    /// The outbox id it had; it names the row to `redrive`.
    pub id: i64,
    /// The subject it was to be published on.
    pub subject: String,
    /// Its payload's size in bytes.
    pub bytes: i64,
    /// Why NATS refused it.
    pub error: String,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
}

/// Moves outbox rows `ids` to the parked table, each with its error, in
/// the caller's transaction.
///
/// # Errors
/// When Postgres refuses.
pub(crate) async fn park(
    conn: &mut PgConnection,
    ids: &[i64],
    errors: &[String],
) -> anyhow::Result<()> {
    sqlx::query(
        "WITH moved AS ( \
             DELETE FROM outbox o USING UNNEST($1::bigint[], $2::text[]) AS p(id, error) \
             WHERE o.id = p.id \
             RETURNING o.id, o.msg_id, o.subject, o.payload, o.headers, o.created_at, p.error) \
         INSERT INTO outbox_parked (id, msg_id, subject, payload, headers, created_at, error) \
         SELECT id, msg_id, subject, payload, headers, created_at, error FROM moved",
    )
    .bind(ids)
    .bind(errors)
    .execute(conn)
    .await
    .context("parking outbox rows")?;
    Ok(())
}

/// Every parked row, oldest first.
///
/// # Errors
/// When Postgres does not answer.
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<ParkedRow>> {
    sqlx::query_as(
        "SELECT id, subject, octet_length(payload)::bigint AS bytes, error, parked_at \
         FROM outbox_parked ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .context("listing parked outbox rows")
}

/// Puts parked rows back at the end of the outbox, in their old order,
/// for the relay to publish again (one that still cannot be published is
/// parked again): the rows `ids`, or all when `None`. Returns the ids
/// moved; an id that is not parked is skipped.
///
/// # Errors
/// When Postgres refuses.
pub async fn redrive(pool: &PgPool, ids: Option<&[i64]>) -> anyhow::Result<Vec<i64>> {
    let moved: Vec<i64> = sqlx::query_scalar(
        "WITH moved AS ( \
             DELETE FROM outbox_parked WHERE $1::bigint[] IS NULL OR id = ANY($1) \
             RETURNING id, msg_id, subject, payload, headers, created_at), \
         inserted AS ( \
             INSERT INTO outbox (msg_id, subject, payload, headers, created_at) \
             SELECT msg_id, subject, payload, headers, created_at FROM moved ORDER BY id) \
         SELECT id FROM moved ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .context("putting parked rows back into the outbox")?;
    Ok(moved)
}
