//! natter-server's library: the composition root. It alone knows every
//! service: which there are ([`Service`]), the order they start in
//! ([`Service::ALL`]), how one, several or all of them run in one process
//! and stop ([`run`]), and what `natter-server all` and `migrate` do
//! besides ([`all`], [`migrate`]).
//!
//! `main.rs` only parses the command line, starts telemetry and calls
//! here; the in-process test harness (`testing`, behind the `testing`
//! feature) starts services through the same list and order. The
//! operator's commands live here too: [`admin`], the client of message's
//! admin API, and [`dlq`] (the dead letters themselves are message's
//! module, which its admin API serves as well).

pub mod admin;
pub use natter_message::dlq;
#[cfg(feature = "testing")]
pub mod testing;

use anyhow::Context;
use natter_platform::lifecycle::{self, Started};
use natter_platform::{Config, db};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One of natter's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// HTTP auth.
    Auth,
    /// The WebSocket gateway.
    Gateway,
    /// The domain.
    Message,
    /// The fan-out.
    Push,
}

impl Service {
    /// Every service, in start order; they stop in the reverse order. The
    /// gateway comes last, so that it takes sockets only once the services
    /// behind it answer, and it stops first, so that the requests its
    /// sockets send while draining are still answered.
    pub const ALL: [Self; 4] = [Self::Auth, Self::Message, Self::Push, Self::Gateway];

    /// Its name: the `natter-server` subcommand, in logs.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Gateway => "gateway",
            Self::Message => "message",
            Self::Push => "push",
        }
    }

    /// Builds it on `config` and runs it on a task of its own until
    /// `shutdown`.
    ///
    /// # Errors
    /// When it cannot be built (a dependency does not answer, its port is
    /// taken, its configuration is incomplete).
    pub async fn start(
        self,
        config: &Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Started> {
        let started = match self {
            Self::Auth => lifecycle::start::<natter_auth::Auth>(config, shutdown).await,
            Self::Gateway => lifecycle::start::<natter_gateway::Gateway>(config, shutdown).await,
            Self::Message => lifecycle::start::<natter_message::Message>(config, shutdown).await,
            Self::Push => lifecycle::start::<natter_push::Push>(config, shutdown).await,
        };
        started.with_context(|| format!("starting {}", self.name()))
    }
}

/// A service started by [`run`].
struct Member {
    service: Service,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Runs `services` in this process until `shutdown`: they start one at a
/// time in [`Service::ALL`]'s order and stop in the reverse order, each
/// once the one before it has finished. When one fails, the others are
/// stopped too.
///
/// # Errors
/// The first failure: a service that cannot start or stops with an error.
pub async fn run(
    services: &[Service],
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(!services.is_empty(), "no service to run");
    let mut members = Vec::new();
    for service in Service::ALL.into_iter().filter(|s| services.contains(s)) {
        let stop = CancellationToken::new();
        match service.start(config, stop.clone()).await {
            Ok(started) => members.push(Member {
                service,
                stop,
                task: started.task,
            }),
            Err(e) => {
                // A failure to stop the others says less than why this
                // one could not start.
                let _ = stop_in_reverse(members).await;
                return Err(e);
            }
        }
    }
    let first_end = {
        let ends = futures::future::select_all(members.iter_mut().map(|m| &mut m.task));
        tokio::select! {
            (result, index, _) = ends => Some((index, result)),
            () = shutdown.cancelled() => None,
        }
    };
    let mut failure = None;
    if let Some((index, result)) = first_end {
        let ended = members.remove(index);
        tracing::error!(
            service = ended.service.name(),
            "a service stopped on its own"
        );
        failure = Some(
            outcome(ended.service, result)
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("{} stopped on its own", ended.service.name())),
        );
    }
    let stopped = stop_in_reverse(members).await;
    match failure {
        Some(e) => Err(e),
        None => stopped,
    }
}

/// Stops `members` last-started first, each after the one before has
/// finished: the first error.
async fn stop_in_reverse(members: Vec<Member>) -> anyhow::Result<()> {
    let mut first_error = None;
    for member in members.into_iter().rev() {
        member.stop.cancel();
        if let Err(e) = outcome(member.service, member.task.await) {
            tracing::error!(service = member.service.name(), error = ?e, "stopped with an error");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn outcome(
    service: Service,
    joined: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    joined
        .with_context(|| format!("{} panicked", service.name()))
        .and_then(|r| r.with_context(|| format!("{} failed", service.name())))
}

/// `natter-server all`: every service in one process, for development.
/// Generates a JWT secret and a bus key if none is set (tokens then do not
/// survive a restart; the four services share the process, so they share
/// the generated key) and creates and migrates the database first.
///
/// # Errors
/// As [`migrate`] and [`run`].
pub async fn all(mut config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.jwt_secret.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "NATTER_JWT_SECRET is not set: generated a random one for this process; \
             tokens will not survive a restart"
        );
        config.jwt_secret = Some(natter_platform::random::token(32).into());
    }
    if config.bus_key.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "NATTER_BUS_KEY is not set: generated a random one for this process; \
             services started separately cannot talk to these"
        );
        config.bus_key = Some(natter_platform::random::token(32).into());
    }
    migrate(&config).await?;
    run(&Service::ALL, &config, shutdown).await
}

/// Creates the database if needed and applies the migrations.
///
/// # Errors
/// When Postgres refuses.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::ensure_database(&config.database_url).await?;
    let settings = config.database_session().for_migrations();
    let pool = db::connect_with(&config.database_url, 2, &settings).await?;
    db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!("database is migrated");
    Ok(())
}
