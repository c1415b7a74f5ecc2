//! push against the real Postgres, NATS and Redis.
//!
//! `direct` publishes events straight to JetStream and plays the gateways
//! itself (presence in Redis, a subscription on each gateway subject), so
//! every routing rule is checked on the wire without WebSockets. `e2e`
//! drives the whole system through real sockets on two gateways.

mod direct;
mod e2e;
mod support;
