//! The WebSocket close codes of the client⇄gateway protocol
//! (docs/protocol.md §2.5). Each is the RFC 6455 code of that name; the doc
//! says when the gateway sends it, which is what a client acts on (1012 and
//! 1013 invite a reconnect, 1008 does not).

/// 1001 "going away": the socket was silent past the idle timeout.
pub const GOING_AWAY: u16 = 1001;
/// 1008 "policy violation": the session was revoked (logout, unregister).
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009 "message too big": a frame over [`crate::limits::MAX_FRAME_BYTES`].
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1012 "service restart": the gateway is shutting down, after a
/// `reconnect` push.
pub const SERVICE_RESTART: u16 = 1012;
/// 1013 "try again later": the socket fell behind its outgoing queue
/// (a slow consumer); it may reconnect and resume.
pub const TRY_AGAIN_LATER: u16 = 1013;
