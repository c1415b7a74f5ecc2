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
            let span = tracing::debug_span!("gateway.deliver");
            natter_platform::telemetry::propagation::adopt(&span, msg.headers.as_ref());
            let _entered = span.enter();
            if let Err(e) = verifier.verify(&msg.subject, msg.headers.as_ref(), &msg.payload) {
                tracing::warn!(error = %e, "refused a delivery batch");
                continue;
            }
            match serde_json::from_slice::<DeliveryBatch>(&msg.payload) {
                Ok(batch) => deliver(&registry, batch),
                Err(e) => tracing::warn!(error = %e, "undecodable delivery batch"),
            }
        }
    }))
}

/// Queues each item of a batch to its sockets.
pub(crate) fn deliver(registry: &Registry, batch: DeliveryBatch) {
    for item in batch.items {
        match item {
            Delivery::Frame { sockets, frame } => {
                registry.send(&sockets, &Outbound::Frame(Utf8Bytes::from(frame)));
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
                    registry.send(
                        &target.sockets,
                        &Outbound::Frame(Utf8Bytes::from(frame.to_json())),
                    );
                }
            }
            Delivery::LeaveChannel {
                channel_id,
                sockets,
            } => {
                registry.send(&sockets, &Outbound::Leave(channel_id));
            }
        }
    }
}
