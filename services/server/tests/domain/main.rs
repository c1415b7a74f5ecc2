//! The message service's domain through real WebSocket clients (and, where
//! a test needs to play the gateway, straight over NATS), every service
//! running, against the machine's real Postgres, NATS and Redis.

mod channels;
mod concurrency;
mod connections;
mod limits;
mod members;
mod messages;
mod support;
mod unregister;
