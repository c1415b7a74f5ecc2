//! Command-line arguments and the server addresses they resolve to
//! (README "Configuration").

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The default auth address: `natter-server all` on this machine.
pub const DEFAULT_AUTH_URL: &str = "http://127.0.0.1:8080";
/// The default gateway address: `natter-server all` on this machine.
pub const DEFAULT_WS_URL: &str = "ws://127.0.0.1:8090/ws/v1/message";

/// The version and the git commit it was built from (build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("NATTER_COMMIT"), ")");

/// natter's terminal client.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "natter",
    version = VERSION,
    about = "natter's terminal client: chat with your connections in channels",
    after_help = "Without -c and with a terminal on stdin, natter starts an interactive \
                  prompt (type /help there). Otherwise it runs the -c commands, or the \
                  lines of stdin, one event per output line (errors on stderr), and stops \
                  with a non-zero exit at the first command that fails. A password is \
                  asked for without echo, or read from NATTER_PASSWORD (or the next line \
                  of stdin) in a script. The login is saved and resumed at the next start \
                  until /logout."
)]
pub struct Args {
    /// Not a chat: print something and exit
    #[command(subcommand)]
    pub command: Option<Sub>,

    /// One host behind an ingress that routes /api/ and /ws/ (sets both
    /// addresses, overriding the two below; e.g. https://natter.example.com)
    #[expect(
        rustdoc::bare_urls,
        reason = "clap prints this comment verbatim as --help, where a bare URL reads best"
    )]
    #[arg(long, value_name = "URL", env = "NATTER_SERVER")]
    pub server: Option<String>,

    /// Base address of the auth service
    #[arg(long, value_name = "URL", env = "NATTER_AUTH_URL", default_value = DEFAULT_AUTH_URL)]
    pub auth_url: String,

    /// Address of the WebSocket gateway
    #[arg(long, value_name = "URL", env = "NATTER_WS_URL", default_value = DEFAULT_WS_URL)]
    pub ws_url: String,

    /// Run this command and exit (repeatable; runs in order, stops at /exit)
    #[arg(short = 'c', long = "command", value_name = "COMMAND")]
    pub commands: Vec<String>,

    /// In a script, go on after a command fails (the exit is still non-zero)
    #[arg(long)]
    pub keep_going: bool,

    /// History file of the interactive prompt [default: ~/.local/share/natter/history]
    #[arg(long, value_name = "PATH", env = "NATTER_HISTORY_FILE")]
    pub history_file: Option<PathBuf>,

    /// Where the login is saved, readable only by you [default: ~/.config/natter/session.json]
    #[arg(long, value_name = "PATH", env = "NATTER_SESSION_FILE")]
    pub session_file: Option<PathBuf>,
}

/// What `natter <subcommand>` does instead of chatting.
#[derive(Debug, Clone, Subcommand)]
pub enum Sub {
    /// Print a completion script for your shell (e.g. `natter completions bash > ~/.local/share/bash-completion/completions/natter`)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// Where the services are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Base of the auth API, without a trailing slash.
    pub auth_url: String,
    /// The full WebSocket URL.
    pub ws_url: String,
}

impl Endpoints {
    /// Resolves the addresses: `--server` wins over the separate ones.
    #[must_use]
    pub fn from_args(args: &Args) -> Self {
        match &args.server {
            Some(server) => Self::behind_ingress(server),
            None => Self {
                auth_url: args.auth_url.trim_end_matches('/').to_owned(),
                ws_url: args.ws_url.clone(),
            },
        }
    }

    /// Both services behind one host: auth under `/api/`, the gateway
    /// under `/ws/`, the WebSocket scheme matching the HTTP one.
    #[must_use]
    pub fn behind_ingress(server: &str) -> Self {
        let base = server.trim_end_matches('/');
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if base.starts_with("ws://") || base.starts_with("wss://") {
            base.to_owned()
        } else {
            format!("ws://{base}")
        };
        let auth_url = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        Self {
            auth_url,
            ws_url: format!("{ws_base}{}", natter_protocol::http::paths::WEBSOCKET),
        }
    }
}

/// The history file when none is given: under `$XDG_DATA_HOME` or
/// `~/.local/share`; `None` without a home directory (history then stays in
/// memory).
#[must_use]
pub fn default_history_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local").join("share"))
        })?;
    Some(base.join("natter").join("history"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sets_both_addresses_behind_one_host() {
        assert_eq!(
            Endpoints::behind_ingress("https://natter.example.com/"),
            Endpoints {
                auth_url: "https://natter.example.com".into(),
                ws_url: "wss://natter.example.com/ws/v1/message".into(),
            }
        );
        assert_eq!(
            Endpoints::behind_ingress("localhost:8000"),
            Endpoints {
                auth_url: "http://localhost:8000".into(),
                ws_url: "ws://localhost:8000/ws/v1/message".into(),
            }
        );
    }

    #[test]
    fn separate_addresses_are_used_as_given() {
        let args = Args::parse_from([
            "natter",
            "--auth-url",
            "http://a:1/",
            "--ws-url",
            "ws://b:2/ws/v1/message",
        ]);
        assert_eq!(
            Endpoints::from_args(&args),
            Endpoints {
                auth_url: "http://a:1".into(),
                ws_url: "ws://b:2/ws/v1/message".into(),
            }
        );
    }

    #[test]
    fn server_wins_over_the_separate_addresses() {
        let args = Args::parse_from(["natter", "--server", "http://x", "--auth-url", "http://y"]);
        assert_eq!(
            Endpoints::from_args(&args),
            Endpoints::behind_ingress("http://x")
        );
    }

    #[test]
    fn completions_name_a_shell() {
        let args = Args::parse_from(["natter", "completions", "zsh"]);
        assert!(matches!(
            args.command,
            Some(Sub::Completions {
                shell: clap_complete::Shell::Zsh
            })
        ));
        assert!(Args::try_parse_from(["natter", "completions", "cmd"]).is_err());
    }

    #[test]
    fn commands_repeat_in_order() {
        let args = Args::parse_from(["natter", "-c", "/login a b", "-c", "/channels"]);
        assert_eq!(args.commands, ["/login a b", "/channels"]);
    }
}
