//! auth's HTTP API against the real Postgres and NATS, auth running alone
//! (what needs the message service too is in natter-server's tests).

mod errors;
mod login;
mod refresh;
mod register;
mod sessions;
mod timeouts;
