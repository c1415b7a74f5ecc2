//! push in the whole system: writes enter through one gateway, go through
//! message, the outbox relay, JetStream and push, and come out of two
//! gateways.

mod e2e;
mod members;
