//! Deliveries from push: core NATS messages on this gateway's subject,
//! each carrying one event's frames or, in order, those of several handled
//! together, serialized once; each frame is queued to the local sockets it
//! names. Only batches signed with the bus key are
//! delivered: anyone else who can publish on the subject is ignored.

use crate::registry::{Outbound, Registry};
use anyhow::Context;
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use natter_platform::bus::BusVerifier;
use natter_protocol::events::{Delivery, DeliveryBatch};
use natter_protocol::frames::ServerFrame;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Subscribes to `subject` and delivers what `verifier` accepts until
/// `shutdown`.
pub(crate) async fn listen(
    nats: &async_nats::Client,
    subject: String,
    verifier: BusVerifier,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut sub = nats
        .subscribe(subject)
        .await
        .context("subscribing to deliveries")?;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                () = shutdown.cancelled() => break,
            };
            let Some(msg) = msg else { break };
            // A message that filled a socket's queue to half or more lets
            // the runtime's other tasks run before the next is taken. A
            // backlog that push hands over at once (after an outage) is
            // already waiting here, message after message; taken without
            // a pause, it filled the queue of a socket whose client read
            // everything but whose task had no turn yet, and closed it as
            // a slow consumer. Push puts at most 64 events for one gateway
            // in a message, about one frame each per socket, so the half
            // of a default queue (256) left takes the next message whole.
            // The yield gives every woken socket a turn on a
            // single-threaded runtime; on several workers, tokio resumes
            // this task after a few dozen others at most, so a backlog to
            // many sockets at once can still overflow some queues
            // (ARCHITECTURE.md, "Delivery guarantees"). Below half, the
            // next message is taken at once, so frames queued while a
            // socket's task waits for its turn still share one write.
            let filling = receive(&verifier, &registry, &msg);
            if filling {
                tokio::task::yield_now().await;
            }
        }
    }))
}

/// Delivers `msg` if it is a batch signed with the bus key; returns
/// whether a socket's queue is now half full or more.
fn receive(verifier: &BusVerifier, registry: &Registry, msg: &async_nats::Message) -> bool {
    let span = tracing::debug_span!("gateway.deliver");
    natter_platform::telemetry::propagation::adopt(&span, msg.headers.as_ref());
    let _entered = span.enter();
    if let Err(e) = verifier.verify(&msg.subject, msg.headers.as_ref(), &msg.payload) {
        tracing::warn!(error = %e, "refused a delivery batch");
        return false;
    }
    match serde_json::from_slice::<DeliveryBatch>(&msg.payload) {
        Ok(batch) => deliver(registry, batch),
        Err(e) => {
            tracing::warn!(error = %e, "undecodable delivery batch");
            false
        }
    }
}

/// Queues each item of a batch to its sockets; returns whether one of
/// their queues is now half full or more.
pub(crate) fn deliver(registry: &Registry, batch: DeliveryBatch) -> bool {
    let mut filling = false;
    for item in batch.items {
        match item {
            Delivery::Frame { sockets, frame } => {
                let frame = Outbound::Frame(Utf8Bytes::from(frame));
                filling |= registry.send(&sockets, &frame);
            }
            Delivery::Unread {
                channel_id,
                title,
                last_seq,
                targets,
            } => {
                for target in targets {
                    let frame = ServerFrame::Unread {
                        channel_id,
                        title: title.clone(),
                        last_seq,
                        unread: target.unread,
                    };
                    let frame = Outbound::Frame(Utf8Bytes::from(frame.to_json()));
                    filling |= registry.send(&target.sockets, &frame);
                }
            }
            Delivery::LeaveChannel {
                channel_id,
                sockets,
            } => {
                filling |= registry.send(&sockets, &Outbound::Leave(channel_id));
            }
        }
    }
    filling
}
