//! natter's WebSocket gateway (PROTOCOL.md section 2).
//!
//! It authenticates the upgrade itself (shared token key + a cache of
//! revoked sessions), holds the sockets, forwards each request to the
//! message service over NATS, records presence in Redis, and writes what
//! push delivers on its own subject `<ns>.gw.<gateway-id>`.
//!
//! Reading order: [`Gateway`] wires it; `upgrade` authenticates; `socket`
//! is the per-socket loop; `forward` talks to message; `registry` holds
//! the sockets; `deliveries` and `revocations` connect it to push and
//! auth; presence is written through `natter_platform::presence`.

mod deliveries;
mod forward;
mod registry;
mod revocations;
mod socket;
mod upgrade;

use anyhow::Context;
use axum::Router;
use axum::extract::ws::Utf8Bytes;
use axum::routing::get;
use natter_platform::health::{self, Dependencies};
use natter_platform::presence::PresenceWriter;
use natter_platform::token::TokenKeys;
use natter_platform::{Config, cache, http_error, nats};
use natter_protocol::close;
use natter_protocol::frames::ServerFrame;
use natter_protocol::http::paths;
use natter_protocol::subjects::Namespace;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per-socket limits and timings, from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub ping: Duration,
    pub idle: Duration,
    pub queue: usize,
    pub rate: u32,
    pub burst: u32,
    pub request_timeout: Duration,
}

/// What every socket task and handler shares.
pub(crate) struct Shared {
    /// Verifies tokens.
    pub keys: TokenKeys,
    /// Requests out, deliveries in.
    pub nats: async_nats::Client,
    /// Where requests go: the message service's subject.
    pub rpc_subject: String,
    /// This gateway's id.
    pub gateway_id: String,
    /// The sockets held.
    pub registry: Arc<registry::Registry>,
    /// Sessions known to be revoked.
    pub revoked: Arc<revocations::Revoked>,
    /// Presence writes.
    pub presence: PresenceWriter,
    /// Limits and timings.
    pub settings: Settings,
    /// Cancelled when the gateway stops taking sockets.
    pub draining: CancellationToken,
    /// Bounds the number of sockets.
    pub sockets: Arc<Semaphore>,
    /// Tracks socket tasks, to wait for them on shutdown.
    pub tracker: TaskTracker,
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    js: async_nats::jetstream::Context,
    ns: Namespace,
    deps: Dependencies,
    drain_delay: Duration,
}

/// How long sockets get to close on shutdown.
const GRACE: Duration = Duration::from_secs(10);

impl Gateway {
    /// Connects to NATS and Redis and binds `config.gateway_addr`.
    ///
    /// # Errors
    /// When `NATTER_JWT_SECRET` is missing, a dependency does not answer or
    /// the port cannot be bound.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let secret = config
            .jwt_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .context("NATTER_JWT_SECRET is required by the gateway")?;
        raise_open_file_limit();
        let nats = nats::connect(&config.nats_url, "natter-gateway").await?;
        let js = nats::jetstream(&nats);
        let ns = config.namespace();
        let ttl = Duration::from_secs(config.token_ttl_secs);
        nats::ensure_streams(&js, &ns, ttl).await?;
        let redis = cache::connect(&config.redis_url).await?;
        let gateway_id = config.gateway_id();
        let listener = TcpListener::bind(config.gateway_addr)
            .await
            .with_context(|| format!("binding the gateway to {}", config.gateway_addr))?;
        let shared = Arc::new(Shared {
            keys: TokenKeys::new(secret.as_bytes(), config.token_ttl_secs),
            rpc_subject: ns.rpc_message(),
            presence: PresenceWriter::new(redis.clone(), ns.clone(), gateway_id.clone()),
            gateway_id,
            registry: Arc::default(),
            revoked: Arc::new(revocations::Revoked::new(ttl)),
            settings: Settings {
                ping: Duration::from_secs(config.ws_ping_secs.max(1)),
                idle: Duration::from_secs(config.ws_idle_secs.max(1)),
                queue: config.ws_queue,
                rate: config.ws_rate,
                burst: config.ws_burst,
                request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
            },
            draining: CancellationToken::new(),
            sockets: Arc::new(Semaphore::new(config.ws_max_sockets)),
            tracker: TaskTracker::new(),
            nats: nats.clone(),
        });
        Ok(Self {
            listener,
            shared,
            js,
            ns,
            deps: Dependencies {
                postgres: None,
                nats: Some(nats),
                redis: Some(redis),
            },
            drain_delay: Duration::from_secs(config.drain_delay_secs),
        })
    }

    /// Where it listens.
    ///
    /// # Errors
    /// If the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// This gateway's id.
    #[must_use]
    pub fn gateway_id(&self) -> &str {
        &self.shared.gateway_id
    }

    /// Serves until `shutdown`, then drains: turns unready, waits the
    /// drain delay, sends `reconnect` and closes every socket with 1012,
    /// clears its presence, and returns within the grace period.
    ///
    /// # Errors
    /// When subscribing fails or the server fails.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let background = CancellationToken::new();
        let revocations = revocations::follow(
            self.js,
            &self.ns,
            shared.revoked.clone(),
            shared.registry.clone(),
            background.clone(),
        )
        .await?;
        let deliveries = deliveries::listen(
            &shared.nats,
            self.ns.gateway_subject(&shared.gateway_id),
            shared.registry.clone(),
            background.clone(),
        )
        .await?;
        let heartbeat = shared
            .presence
            .clone()
            .start_heartbeat(shared.registry.clone(), background.clone())
            .await
            .context("registering the gateway in Redis")?;

        let router = Router::new()
            .route(paths::WEBSOCKET, get(upgrade::upgrade))
            .with_state(shared.clone())
            .merge(health::router(self.deps, shared.draining.clone()))
            .fallback(http_error::not_found)
            .layer(axum::middleware::map_response(http_error::json_errors));
        tracing::info!(addr = %self.listener.local_addr()?, gateway_id = %shared.gateway_id, "gateway listening");

        let stop_accepting = CancellationToken::new();
        let server = axum::serve(self.listener, router)
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
        let server = tokio::spawn(server.into_future());

        shutdown.cancelled().await;
        shared.draining.cancel();
        tokio::time::sleep(self.drain_delay).await;
        stop_accepting.cancel();
        drain(&shared).await;
        background.cancel();
        shared.presence.retire().await;
        for task in [revocations, deliveries, heartbeat] {
            let _ = task.await;
        }
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), server).await {
            return Err(e).context("gateway server");
        }
        Ok(())
    }
}

/// Tells every socket to reconnect elsewhere and waits for them to close.
async fn drain(shared: &Shared) {
    let frame = Utf8Bytes::from(
        ServerFrame::Reconnect {
            reason: "server shutting down".into(),
        }
        .to_json(),
    );
    let closed = shared.registry.close_all(&registry::CloseRequest {
        code: close::SERVICE_RESTART,
        reason: "server restarting",
        last_frame: Some(frame),
        drain: true,
    });
    tracing::info!(sockets = closed, "draining");
    shared.tracker.close();
    if tokio::time::timeout(GRACE, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some sockets outlived the grace period");
    }
}

/// 200,000 sockets need as many file descriptors: raise the soft limit
/// toward the hard one (the default soft limit is often 1024).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
}

/// Builds and runs the gateway until `shutdown`.
///
/// # Errors
/// As [`Gateway::build`] and [`Gateway::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::build(&config).await?.run(shutdown).await
}
