//! Redis, where presence lives: a multiplexed, self-reconnecting handle.

use anyhow::Context;
use redis::aio::ConnectionManager;

/// Connects to Redis.
///
/// # Errors
/// When the URL is malformed or Redis does not answer.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("NATTER_REDIS_URL is not a Redis URL")?;
    client
        .get_connection_manager()
        .await
        .with_context(|| format!("connecting to Redis at {}", crate::secret::redact_url(url)))
}
