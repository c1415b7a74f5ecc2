//! The real `natter` binary: `--help`, `-c` commands and stdin scripts.

use crate::support::{Client, PUSH_WAIT, word_after};
use natter_server::testing::TestApp;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStderr, ChildStdout, Command};

const NATTER: &str = env!("CARGO_BIN_EXE_natter");

const HELP: &str = "\
natter's terminal client: chat with your connections in channels

Usage: natter [OPTIONS] [COMMAND]

Commands:
  completions  Print a completion script for your shell (e.g. `natter completions bash > ~/.local/share/bash-completion/completions/natter`)
  help         Print this message or the help of the given subcommand(s)

Options:
      --server <URL>         One host behind an ingress that routes /api/ and /ws/ (sets both addresses, overriding the two below; e.g. https://natter.example.com) [env: NATTER_SERVER=]
      --auth-url <URL>       Base address of the auth service [env: NATTER_AUTH_URL=] [default: http://127.0.0.1:8080]
      --ws-url <URL>         Address of the WebSocket gateway [env: NATTER_WS_URL=] [default: ws://127.0.0.1:8090/ws/v1/message]
  -c, --command <COMMAND>    Run this command and exit (repeatable; runs in order, stops at /exit)
      --keep-going           In a script, go on after a command fails (the exit is still non-zero)
      --history-file <PATH>  History file of the interactive prompt [default: ~/.local/share/natter/history] [env: NATTER_HISTORY_FILE=]
      --session-file <PATH>  Where the login is saved, readable only by you [default: ~/.config/natter/session.json] [env: NATTER_SESSION_FILE=]
  -h, --help                 Print help
  -V, --version              Print version

Without -c and with a terminal on stdin, natter starts an interactive prompt (type /help there). Otherwise it runs the -c commands, or the lines of stdin, one event per output line (errors on stderr), and stops with a non-zero exit at the first command that fails. A password is asked for without echo, or read from NATTER_PASSWORD (or the next line of stdin) in a script. The login is saved and resumed at the next start until /logout.
";

async fn next_of(lines: &mut Lines<BufReader<ChildStderr>>) -> String {
    tokio::time::timeout(PUSH_WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("readable")
        .expect("not ended")
}

async fn next(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(PUSH_WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("readable")
        .expect("not ended")
}

/// The binary against `app`, with a session file of its own (`home`).
fn natter_in(app: &TestApp, home: &std::path::Path) -> Command {
    let mut cmd = Command::new(NATTER);
    cmd.env("NATTER_AUTH_URL", app.auth_url())
        .env("NATTER_WS_URL", app.ws_url())
        .env_remove("NATTER_HISTORY_FILE")
        .env_remove("NATTER_SERVER")
        .env_remove("NATTER_PASSWORD")
        .env("NATTER_SESSION_FILE", home.join("session.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The binary against `app`, saving its login nowhere that lasts.
fn natter(app: &TestApp) -> Command {
    natter_in(app, &temp_home())
}

pub fn temp_home() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("natter-home-{}", uuid::Uuid::new_v4()))
}

#[tokio::test]
async fn help_output_is_pinned() {
    let out = Command::new(NATTER)
        .arg("--help")
        .env_remove("NATTER_AUTH_URL")
        .env_remove("NATTER_WS_URL")
        .env_remove("NATTER_HISTORY_FILE")
        .env_remove("NATTER_SESSION_FILE")
        .env_remove("NATTER_SERVER")
        .env("COLUMNS", "400")
        .output()
        .await
        .expect("natter runs");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELP);
}

#[tokio::test]
async fn version_names_the_commit_it_was_built_from() {
    let out = Command::new(NATTER)
        .arg("--version")
        .output()
        .await
        .expect("natter runs");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "natter {} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("NATTER_COMMIT")
        )
    );
}

#[tokio::test]
async fn commands_from_flags_print_one_plain_line_per_event() {
    let app = TestApp::spawn().await;
    let out = natter(&app)
        .args(["-c", "/register erin correct horse battery"])
        .output()
        .await
        .expect("natter runs");
    // The password has a space: that is a usage error, on stderr, and
    // the exit says so.
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: usage: /register <username>\n"
    );

    let out = natter(&app)
        .args([
            "-c",
            "/register erin horse-battery",
            "-c",
            "/login erin horse-battery",
        ])
        .args(["-c", "/channels", "-c", "/exit", "-c", "/whoami"])
        .output()
        .await
        .expect("natter runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("registered erin (user "));
    assert_eq!(
        lines[1..],
        [
            "logged in as erin",
            "no unread messages",
            "no channels yet; /create <title> <username> makes one"
        ]
    );
    assert!(!stdout.contains('\u{1b}'), "no colours in scripts");
    app.stop().await;
}

#[tokio::test]
async fn a_stdin_script_shows_messages_as_they_arrive() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::on(&app, "bob");
    bob.ok("/register bob correct-horse").await;
    let code = alice.ok("/invite-code user").await.remove(0);
    let code = word_after(&code, "your invite code: ").to_owned();

    let mut child = natter(&app)
        .stdin(Stdio::piped())
        .spawn()
        .expect("natter starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
    stdin
        .write_all(format!("/login bob correct-horse\n/invite {code}\n").as_bytes())
        .await
        .expect("write");
    assert_eq!(next(&mut lines).await, "logged in as bob");
    assert_eq!(next(&mut lines).await, "no unread messages");
    assert_eq!(
        next(&mut lines).await,
        "invited alice; they can /accept bob"
    );
    alice.ok("/accept bob").await;
    assert_eq!(next(&mut lines).await, "* alice accepted your invitation");
    let created = alice.ok("/create general bob").await.remove(0);
    let id = crate::support::channel_id(&created);
    assert_eq!(
        next(&mut lines).await,
        format!("#{id} * you were added to general (channel {id}); /enter {id}")
    );
    stdin
        .write_all(format!("/enter {id}\n").as_bytes())
        .await
        .expect("write");
    assert!(next(&mut lines).await.starts_with("entered general"));
    alice.ok(&format!("/enter {id}")).await;
    alice.ok("hello from alice").await;
    let line = next(&mut lines).await;
    assert!(line.ends_with("] alice: hello from alice"), "{line}");
    assert!(
        line.starts_with(&format!("#{id} [")),
        "every channel line names its channel: {line}"
    );
    stdin.write_all(b"/quit 999999\n").await.expect("write");
    // A script's confirmation is a yes; the failure goes to stderr.
    assert_eq!(
        next_of(&mut errors).await,
        "stop being a member of channel 999999? Coming back needs its invite code. [y/N] yes (a script means it)"
    );
    assert_eq!(
        next_of(&mut errors).await,
        "error: no such channel or invite code"
    );
    drop(stdin);
    let status = child.wait().await.expect("natter exits");
    assert!(
        !status.success(),
        "a failed command makes the exit non-zero"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_script_stops_at_its_first_failure_and_its_login_is_resumed_until_logout() {
    let app = TestApp::spawn().await;
    let home = temp_home();
    let run = |args: &[&str], keep_going: bool| {
        let mut cmd = natter_in(&app, &home);
        cmd.env("NATTER_PASSWORD", "horse-battery");
        if keep_going {
            cmd.arg("--keep-going");
        }
        for a in args {
            cmd.args(["-c", a]);
        }
        cmd.output()
    };
    let out = run(
        &["/register erin", "/login erin", "/enter 424242", "/whoami"],
        false,
    )
    .await
    .expect("natter runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("logged in as erin"), "{stdout}");
    assert!(
        !stdout.lines().any(|l| l.starts_with("erin (user ")),
        "stopped before /whoami: {stdout}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no such channel or invite code\n"
    );

    // The next run resumes the saved login; --keep-going runs on.
    let out = run(&["/enter 424242", "/whoami"], true)
        .await
        .expect("natter runs");
    assert!(!out.status.success(), "a failure still fails the exit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("erin (user "), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("resumed the session of erin\n"),
        "{stderr}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("session.json"))
            .expect("saved")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = run(&["/logout"], false).await.expect("natter runs");
    assert!(out.status.success());
    let out = run(&["/whoami"], false).await.expect("natter runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "not logged in\n");
    let _ = std::fs::remove_dir_all(home);
    app.stop().await;
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(NATTER)
            .args(["completions", shell])
            .output()
            .await
            .expect("natter runs");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("natter"), "{shell}: {script}");
        assert!(script.contains("keep-going"), "{shell} completes flags");
    }
}

#[tokio::test]
async fn natter_server_names_the_server_as_server_does() {
    let home = temp_home();
    let out = Command::new(NATTER)
        .env_remove("NATTER_AUTH_URL")
        .env_remove("NATTER_WS_URL")
        .env("NATTER_SERVER", "http://127.0.0.1:9")
        .env("NATTER_SESSION_FILE", home.join("session.json"))
        .args(["-c", "/login erin horse-battery"])
        .output()
        .await
        .expect("natter runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot reach the auth service at http://127.0.0.1:9"),
        "{stderr}"
    );
}
