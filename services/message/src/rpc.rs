//! Receiving requests over NATS request/reply.
//!
//! Every instance subscribes in one queue group, so each request reaches one
//! instance. Each request runs in its own task (bounded by a semaphore so a
//! burst cannot exhaust the pool); its answer goes to the reply subject.

use crate::{AppState, store};
use futures::StreamExt;
use natter_protocol::rpc::{RpcReply, UnregisterRequest};
use natter_protocol::{ErrorBody, ErrorCode};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Requests in progress at once per instance.
const MAX_IN_FLIGHT: usize = 512;

/// Serves until `shutdown`, then waits for in-flight requests.
pub(crate) async fn serve(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let group = state.ns.message_queue_group();
    let mut unregister = state
        .nats
        .queue_subscribe(state.ns.rpc_unregister(), group.clone())
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to unregister requests: {e}"))?;
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let tasks = TaskTracker::new();
    loop {
        let msg = tokio::select! {
            m = unregister.next() => m,
            () = shutdown.cancelled() => None,
        };
        let Some(msg) = msg else { break };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let state = state.clone();
        tasks.spawn(async move {
            let reply = match serde_json::from_slice::<UnregisterRequest>(&msg.payload) {
                Ok(req) => {
                    match store::users::unregister(&state.pool, &state.ns, req.user_id).await {
                        Ok(()) => RpcReply::ok(&serde_json::json!({})),
                        Err(e) => RpcReply::Err(e.into_body()),
                    }
                }
                Err(e) => RpcReply::Err(ErrorBody::new(ErrorCode::InvalidRequest, e.to_string())),
            };
            respond(&state.nats, msg.reply, &reply).await;
            drop(permit);
        });
    }
    let _ = unregister.unsubscribe().await;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn respond(
    nats: &async_nats::Client,
    reply_to: Option<async_nats::Subject>,
    reply: &RpcReply,
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
