//! natter's auth service: register, login, logout, unregister and `/me`
//! over HTTP under `/api/v1/auth` (docs/protocol.md §1).
//!
//! Reading order: [`Auth`] wires state and routes; [`routes`] holds the
//! handlers; [`extract`] authenticates callers; [`password`] hashes;
//! [`store`] is the SQL; [`error`] maps failures to the wire.

mod error;
mod extract;
mod password;
mod routes;
mod store;

use anyhow::Context;
use axum::Router;
use natter_platform::health::{self, Dependencies};
use natter_platform::token::TokenKeys;
use natter_platform::{Config, db, http_error, nats};
use natter_protocol::limits::MAX_HTTP_BODY_BYTES;
use natter_protocol::subjects::Namespace;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;

pub use error::AuthError;

/// Handles shared by every request; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Users, sessions, login failures, outbox.
    pub pool: PgPool,
    /// Core NATS, to ask the message service to release an unregistering
    /// user.
    pub nats: async_nats::Client,
    /// Signs and verifies tokens.
    pub keys: TokenKeys,
    /// Names of subjects.
    pub ns: Namespace,
    /// Hashes and verifies passwords; also holds the dummy hash that makes
    /// an unknown username cost what a wrong password costs.
    pub passwords: Arc<password::Hasher>,
}

/// A bound, ready-to-run auth service.
pub struct Auth {
    listener: TcpListener,
    router: Router,
    draining: CancellationToken,
    /// For the pruning of old login failures.
    pool: PgPool,
}

impl Auth {
    /// Connects to Postgres and NATS and binds `config.auth_addr` (port 0
    /// picks a free port: see [`Auth::local_addr`]).
    ///
    /// # Errors
    /// When `NATTER_JWT_SECRET` is missing, a dependency does not answer or
    /// the address cannot be bound.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let secret = config
            .jwt_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .context("NATTER_JWT_SECRET is required by auth")?;
        let pool = db::connect(&config.database_url, config.database_pool).await?;
        let nats = nats::connect(&config.nats_url, "natter-auth").await?;
        let state = AppState {
            pool: pool.clone(),
            nats: nats.clone(),
            keys: TokenKeys::new(secret.as_bytes(), config.token_ttl_secs),
            ns: config.namespace(),
            passwords: Arc::new(password::Hasher::new()?),
        };
        let pool = state.pool.clone();
        let draining = CancellationToken::new();
        let deps = Dependencies {
            postgres: Some(pool.clone()),
            nats: Some(nats),
            redis: None,
        };
        let router = routes::router(state)
            .merge(health::router(deps, draining.clone()))
            .fallback(http_error::not_found)
            .layer(RequestBodyLimitLayer::new(MAX_HTTP_BODY_BYTES))
            // Outermost, so even the body limit's own 413 gets a JSON body.
            .layer(axum::middleware::map_response(http_error::json_errors))
            .layer(TraceLayer::new_for_http());
        let listener = TcpListener::bind(config.auth_addr)
            .await
            .with_context(|| format!("binding auth to {}", config.auth_addr))?;
        Ok(Self {
            listener,
            router,
            draining,
            pool,
        })
    }

    /// Where it listens.
    ///
    /// # Errors
    /// If the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then finishes in-flight requests (bounded).
    ///
    /// # Errors
    /// When the server fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "auth listening");
        let pruning = tokio::spawn(prune_login_failures(self.pool, shutdown.clone()));
        let draining = self.draining.clone();
        let stop = shutdown.clone();
        let server = axum::serve(self.listener, self.router).with_graceful_shutdown(async move {
            stop.cancelled().await;
            draining.cancel();
        });
        let served = run_with_grace(server.into_future(), &shutdown).await;
        if let Err(e) = pruning.await {
            tracing::error!(error = %e, "the login failure pruner panicked");
        }
        served
    }
}

/// How often every name's expired login failures are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Deletes login failures older than the rate-limit window every
/// [`PRUNE_EVERY`] (the first time at start) until `shutdown`. Every
/// replica does it; the deletes are idempotent.
async fn prune_login_failures(pool: PgPool, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store::prune_login_failures(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "pruned expired login failures"),
            Err(e) => tracing::warn!(error = ?e, "pruning login failures failed"),
        }
    }
}

/// Runs a server future; after `shutdown` gives in-flight work
/// [`GRACE`] before giving up on it.
async fn run_with_grace(
    server: impl std::future::Future<Output = std::io::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return Ok(r?),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(GRACE, server).await {
        Ok(r) => Ok(r?),
        Err(_) => {
            tracing::warn!("auth: in-flight requests outlived the grace period");
            Ok(())
        }
    }
}

const GRACE: Duration = Duration::from_secs(10);

/// Builds and runs auth until `shutdown`.
///
/// # Errors
/// As [`Auth::build`] and [`Auth::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Auth::build(&config).await?.run(shutdown).await
}
