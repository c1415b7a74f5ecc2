//! natter's wire protocol — the only definition of it.
//!
//! Everything that crosses a process boundary is typed here: the auth HTTP
//! bodies ([`http`]), the client⇄gateway WebSocket frames ([`frames`]) and
//! close codes ([`close`]), the gateway⇄message RPC envelope ([`rpc`]), the
//! JetStream events and gateway deliveries ([`events`]), the event
//! partitions ([`partition`]) and the NATS subject/stream names
//! ([`subjects`]); a username is parsed into a
//! [`Username`] at the edge. Pure types and serde: no I/O, so services and
//! the client share it freely. `docs/protocol.md` is the contract these
//! types encode; the JSON round-trip tests beside each module pin the wire
//! shape.

pub mod close;
pub mod error;
pub mod events;
pub mod frames;
pub mod http;
pub mod ids;
pub mod limits;
pub mod partition;
pub mod rpc;
pub mod subjects;
pub mod time_format;
pub mod username;

pub use error::{ErrorBody, ErrorCode};
pub use ids::{ChannelId, Seq, SessionId, SocketId, UserId};
pub use username::Username;
