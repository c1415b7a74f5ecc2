//! natter's WebSocket gateway (docs/protocol.md §2).
//!
//! It authenticates the upgrade itself (shared token key, the revoked
//! sessions it follows, and the session's row in Postgres), holds the
//! sockets, forwards each request to the
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
use natter_platform::bus::{BusKey, BusVerifier};
use natter_platform::health::{self, Dependencies};
use natter_platform::lifecycle::{Condition, Lifecycle, Readiness, Runnable};
use natter_platform::presence::PresenceWriter;
use natter_platform::token::TokenKeys;
use natter_platform::{Config, cache, db, http_error, nats, serve};
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
    /// Pushes to one socket are written at most once per this long.
    pub coalesce: Duration,
    pub rate: u32,
    pub burst: u32,
    pub request_timeout: Duration,
    /// Sockets one user may hold across all gateways.
    pub sockets_per_user: usize,
}

/// What every socket task and handler shares.
pub(crate) struct Shared {
    /// Verifies tokens.
    pub keys: TokenKeys,
    /// Requests out, deliveries in.
    pub nats: async_nats::Client,
    /// Signs forwarded requests (their caller) and checks deliveries.
    pub bus: BusKey,
    /// Where requests go: the message service's subject.
    pub rpc_subject: String,
    /// Where `write_message`s go: batched to the message service.
    pub writes: forward::Batcher,
    /// This gateway's id.
    pub gateway_id: String,
    /// The sockets held.
    pub registry: Arc<registry::Registry>,
    /// Sessions known to be revoked.
    pub revoked: Arc<revocations::Revoked>,
    /// Sessions as Postgres has them, checked at upgrade.
    pub sessions: revocations::Sessions,
    /// Whether message answers forwarded requests: logged when that
    /// changes (sockets live on without it, so readiness does not).
    pub message_answers: Condition,
    /// Presence writes.
    pub presence: PresenceWriter,
    /// Limits and timings.
    pub settings: Settings,
    /// Draining once shutdown begins: new sockets are refused with 503.
    pub readiness: Readiness,
    /// Bounds the number of sockets.
    pub sockets: Arc<Semaphore>,
    /// Tracks socket tasks, to wait for them on shutdown.
    pub tracker: TaskTracker,
}

/// A bound, ready-to-run gateway.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    session_checker: revocations::SessionChecker,
    js: async_nats::jetstream::Context,
    ns: Namespace,
    deps: Dependencies,
    lifecycle: Lifecycle,
}

impl Gateway {
    /// This gateway's id.
    #[must_use]
    pub fn gateway_id(&self) -> &str {
        &self.shared.gateway_id
    }
}

impl Runnable for Gateway {
    /// Connects to NATS, Redis and Postgres and binds `config.gateway_addr`.
    ///
    /// # Errors
    /// When `NATTER_JWT_SECRET` or `NATTER_BUS_KEY` is missing, a dependency does not answer or
    /// the port cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let secret = config
            .jwt_secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .context("NATTER_JWT_SECRET is required by the gateway")?;
        let bus = config.bus_key("the gateway")?;
        raise_open_file_limit();
        let nats = nats::connect(config, "natter-gateway").await?;
        let js = nats::jetstream(&nats);
        let ns = config.namespace();
        let ttl = Duration::from_secs(config.token_ttl_secs);
        nats::ensure_streams(&js, config).await?;
        let redis = cache::connect(config).await?;
        // One task asks Postgres about sessions, one query at a time.
        let pool = db::connect_with(&config.database_url, 2, &config.database_session()).await?;
        let gateway_id = config.gateway_id();
        let listener = TcpListener::bind(config.gateway_addr)
            .await
            .with_context(|| format!("binding the gateway to {}", config.gateway_addr))?;
        let lifecycle = Lifecycle::new("gateway", config);
        let (sessions, session_checker) = revocations::Sessions::new(pool);
        let message_answers = Condition::detached("message service");
        let request_timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        // Ends when the gateway (every socket's handle) is gone.
        let (writes, batches) = forward::Batcher::start(forward::BatchSender {
            nats: nats.clone(),
            bus: bus.clone(),
            subject: ns.rpc_message_batch(),
            timeout: request_timeout,
            answers: message_answers.clone(),
        });
        tokio::spawn(batches);
        let shared = Arc::new(Shared {
            keys: TokenKeys::new(secret.as_bytes(), config.token_ttl_secs),
            rpc_subject: ns.rpc_message(),
            writes,
            bus,
            presence: PresenceWriter::new(redis.clone(), ns.clone(), gateway_id.clone())
                .reporting_to(lifecycle.readiness().condition("presence")),
            gateway_id,
            registry: Arc::default(),
            revoked: Arc::new(revocations::Revoked::new(ttl)),
            sessions,
            message_answers,
            settings: Settings {
                ping: Duration::from_secs(config.ws_ping_secs.max(1)),
                idle: Duration::from_secs(config.ws_idle_secs.max(1)),
                queue: config.ws_queue,
                coalesce: Duration::from_millis(config.ws_coalesce_ms),
                rate: config.ws_rate,
                burst: config.ws_burst,
                request_timeout,
                sockets_per_user: config.sockets_per_user,
            },
            readiness: lifecycle.readiness(),
            sockets: Arc::new(Semaphore::new(config.ws_max_sockets)),
            tracker: TaskTracker::new(),
            nats: nats.clone(),
        });
        Ok(Self {
            listener,
            shared,
            session_checker,
            js,
            ns,
            deps: Dependencies {
                postgres: None,
                nats: Some(nats),
                redis: Some(redis),
            },
            lifecycle,
        })
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then drains: turns unready, waits the
    /// drain delay, stops accepting, sends `reconnect` and closes every
    /// socket with 1012 within the grace period, stops following
    /// revocations, deliveries and the heartbeat, and clears its presence.
    ///
    /// # Errors
    /// When subscribing fails.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let lifecycle = self.lifecycle;
        let revocations = revocations::follow(
            self.js,
            &self.ns,
            shared.revoked.clone(),
            shared.registry.clone(),
            lifecycle.background(),
        )
        .await?;
        lifecycle.watch("revocation follower", revocations);
        lifecycle.spawn(
            "session checker",
            self.session_checker.run(lifecycle.background()),
        );
        let deliveries = deliveries::listen(
            &shared.nats,
            self.ns.gateway_subject(&shared.gateway_id),
            BusVerifier::new(shared.bus.clone()),
            shared.registry.clone(),
            lifecycle.background(),
        )
        .await?;
        lifecycle.watch("delivery listener", deliveries);
        let heartbeat = shared
            .presence
            .clone()
            .start_heartbeat(shared.registry.clone(), lifecycle.background())
            .await
            .context("registering the gateway in Redis")?;
        lifecycle.watch("presence heartbeat", heartbeat);

        let router = Router::new()
            .route(paths::WEBSOCKET, get(upgrade::upgrade))
            .with_state(shared.clone())
            .merge(health::router(self.deps, lifecycle.readiness()))
            .fallback(http_error::not_found)
            .layer(axum::middleware::map_response(http_error::json_errors));
        tracing::info!(addr = %self.listener.local_addr()?, gateway_id = %shared.gateway_id, "gateway listening");

        let intake = lifecycle.intake();
        let server = serve::serve(
            self.listener,
            router,
            lifecycle.http_limits(),
            intake.clone(),
        );
        let sockets = async {
            intake.cancelled().await;
            drain(&shared).await;
        };
        let work = async {
            tokio::join!(server, sockets);
            Ok(())
        };
        let stopped = lifecycle.run(shutdown, work).await;
        shared.presence.retire().await;
        stopped
    }
}

/// Tells every socket to reconnect elsewhere and waits for them to close
/// (the lifecycle's grace period bounds the wait).
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
    shared.tracker.wait().await;
}

/// 200,000 sockets need as many file descriptors: raise the soft limit
/// toward the hard one (the default soft limit is often 1024).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open file limit"),
    }
}
