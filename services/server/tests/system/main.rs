//! The services together, in-process: what one service does with the help
//! of another (auth asking message, the gateway hearing auth's
//! revocations, requests reaching message through the gateway), and what
//! every service answers alike; and what needs real processes (a frozen
//! relay, a crashed gateway) or the operator's `dlq` command.

mod accounts;
mod admin;
mod auth;
mod bus;
mod dlq;
mod gateway;
mod presence;
mod process;
mod readiness;
mod relay;
mod tls;
