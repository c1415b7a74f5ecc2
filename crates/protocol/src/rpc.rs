//! Service⇄service request/reply over core NATS.
//!
//! The gateway forwards each client request to the message service with the
//! authenticated caller attached; auth asks the message service to release
//! an unregistering user. Replies are [`RpcReply`]: a result or an error body.
//!
//! Requests to message (`rpc.message`, `rpc.unregister`) and push's
//! deliveries to gateways are signed: see [`signed_head`] and the
//! `Natter-Bus-*` headers. A receiver refuses a message whose signature is
//! missing, stale, replayed or does not match.

use crate::error::ErrorBody;
use crate::frames::Request;
use crate::{SessionId, SocketId, UserId};
use serde::{Deserialize, Serialize};

/// Header with the sender's clock when it signed, in Unix milliseconds.
pub const BUS_TIME_HEADER: &str = "Natter-Bus-Time";
/// Header with a nonce, unique per signed message.
pub const BUS_NONCE_HEADER: &str = "Natter-Bus-Nonce";
/// Header with the signature: lowercase hex of HMAC-SHA256 under
/// `NATTER_BUS_KEY` of [`signed_head`] followed by the payload.
pub const BUS_SIGNATURE_HEADER: &str = "Natter-Bus-Signature";
/// How far a signed message's time may be from the receiver's clock, in
/// milliseconds, either way: older messages are refused as replays, and
/// receivers remember nonces this long (memory grows with the traffic of
/// the window; pods' clocks under NTP agree within milliseconds).
pub const BUS_MAX_SKEW_MS: u64 = 10_000;

/// What a bus signature covers ahead of the payload: a version tag, the
/// subject the message is published to, and the time and nonce headers;
/// the payload exactly as sent follows (fed to the MAC after this, not
/// copied behind it: a delivery batch to a channel of thousands is tens
/// of kilobytes). The subject binds a signature to one destination (a
/// caller signed for `rpc.message` is worthless on `rpc.unregister` or a
/// gateway's subject) and the payload binds it to one request, so the
/// caller cannot be moved onto another.
#[must_use]
pub fn signed_head(subject: &str, time_ms: u64, nonce: &str) -> String {
    format!("natter-bus-v1\n{subject}\n{time_ms}\n{nonce}\n")
}

/// Identifies one socket across the whole system.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketRef {
    /// The gateway holding it (`NATTER_GATEWAY_ID`).
    pub gateway_id: String,
    /// Unique within that gateway.
    pub socket_id: SocketId,
}

/// Who sends a forwarded request; filled in by the gateway from the token
/// and covered by its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The authenticated user.
    pub user_id: UserId,
    /// Their name (from the token).
    pub username: String,
    /// Their login.
    pub session_id: SessionId,
    /// The socket the request came from.
    pub socket: SocketRef,
}

/// Gateway → message: one client request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Who asks.
    pub caller: Caller,
    /// What they ask.
    pub request: Request,
}

/// Gateway → message: requests of many sockets sent as one
/// (`rpc.message.batch`), answered by one [`RpcBatchReply`]. The gateway
/// gathers `write_message`s while earlier batches are in flight, so under
/// load the bus carries one request and one reply for many writes: one
/// signature, one nonce, one round trip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcBatch {
    /// The requests, each with its own caller.
    pub requests: Vec<BatchedRequest>,
}

/// One request of an [`RpcBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchedRequest {
    /// The request, as it would be sent alone.
    pub rpc: RpcRequest,
    /// Its W3C trace context (the batch's NATS headers carry none, since
    /// its requests belong to different traces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// The answers to an [`RpcBatch`], in its order, one per request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcBatchReply {
    /// One answer per request.
    pub replies: Vec<RpcReply>,
}

/// Auth → message: release and mark deleted a user who unregisters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnregisterRequest {
    /// The user leaving.
    pub user_id: UserId,
}

/// The answer to any RPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcReply {
    /// The request's `result`.
    Ok(serde_json::Value),
    /// Why it failed.
    Err(ErrorBody),
}

impl RpcReply {
    /// Wraps a typed result.
    #[must_use]
    pub fn ok(result: &impl Serialize) -> Self {
        Self::Ok(serde_json::to_value(result).unwrap_or(serde_json::Value::Null))
    }
}

impl From<RpcReply> for Result<serde_json::Value, ErrorBody> {
    fn from(r: RpcReply) -> Self {
        match r {
            RpcReply::Ok(v) => Ok(v),
            RpcReply::Err(e) => Err(e),
        }
    }
}

impl From<Result<serde_json::Value, ErrorBody>> for RpcReply {
    fn from(r: Result<serde_json::Value, ErrorBody>) -> Self {
        match r {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_signed_head_binds_subject_time_and_nonce() {
        let head = signed_head("n.rpc.message", 1_700_000_000_000, "abc");
        assert_eq!(head, "natter-bus-v1\nn.rpc.message\n1700000000000\nabc\n");
        assert_ne!(
            head,
            signed_head("n.rpc.unregister", 1_700_000_000_000, "abc")
        );
    }

    #[test]
    fn a_batched_request_holds_the_request_as_sent_alone_and_its_trace() {
        let rpc = RpcRequest {
            caller: Caller {
                user_id: UserId(7),
                username: "alice".into(),
                session_id: SessionId(uuid::Uuid::nil()),
                socket: SocketRef {
                    gateway_id: "gw".into(),
                    socket_id: SocketId(3),
                },
            },
            request: Request::KeepAlive,
        };
        let alone = serde_json::to_value(&rpc).expect("serialize");
        let batched = BatchedRequest {
            rpc: rpc.clone(),
            traceparent: Some("00-abc-def-01".into()),
        };
        let value = serde_json::to_value(&batched).expect("serialize");
        assert_eq!(value["rpc"], alone);
        assert_eq!(value["traceparent"], "00-abc-def-01");
        assert_eq!(
            serde_json::from_value::<BatchedRequest>(value).expect("decode"),
            batched
        );
    }

    #[test]
    fn a_socket_ref_carries_its_socket_id_as_a_number() {
        let socket = SocketRef {
            gateway_id: "gw-a".into(),
            socket_id: SocketId(42),
        };
        let value = serde_json::to_value(&socket).expect("serialize");
        assert_eq!(value, json!({"gateway_id": "gw-a", "socket_id": 42}));
        assert_eq!(
            serde_json::from_value::<SocketRef>(value).expect("decode"),
            socket
        );
    }
}
