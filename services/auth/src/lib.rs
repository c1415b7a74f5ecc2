//! natter's auth service: register, login, refresh, logout, unregister and
//! `/me` over HTTP under `/api/v1/auth` (docs/protocol.md §1, §2.7).
//!
//! Reading order: [`Auth`] wires state and routes; `routes` holds the
//! handlers; `extract` authenticates callers; `password` hashes;
//! `refresh` makes refresh tokens; `store` is the SQL; `error` maps
//! failures to the wire.

mod client_addr;
mod error;
mod extract;
mod password;
mod refresh;
mod routes;
mod store;

use anyhow::Context;
use axum::Router;
use ipnet::IpNet;
use natter_platform::health::{self, Dependencies};
use natter_platform::lifecycle::{Lifecycle, Runnable};
use natter_platform::token::TokenKeys;
use natter_platform::{Config, db, http_error, nats, serve};
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
    /// Users, sessions, refresh tokens, login failures, outbox.
    pub pool: PgPool,
    /// Core NATS, to ask the message service to release an unregistering
    /// user.
    pub nats: async_nats::Client,
    /// Signs the unregister request, which message refuses unsigned.
    pub bus: natter_platform::bus::BusKey,
    /// Signs and verifies tokens.
    pub keys: TokenKeys,
    /// How long tokens and refresh tokens live.
    pub lifetimes: store::Lifetimes,
    /// Names of subjects.
    pub ns: Namespace,
    /// Hashes and verifies passwords, a bounded number at a time; also
    /// holds the dummy hash that makes an unknown username cost what a
    /// wrong password costs.
    pub passwords: Arc<password::Hasher>,
    /// The login limit's settings.
    pub login_limits: store::LoginLimits,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Arc<Vec<IpNet>>,
}

/// A bound, ready-to-run auth service.
pub struct Auth {
    listener: TcpListener,
    router: Router,
    lifecycle: Lifecycle,
    /// For the pruning of old login failures and refresh tokens.
    pool: PgPool,
    /// Whose window decides which failures are old.
    login_limits: store::LoginLimits,
}

impl Runnable for Auth {
    /// Connects to Postgres and NATS and binds `config.auth_addr`.
    ///
    /// # Errors
    /// When `NATTER_JWT_SECRET` or `NATTER_BUS_KEY` is missing, a dependency
    /// does not answer or the address cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let secret = config
            .jwt_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .context("NATTER_JWT_SECRET is required by auth")?;
        let bus = config.bus_key("auth")?;
        let trusted_proxies = config.trusted_proxies().map_err(anyhow::Error::msg)?;
        let pool = db::connect(config).await?;
        let nats = nats::connect(config, "natter-auth").await?;
        let login_limits = store::LoginLimits {
            max_failures: config.login_max_failures.max(1),
            window_secs: config.login_window_secs.max(1),
            max_delay: Duration::from_millis(config.login_max_delay_ms),
        };
        let state = AppState {
            pool: pool.clone(),
            nats: nats.clone(),
            bus,
            keys: TokenKeys::new(secret.as_bytes(), config.token_ttl_secs),
            lifetimes: store::Lifetimes {
                token_secs: config.token_ttl_secs,
                refresh_secs: config.refresh_ttl_secs,
            },
            ns: config.namespace(),
            passwords: Arc::new(password::Hasher::new(
                config.hash_concurrency.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                }),
                Duration::from_millis(config.hash_wait_ms),
            )?),
            login_limits,
            trusted_proxies: Arc::new(trusted_proxies),
        };
        let lifecycle = Lifecycle::new("auth", config);
        let deps = Dependencies {
            postgres: Some(pool.clone()),
            nats: Some(nats),
            redis: None,
        };
        let router = routes::router(state)
            .merge(health::router(deps, lifecycle.readiness()))
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
            lifecycle,
            pool,
            login_limits,
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; then stops taking requests and finishes
    /// those in flight within the grace period.
    ///
    /// # Errors
    /// When the listener has no address, or the pruner died.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "auth listening");
        let lifecycle = self.lifecycle;
        lifecycle.spawn(
            "pruner",
            prune(self.pool, self.login_limits, lifecycle.background()),
        );
        let server = serve::serve(
            self.listener,
            self.router,
            lifecycle.http_limits(),
            lifecycle.intake(),
        );
        lifecycle
            .run(shutdown, async move {
                server.await;
                Ok(())
            })
            .await
    }
}

/// How often expired login failures and refresh tokens are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Deletes login failures older than the rate-limit window and expired
/// refresh tokens every [`PRUNE_EVERY`] (the first time at start) until
/// `stop`. Every replica does it; the deletes are idempotent.
async fn prune(pool: PgPool, limits: store::LoginLimits, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match store::prune_login_failures(&pool, &limits).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "pruned expired login failures"),
            Err(e) => tracing::warn!(error = ?e, "pruning login failures failed"),
        }
        match store::prune_refresh_tokens(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "pruned expired refresh tokens"),
            Err(e) => tracing::warn!(error = ?e, "pruning refresh tokens failed"),
        }
    }
}
