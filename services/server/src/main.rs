//! `natter-server`: every natter service in one binary.
//!
//! `natter-server auth|gateway|message|push` runs one service (one per
//! pod in Kubernetes); `natter-server all` runs the four in one process for
//! development, creating and migrating the database first; `natter-server
//! migrate` only migrates (a helm hook Job). This file only reads the
//! command line and starts telemetry: the library (`lib.rs`) knows the
//! services.

use clap::{Parser, Subcommand};
use natter_platform::{Config, shutdown, telemetry};
use natter_server::Service;

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

#[derive(Subcommand)]
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

impl Command {
    /// Who is logging, in logs and traces.
    fn log_name(&self) -> &'static str {
        match self {
            Self::Migrate => "natter-migrate",
            Self::Auth => "natter-auth",
            Self::Gateway => "natter-gateway",
            Self::Message => "natter-message",
            Self::Push => "natter-push",
            Self::All => "natter",
            Self::Replay { .. } => "natter-replay",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.config.log_format, cli.command.log_name());
    let stop = shutdown::on_signal();
    let config = cli.config;
    let result = match cli.command {
        Command::Migrate => natter_server::migrate(&config).await,
        Command::All => natter_server::all(config, stop).await,
        Command::Auth => natter_server::run(&[Service::Auth], &config, stop).await,
        Command::Gateway => natter_server::run(&[Service::Gateway], &config, stop).await,
        Command::Message => natter_server::run(&[Service::Message], &config, stop).await,
        Command::Push => natter_server::run(&[Service::Push], &config, stop).await,
        Command::Replay { from_seq, since } => {
            let from = match (from_seq, since) {
                (_, Some(t)) => natter_push::ReplayFrom::Time(t),
                (Some(seq), None) => natter_push::ReplayFrom::Sequence(seq),
                (None, None) => natter_push::ReplayFrom::Sequence(1),
            };
            natter_push::replay(&config, from)
                .await
                .map(|n| tracing::info!(messages = n, "replay finished"))
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = ?e, "natter-server failed");
    }
    telemetry.shutdown();
    result
}
