//! Writing outbox rows inside a caller's transaction.

use natter_protocol::events::{Event, SessionRevoked};
use natter_protocol::subjects::Namespace;
use sqlx::PgConnection;

/// Queues a domain event for the events stream.
pub(crate) async fn event(
    conn: &mut PgConnection,
    ns: &Namespace,
    event: &Event,
) -> anyhow::Result<()> {
    let subject = ns.event_subject(&event.subject_suffix());
    insert(conn, &subject, serde_json::to_vec(event)?).await
}

/// Queues a session revocation for the gateways.
pub(crate) async fn session_revoked(
    conn: &mut PgConnection,
    ns: &Namespace,
    revoked: &SessionRevoked,
) -> anyhow::Result<()> {
    insert(
        conn,
        &ns.session_revoked_subject(),
        serde_json::to_vec(revoked)?,
    )
    .await
}

async fn insert(conn: &mut PgConnection, subject: &str, payload: Vec<u8>) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO outbox (msg_id, subject, payload) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::now_v7())
        .bind(subject)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}
