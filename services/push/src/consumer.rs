//! Consuming one owned partition: strictly in stream order, from the
//! committed position onward, for as long as the lease is held.
//!
//! The partition is read with a [`Tail`] of its own (an ephemeral consumer
//! without acks, filtered on `<ns>.evt.p<k>.>`, starting after the
//! committed position, whose overlapping pull requests never leave it
//! waiting on a request the server dropped).
//! A stream message carries one event or, for what one call stored in one
//! partition, an array of them, of one or more channels (`decode_events`);
//! each event is handled on
//! its own, and the position passes a message only once all of its events
//! are delivered (a crash in between delivers its first ones again).
//! What has arrived is handled as one batch — one presence read, one query
//! of read positions, one message per gateway for each run of up to 64 of
//! its events (`merge.rs`; an event too large to merge goes alone), joined
//! with the runs other partitions publish meanwhile (`publisher.rs`) — in
//! order, and only while the
//! lease is still held. The position moves after the deliveries are
//! published and is committed at most every
//! [`COMMIT_EVERY`] (and when the partition is released), so a crash
//! repeats at most that much: at least once, never reordered.
//!
//! A failure holds back this partition only: the event is retried with a
//! doubling pause (50 ms to 2 s) for as long as it takes (a dependency
//! outage is waited out, never dead-lettered), nothing after it is pulled
//! meanwhile, and the other partitions go on. Only an event that cannot be
//! decoded, or whose deliveries NATS will never accept (larger than its
//! payload limit), goes to the dead-letter stream, in its place in the
//! order, and the partition moves past it.

use crate::fanout::{Fanout, Unroutable, record, sockets_in};
use crate::leases::Lease;
use crate::merge;
use crate::offsets::{Committed, Offsets};
use crate::progress::{Backoff, Outage, Progress};
use crate::recipients::GatewayBatch;
use anyhow::Context;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream::Stream};
use futures::StreamExt;
use natter_platform::tail::{Tail, Tailed};
use natter_platform::telemetry::propagation;
use natter_protocol::events::{DLQ_REASON_HEADER, Event, decode_events};
use natter_protocol::partition::Partition;
use std::ops::Range;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most stream messages read as one batch; their events are handled in
/// batches of about as many (a message's events are never split).
const BATCH: usize = 256;
/// An event that reaches this many sockets makes its partition heavy:
/// the next batch waits up to [`LINGER`] for more events, so one presence
/// read (a fifth of the core in a fan-out to thousands, per batch, not
/// per event) serves them all. Partitions of small channels never wait.
const HEAVY: u64 = 1_000;
/// How long a heavy partition waits for a batch to grow.
const LINGER: Duration = Duration::from_millis(5);
/// How often the position is committed while events flow: what a crash
/// delivers twice.
pub const COMMIT_EVERY: Duration = Duration::from_millis(500);

/// What every partition's consumer shares; cheap to clone.
#[derive(Clone)]
pub struct Consumers {
    /// The events stream.
    pub stream: Stream,
    /// Dead-letter publishes.
    pub js: jetstream::Context,
    /// Committed positions.
    pub offsets: Offsets,
    /// Handling events.
    pub fanout: Fanout,
    /// Held-back partitions, for `/readyz` and the log.
    pub progress: Progress,
    /// Offset commits, logged once per outage across partitions.
    pub commits: Arc<Mutex<Outage>>,
}

impl Consumers {
    /// Consumes `partition` until its `lease` is lost (stopping at once)
    /// or `stop` is cancelled (finishing the batch in hand and committing).
    pub async fn consume(self, partition: Partition, lease: Lease, stop: CancellationToken) {
        let worker = Worker {
            consumers: self,
            partition,
            lease,
            stop,
            committed: None,
            position: 0,
            last_commit: Instant::now(),
            heavy: false,
        };
        worker.run().await;
    }

    /// `partition` is no longer this instance's: it holds nothing back here.
    pub fn forget(&self, partition: Partition) {
        self.progress.moving(partition);
    }
}

/// Why a partition's consumer stops.
#[derive(Debug)]
enum Halt {
    /// The lease is gone: stop at once, commit nothing.
    Lost,
    /// Released or shutting down: commit what was delivered.
    Stopped,
}

/// One decodable event, as it came from the stream (one of the events of
/// `message`).
struct Item {
    sequence: u64,
    message: Arc<jetstream::Message>,
    event: Event,
    /// Its place among its message's events, from 0.
    index: usize,
    /// How many events its message carries.
    of: usize,
}

impl Item {
    /// The position once this event and every one before it are
    /// delivered: past its message if it was the message's last event,
    /// else where it was.
    fn position_after(&self, position: u64) -> u64 {
        if self.index + 1 == self.of {
            self.sequence
        } else {
            position
        }
    }

    /// Makes `span` continue this event's trace: the one the event carries
    /// (a bus message's events each come from their own write), else its
    /// message's headers.
    fn adopt_trace(&self, span: &tracing::Span) {
        match self.event.traceparent() {
            Some(traceparent) => propagation::adopt_traceparent(span, traceparent),
            None => propagation::adopt(span, self.message.headers.as_ref()),
        }
    }

    /// Links `span` to this event's trace, as [`Item::adopt_trace`] finds
    /// it; an event without its own is linked through its message's
    /// headers once, by the message's first event.
    fn link_trace(&self, span: &tracing::Span) {
        match self.event.traceparent() {
            Some(traceparent) => propagation::link_traceparent(span, traceparent),
            None if self.index == 0 => propagation::link(span, self.message.headers.as_ref()),
            None => {}
        }
    }
}

struct Worker {
    consumers: Consumers,
    partition: Partition,
    lease: Lease,
    stop: CancellationToken,
    /// What is committed; `None` until read.
    committed: Option<Committed>,
    /// The last stream sequence whose events are all delivered.
    position: u64,
    last_commit: Instant,
    /// Whether an event of the last batch reached [`HEAVY`] sockets.
    heavy: bool,
}

impl Worker {
    async fn run(mut self) {
        let halt = self.consume().await;
        if matches!(halt, Halt::Stopped) {
            self.commit().await;
        }
        self.consumers.progress.moving(self.partition);
        tracing::debug!(
            partition = self.partition.0,
            ?halt,
            position = self.position,
            "consumer stopped"
        );
    }

    async fn consume(&mut self) -> Halt {
        let ns = self.consumers.fanout.ns.clone();
        self.consumers
            .fanout
            .membership
            .invalidate_partition(self.partition, ns.partitions());
        let offsets = self.consumers.offsets.clone();
        let partition = self.partition;
        let read = || {
            let offsets = offsets.clone();
            async move { offsets.read(partition).await }
        };
        let committed = match self.retry(read).await {
            Ok(c) => c,
            Err(halt) => return halt,
        };
        self.committed = Some(committed);
        self.position = committed.sequence;
        loop {
            let from = self.position + 1;
            let (js, stream) = (&self.consumers.js, &self.consumers.stream);
            let filter = ns.partition_wildcard(partition);
            let opened = self
                .retry(|| Tail::open(js, stream, filter.clone(), from))
                .await;
            let tail = match opened {
                Ok(t) => t,
                Err(halt) => return halt,
            };
            if let Err(halt) = self.follow(tail).await {
                return halt;
            }
        }
    }

    /// Handles what `tail` brings until it fails (the caller opens a new
    /// one after the position) or the partition halts.
    async fn follow(&mut self, tail: Tail) -> Result<(), Halt> {
        let mut chunks = pin!(tail.messages().ready_chunks(BATCH));
        let mut backoff = Backoff::new();
        loop {
            let uncommitted = self.committed.is_some_and(|c| self.position > c.sequence);
            let commit_at = self.last_commit + COMMIT_EVERY;
            let chunk = tokio::select! {
                biased;
                () = self.lease.lost() => return Err(Halt::Lost),
                () = self.stop.cancelled() => return Err(Halt::Stopped),
                () = tokio::time::sleep_until(commit_at), if uncommitted => {
                    self.commit().await;
                    continue;
                }
                chunk = chunks.next() => chunk,
            };
            let Some(mut chunk) = chunk else {
                let error = anyhow::anyhow!("the partition's consumer ended");
                self.consumers.progress.held_back(self.partition, &error);
                self.pause(backoff.next_pause()).await?;
                return Ok(());
            };
            if self.heavy && chunk.len() < BATCH {
                // An end of the tail meanwhile is seen on the next turn.
                if let Ok(Some(more)) = tokio::time::timeout(LINGER, chunks.next()).await {
                    chunk.extend(more);
                }
            }
            let mut messages = Vec::with_capacity(chunk.len());
            let mut failure = None;
            for next in chunk {
                match next {
                    Ok(msg) => messages.push(msg),
                    Err(e) => {
                        failure = Some(anyhow::Error::new(e).context("reading the partition"));
                        break;
                    }
                }
            }
            self.handle(messages).await?;
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.commit().await;
            }
            if let Some(error) = failure {
                self.consumers.progress.held_back(self.partition, &error);
                self.pause(backoff.next_pause()).await?;
                return Ok(());
            }
        }
    }

    /// Handles `messages` in order: runs of decodable events as batches,
    /// each undecodable one dead-lettered in its place.
    async fn handle(&mut self, messages: Vec<Tailed>) -> Result<(), Halt> {
        let mut run = Vec::new();
        for Tailed {
            message: msg,
            stream_sequence: sequence,
            pending,
        } in messages
        {
            if sequence <= self.position {
                continue;
            }
            natter_platform::metrics::get().consumer_pending.record(
                pending,
                &natter_platform::metrics::attr("partition", self.partition.to_string()),
            );
            match decode_events(&msg.payload) {
                Ok(events) => {
                    // One message's events may number hundreds: a batch
                    // of them all would be prepared (and retried) whole.
                    if run.len() >= BATCH {
                        self.deliver(std::mem::take(&mut run)).await?;
                    }
                    let (message, of) = (Arc::new(msg), events.len());
                    run.extend(events.into_iter().enumerate().map(|(index, event)| Item {
                        sequence,
                        message: message.clone(),
                        event,
                        index,
                        of,
                    }));
                }
                Err(e) => {
                    self.deliver(std::mem::take(&mut run)).await?;
                    let reason = format!("undecodable event: {e}");
                    self.dead_letter(&msg.subject, msg.payload.clone(), sequence, None, &reason)
                        .await?;
                    self.position = sequence;
                }
            }
        }
        self.deliver(run).await
    }

    /// Delivers `items` in order, retrying from the first undelivered one
    /// until all are delivered (or dead-lettered, if one never can be).
    async fn deliver(&mut self, items: Vec<Item>) -> Result<(), Halt> {
        let mut done = 0;
        let mut backoff = Backoff::new();
        while done < items.len() {
            match self.try_deliver(&items[done..], &mut done).await {
                Ok(()) => self.consumers.progress.moving(self.partition),
                Err(Attempt::Halt(halt)) => return Err(halt),
                Err(Attempt::Failed(e)) if e.downcast_ref::<Unroutable>().is_some() => {
                    self.dead_letter_event(&items[done], &format!("{e:#}"))
                        .await?;
                    done += 1;
                }
                Err(Attempt::Failed(e)) => {
                    self.consumers.progress.held_back(self.partition, &e);
                    self.pause(backoff.next_pause()).await?;
                }
            }
        }
        Ok(())
    }

    async fn try_deliver(&mut self, items: &[Item], done: &mut usize) -> Result<(), Attempt> {
        let events: Vec<Event> = items.iter().map(|i| i.event.clone()).collect();
        let fanout = &self.consumers.fanout;
        let prepared = fanout
            .prepare(&events)
            .instrument(tracing::debug_span!(
                "push.batch",
                partition = self.partition.0
            ))
            .await
            .map_err(Attempt::Failed)?;
        self.heavy = prepared
            .iter()
            .any(|batches| batches.iter().map(|b| sockets_in(&b.batch)).sum::<u64>() >= HEAVY);
        for run in fanout.runs(&prepared) {
            if !self.lease.is_held() {
                return Err(Attempt::Halt(Halt::Lost));
            }
            if self.deliver_merged(items, &events, &prepared, &run).await? {
                *done += run.len();
                for item in &items[run] {
                    self.position = item.position_after(self.position);
                }
                continue;
            }
            for i in run {
                if !self.lease.is_held() {
                    return Err(Attempt::Halt(Halt::Lost));
                }
                // One trace from the writer's request through to the gateways.
                let span = tracing::debug_span!(
                    "push.event",
                    partition = self.partition.0,
                    sequence = items[i].sequence
                );
                items[i].adopt_trace(&span);
                fanout
                    .publish(&events[i], &prepared[i])
                    .instrument(span)
                    .await
                    .map_err(Attempt::Failed)?;
                *done += 1;
                self.position = items[i].position_after(self.position);
            }
        }
        Ok(())
    }

    /// Publishes the deliveries of the events `run` of `items` merged, one
    /// part per gateway (joined with other partitions'); `false` when
    /// NATS refused for good a message with a part of it (one event too
    /// large alone, or a merged message though it was within the server's
    /// limit): the caller then publishes the run's events one by one, each
    /// alone, so the event at fault is found alone (gateways already sent
    /// a message get its events again, as after a crash: at least once).
    async fn deliver_merged(
        &self,
        items: &[Item],
        events: &[Event],
        prepared: &[Vec<GatewayBatch>],
        run: &Range<usize>,
    ) -> Result<bool, Attempt> {
        let merged = merge::merge(&prepared[run.clone()]).map_err(Attempt::Failed)?;
        let (first, last) = (&items[run.start], &items[run.end - 1]);
        // The first event's trace goes on to the gateways; the others' are
        // linked.
        let span = tracing::debug_span!(
            "push.events",
            partition = self.partition.0,
            first = first.sequence,
            last = last.sequence
        );
        first.adopt_trace(&span);
        for item in &items[run.start + 1..run.end] {
            item.link_trace(&span);
        }
        let fanout = &self.consumers.fanout;
        match fanout
            .publish_merged(merged, self.lease.clone())
            .instrument(span)
            .await
        {
            Ok(()) => {
                for i in run.clone() {
                    record(&events[i], &prepared[i]);
                }
                Ok(true)
            }
            Err(_) if !self.lease.is_held() => Err(Attempt::Halt(Halt::Lost)),
            Err(e) if e.downcast_ref::<Unroutable>().is_some() => {
                tracing::warn!(error = ?e, "deliveries refused; publishing them alone, event by event");
                Ok(false)
            }
            Err(e) => Err(Attempt::Failed(e)),
        }
    }

    /// Dead-letters `item`'s event alone: its message as it came when it
    /// carries that event only, else the event re-encoded, under its own
    /// subject (a message's events may be of several channels of the
    /// partition: migration 0014), so a redrive does not deliver its
    /// siblings again.
    async fn dead_letter_event(&mut self, item: &Item, reason: &str) -> Result<(), Halt> {
        let (subject, payload, index) = if item.of == 1 {
            (
                item.message.subject.to_string(),
                item.message.payload.clone(),
                None,
            )
        } else {
            // Encoding a decoded event cannot fail; were it to, the whole
            // message goes, under this event's name.
            let json = serde_json::to_vec(&item.event)
                .map_or_else(|_| item.message.payload.clone(), Into::into);
            let subject = self.consumers.fanout.ns.event_subject(&item.event);
            (subject, json, Some(item.index))
        };
        self.dead_letter(&subject, payload, item.sequence, index, reason)
            .await?;
        self.position = item.position_after(self.position);
        Ok(())
    }

    /// Publishes `payload` (message `sequence`, or its event `index`,
    /// published on `subject`) to the dead-letter stream (same subject
    /// suffix, with the reason), retrying until JetStream has it; the
    /// caller moves the position.
    async fn dead_letter(
        &mut self,
        subject: &str,
        payload: bytes::Bytes,
        sequence: u64,
        index: Option<usize>,
        reason: &str,
    ) -> Result<(), Halt> {
        if !self.lease.is_held() {
            return Err(Halt::Lost);
        }
        let ns = &self.consumers.fanout.ns;
        let suffix = subject
            .strip_prefix(&ns.events_prefix())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown");
        let subject = ns.dlq_subject(suffix);
        let publish = || {
            let (js, subject) = (self.consumers.js.clone(), subject.clone());
            let message = PublishMessage::build()
                .payload(payload.clone())
                .header(DLQ_REASON_HEADER, header_safe(reason))
                .message_id(match index {
                    None => format!("dlq-{sequence}"),
                    Some(index) => format!("dlq-{sequence}-{index}"),
                });
            async move {
                js.send_publish(subject, message)
                    .await
                    .context("dead-lettering")?
                    .await
                    .context("dead-letter not acknowledged")?;
                Ok(())
            }
        };
        self.retry(publish).await?;
        tracing::error!(partition = self.partition.0, sequence, ?index, %reason, "event dead-lettered");
        Ok(())
    }

    /// Commits the position if it moved; a failure is retried at the next
    /// commit (what is not committed is only delivered again).
    async fn commit(&mut self) {
        self.last_commit = Instant::now();
        let Some(committed) = self.committed else {
            return;
        };
        if self.position <= committed.sequence || !self.lease.is_held() {
            return;
        }
        let result = self
            .consumers
            .offsets
            .commit(self.partition, committed, self.position)
            .await;
        let mut commits = self
            .consumers
            .commits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(c) => {
                self.committed = Some(c);
                commits.recovered();
            }
            Err(e) => commits.failed(&e),
        }
    }

    /// Runs `op` until it succeeds, holding the partition back meanwhile.
    async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T, Halt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut backoff = Backoff::new();
        loop {
            match op().await {
                Ok(value) => {
                    self.consumers.progress.moving(self.partition);
                    return Ok(value);
                }
                Err(e) => {
                    self.consumers.progress.held_back(self.partition, &e);
                    self.pause(backoff.next_pause()).await?;
                }
            }
        }
    }

    /// Waits `pause`, unless the partition halts first.
    async fn pause(&self, pause: Duration) -> Result<(), Halt> {
        tokio::select! {
            biased;
            () = self.lease.lost() => Err(Halt::Lost),
            () = self.stop.cancelled() => Err(Halt::Stopped),
            () = tokio::time::sleep(pause) => Ok(()),
        }
    }
}

/// How one delivery attempt ended short.
enum Attempt {
    Halt(Halt),
    Failed(anyhow::Error),
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
    fn dead_letter_reasons_fit_in_a_header() {
        assert_eq!(header_safe("a\r\nb"), "a  b");
        assert_eq!(header_safe(&"x".repeat(1000)).len(), 512);
    }
}
