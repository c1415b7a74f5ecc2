//! natter's push service: fans events out to the gateways.
//!
//! Until the real-time core lands it connects to its dependencies
//! (Postgres, NATS, Redis) and serves `/healthz` and `/readyz`.

use anyhow::Context;
use natter_platform::health::{self, Dependencies};
use natter_platform::{Config, cache, db, nats};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound, ready-to-run push service.
pub struct Push {
    listener: TcpListener,
    deps: Dependencies,
}

impl Push {
    /// Connects to Postgres, NATS and Redis and binds the health port.
    ///
    /// # Errors
    /// When a dependency does not answer or the port cannot be bound.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let pool = db::connect(&config.database_url, 8).await?;
        let nats = nats::connect(&config.nats_url, "natter-push").await?;
        let redis = cache::connect(&config.redis_url).await?;
        let listener = TcpListener::bind(config.push_addr)
            .await
            .with_context(|| format!("binding push health to {}", config.push_addr))?;
        Ok(Self {
            listener,
            deps: Dependencies {
                postgres: Some(pool),
                nats: Some(nats),
                redis: Some(redis),
            },
        })
    }

    /// Where `/healthz` and `/readyz` answer.
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
        tracing::info!(addr = %self.local_addr()?, "push serving health");
        health::serve(self.listener, self.deps, shutdown.clone(), shutdown).await
    }
}

/// Builds and runs push until `shutdown`.
///
/// # Errors
/// As [`Push::build`] and [`Push::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Push::build(&config).await?.run(shutdown).await
}
