//! `natter-server`: every natter service in one binary.
//!
//! `natter-server auth|gateway|message|push` runs one service (one per
//! pod in Kubernetes); `natter-server all` runs the four in one process for
//! development, creating and migrating the database first; `natter-server
//! migrate` only migrates (a helm hook Job); `natter-server dlq
//! list|redrive` shows and sends again what could not be delivered;
//! `natter-server admin …` asks message's admin API; `natter-server
//! config` prints the configuration it would run with. This
//! file only reads the command line and starts telemetry: the library
//! (`lib.rs`) knows the services.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use natter_platform::{Config, shutdown, telemetry};
use natter_server::Service;
use natter_server::dlq::{self, DeadLetterId, Selection};

/// mimalloc keeps the gateway's many small per-socket allocations compact
/// (measured by bench/run: fewer bytes per idle socket than glibc's malloc,
/// whose per-thread arenas fragment).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("NATTER_COMMIT"), ")");

/// natter's services. Every flag can also be set by its NATTER_* variable,
/// and goes before or after the subcommand.
#[derive(Parser)]
#[command(name = "natter-server", version = VERSION, about)]
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
    /// Print the effective configuration (environment, flags and
    /// defaults) as NATTER_NAME=value lines, secrets redacted, then exit.
    Config,
    /// Ask a running natter, through message's admin API: who is online
    /// and where, disconnect a user, streams and consumers, dead letters.
    /// Needs NATTER_ADMIN_SECRET; prints JSON.
    Admin {
        /// message's address, whose port serves the admin API.
        #[arg(
            long,
            env = "NATTER_ADMIN_URL",
            default_value = "http://127.0.0.1:8091"
        )]
        url: String,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// What could not be delivered: outbox rows NATS refused (parked) and
    /// events push dead-lettered.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List them: id (outbox:<id> or dlq:<seq>), when, subject, size,
    /// reason.
    List {
        /// One JSON object per line instead of tab-separated columns.
        #[arg(long)]
        json: bool,
    },
    /// Send them again: parked rows back into the outbox, dead-lettered
    /// events to the subject they came from.
    Redrive(RedriveArgs),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Users with live sockets: each socket's gateway and entered channel.
    Online,
    /// Sockets and users per gateway.
    Gateways,
    /// Revoke every session of a user: their sockets close, their tokens
    /// stop working.
    Disconnect {
        /// Who.
        username: String,
    },
    /// natter's JetStream streams and key-value buckets, with consumers.
    Streams,
    /// The dead letters, as `dlq list` and `dlq redrive` (through the API).
    Dlq {
        #[command(subcommand)]
        command: AdminDlqCommand,
    },
}

#[derive(Subcommand)]
enum AdminDlqCommand {
    /// List them.
    List,
    /// Send them again.
    Redrive(RedriveArgs),
}

impl AdminCommand {
    fn request(self) -> natter_server::admin::Request {
        use natter_server::admin::Request;
        match self {
            Self::Online => Request::Online,
            Self::Gateways => Request::Gateways,
            Self::Disconnect { username } => Request::Disconnect(username),
            Self::Streams => Request::Streams,
            Self::Dlq {
                command: AdminDlqCommand::List,
            } => Request::DeadLetters,
            Self::Dlq {
                command: AdminDlqCommand::Redrive(args),
            } => Request::Redrive(serde_json::json!({
                "all": args.all,
                "ids": args.ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        }
    }
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct RedriveArgs {
    /// The ones to send again, as `list` shows them (repeatable).
    #[arg(long = "id")]
    ids: Vec<DeadLetterId>,
    /// Every one there is.
    #[arg(long)]
    all: bool,
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
            Self::Config => "natter-config",
            Self::Dlq { .. } => "natter-dlq",
            Self::Admin { .. } => "natter-admin",
        }
    }
}

/// Runs `natter-server dlq …`, printing to stdout (logs go to stderr).
async fn dead_letters(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { json } => {
            for letter in dlq::list(config).await? {
                if json {
                    println!("{}", serde_json::to_string(&letter)?);
                } else {
                    println!("{letter}");
                }
            }
        }
        DlqCommand::Redrive(args) => {
            let selection = if args.all {
                Selection::All
            } else {
                Selection::Ids(args.ids)
            };
            let outcome = dlq::redrive(config, &selection).await?;
            for id in &outcome.redriven {
                println!("redriven\t{id}");
            }
            for id in &outcome.missing {
                println!("missing\t{id}");
            }
            anyhow::ensure!(
                outcome.missing.is_empty(),
                "{} of the dead letters asked for are not there",
                outcome.missing.len()
            );
        }
    }
    Ok(())
}

/// The command line, every configuration flag global: clap would otherwise
/// take `natter-server --ws-rate 20 gateway` but refuse `natter-server
/// gateway --ws-rate 20`. Done here, once, so that a setting added to
/// `Config` is global without anyone remembering to say so.
fn parse_command_line() -> Cli {
    let matches = Cli::command()
        .mut_args(|arg| arg.global(true))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs `natter-server admin …`, printing the answer to stdout.
async fn admin(
    url: &str,
    secret: Option<&natter_platform::secret::Secret>,
    command: AdminCommand,
) -> anyhow::Result<()> {
    let answer = natter_server::admin::call(url, secret, &command.request()).await?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = parse_command_line();
    let prints = matches!(
        cli.command,
        Command::Dlq { .. } | Command::Admin { .. } | Command::Config
    );
    let telemetry = if prints {
        // Its output is stdout; logs must not mix into it.
        telemetry::init_with_writer(
            cli.config.log_format,
            cli.command.log_name(),
            std::io::stderr,
        )
    } else {
        telemetry::init(cli.config.log_format, cli.command.log_name())
    };
    natter_platform::metrics::record_build_info(env!("CARGO_PKG_VERSION"), env!("NATTER_COMMIT"));
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
        Command::Dlq { command } => dead_letters(&config, command).await,
        Command::Config => {
            print!("{}", config.render());
            Ok(())
        }
        Command::Admin { url, command } => admin(&url, config.admin_secret.as_ref(), command).await,
    };
    if let Err(e) = &result {
        tracing::error!(error = ?e, "natter-server failed");
    }
    telemetry.shutdown();
    result
}
