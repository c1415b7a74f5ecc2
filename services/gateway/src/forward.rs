//! Forwarding a client request to the message service: core NATS
//! request/reply to the message queue group, bounded by a timeout.

use crate::Shared;
use natter_protocol::rpc::{Caller, RpcReply, RpcRequest};
use natter_protocol::{ErrorBody, ErrorCode, frames::Request};

/// Sends `request` for `caller`, signed with the bus key (the signature
/// covers the caller, the request and the subject); `unavailable` when
/// message does not answer in time (the request may or may not have taken
/// effect). The trace context travels in the NATS headers too.
#[tracing::instrument(level = "debug", name = "gateway.forward", skip_all, fields(request = request.kind(), user_id = %caller.user_id))]
pub(crate) async fn forward(
    shared: &Shared,
    caller: Caller,
    request: Request,
) -> Result<serde_json::Value, ErrorBody> {
    let kind = request.kind();
    let payload = serde_json::to_vec(&RpcRequest { caller, request })
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
    let mut headers = natter_platform::telemetry::propagation::headers();
    shared.bus.sign(&shared.rpc_subject, &payload, &mut headers);
    let answer = tokio::time::timeout(
        shared.settings.request_timeout,
        shared
            .nats
            .request_with_headers(shared.rpc_subject.clone(), headers, payload.into()),
    )
    .await;
    let unavailable = || {
        ErrorBody::new(
            ErrorCode::Unavailable,
            "the message service did not answer in time; the request may or may not have taken effect",
        )
    };
    let msg = match answer {
        Ok(Ok(msg)) => {
            shared.message_answers.ok();
            msg
        }
        Ok(Err(e)) => {
            shared
                .message_answers
                .failing(&anyhow::Error::new(e).context(format!("forwarding {kind} failed")));
            return Err(unavailable());
        }
        Err(_) => {
            shared
                .message_answers
                .failing(&anyhow::anyhow!("forwarding {kind} timed out"));
            return Err(unavailable());
        }
    };
    match serde_json::from_slice::<RpcReply>(&msg.payload) {
        Ok(RpcReply::Ok(result)) => Ok(result),
        Ok(RpcReply::Err(body)) => Err(body),
        Err(e) => {
            tracing::error!(request = kind, error = %e, "undecodable reply from message");
            Err(ErrorBody::new(ErrorCode::Internal, "internal error"))
        }
    }
}
