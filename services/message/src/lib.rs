//! natter's message service: the domain.
//!
//! It answers the gateway's forwarded requests and auth's unregister over
//! NATS request/reply (queue group, so instances share the load), keeps
//! every durable fact in Postgres, and announces state changes through the
//! outbox (`natter_platform::outbox`), whose relay it runs to publish them
//! to JetStream.
//!
//! Reading order: [`Message`] wires it; `rpc` receives requests;
//! `handlers` applies the rules of each request; `writer` batches
//! `write_message` into shared transactions; `store` is the SQL; `error`
//! maps domain failures to error codes. The `online` flag of
//! `fetch_connections` and `fetch_members` is read through
//! `natter_platform::presence`. Beside the domain, message's port serves
//! the operator: `admin` (the admin API) and `dlq` (the dead letters).

mod admin;
pub mod dlq;
mod error;
mod handlers;
mod rpc;
mod store;
mod writer;

use anyhow::Context;
use natter_platform::bus::BusVerifier;
use natter_platform::health::Dependencies;
use natter_platform::lifecycle::{Lifecycle, Runnable};
use natter_platform::outbox;
use natter_platform::presence::PresenceReader;
use natter_platform::{Config, cache, db, nats};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::DomainError;

/// Handles shared by every request; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    /// All durable state.
    pub pool: sqlx::PgPool,
    /// History pages below a seq the caller knows: a replica
    /// (`NATTER_DATABASE_READ_URL`), or `pool` again when none is set.
    pub history: sqlx::PgPool,
    /// Requests in, replies out.
    pub nats: async_nats::Client,
    /// Checks that each request was signed by a gateway (or auth).
    pub bus: std::sync::Arc<BusVerifier>,
    /// Names of subjects.
    pub ns: natter_protocol::subjects::Namespace,
    /// Presence, for the `online` flag of `fetch_connections` and
    /// `fetch_members`.
    pub presence: PresenceReader,
    /// The domain's configured limits.
    pub limits: Limits,
    /// Queues `write_message` requests for the batching writer.
    pub writer: writer::Writer,
}

/// The per-user and per-channel limits of docs/protocol.md §2.2 and §2.6
/// (from config).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most accepted connections per user.
    pub connection_limit: i32,
    /// Most members per channel, creator included.
    pub head_limit: i32,
    /// Most channels a user is a member of (docs/protocol.md §2.6).
    pub channels_per_user: i32,
}

/// A bound, ready-to-run message service.
pub struct Message {
    state: AppState,
    js: async_nats::jetstream::Context,
    health_listener: TcpListener,
    deps: Dependencies,
    writes: writer::Queue,
    lifecycle: Lifecycle,
    /// For the admin API (its dead-letter views connect as `dlq` does).
    config: Config,
}

/// The smallest pool message runs with: the outbox relay's connection,
/// the batch writer's, and one for everything else.
const MIN_DATABASE_POOL: u32 = 3;

impl Runnable for Message {
    /// Connects to Postgres, NATS and Redis, declares the streams and binds the
    /// health port.
    ///
    /// # Errors
    /// When `NATTER_BUS_KEY` is missing, `NATTER_DATABASE_POOL` is below
    /// 3, a dependency does not answer or the port cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let bus = config.bus_key("message")?;
        anyhow::ensure!(
            config.database_pool >= MIN_DATABASE_POOL,
            "NATTER_DATABASE_POOL is {}; message needs at least {MIN_DATABASE_POOL}: the outbox \
             relay and the batch writer each hold a connection for good",
            config.database_pool
        );
        let pool = db::connect(config).await?;
        let history = match &config.database_read_url {
            Some(url) => db::connect_with(url, config.database_pool, &config.database_session())
                .await
                .context("connecting to NATTER_DATABASE_READ_URL")?,
            None => pool.clone(),
        };
        let client = nats::connect(config, "natter-message").await?;
        let js = nats::jetstream(&client);
        let redis = cache::connect(config).await?;
        let ns = config.namespace();
        nats::ensure_streams(&js, config).await?;
        let health_listener = TcpListener::bind(config.message_addr)
            .await
            .with_context(|| format!("binding message health to {}", config.message_addr))?;
        let deps = Dependencies {
            postgres: Some(pool.clone()),
            nats: Some(client.clone()),
            redis: Some(redis.clone()),
        };
        let (writer, writes) = writer::channel();
        Ok(Self {
            state: AppState {
                pool,
                history,
                nats: client,
                bus: std::sync::Arc::new(BusVerifier::new(bus)),
                presence: PresenceReader::new(redis, ns.clone()),
                ns,
                limits: Limits {
                    connection_limit: config.connection_limit,
                    head_limit: config.head_limit,
                    channels_per_user: config.channels_per_user,
                },
                writer,
            },
            js,
            health_listener,
            deps,
            writes,
            lifecycle: Lifecycle::new("message", config),
            config: config.clone(),
        })
    }

    /// Where `/healthz` and `/readyz` answer.
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.health_listener.local_addr()
    }

    /// Serves until `shutdown`: turns unready, stops taking requests, lets
    /// in-flight ones (and the writes they queued) finish within the grace
    /// period, then stops the relay.
    ///
    /// # Errors
    /// When subscribing fails.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "message serving health");
        let lifecycle = self.lifecycle;
        let admin = admin::router(
            &self.config,
            self.state.pool.clone(),
            self.state.presence.clone(),
            self.js.clone(),
        );
        lifecycle.serve_health_with(self.health_listener, self.deps, admin);
        lifecycle.spawn(
            "outbox relay",
            outbox::relay::run(
                self.state.pool.clone(),
                self.js.clone(),
                self.state.ns.clone(),
                lifecycle.readiness().condition("outbox relay"),
                lifecycle.background(),
            ),
        );
        // It stops by itself once the last request holding a `Writer` is
        // done, after committing what they queued.
        lifecycle.spawn(
            "message writer",
            writer::run(self.state.pool.clone(), self.state.ns.clone(), self.writes),
        );
        let intake = lifecycle.intake();
        lifecycle
            .run(shutdown, rpc::serve(self.state, intake))
            .await
    }
}
