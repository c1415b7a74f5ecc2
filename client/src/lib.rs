//! `natter`, the terminal client: a library with a thin `main`.
//!
//! - [`cli`]: arguments and the server addresses they resolve to;
//! - [`command`]: lines → commands (pure);
//! - [`render`]: events → lines, error codes → readable text (pure);
//! - [`seq`]: exactly-once display over at-least-once delivery (pure);
//! - [`auth`]: the auth HTTP API;
//! - [`link`]: the socket to the gateway — a sans-I/O [`link::machine`]
//!   (ids, pushes, gap filling) inside a shell of I/O (keep-alive, reconnect);
//! - [`session`]: one command in, what to show out — what tests drive;
//! - [`repl`] and [`script`]: the interactive and non-interactive shells.

pub mod auth;
pub mod cli;
pub mod command;
pub mod link;
pub mod render;
pub mod repl;
pub mod script;
pub mod seq;
pub mod session;
pub mod state;

use cli::{Args, Endpoints};
use session::Session;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Runs the client as `args` ask: the prompt on a terminal, else the
/// script mode. The exit code is non-zero when a command failed.
#[must_use]
pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("natter: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut session, mut events) = Session::new(&Endpoints::from_args(&args));
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
    let mut stdout = std::io::stdout();
    let outcome = runtime.block_on(async {
        if args.commands.is_empty() {
            let stdin = tokio::io::BufReader::new(tokio::io::stdin());
            script::run_lines(&mut session, &mut events, stdin, &mut stdout).await
        } else {
            script::run_commands(&mut session, &mut events, &args.commands, &mut stdout).await
        }
    });
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
