//! Writing outbox rows inside a caller's transaction, with the trace
//! context of the request that caused them.

use natter_platform::telemetry::propagation;
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
    sqlx::query(
        "INSERT INTO outbox (msg_id, subject, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(subject)
    .bind(payload)
    .bind(trace_headers(propagation::traceparent()))
    .execute(conn)
    .await?;
    Ok(())
}

/// The outbox `headers` JSON for a trace context: the relay publishes them
/// as NATS headers, so the trace continues through JetStream into push.
pub(crate) fn trace_headers(traceparent: Option<String>) -> String {
    traceparent.map_or_else(
        || "{}".to_owned(),
        |t| serde_json::json!({ "traceparent": t }).to_string(),
    )
}
