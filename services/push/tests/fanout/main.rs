//! push alone against the real Postgres, NATS and Redis: the tests publish
//! events straight to JetStream and play the gateways themselves
//! (presence in Redis, a subscription on each gateway subject), so every
//! routing rule is checked on the wire without WebSockets. (The whole
//! system through real sockets is in natter-server's tests.)

mod direct;
mod outages;
mod partitions;
mod support;
