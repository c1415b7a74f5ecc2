//! The services together, in-process: what one service does with the help
//! of another (auth asking message, the gateway hearing auth's
//! revocations, requests reaching message through the gateway), and what
//! every service answers alike.

mod auth;
mod dlq;
mod gateway;
mod readiness;
mod relay;
