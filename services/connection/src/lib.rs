//! natter's WebSocket gateway.
//!
//! Until the real-time core lands it connects to its dependencies (NATS,
//! Redis) and serves `/healthz` and `/readyz` on its port.

use anyhow::Context;
use natter_platform::health::{self, Dependencies};
use natter_platform::{Config, cache, nats};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound, ready-to-run gateway.
pub struct Gateway {
    listener: TcpListener,
    deps: Dependencies,
}

impl Gateway {
    /// Connects to NATS and Redis and binds `config.gateway_addr`.
    ///
    /// # Errors
    /// When a dependency does not answer or the port cannot be bound.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let nats = nats::connect(&config.nats_url, "natter-connection").await?;
        let redis = cache::connect(&config.redis_url).await?;
        let listener = TcpListener::bind(config.gateway_addr)
            .await
            .with_context(|| format!("binding the gateway to {}", config.gateway_addr))?;
        Ok(Self {
            listener,
            deps: Dependencies {
                postgres: None,
                nats: Some(nats),
                redis: Some(redis),
            },
        })
    }

    /// Where it listens.
    ///
    /// # Errors
    /// If the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`.
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "gateway listening");
        health::serve(self.listener, self.deps, shutdown.clone(), shutdown).await
    }
}

/// Builds and runs the gateway until `shutdown`.
///
/// # Errors
/// As [`Gateway::build`] and [`Gateway::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::build(&config).await?.run(shutdown).await
}
