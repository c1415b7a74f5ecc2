//! The dead letters: what natter could not deliver, for an operator to see
//! and send again, through `natter-server dlq list|redrive` or the admin
//! API (`/admin/v1/dlq`). Two places hold it:
//!
//! - **parked outbox rows** (`outbox:<id>`): rows NATS refused for good,
//!   moved aside by the relay (`natter_platform::outbox::parked`). A
//!   redrive puts them back at the end of the outbox; the relay publishes
//!   them (or parks them again if NATS still refuses).
//! - **dead-lettered events** (`dlq:<seq>`, the sequence in `<NS>_DLQ`):
//!   events push could not decode or route, with the reason in the
//!   `Natter-Dlq-Reason` header. A redrive puts each in the outbox, for the
//!   relay to publish to the events stream (the relay must be its one
//!   publisher, to keep each channel's order there: see
//!   `natter_platform::outbox::relay`), and then deletes it from the
//!   dead-letter stream: an event that
//!   decodes to its subject as the publisher computes it now
//!   (`Namespace::event_subject`, its channel's partition under the
//!   current `NATTER_PARTITIONS`), anything else to the subject it came
//!   from (`<ns>.dlq.p<k>.…` back to `<ns>.evt.p<k>.…`). The row's
//!   `msg_id` is fixed by `<seq>` (`OutboxRow::redriven`), so a redrive
//!   interrupted between the two steps and run again adds no second row
//!   while the first waits in the outbox, and JetStream drops a second
//!   publish within its de-duplication window (5 minutes).

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, stream::Stream};
use futures::StreamExt;
use natter_platform::outbox::{self, OutboxRow, parked};
use natter_platform::{Config, db, nats};
use natter_protocol::events::{DLQ_REASON_HEADER, decode_events};
use natter_protocol::subjects::Namespace;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;

/// What names one dead letter: `outbox:<id>` or `dlq:<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterId {
    /// A parked outbox row, by the outbox id it had.
    Parked(i64),
    /// An event in the dead-letter stream, by its sequence there.
    Event(u64),
}

impl fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parked(id) => write!(f, "outbox:{id}"),
            Self::Event(seq) => write!(f, "dlq:{seq}"),
        }
    }
}

impl FromStr for DeadLetterId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a dead letter id: outbox:<id> or dlq:<seq>, as `dlq list` shows")
        };
        match s.split_once(':') {
            Some(("outbox", id)) => id.parse().map(Self::Parked).map_err(|_| bad()),
            Some(("dlq", seq)) => seq.parse().map(Self::Event).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeadLetterId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for DeadLetterId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One thing natter could not deliver.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// What names it to `redrive`.
    pub id: DeadLetterId,
    /// The subject it was published to, or is to be: a redrive sends it
    /// there.
    pub subject: String,
    /// Why it landed here.
    pub reason: String,
    /// When it landed here.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Its payload's size.
    pub bytes: u64,
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self
            .at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| fmt::Error)?;
        write!(
            f,
            "{}\t{at}\t{}\t{} bytes\t{}",
            self.id, self.subject, self.bytes, self.reason
        )
    }
}

/// Which dead letters to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every one there is.
    All,
    /// These.
    Ids(Vec<DeadLetterId>),
}

/// What a redrive sent again.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Redriven {
    /// Sent again, in order.
    pub redriven: Vec<DeadLetterId>,
    /// Asked for but not there (already redriven, or never was).
    pub missing: Vec<DeadLetterId>,
}

/// Every dead letter: the parked rows, then the dead-lettered events,
/// each oldest first.
///
/// # Errors
/// When Postgres or NATS does not answer.
pub async fn list(config: &Config) -> anyhow::Result<Vec<DeadLetter>> {
    let pool = db::connect_with(&config.database_url, 1, &config.database_session()).await?;
    let mut letters: Vec<DeadLetter> = parked::list(&pool)
        .await?
        .into_iter()
        .map(|row| DeadLetter {
            id: DeadLetterId::Parked(row.id),
            subject: row.subject,
            reason: row.error,
            at: row.parked_at,
            bytes: u64::try_from(row.bytes).unwrap_or(0),
        })
        .collect();
    pool.close().await;
    let ns = config.namespace();
    let js = nats::jetstream(&nats::connect(config, "natter-dlq").await?);
    if let Some(stream) = dlq_stream(&js, &ns).await? {
        letters.extend(events(&stream, &ns).await?);
    }
    Ok(letters)
}

/// Sends the selected dead letters again (see the module's doc).
///
/// # Errors
/// When Postgres or NATS does not answer (the letters redriven before it
/// stay redriven).
pub async fn redrive(config: &Config, selection: &Selection) -> anyhow::Result<Redriven> {
    let (rows, seqs) = match selection {
        Selection::All => (None, None),
        Selection::Ids(ids) => {
            let rows: Vec<i64> = ids
                .iter()
                .filter_map(|id| match id {
                    DeadLetterId::Parked(id) => Some(*id),
                    DeadLetterId::Event(_) => None,
                })
                .collect();
            let seqs: Vec<u64> = ids
                .iter()
                .filter_map(|id| match id {
                    DeadLetterId::Event(seq) => Some(*seq),
                    DeadLetterId::Parked(_) => None,
                })
                .collect();
            (Some(rows), Some(seqs))
        }
    };
    let mut outcome = Redriven::default();
    // Both kinds go back through the outbox.
    let pool = db::connect_with(&config.database_url, 1, &config.database_session()).await?;
    if rows.as_ref().is_none_or(|r| !r.is_empty()) {
        let moved = parked::redrive(&pool, rows.as_deref()).await?;
        for id in rows.unwrap_or_default() {
            if !moved.contains(&id) {
                outcome.missing.push(DeadLetterId::Parked(id));
            }
        }
        outcome
            .redriven
            .extend(moved.into_iter().map(DeadLetterId::Parked));
    }
    if seqs.as_ref().is_none_or(|s| !s.is_empty()) {
        let ns = config.namespace();
        let js = nats::jetstream(&nats::connect(config, "natter-dlq").await?);
        let stream = dlq_stream(&js, &ns).await?;
        let seqs = match (seqs, &stream) {
            (Some(seqs), _) => seqs,
            (None, Some(stream)) => events(stream, &ns)
                .await?
                .into_iter()
                .filter_map(|letter| match letter.id {
                    DeadLetterId::Event(seq) => Some(seq),
                    DeadLetterId::Parked(_) => None,
                })
                .collect(),
            (None, None) => Vec::new(),
        };
        for seq in seqs {
            let id = DeadLetterId::Event(seq);
            match &stream {
                Some(stream) if redrive_event(&pool, stream, &ns, seq).await? => {
                    outcome.redriven.push(id);
                }
                _ => outcome.missing.push(id),
            }
        }
    }
    pool.close().await;
    Ok(outcome)
}

/// The dead-letter stream, if it was ever declared.
async fn dlq_stream(js: &jetstream::Context, ns: &Namespace) -> anyhow::Result<Option<Stream>> {
    match js.get_stream(ns.dlq_stream()).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) if nats::is_not_found(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("opening stream {}", ns.dlq_stream())),
    }
}

/// How long listing waits for the next event before it gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The dead-lettered events, oldest first.
async fn events(stream: &Stream, ns: &Namespace) -> anyhow::Result<Vec<DeadLetter>> {
    let mut stream = stream.clone();
    let held = stream
        .info()
        .await
        .context("reading the dead-letter stream")?
        .state
        .messages;
    if held == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(OrderedConfig::default())
        .await
        .context("reading the dead-letter stream")?;
    let mut messages = consumer
        .messages()
        .await
        .context("reading the dead-letter stream")?;
    let mut letters = Vec::new();
    loop {
        let next = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .context("the dead-letter stream stopped answering")?;
        let Some(msg) = next else { break };
        let msg = msg.context("reading the dead-letter stream")?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, at, pending) = (info.stream_sequence, info.published, info.pending);
        letters.push(DeadLetter {
            id: DeadLetterId::Event(seq),
            subject: redrive_subject(ns, &msg.subject, &msg.payload)
                .unwrap_or_else(|| msg.subject.to_string()),
            reason: msg
                .headers
                .as_ref()
                .and_then(|h| h.get(DLQ_REASON_HEADER))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default(),
            at,
            bytes: msg.payload.len() as u64,
        });
        if pending == 0 {
            break;
        }
    }
    Ok(letters)
}

/// Where a dead letter on `dlq_subject` carrying `payload` is redriven to:
/// a decodable event (or array of them, all of one partition: push
/// dead-letters an array's events one by one) to its (first) subject as
/// published now (a partition count changed since it was dead-lettered
/// moves it with its channel), anything else back to the events subject it
/// came from. `None` for a subject outside this namespace's dead-letter
/// stream.
fn redrive_subject(ns: &Namespace, dlq_subject: &str, payload: &[u8]) -> Option<String> {
    let came_from = ns.event_subject_of_dead_letter(dlq_subject)?;
    Some(match decode_events(payload).as_deref() {
        Ok([event, ..]) => ns.event_subject(event),
        _ => came_from,
    })
}

/// Puts dead-lettered event `seq` in the outbox, for where it came from,
/// then deletes it from the dead-letter stream: whether it was there.
async fn redrive_event(
    pool: &sqlx::PgPool,
    stream: &Stream,
    ns: &Namespace,
    seq: u64,
) -> anyhow::Result<bool> {
    let msg = match stream.get_raw_message(seq).await {
        Ok(msg) => msg,
        Err(e)
            if matches!(
                e.kind(),
                jetstream::stream::RawMessageErrorKind::NoMessageFound
            ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e).with_context(|| format!("reading dead letter dlq:{seq}")),
    };
    let subject = redrive_subject(ns, &msg.subject, &msg.payload).with_context(|| {
        format!(
            "dlq:{seq} has no events subject to go back to ({})",
            msg.subject
        )
    })?;
    let row = OutboxRow::redriven(subject, msg.payload.to_vec(), seq);
    let mut conn = pool
        .acquire()
        .await
        .with_context(|| format!("redriving dlq:{seq}"))?;
    outbox::insert(&mut conn, std::slice::from_ref(&row))
        .await
        .with_context(|| format!("redriving dlq:{seq}"))?;
    stream
        .delete_message(seq)
        .await
        .with_context(|| format!("deleting dlq:{seq} after its redrive"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::events::Event;

    #[test]
    fn a_decodable_dead_letter_goes_to_its_current_partition_and_others_back() {
        let ns = Namespace::new("n").with_partitions(16);
        let event = Event::MemberJoined {
            channel_id: natter_protocol::ChannelId(4),
            user_id: natter_protocol::UserId(2),
            username: None,
        };
        let payload = serde_json::to_vec(&event).expect("encoded");
        let now = ns.event_subject(&event);
        assert_eq!(
            redrive_subject(&ns, "n.dlq.p0.channel.4", &payload),
            Some(now.clone()),
            "dead-lettered under another partition count"
        );
        assert_eq!(
            redrive_subject(&ns, &ns.dlq_subject(&now["n.evt.".len()..]), &payload),
            Some(now)
        );
        assert_eq!(
            redrive_subject(&ns, "n.dlq.p3.channel.9", b"not an event").as_deref(),
            Some("n.evt.p3.channel.9")
        );
        assert_eq!(redrive_subject(&ns, "m.dlq.p3.channel.9", &payload), None);
        let array = serde_json::to_vec(&[&event, &event]).expect("encoded");
        assert_eq!(
            redrive_subject(&ns, "n.dlq.p0.channel.4", &array),
            Some(ns.event_subject(&event)),
            "a channel's events carried together"
        );
    }

    #[test]
    fn ids_read_as_they_are_shown() {
        for id in [DeadLetterId::Parked(12), DeadLetterId::Event(3)] {
            assert_eq!(id.to_string().parse::<DeadLetterId>(), Ok(id));
        }
        assert_eq!("outbox:12".parse(), Ok(DeadLetterId::Parked(12)));
        for bad in ["12", "outbox:", "dlq:x", "events:1", "dlq:-1"] {
            assert!(bad.parse::<DeadLetterId>().is_err(), "{bad}");
        }
    }
}
