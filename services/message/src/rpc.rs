//! Receiving requests over NATS request/reply.
//!
//! Every instance subscribes in one queue group, so each request reaches one
//! instance. Each request runs in its own task (bounded by a semaphore so a
//! burst cannot exhaust the pool); its answer goes to the reply subject.
//! A batch (`rpc.message.batch`, the gateways' `write_message`s) is one
//! task whose requests run concurrently, each in its own trace, and is
//! answered once all are done.
//! A request not signed with the bus key is answered `unauthorized` and
//! never reaches a handler: the caller inside it is trusted only because
//! the signature says a gateway wrote it.

use crate::{AppState, handlers, store};
use anyhow::Context;
use futures::StreamExt;
use natter_platform::bus::BusError;
use natter_platform::telemetry::propagation;
use natter_protocol::rpc::{RpcBatch, RpcBatchReply, RpcReply, RpcRequest, UnregisterRequest};
use natter_protocol::{ErrorBody, ErrorCode, limits};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Requests in progress at once per instance.
const MAX_IN_FLIGHT: usize = 1024;

/// Which subscription a message came from.
enum Kind {
    Request,
    Batch,
    Unregister,
}

/// Serves until `shutdown`, then waits for in-flight requests.
pub(crate) async fn serve(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let group = state.ns.message_queue_group();
    let requests = state
        .nats
        .queue_subscribe(state.ns.rpc_message(), group.clone())
        .await
        .context("subscribing to requests")?;
    let batches = state
        .nats
        .queue_subscribe(state.ns.rpc_message_batch(), group.clone())
        .await
        .context("subscribing to request batches")?;
    let unregister = state
        .nats
        .queue_subscribe(state.ns.rpc_unregister(), group)
        .await
        .context("subscribing to unregister requests")?;
    let mut incoming = futures::stream::select_all([
        requests.map(|m| (Kind::Request, m)).boxed(),
        batches.map(|m| (Kind::Batch, m)).boxed(),
        unregister.map(|m| (Kind::Unregister, m)).boxed(),
    ]);
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tasks = TaskTracker::new();
    loop {
        let next = tokio::select! {
            m = incoming.next() => m,
            () = shutdown.cancelled() => None,
        };
        let Some((kind, msg)) = next else { break };
        // Never stop reading to wait for a permit: a subscription that is
        // not read overflows and drops requests silently. Shed instead.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            respond(&state.nats, msg.reply, &overloaded()).await;
            continue;
        };
        let (state, limit) = (state.clone(), limit.clone());
        let span = match kind {
            Kind::Request => tracing::debug_span!("message.request"),
            Kind::Batch => tracing::debug_span!("message.batch"),
            Kind::Unregister => tracing::debug_span!("message.unregister"),
        };
        propagation::adopt(&span, msg.headers.as_ref());
        tasks.spawn(
            async move {
                let verified = state
                    .bus
                    .verify(&msg.subject, msg.headers.as_ref(), &msg.payload);
                let reply = match (verified, kind) {
                    (Err(e), _) => Reply::One(refuse(&e)),
                    (Ok(()), Kind::Request) => {
                        Reply::One(match serde_json::from_slice::<RpcRequest>(&msg.payload) {
                            Ok(req) => answer(&state, req).await,
                            Err(e) => invalid(&e),
                        })
                    }
                    (Ok(()), Kind::Batch) => match serde_json::from_slice::<RpcBatch>(&msg.payload)
                    {
                        Ok(batch) => Reply::Batch(answer_batch(&state, &limit, batch).await),
                        Err(e) => Reply::One(invalid(&e)),
                    },
                    (Ok(()), Kind::Unregister) => {
                        Reply::One(answer_unregister(&state, &msg.payload).await)
                    }
                };
                respond(&state.nats, msg.reply, &reply).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    // Dropping the stream unsubscribes: no new requests reach this instance.
    drop(incoming);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// What goes back to the asker: one answer, or a batch's answers (a
/// batch refused whole gets one).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Reply {
    One(RpcReply),
    Batch(RpcBatchReply),
}

/// The answer to a request that is unsigned, forged, stale or replayed:
/// whoever sent it is not a natter service holding the bus key.
fn refuse(e: &BusError) -> RpcReply {
    tracing::warn!(error = %e, "refused a bus message");
    RpcReply::Err(ErrorBody::new(
        ErrorCode::Unauthorized,
        format!("refused: {e}"),
    ))
}

fn invalid(e: &serde_json::Error) -> RpcReply {
    RpcReply::Err(ErrorBody::new(ErrorCode::InvalidRequest, e.to_string()))
}

fn overloaded() -> RpcReply {
    RpcReply::Err(ErrorBody::new(
        ErrorCode::Unavailable,
        "the message service is overloaded; retry",
    ))
}

async fn answer(state: &AppState, req: RpcRequest) -> RpcReply {
    let kind = req.request.kind();
    let result = handlers::handle(state, &req.caller, req.request)
        .await
        .and_then(|value| within_reply_limit(kind, value));
    if let Err(e) = &result {
        tracing::debug!(request = kind, error = %e, "request refused");
        count_limit_rejection(e);
    }
    result.map_err(crate::DomainError::into_body).into()
}

/// Answers every request of `batch` at once, each under its own span in
/// its own trace. The batch holds one permit already; it takes one more
/// per further request, or is answered `unavailable` whole.
async fn answer_batch(state: &AppState, limit: &Arc<Semaphore>, batch: RpcBatch) -> RpcBatchReply {
    let more = u32::try_from(batch.requests.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let Ok(_permits) = limit.clone().try_acquire_many_owned(more) else {
        return RpcBatchReply {
            replies: batch.requests.iter().map(|_| overloaded()).collect(),
        };
    };
    let replies = batch.requests.into_iter().map(|item| {
        let span = tracing::debug_span!("message.request");
        if let Some(traceparent) = item.traceparent.as_deref() {
            propagation::adopt_traceparent(&span, traceparent);
        }
        answer(state, item.rpc).instrument(span)
    });
    RpcBatchReply {
        replies: futures::future::join_all(replies).await,
    }
}

/// The last guard of docs/protocol.md §2.6's reply size: every list is
/// bounded where it is read, so a result over the limit is a bug, answered
/// `internal` rather than sent (NATS would drop it, and the gateway answer
/// `unavailable` seconds later).
fn within_reply_limit(
    kind: &'static str,
    value: serde_json::Value,
) -> Result<serde_json::Value, crate::DomainError> {
    if limits::fitting([&value], limits::MAX_RESULT_BYTES) == 1 {
        Ok(value)
    } else {
        Err(crate::DomainError::Internal(anyhow::anyhow!(
            "the {kind} result exceeds the reply size limit"
        )))
    }
}

/// Counts refusals by the connection, head or membership limit.
fn count_limit_rejection(e: &crate::DomainError) {
    let limit = match e {
        crate::DomainError::Limit { limit, .. } => *limit,
        crate::DomainError::Rule(body)
            if matches!(
                body.code,
                ErrorCode::ConnectionLimitReached | ErrorCode::PartnerConnectionLimitReached
            ) =>
        {
            "connection"
        }
        _ => return,
    };
    natter_platform::metrics::get()
        .limit_rejections
        .add(1, &natter_platform::metrics::attr("limit", limit));
}

async fn answer_unregister(state: &AppState, payload: &[u8]) -> RpcReply {
    match serde_json::from_slice::<UnregisterRequest>(payload) {
        Ok(req) => match store::users::unregister(&state.pool, &state.ns, req.user_id).await {
            Ok(()) => RpcReply::ok(&serde_json::json!({})),
            Err(e) => RpcReply::Err(e.into_body()),
        },
        Err(e) => RpcReply::Err(ErrorBody::new(ErrorCode::InvalidRequest, e.to_string())),
    }
}

async fn respond(
    nats: &async_nats::Client,
    reply_to: Option<async_nats::Subject>,
    reply: &impl serde::Serialize,
) {
    let Some(subject) = reply_to else { return };
    match serde_json::to_vec(reply) {
        Ok(body) => {
            if let Err(e) = nats.publish(subject, body.into()).await {
                tracing::warn!(error = %e, "could not send a reply");
            }
        }
        Err(e) => tracing::error!(error = %e, "unserializable reply"),
    }
}
