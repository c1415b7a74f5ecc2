//! auth's HTTP API against the real Postgres, NATS and message service.

mod errors;
mod login;
mod register;
mod sessions;
