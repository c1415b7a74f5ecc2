//! What every natter service needs, written once: typed configuration
//! ([`config`]), logging ([`telemetry`]), connections to Postgres
//! ([`db`]), NATS/JetStream ([`nats`]) and Redis ([`cache`]), tokens
//! ([`token`]), the TLS crypto provider ([`tls`]), JSON errors for HTTP ([`http_error`]), `/healthz` and
//! `/readyz` ([`health`]), signals ([`shutdown`]) and the one shutdown
//! sequence with its supervised background tasks ([`lifecycle`]).

pub mod cache;
pub mod config;
pub mod db;
pub mod health;
pub mod http_error;
pub mod lifecycle;
pub mod metrics;
pub mod nats;
pub mod random;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use config::Config;
