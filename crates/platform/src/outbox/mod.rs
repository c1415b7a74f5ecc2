//! The outbox: what one service announces to the others, written in the
//! same transaction as the change it announces and published to NATS by
//! the [`relay`]. Auth (session revocations) and message (domain events,
//! one at a time and in write batches) write it, and so does `dlq
//! redrive` (dead-lettered events sent again: the relay must be the events
//! stream's one publisher); message runs the relay.
//! The row format is defined here and nowhere else, so writers hand in
//! typed events and never build a row themselves.
//!
//! A row of table `outbox` (migrations/0001_users_sessions.sql):
//! - `id`, serial: the publishing order, so a channel's events keep their
//!   seq order;
//! - `msg_id`, a UUID v7: published as `Nats-Msg-Id`, so JetStream drops a
//!   row published twice (a crash between publish and delete);
//! - `subject`: the NATS subject, final: from the namespace, the event's
//!   partition and its channel or user (`Namespace::event_subject`);
//! - `payload`: the event's JSON (or, from the message writer, a JSON
//!   array of one partition's events, on its first event's subject);
//! - `headers`: a JSON object of string values, published as NATS headers;
//!   today the W3C `traceparent` of the request that caused the event (of
//!   an array, its first event's: each `message_stored` event also
//!   carries its own), so one trace continues through JetStream into push
//!   and the gateways.
//!
//! A row NATS refuses for good is moved to `outbox_parked` by the relay
//! ([`parked`]), so it cannot hold back the rows behind it.

mod lease;
pub mod parked;
pub mod relay;

use crate::telemetry::propagation;
use anyhow::Context;
use natter_protocol::events::{Event, SessionRevoked};
use natter_protocol::subjects::Namespace;
use sqlx::PgConnection;

/// The first half of a redriven dead letter's `msg_id` ("redrive" in
/// ASCII): a `now_v7` id, which starts with the time in milliseconds,
/// reaches it in the year 5955.
const REDRIVEN: u64 = u64::from_be_bytes(*b"redrive\0");

/// One encoded row, ready to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    msg_id: uuid::Uuid,
    subject: String,
    payload: Vec<u8>,
    headers: String,
}

impl OutboxRow {
    /// A domain event for the events stream, carrying the trace context
    /// `traceparent` (of the request that caused it).
    ///
    /// # Errors
    /// When the event cannot be encoded.
    pub fn event(
        ns: &Namespace,
        event: &Event,
        traceparent: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(
            ns.event_subject(event),
            serde_json::to_vec(event).context("encoding an event")?,
            traceparent,
        ))
    }

    /// A session revocation for the gateways' sessions stream.
    ///
    /// # Errors
    /// When the announcement cannot be encoded.
    pub fn session_revoked(
        ns: &Namespace,
        revoked: &SessionRevoked,
        traceparent: Option<String>,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(
            ns.session_revoked_subject(),
            serde_json::to_vec(revoked).context("encoding a session revocation")?,
            traceparent,
        ))
    }

    /// A dead-lettered event sent again, as it was, to `subject`. Its
    /// `msg_id` is fixed by `seq`, its sequence in the dead-letter stream,
    /// so a redrive interrupted after this row's commit and run again is
    /// stored once (within JetStream's de-duplication window).
    #[must_use]
    pub fn redriven(subject: String, payload: Vec<u8>, seq: u64) -> Self {
        Self {
            msg_id: uuid::Uuid::from_u64_pair(REDRIVEN, seq),
            subject,
            payload,
            headers: headers_json(None),
        }
    }

    fn new(subject: String, payload: Vec<u8>, traceparent: Option<String>) -> Self {
        Self {
            msg_id: new_msg_id(),
            subject,
            payload,
            headers: headers_json(traceparent),
        }
    }

    /// Its JetStream de-duplication id.
    #[must_use]
    pub fn msg_id(&self) -> uuid::Uuid {
        self.msg_id
    }

    /// Where the relay publishes it.
    #[must_use]
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Queues a domain event inside the caller's transaction, with the
/// current span's trace context.
///
/// # Errors
/// When encoding or the insert fails.
pub async fn event(conn: &mut PgConnection, ns: &Namespace, event: &Event) -> anyhow::Result<()> {
    insert(
        conn,
        &[OutboxRow::event(ns, event, propagation::traceparent())?],
    )
    .await
}

/// Queues a session revocation inside the caller's transaction, with the
/// current span's trace context.
///
/// # Errors
/// When encoding or the insert fails.
pub async fn session_revoked(
    conn: &mut PgConnection,
    ns: &Namespace,
    revoked: &SessionRevoked,
) -> anyhow::Result<()> {
    let row = OutboxRow::session_revoked(ns, revoked, propagation::traceparent())?;
    insert(conn, &[row]).await
}

/// Inserts `rows` in one statement (an `UNNEST` of arrays), in order, so
/// a write batch costs one round trip however many events it announces.
/// A row whose `msg_id` the outbox already holds is not added again (a
/// dead letter redriven twice before the relay published it).
///
/// # Errors
/// When Postgres refuses; the `sqlx::Error` stays reachable by downcasting,
/// so a caller can still tell a deadlock from other failures.
pub async fn insert(conn: &mut PgConnection, rows: &[OutboxRow]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let msg_ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.msg_id).collect();
    let subjects: Vec<&str> = rows.iter().map(|r| r.subject.as_str()).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload.as_slice()).collect();
    let headers: Vec<&str> = rows.iter().map(|r| r.headers.as_str()).collect();
    sqlx::query(
        "INSERT INTO outbox (msg_id, subject, payload, headers) \
         SELECT i, s, p, h::jsonb \
         FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[]) WITH ORDINALITY AS x(i, s, p, h, n) \
         ORDER BY n \
         ON CONFLICT (msg_id) DO NOTHING",
    )
    .bind(&msg_ids)
    .bind(&subjects)
    .bind(&payloads)
    .bind(&headers)
    .execute(conn)
    .await
    .context("inserting outbox rows")?;
    Ok(())
}

/// A fresh `msg_id`, for an outbox row written by a caller's own SQL.
#[must_use]
pub fn new_msg_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// The `headers` column for a trace context.
#[must_use]
pub fn headers_json(traceparent: Option<String>) -> String {
    traceparent.map_or_else(
        || "{}".to_owned(),
        |t| serde_json::json!({ "traceparent": t }).to_string(),
    )
}

/// The `headers` column as NATS headers: its string values; anything
/// else in it is ignored.
fn nats_headers(json: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(json) {
        for (name, value) in map {
            if let Some(value) = value.as_str() {
                headers.insert(name.as_str(), value);
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::{ChannelId, SessionId, UserId};

    const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn joined() -> Event {
        Event::MemberJoined {
            channel_id: ChannelId(4),
            user_id: UserId(2),
            username: Some("bob".into()),
        }
    }

    #[test]
    fn an_event_row_goes_to_its_event_subject_with_the_event_as_payload() {
        let ns = Namespace::new("test");
        let row = OutboxRow::event(&ns, &joined(), None).expect("encoded");
        assert_eq!(row.subject(), "test.evt.p4.channel.4");
        let three = ns.clone().with_partitions(3);
        let row = OutboxRow::event(&three, &joined(), None).expect("encoded");
        assert_eq!(row.subject(), "test.evt.p2.channel.4");
        assert_eq!(
            serde_json::from_slice::<Event>(&row.payload).expect("decodes"),
            joined()
        );
        assert_eq!(row.headers, "{}");
    }

    #[test]
    fn a_revocation_row_goes_to_the_sessions_subject() {
        let ns = Namespace::new("test");
        let revoked = SessionRevoked {
            session_id: SessionId(uuid::Uuid::nil()),
            user_id: UserId(9),
        };
        let row = OutboxRow::session_revoked(&ns, &revoked, None).expect("encoded");
        assert_eq!(row.subject(), ns.session_revoked_subject());
        assert_eq!(
            serde_json::from_slice::<SessionRevoked>(&row.payload).expect("decodes"),
            revoked
        );
    }

    #[test]
    fn every_row_gets_its_own_time_ordered_msg_id() {
        let ns = Namespace::new("test");
        let a = OutboxRow::event(&ns, &joined(), None).expect("encoded");
        let b = OutboxRow::event(&ns, &joined(), None).expect("encoded");
        assert_ne!(a.msg_id(), b.msg_id());
        assert_eq!(a.msg_id().get_version_num(), 7);
        assert!(a.msg_id() < b.msg_id());
    }

    #[test]
    fn the_trace_context_is_stored_and_published_as_a_header() {
        let row =
            OutboxRow::event(&Namespace::new("t"), &joined(), Some(TRACE.into())).expect("encoded");
        let headers = nats_headers(&row.headers);
        assert_eq!(
            headers
                .get("traceparent")
                .map(async_nats::HeaderValue::as_str),
            Some(TRACE)
        );
        assert_eq!(nats_headers(&headers_json(None)).iter().count(), 0);
    }

    #[test]
    fn stored_headers_that_are_not_strings_are_not_published() {
        let headers = nats_headers(r#"{"traceparent":"x","n":1,"o":{"a":"b"}}"#);
        assert_eq!(headers.iter().count(), 1);
        assert_eq!(nats_headers("not json").iter().count(), 0);
        assert_eq!(nats_headers("[]").iter().count(), 0);
    }
}
