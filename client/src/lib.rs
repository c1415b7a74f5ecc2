//! `natter`, the terminal client: a library with a thin `main`.
//!
//! - [`cli`]: arguments and the server addresses they resolve to;
//! - [`command`]: lines → commands (pure);
//! - [`render`]: events → lines, error codes → readable text (pure), with
//!   [`sanitize`] keeping escape sequences from the network off the screen;
//! - [`seq`]: exactly-once display over at-least-once delivery (pure);
//! - [`auth`]: the auth HTTP API; [`keeper`]: the login's tokens, renewed
//!   and saved; [`store`]: the saved session file;
//! - [`link`]: the socket to the gateway — a sans-I/O [`link::machine`]
//!   (ids, pushes, gap filling, read acks, typing, the outbox) inside a
//!   shell of I/O (keep-alive, reconnect, timers);
//! - [`session`]: one command in, what to show out — what tests drive;
//! - [`repl`] (with [`terminal`] for hidden input) and [`script`]: the
//!   interactive and non-interactive shells.

pub mod auth;
pub mod cli;
pub mod command;
pub mod keeper;
pub mod link;
pub mod render;
pub mod repl;
pub mod sanitize;
pub mod script;
pub mod seq;
pub mod session;
pub mod state;
pub mod store;
pub mod terminal;

use clap::CommandFactory;
use cli::{Args, Endpoints, Sub};
use session::Session;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Runs the client as `args` ask: a subcommand, the prompt on a terminal,
/// else the script mode. The exit code is non-zero when a command failed.
#[must_use]
pub fn run(args: Args) -> ExitCode {
    if let Some(Sub::Completions { shell }) = args.command {
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "natter",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let store = args.session_file.clone().or_else(store::default_path);
    let (session, mut events) = Session::new(&Endpoints::from_args(&args));
    let mut session = session.with_store(store);
    if args.commands.is_empty() && std::io::stdin().is_terminal() {
        let history = args.history_file.or_else(cli::default_history_file);
        return match repl::run(&runtime, session, events, history, render::colors_enabled()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("natter: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let options = script::Options {
        keep_going: args.keep_going,
        password: std::env::var("NATTER_PASSWORD").ok(),
    };
    let mut out = script::Out::stdio();
    let outcome = runtime.block_on(async {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        if args.commands.is_empty() {
            script::run_lines(&mut session, &mut events, stdin, &mut out, &options).await
        } else {
            script::run_commands(
                &mut session,
                &mut events,
                &args.commands,
                stdin,
                &mut out,
                &options,
            )
            .await
        }
    });
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
