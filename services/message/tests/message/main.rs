//! The message service alone against the real Postgres, NATS and Redis:
//! the outbox relay, and how it stops (its domain, which needs the other
//! services to reach it, is tested in natter-server's tests).

mod config;
mod outbox;
mod shutdown;
