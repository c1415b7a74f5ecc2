//! Replay: re-deliver stored messages from a stream sequence or a time,
//! through the same fan-out as live events (an admin command,
//! `natter-server replay`).
//!
//! A replay reads the whole events stream — every partition, in stream
//! order — with an ordered consumer of its own, so the push instances'
//! partitions and their committed positions are untouched. Only
//! `message_stored` events are re-delivered: clients drop a seq they have
//! seen, so repeating a message is safe, whereas repeating an invitation or
//! a `channel_joined` would show it to a person again. The replay stops at
//! the stream's last sequence as it was when it began.

use crate::fanout::Fanout;
use crate::membership::Membership;
use crate::publisher::Publisher;
use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use natter_platform::presence::{LIVENESS_CACHE, PresenceReader, REPAIR_WAIT};
use natter_platform::{Config, cache, db, nats};
use natter_protocol::events::{Event, decode_events};
use std::time::Duration;
use time::OffsetDateTime;

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub enum ReplayFrom {
    /// This stream sequence (1 is the first event kept).
    Sequence(u64),
    /// The first event stored at or after this time.
    Time(OffsetDateTime),
}

/// How long a replay waits for the next stored event before deciding the
/// stream has nothing more for it.
const IDLE: Duration = Duration::from_secs(5);

/// Re-delivers the stored messages from `from` to whoever is online now;
/// returns how many messages it re-delivered.
///
/// # Errors
/// When `NATTER_BUS_KEY` is missing, Postgres, NATS or Redis does not
/// answer, or a delivery fails.
pub async fn replay(config: &Config, from: ReplayFrom) -> anyhow::Result<u64> {
    let bus = config.bus_key("replay")?;
    let ns = config.namespace();
    let pool = db::connect_with(&config.database_url, 2, &config.database_session()).await?;
    let client = nats::connect(config, "natter-replay").await?;
    let redis = cache::connect(config).await?;
    let js = nats::jetstream(&client);
    let mut stream = js
        .get_stream(ns.events_stream())
        .await
        .with_context(|| format!("opening stream {}", ns.events_stream()))?;
    let last = stream
        .info()
        .await
        .context("reading stream info")?
        .state
        .last_sequence;
    let deliver_policy = match from {
        ReplayFrom::Sequence(start_sequence) => DeliverPolicy::ByStartSequence {
            start_sequence: start_sequence.max(1),
        },
        ReplayFrom::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
    };
    // Replay publishes event by event, directly: its publisher idles.
    let (publisher, _idle) = Publisher::start(client.clone(), bus.clone(), ns.clone());
    let fanout = Fanout {
        nats: client.clone(),
        bus,
        membership: Membership::new(pool),
        presence: PresenceReader::new(redis, ns.clone())
            .caching_hashes()
            .caching_liveness(LIVENESS_CACHE)
            .waiting_for_repair(REPAIR_WAIT),
        ns,
        publisher,
    };
    if last == 0 || matches!(from, ReplayFrom::Sequence(s) if s > last) {
        return Ok(0);
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("creating the replay consumer")?;
    let mut messages = consumer
        .messages()
        .await
        .context("reading the replay consumer")?;
    let mut replayed = 0;
    loop {
        let Ok(next) = tokio::time::timeout(IDLE, messages.next()).await else {
            break;
        };
        let Some(msg) = next else { break };
        let msg = msg.context("replaying")?;
        let sequence = msg.info().map_or(last, |i| i.stream_sequence);
        match decode_events(&msg.payload) {
            Ok(events) => {
                let stored = events
                    .iter()
                    .filter(|e| matches!(e, Event::MessageStored { .. }));
                for event in stored {
                    fanout
                        .handle(event)
                        .await
                        .with_context(|| format!("re-delivering event {sequence}"))?;
                    replayed += 1;
                }
            }
            Err(e) => tracing::warn!(sequence, error = %e, "skipping an undecodable event"),
        }
        if sequence >= last {
            break;
        }
    }
    client.flush().await.context("flushing deliveries")?;
    Ok(replayed)
}
