//! Service⇄service request/reply over core NATS.
//!
//! The gateway forwards each client request to the message service with the
//! authenticated caller attached; auth asks the message service to release
//! an unregistering user. Replies are [`RpcReply`]: a result or an error body.

use crate::error::ErrorBody;
use crate::frames::Request;
use crate::{SessionId, SocketId, UserId};
use serde::{Deserialize, Serialize};

/// Identifies one socket across the whole system.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SocketRef {
    /// The gateway holding it (`NATTER_GATEWAY_ID`).
    pub gateway_id: String,
    /// Unique within that gateway.
    pub socket_id: SocketId,
}

/// Who sends a forwarded request; filled in by the gateway from the token.
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
