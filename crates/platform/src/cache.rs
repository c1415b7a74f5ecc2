//! Redis, where presence lives: a multiplexed, self-reconnecting handle.

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// The longest pause between reconnection attempts. The client's default
/// backoff grows to seconds, which would keep presence (and so live
/// delivery) down that long after Redis is back.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// Connects to Redis.
///
/// # Errors
/// When the URL is malformed or Redis does not answer.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("NATTER_REDIS_URL is not a Redis URL")?;
    client
        .get_connection_manager_with_config(
            ConnectionManagerConfig::new().set_max_delay(RECONNECT_MAX_DELAY),
        )
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}
