//! Following a stream's subjects in order, from a stream sequence on, with
//! pull requests that overlap so that none can leave the reader waiting.
//!
//! async-nats's ordered pull consumer keeps one request waiting and sends
//! the next when the server answers the first one's expiry with a 408.
//! nats-server 2.9 does not always answer: a message that arrives just as a
//! request expires makes the server drop the request without the 408, and
//! the client then waits for its own safety timer, the request's expiry
//! plus 5 s. Sixteen partitions at 1,000 events/s stalled one of them for
//! 5 s about every 40 s here (the server's `nextWaiting` removes an expired
//! request silently; 2.15 answers and did not stall in the same run).
//!
//! A [`Tail`] never waits for a 408. It asks again for as many messages as
//! have arrived whenever half a batch has (so what the server may send
//! ahead stays between half a batch and a batch and a half, whatever the
//! rate), and for a whole batch after half an expiry without asking: so
//! another request is always waiting when one ends, however it ends. The
//! server hands each message to the oldest waiting request, so the order
//! is the stream's.
//!
//! What cannot be recovered in place ends the tail with a [`TailError`],
//! and the caller opens a new one after the last sequence it handled:
//! - a gap in the consumer sequence (a message dropped on the way, e.g.
//!   the subscription overflowed);
//! - silence: every waiting request carries an idle heartbeat, so
//!   [`SILENCE`] without a word means the consumer is gone (a NATS restart,
//!   a deleted consumer, a lost connection);
//! - any other status the server ends a request with (409 consumer
//!   deleted, 503 no responders, ...).
//!
//! The consumer is ephemeral and kept in memory, like async-nats's ordered
//! one; the server removes it [`INACTIVE`] after its last request.

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::{BatchConfig, BatchRequestError, Config};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::{self, stream::Stream as JetStream};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::{FutureExt, Stream, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

/// How long a pull request waits on the server.
pub const EXPIRES: Duration = Duration::from_secs(4);
/// A new request goes out this long after the last one, so the one before
/// it still has half its time left when it does.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a waiting request reports that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// No message, heartbeat or status for this long: the consumer is gone.
pub const SILENCE: Duration = Duration::from_secs(3);
/// How soon the server answers a request sent after a quiet spell (a
/// caller that did not ask for a while): its first heartbeat, with a
/// margin. Shorter than [`RENEW_EVERY`], so renewing does not keep putting
/// off the verdict on a consumer that is gone.
const FIRST_WORD: Duration = Duration::from_millis(1500);
/// Messages a request asks for after a quiet spell; after half of this
/// has arrived, the next one asks for what arrived.
const REQUEST_BATCH: usize = 512;
/// How long the server keeps a consumer nobody asks anything of.
pub const INACTIVE: Duration = Duration::from_secs(30);

// A request sent after a quiet spell is waiting before the last one
// expires, and renewing cannot keep putting off the verdict on silence.
const _: () = assert!(2 * RENEW_EVERY.as_millis() <= EXPIRES.as_millis());
const _: () = assert!(FIRST_WORD.as_millis() < RENEW_EVERY.as_millis());
const _: () = assert!(HEARTBEAT.as_millis() < FIRST_WORD.as_millis());

/// Why a tail ended: open a new one after the last sequence handled.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// A message did not arrive: the next one skipped its consumer sequence.
    #[error("consumer sequence {got} arrived after {after}: a message is missing")]
    Gap {
        /// The consumer sequence handed out last.
        after: u64,
        /// The one that arrived.
        got: u64,
    },
    /// Nothing came when a word was owed: [`SILENCE`] after the last one,
    /// although requests were waiting.
    #[error("no message or heartbeat when one was owed: the consumer is gone")]
    Silent,
    /// The server ended a request with a status other than its expiry.
    #[error("the server ended a pull request: {status} {description}")]
    Ended {
        /// The status code (409, 503, ...).
        status: u16,
        /// The server's description.
        description: String,
    },
    /// A message without JetStream's metadata in its reply subject.
    #[error("a message without JetStream metadata")]
    Malformed,
    /// A pull request could not be sent.
    #[error("sending a pull request")]
    Request(#[source] BatchRequestError),
}

/// A message as a [`Tail`] hands it out, with the positions it read from
/// its metadata, so the caller need not parse them again.
#[derive(Debug)]
pub struct Tailed {
    /// The message.
    pub message: jetstream::Message,
    /// Its sequence in the stream.
    pub stream_sequence: u64,
    /// How many messages matching the filter were behind it when it was sent.
    pub pending: u64,
}

/// One subject filter of a stream, read in stream order.
pub struct Tail {
    js: jetstream::Context,
    consumer: Consumer<Config>,
    inbox: Subject,
    subscription: Subscriber,
    /// The consumer sequence of the last message handed out.
    delivered: u64,
    /// When the last request went out, and how many messages came since.
    requested: Instant,
    since_request: usize,
    /// When the server owes a word: [`SILENCE`] after it was last heard
    /// from, or [`FIRST_WORD`] after a request sent when that was later.
    owed_by: Instant,
}

impl Tail {
    /// Follows the subjects matching `filter` in `stream` from stream
    /// sequence `from` (at least 1) on.
    pub async fn open(
        js: &jetstream::Context,
        stream: &JetStream,
        filter: String,
        from: u64,
    ) -> anyhow::Result<Self> {
        let consumer = stream
            .create_consumer(Config {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                max_deliver: 1,
                memory_storage: true,
                num_replicas: 1,
                inactive_threshold: INACTIVE,
                ..Config::default()
            })
            .await
            .context("creating a consumer")?;
        let client = js.client();
        let inbox = Subject::from(client.new_inbox());
        // Subscribed before the first request, so nothing it brings is lost.
        let subscription = client
            .subscribe(inbox.clone())
            .await
            .context("subscribing to the consumer's inbox")?;
        let now = Instant::now();
        let mut tail = Self {
            js: js.clone(),
            consumer,
            inbox,
            subscription,
            delivered: 0,
            requested: now,
            since_request: 0,
            owed_by: now + SILENCE,
        };
        tail.request(REQUEST_BATCH).await?;
        Ok(tail)
    }

    /// The next message in stream order. `None` when the connection is
    /// closed for good; an error ends the tail.
    pub async fn next(&mut self) -> Option<Result<Tailed, TailError>> {
        loop {
            if let Some(batch) = renewal(self.since_request, self.requested.elapsed())
                && let Err(e) = self.request(batch).await
            {
                return Some(Err(e));
            }
            // Messages that are already here need no timers.
            let message = match self.subscription.next().now_or_never() {
                Some(message) => message?,
                None => tokio::select! {
                    biased;
                    message = self.subscription.next() => message?,
                    () = tokio::time::sleep_until(self.requested + RENEW_EVERY) => continue,
                    () = tokio::time::sleep_until(self.owed_by) => {
                        return Some(Err(TailError::Silent));
                    }
                },
            };
            self.owed_by = Instant::now() + SILENCE;
            match self.accept(message) {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The messages of [`Tail::next`], as a stream.
    pub fn messages(self) -> impl Stream<Item = Result<Tailed, TailError>> + Send {
        futures::stream::unfold(self, |mut tail| async move {
            let next = tail.next().await?;
            Some((next, tail))
        })
    }

    /// A message for the caller, `None` for a heartbeat or an expiry.
    fn accept(&mut self, message: async_nats::Message) -> Result<Option<Tailed>, TailError> {
        match message.status {
            None | Some(StatusCode::OK) => {
                let message = jetstream::Message {
                    message,
                    context: self.js.clone(),
                };
                let info = message.info().map_err(|_| TailError::Malformed)?;
                let (got, stream_sequence, pending) =
                    (info.consumer_sequence, info.stream_sequence, info.pending);
                if got != self.delivered + 1 {
                    return Err(TailError::Gap {
                        after: self.delivered,
                        got,
                    });
                }
                self.delivered = got;
                self.since_request += 1;
                Ok(Some(Tailed {
                    message,
                    stream_sequence,
                    pending,
                }))
            }
            // Signs of life: the requests after this one are still waiting.
            Some(StatusCode::IDLE_HEARTBEAT | StatusCode::TIMEOUT) => Ok(None),
            Some(status) => Err(TailError::Ended {
                status: status.as_u16(),
                description: message.description.unwrap_or_default(),
            }),
        }
    }

    async fn request(&mut self, batch: usize) -> Result<(), TailError> {
        let request = BatchConfig {
            batch,
            expires: Some(EXPIRES),
            idle_heartbeat: HEARTBEAT,
            ..BatchConfig::default()
        };
        self.consumer
            .request_batch(request, self.inbox.clone())
            .await
            .map_err(TailError::Request)?;
        self.requested = Instant::now();
        self.since_request = 0;
        self.owed_by = self.owed_by.max(self.requested + FIRST_WORD);
        Ok(())
    }
}

/// How many messages to ask for now, if it is time: as many as arrived
/// since the last request once that is half a batch (what was taken is
/// given back, so what the server may send ahead stays bounded however
/// fast events come), else a batch once [`RENEW_EVERY`] has passed (the
/// overlap that outlives a request dropped without its 408).
fn renewal(since_request: usize, since_last: Duration) -> Option<usize> {
    if since_request >= REQUEST_BATCH / 2 {
        Some(since_request)
    } else if since_last >= RENEW_EVERY {
        Some(REQUEST_BATCH)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gives_back_what_arrived_once_half_a_batch_has() {
        assert_eq!(renewal(0, Duration::ZERO), None);
        assert_eq!(renewal(REQUEST_BATCH / 2 - 1, Duration::ZERO), None);
        assert_eq!(
            renewal(REQUEST_BATCH / 2, Duration::ZERO),
            Some(REQUEST_BATCH / 2)
        );
        assert_eq!(
            renewal(REQUEST_BATCH / 2, RENEW_EVERY),
            Some(REQUEST_BATCH / 2)
        );
    }

    #[test]
    fn a_whole_batch_is_asked_for_after_half_an_expiry_without_asking() {
        assert_eq!(renewal(3, RENEW_EVERY - Duration::from_millis(1)), None);
        assert_eq!(renewal(3, RENEW_EVERY), Some(REQUEST_BATCH));
    }
}
