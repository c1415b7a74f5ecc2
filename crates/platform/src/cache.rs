//! Redis, where presence lives: a multiplexed, self-reconnecting handle,
//! over TLS for a `rediss://` URL (verified against `NATTER_REDIS_CA`, or
//! the system's roots), authenticated with `NATTER_REDIS_PASSWORD` when the
//! URL carries none.

use crate::Config;
use anyhow::Context;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// The longest pause between reconnection attempts. The client's default
/// backoff grows to seconds, which would keep presence (and so live
/// delivery) down that long after Redis is back.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// Connects to Redis as `config` says.
///
/// # Errors
/// When the URL is malformed, the CA file cannot be read or Redis does not
/// answer.
pub async fn connect(config: &Config) -> anyhow::Result<ConnectionManager> {
    client(config)?
        .get_connection_manager_with_config(
            ConnectionManagerConfig::new().set_max_delay(RECONNECT_MAX_DELAY),
        )
        .await
        .with_context(|| {
            format!(
                "connecting to Redis at {}",
                crate::secret::redact_url(&config.redis_url)
            )
        })
}

/// A client (not yet connected) as `config` says.
///
/// # Errors
/// When the URL is malformed or the CA file cannot be read.
pub fn client(config: &Config) -> anyhow::Result<redis::Client> {
    crate::tls::install_crypto_provider();
    let mut info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .context("NATTER_REDIS_URL is not a Redis URL")?;
    if let Some(password) = config.redis_password.as_deref().filter(|p| !p.is_empty())
        && info.redis_settings().password().is_none()
    {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    match &config.redis_ca {
        Some(ca) => {
            let root_cert = std::fs::read(ca)
                .with_context(|| format!("reading NATTER_REDIS_CA {}", ca.display()))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .context("NATTER_REDIS_CA is not a PEM certificate")
        }
        None => redis::Client::open(info).context("NATTER_REDIS_URL is not a Redis URL"),
    }
}
