//! What every natter service needs, written once: typed configuration
//! ([`config`]), logging ([`telemetry`]), connections to Postgres
//! ([`db`]), NATS/JetStream ([`nats`]) and Redis ([`cache`]), tokens
//! ([`token`]), the TLS crypto provider ([`tls`]), secrets kept out of
//! logs ([`secret`]), JSON errors for HTTP
//! ([`http_error`]), `/healthz` and `/readyz` ([`health`]), the HTTP
//! server every listener runs with its timeouts and cap ([`serve`]), signals
//! ([`shutdown`]) and the one shutdown sequence with its supervised
//! background tasks ([`lifecycle`]).
//!
//! The signed bus ([`bus`]) authenticates what services send each other
//! over NATS; [`tail`] follows a stream's subjects in order without the
//! stalls of nats-server 2.9's silently dropped pull requests.
//!
//! It also owns the contracts that more than one service reads or writes,
//! so that each has one definition: the outbox row format and its relay
//! ([`outbox`]: auth and message write it, message runs the relay) and the
//! Redis presence schema ([`presence`]: the gateway writes, push and
//! message read).

pub mod bus;
pub mod cache;
pub mod config;
pub mod db;
pub mod health;
pub mod http_error;
pub mod lifecycle;
pub mod metrics;
pub mod nats;
pub mod outbox;
pub mod presence;
pub mod random;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod tail;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use config::Config;
