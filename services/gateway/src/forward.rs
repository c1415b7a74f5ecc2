//! Forwarding a client request to the message service: core NATS
//! request/reply to the message queue group, bounded by a timeout.
//!
//! `write_message`s, the hot request, go through the [`Batcher`]: every
//! socket's writes queue there, and one task sends what has queued as one
//! [`RpcBatch`] while at most [`BATCHES_IN_FLIGHT`] batches are
//! unanswered. A write that finds a batch slot free goes out after one
//! turn of the scheduler, with the writes of sockets woken with it;
//! under load the slots are busy and the next batch takes every write that
//! queued meanwhile (group commit, as the message writer does with
//! Postgres). The bus then carries one request and one reply, with one
//! signature, for many writes.

use crate::Shared;
use bytes::Bytes;
use natter_platform::bus::BusKey;
use natter_platform::lifecycle::Condition;
use natter_platform::telemetry::propagation;
use natter_protocol::rpc::{BatchedRequest, Caller, RpcBatch, RpcBatchReply, RpcReply, RpcRequest};
use natter_protocol::{ErrorBody, ErrorCode, frames::Request};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Batches awaiting their answer at once. More, smaller batches keep
/// message's writer fed while earlier ones are answered: 8 stored 2–16 %
/// more messages/s than 4 in the throughput benchmark (README
/// "Benchmarks"), and the writes one gateway has in flight stay within
/// what one message instance takes (`BATCHES_IN_FLIGHT × MAX_BATCH` =
/// 1,024, message's `MAX_IN_FLIGHT`).
const BATCHES_IN_FLIGHT: usize = 8;
/// Most requests in one batch.
const MAX_BATCH: usize = 128;
/// Most bytes one batch may take, by [`encoded_bound`]: well under NATS's
/// default 1 MiB payload limit.
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Writes waiting for a batch.
const QUEUE: usize = 4096;

/// Sends `request` for `caller`, signed with the bus key (the signature
/// covers the caller, the request and the subject); `unavailable` when
/// message does not answer in time (the request may or may not have taken
/// effect). The trace context travels in the NATS headers too, or beside
/// the request in a batch.
#[tracing::instrument(level = "debug", name = "gateway.forward", skip_all, fields(request = request.kind(), user_id = %caller.user_id))]
pub(crate) async fn forward(
    shared: &Shared,
    caller: Caller,
    request: Request,
) -> Result<serde_json::Value, ErrorBody> {
    if matches!(request, Request::WriteMessage { .. }) {
        return shared.writes.send(caller, request).await;
    }
    let kind = request.kind();
    let payload = serde_json::to_vec(&RpcRequest { caller, request })
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
    let mut headers = propagation::headers();
    shared.bus.sign(&shared.rpc_subject, &payload, &mut headers);
    let msg = ask(
        &shared.nats,
        &shared.message_answers,
        shared.settings.request_timeout,
        (shared.rpc_subject.clone(), headers, payload),
        kind,
    )
    .await?;
    match serde_json::from_slice::<RpcReply>(&msg.payload) {
        Ok(reply) => reply.into(),
        Err(e) => {
            tracing::error!(request = kind, error = %e, "undecodable reply from message");
            Err(internal())
        }
    }
}

/// Sends one NATS request (subject, headers, payload) and waits for its
/// answer, reporting to `answers` whether message answered; `unavailable`
/// when it did not in time. `what` names the request in the report.
async fn ask(
    nats: &async_nats::Client,
    answers: &Condition,
    timeout: Duration,
    (subject, headers, payload): (String, async_nats::HeaderMap, Vec<u8>),
    what: &str,
) -> Result<async_nats::Message, ErrorBody> {
    let answer = tokio::time::timeout(
        timeout,
        nats.request_with_headers(subject, headers, Bytes::from(payload)),
    )
    .await;
    match answer {
        Ok(Ok(msg)) => {
            answers.ok();
            Ok(msg)
        }
        Ok(Err(e)) => {
            answers.failing(&anyhow::Error::new(e).context(format!("forwarding {what} failed")));
            Err(unavailable())
        }
        Err(_) => {
            answers.failing(&anyhow::anyhow!("forwarding {what} timed out"));
            Err(unavailable())
        }
    }
}

fn unavailable() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Unavailable,
        "the message service did not answer in time; the request may or may not have taken effect",
    )
}

fn internal() -> ErrorBody {
    ErrorBody::new(ErrorCode::Internal, "internal error")
}

/// One queued request and where its answer goes.
struct Queued {
    item: BatchedRequest,
    bytes: usize,
    reply: oneshot::Sender<Result<serde_json::Value, ErrorBody>>,
}

/// Where sockets hand in batched requests.
pub(crate) struct Batcher {
    queue: mpsc::Sender<Queued>,
    timeout: Duration,
}

/// What the batching task needs to send a batch.
pub(crate) struct BatchSender {
    pub nats: async_nats::Client,
    pub bus: BusKey,
    /// `rpc.message.batch`.
    pub subject: String,
    pub timeout: Duration,
    /// Whether message answers, shared with single requests.
    pub answers: Condition,
}

impl Batcher {
    /// A batcher and the task that sends its batches, which ends when
    /// every [`Batcher`] is dropped and the batches in flight are answered.
    pub(crate) fn start(sender: BatchSender) -> (Self, impl Future<Output = ()> + Send) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let batcher = Self {
            queue,
            timeout: sender.timeout,
        };
        (batcher, run(Arc::new(sender), rx))
    }

    /// Queues a request in the current span's trace and waits for its
    /// answer, `unavailable` if none comes within the request timeout
    /// (queueing included).
    async fn send(&self, caller: Caller, request: Request) -> Result<serde_json::Value, ErrorBody> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            bytes: encoded_bound(&request),
            item: BatchedRequest {
                rpc: RpcRequest { caller, request },
                traceparent: propagation::traceparent(),
            },
            reply,
        };
        let answered = tokio::time::timeout(self.timeout, async {
            self.queue.send(queued).await.map_err(|_| unavailable())?;
            answer.await.map_err(|_| unavailable())?
        })
        .await;
        answered.unwrap_or_else(|_| Err(unavailable()))
    }
}

/// An upper bound of a request's encoded size in a batch: JSON escapes a
/// character in at most 6 bytes, and what is not user text (caller, ids,
/// trace context, field names) fits in 1 KiB.
fn encoded_bound(request: &Request) -> usize {
    let text = match request {
        Request::WriteMessage {
            client_msg_id,
            content,
            ..
        } => client_msg_id.len() + content.len(),
        _ => 0,
    };
    text * 6 + 1024
}

/// Gathers queued requests into batches and sends each in its own task,
/// at most [`BATCHES_IN_FLIGHT`] at once; a batch is gathered only once a
/// slot is free, so it takes everything that queued while none was.
async fn run(sender: Arc<BatchSender>, mut rx: mpsc::Receiver<Queued>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut next: Option<Queued> = None;
    loop {
        let first = match next.take() {
            Some(queued) => queued,
            None => match rx.recv().await {
                Some(queued) => queued,
                None => break,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // Sockets whose writes arrived with this one's (one read of the
        // poller) queue theirs when they run: one turn of the scheduler
        // lets them in, as the message writer does.
        tokio::task::yield_now().await;
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(queued) = rx.try_recv() else { break };
            if bytes + queued.bytes > MAX_BATCH_BYTES {
                next = Some(queued);
                break;
            }
            bytes += queued.bytes;
            batch.push(queued);
        }
        let sender = sender.clone();
        tokio::spawn(async move {
            sender.send(batch).await;
            drop(slot);
        });
    }
    // Every batch still in flight holds a slot until it is answered.
    let _ = slots
        .acquire_many(u32::try_from(BATCHES_IN_FLIGHT).unwrap_or(u32::MAX))
        .await;
}

impl BatchSender {
    /// Sends one batch and hands each request its answer.
    async fn send(&self, batch: Vec<Queued>) {
        let (items, replies): (Vec<BatchedRequest>, Vec<_>) =
            batch.into_iter().map(|q| (q.item, q.reply)).unzip();
        let answers = match self.request(RpcBatch { requests: items }).await {
            Ok(answers) if answers.len() == replies.len() => {
                answers.into_iter().map(Into::into).collect()
            }
            Ok(answers) => {
                tracing::error!(
                    sent = replies.len(),
                    answered = answers.len(),
                    "a batch reply from message does not match its batch"
                );
                vec![Err(internal()); replies.len()]
            }
            Err(body) => vec![Err(body); replies.len()],
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            // A socket that stopped waiting (it timed out or closed) needs
            // no answer.
            let _ = reply.send(answer);
        }
    }

    /// The answers to `batch`, or the error every request of it gets.
    async fn request(&self, batch: RpcBatch) -> Result<Vec<RpcReply>, ErrorBody> {
        let payload = serde_json::to_vec(&batch)
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        self.bus.sign(&self.subject, &payload, &mut headers);
        let msg = ask(
            &self.nats,
            &self.answers,
            self.timeout,
            (self.subject.clone(), headers, payload),
            "a batch",
        )
        .await?;
        if let Ok(reply) = serde_json::from_slice::<RpcBatchReply>(&msg.payload) {
            return Ok(reply.replies);
        }
        // A batch refused whole (unsigned, undecodable, overloaded) is
        // answered with one error.
        match serde_json::from_slice::<RpcReply>(&msg.payload) {
            Ok(RpcReply::Err(body)) => Err(body),
            Ok(RpcReply::Ok(_)) | Err(_) => {
                tracing::error!("undecodable batch reply from message");
                Err(internal())
            }
        }
    }
}
