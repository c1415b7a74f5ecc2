//! `natter-server`: every natter service in one binary.
//!
//! `natter-server auth|gateway|message|push` runs one service (one per
//! pod in Kubernetes); `natter-server all` runs the four in one process for
//! development, creating and migrating the database first; `natter-server
//! migrate` only migrates (a helm hook Job).

use anyhow::Context;
use clap::{Parser, Subcommand};
use natter_platform::{Config, db, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

/// mimalloc keeps the gateway's many small per-socket allocations compact
/// (measured by bench/run: fewer bytes per idle socket than glibc's malloc,
/// whose per-thread arenas fragment).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// natter's services. Every flag can also be set by its NATTER_* variable.
#[derive(Parser)]
#[command(name = "natter-server", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Command {
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// The HTTP auth service.
    Auth,
    /// The WebSocket gateway (`connection` is an older name for it).
    #[command(visible_alias = "connection")]
    Gateway,
    /// The message (domain) service.
    Message,
    /// The push (fan-out) service.
    Push,
    /// All four in one process, for development (migrates first; generates
    /// a JWT secret if none is set).
    All,
    /// Re-deliver stored messages to whoever is online now, from a stream
    /// sequence or a time (clients drop seqs they have seen), then exit.
    Replay {
        /// First events-stream sequence to re-deliver.
        #[arg(long, conflicts_with = "since", required_unless_present = "since")]
        from_seq: Option<u64>,
        /// Re-deliver what was stored at or after this RFC 3339 time.
        #[arg(long, value_parser = parse_time)]
        since: Option<time::OffsetDateTime>,
    },
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let service = match cli.command {
        Command::Migrate => "natter-migrate",
        Command::Auth => "natter-auth",
        Command::Gateway => "natter-gateway",
        Command::Message => "natter-message",
        Command::Push => "natter-push",
        Command::All => "natter",
        Command::Replay { .. } => "natter-replay",
    };
    let telemetry = telemetry::init(cli.config.log_format, service);
    let stop = shutdown::on_signal();
    let result = match cli.command.clone() {
        Command::Replay { from_seq, since } => {
            let from = match (from_seq, since) {
                (_, Some(t)) => natter_push::ReplayFrom::Time(t),
                (Some(seq), None) => natter_push::ReplayFrom::Sequence(seq),
                (None, None) => natter_push::ReplayFrom::Sequence(1),
            };
            natter_push::replay(&cli.config, from).await.map(|n| {
                tracing::info!(messages = n, "replay finished");
            })
        }
        Command::Migrate => migrate(&cli.config).await,
        Command::Auth => natter_auth::run(cli.config, stop).await,
        Command::Gateway => natter_gateway::run(cli.config, stop).await,
        Command::Message => natter_message::run(cli.config, stop).await,
        Command::Push => natter_push::run(cli.config, stop).await,
        Command::All => {
            if cli.config.jwt_secret.as_deref().is_none_or(str::is_empty) {
                tracing::warn!(
                    "NATTER_JWT_SECRET is not set: generated a random one for this process; \
                     tokens will not survive a restart"
                );
                cli.config.jwt_secret = Some(natter_platform::random::token(32));
            }
            migrate(&cli.config).await?;
            all(cli.config, stop).await
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = ?e, "natter-server failed");
    }
    telemetry.shutdown();
    result
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::ensure_database(&config.database_url).await?;
    let pool = db::connect(&config.database_url, 2).await?;
    db::migrate(&pool).await?;
    pool.close().await;
    tracing::info!("database is migrated");
    Ok(())
}

/// Runs the four services; when one fails, the others are stopped too.
async fn all(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    set.spawn(natter_auth::run(config.clone(), stop.clone()));
    set.spawn(natter_message::run(config.clone(), stop.clone()));
    set.spawn(natter_push::run(config.clone(), stop.clone()));
    set.spawn(natter_gateway::run(config, stop.clone()));
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let result = joined.context("a service panicked").and_then(|r| r);
        if let Err(e) = result {
            stop.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
