//! The JetStream side: the durable pull consumer, the pull loop, workers
//! sharded by subject, and what happens to each event after handling —
//! ack, nak with a delay, or the dead-letter stream.
//!
//! Order: a channel's events share a subject (`<ns>.evt.channel.<id>`),
//! and every subject is handled by one worker, one event at a time, so a
//! channel's events reach the gateways in stream order while channels
//! proceed in parallel. (Several push instances share the consumer, so
//! across instances order holds only "under normal operation": clients
//! drop seen seqs and fill gaps, docs/protocol.md §2.3.)
//!
//! Shutdown: pulls are bounded batches with a short expiry, so on shutdown
//! the current batch is read to its end — nothing the server handed us is
//! left unread to wait out `ack_wait` — and the workers finish what is
//! queued.

use crate::fanout::Fanout;
use anyhow::Context;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use natter_platform::lifecycle::Supervisor;
use natter_platform::telemetry::propagation;
use natter_protocol::events::{DLQ_REASON_HEADER, Event};
use natter_protocol::subjects::Namespace;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Deliveries of one event before JetStream gives up on it; push
/// dead-letters it itself one attempt earlier, since JetStream then only
/// emits an advisory.
pub const MAX_DELIVER: i64 = 5;
/// How long an unacknowledged event waits before redelivery.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Unacknowledged events in flight across every instance.
const MAX_ACK_PENDING: i64 = 8192;
/// Workers per instance: handling is I/O-bound.
const WORKERS: usize = 16;
/// Events queued per worker before the pull loop waits.
const WORKER_QUEUE: usize = 256;
/// Events per pull request.
const PULL_BATCH: usize = 256;
/// How long a pull request waits for events: bounds shutdown latency.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Back-off when a pull request fails.
const PULL_RETRY: Duration = Duration::from_millis(500);
/// A quick second try, for a blip, before giving the event back.
const QUICK_RETRY: Duration = Duration::from_millis(100);

/// Creates push's durable consumer on the events stream if it does not
/// exist (every instance shares it). Only JetStream 2.9 features.
///
/// # Errors
/// When JetStream refuses.
pub async fn ensure(js: &jetstream::Context, ns: &Namespace) -> anyhow::Result<PullConsumer> {
    let stream = js
        .get_stream(ns.events_stream())
        .await
        .with_context(|| format!("opening stream {}", ns.events_stream()))?;
    let name = ns.push_consumer();
    let created = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            },
        )
        .await;
    match created {
        Ok(consumer) => Ok(consumer),
        // Another instance created it between our lookup and our create.
        Err(e) => stream
            .get_consumer(&name)
            .await
            .map_err(|_| anyhow::Error::new(e).context(format!("creating consumer {name}"))),
    }
}

/// Pulls and handles events until `shutdown`, then lets the workers finish
/// what they hold (the caller bounds how long). The workers run under
/// `supervisor`: one that dies turns the service unready at once.
pub async fn run(
    consumer: PullConsumer,
    js: jetstream::Context,
    fanout: Fanout,
    supervisor: &Supervisor,
    shutdown: CancellationToken,
) {
    let workers = TaskTracker::new();
    let mut queues = Vec::with_capacity(WORKERS);
    for _ in 0..WORKERS {
        let (tx, rx) = mpsc::channel(WORKER_QUEUE);
        queues.push(tx);
        let worker = Worker {
            fanout: fanout.clone(),
            js: js.clone(),
            shutdown: shutdown.clone(),
        };
        supervisor.spawn("push worker", workers.track_future(worker.run(rx)));
    }
    while !shutdown.is_cancelled() {
        let batch = consumer
            .batch()
            .max_messages(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pulling events failed");
                tokio::select! {
                    () = tokio::time::sleep(PULL_RETRY) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
        };
        while let Some(next) = batch.next().await {
            match next {
                Ok(msg) => {
                    let queue = &queues[shard(&msg.subject, queues.len())];
                    // A dead worker is logged and reported by the
                    // supervisor; its events return after `ack_wait`.
                    let _ = queue.send(msg).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pull request ended with an error");
                    break;
                }
            }
        }
    }
    drop(queues);
    workers.close();
    workers.wait().await;
}

/// The worker of a subject: the same subject always maps to the same one.
fn shard(subject: &str, workers: usize) -> usize {
    let mut h = DefaultHasher::new();
    subject.hash(&mut h);
    usize::try_from(h.finish() % workers as u64).unwrap_or(0)
}

struct Worker {
    fanout: Fanout,
    js: jetstream::Context,
    shutdown: CancellationToken,
}

/// Why an event is not acknowledged as handled.
enum Failure {
    /// It can never be handled: straight to the dead-letter stream.
    Poison(String),
    /// A dependency failed: retry later, unless it has failed too often.
    Transient(anyhow::Error),
}

impl Worker {
    async fn run(self, mut queue: mpsc::Receiver<jetstream::Message>) {
        while let Some(msg) = queue.recv().await {
            self.process(msg).await;
        }
    }

    async fn process(&self, msg: jetstream::Message) {
        // One trace from the writer's request through to the gateways: the
        // parent must be set before the span is first entered.
        let span = tracing::debug_span!("push.event", subject = %msg.subject);
        propagation::adopt(&span, msg.headers.as_ref());
        self.settle(msg).instrument(span).await;
    }

    async fn settle(&self, msg: jetstream::Message) {
        let (delivered, pending) = msg.info().map_or((1, 0), |i| (i.delivered, i.pending));
        natter_platform::metrics::get()
            .consumer_pending
            .record(pending, &[]);
        let outcome = match serde_json::from_slice::<Event>(&msg.payload) {
            Err(e) => Err(Failure::Poison(format!("undecodable event: {e}"))),
            Ok(event) => self.handle(&event).await.map_err(Failure::Transient),
        };
        let settled = match outcome {
            Ok(()) => msg
                .ack()
                .await
                .map_err(anyhow::Error::from_boxed)
                .context("ack"),
            Err(Failure::Poison(reason)) => self.dead_letter(&msg, &reason).await,
            Err(Failure::Transient(e)) if delivered >= MAX_DELIVER - 1 => {
                tracing::error!(error = ?e, delivered, "event keeps failing; dead-lettering it");
                self.dead_letter(&msg, &format!("failed {delivered} times: {e:#}"))
                    .await
            }
            Err(Failure::Transient(e)) => {
                let delay = nak_delay(delivered);
                tracing::warn!(error = ?e, delivered, ?delay, "event failed; will retry");
                msg.ack_with(AckKind::Nak(Some(delay)))
                    .await
                    .map_err(anyhow::Error::from_boxed)
                    .context("nak")
            }
        };
        if let Err(e) = settled {
            // Unsettled events come back after ack_wait: at least once.
            tracing::warn!(error = ?e, "could not settle an event");
        }
    }

    /// Handles an event, trying once more after a short pause so a blip
    /// does not reorder the channel through a redelivery.
    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        match self.fanout.handle(event).await {
            Ok(()) => Ok(()),
            Err(_) if !self.shutdown.is_cancelled() => {
                tokio::time::sleep(QUICK_RETRY).await;
                self.fanout.handle(event).await
            }
            Err(e) => Err(e),
        }
    }

    /// Republishes the event to the dead-letter stream (same suffix,
    /// durable before the original is acked), then acks it.
    async fn dead_letter(&self, msg: &jetstream::Message, reason: &str) -> anyhow::Result<()> {
        let ns = &self.fanout.ns;
        let suffix = msg
            .subject
            .strip_prefix(&ns.event_subject(""))
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown");
        let mut publish = PublishMessage::build()
            .payload(msg.payload.clone())
            .header(DLQ_REASON_HEADER, header_safe(reason));
        if let Ok(info) = msg.info() {
            publish = publish.message_id(format!("dlq-{}", info.stream_sequence));
        }
        self.js
            .send_publish(ns.dlq_subject(suffix), publish)
            .await
            .context("dead-lettering")?
            .await
            .context("dead-letter not acknowledged")?;
        tracing::error!(%reason, "event dead-lettered");
        msg.ack()
            .await
            .map_err(anyhow::Error::from_boxed)
            .context("ack")
    }
}

/// 1 s, 4 s, 16 s, … (at most 30 s): long enough for a restarting
/// dependency, short of JetStream's own `ack_wait`.
fn nak_delay(delivered: i64) -> Duration {
    let exp = u32::try_from(delivered.saturating_sub(1).clamp(0, 3)).unwrap_or(3);
    Duration::from_secs(4u64.pow(exp)).min(ACK_WAIT)
}

/// A header value: one line, bounded.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_stay_below_ack_wait() {
        assert_eq!(nak_delay(1), Duration::from_secs(1));
        assert_eq!(nak_delay(2), Duration::from_secs(4));
        assert_eq!(nak_delay(3), Duration::from_secs(16));
        assert_eq!(nak_delay(9), ACK_WAIT);
    }

    #[test]
    fn a_subject_always_goes_to_the_same_worker() {
        let a = shard("ns.evt.channel.1", WORKERS);
        assert_eq!(a, shard("ns.evt.channel.1", WORKERS));
        assert!(a < WORKERS);
    }

    #[test]
    fn dead_letter_reasons_fit_in_a_header() {
        assert_eq!(header_safe("a\r\nb"), "a  b");
        assert_eq!(header_safe(&"x".repeat(1000)).len(), 512);
    }
}
