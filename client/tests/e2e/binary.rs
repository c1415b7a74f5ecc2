//! The real `natter` binary: `--help`, `-c` commands and stdin scripts.

use crate::support::{Client, PUSH_WAIT, word_after};
use natter_server::testing::TestApp;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const NATTER: &str = env!("CARGO_BIN_EXE_natter");

const HELP: &str = "\
natter's terminal client: chat with your connections in channels

Usage: natter [OPTIONS]

Options:
      --server <URL>         One host behind an ingress that routes /api/ and /ws/ (sets both addresses, overriding the two below; e.g. https://natter.example.com)
      --auth-url <URL>       Base address of the auth service [env: NATTER_AUTH_URL=] [default: http://127.0.0.1:8080]
      --ws-url <URL>         Address of the WebSocket gateway [env: NATTER_WS_URL=] [default: ws://127.0.0.1:8090/ws/v1/message]
  -c, --command <COMMAND>    Run this command and exit (repeatable; runs in order, stops at /exit)
      --history-file <PATH>  History file of the interactive prompt [default: ~/.local/share/natter/history] [env: NATTER_HISTORY_FILE=]
  -h, --help                 Print help
  -V, --version              Print version

Without -c and with a terminal on stdin, natter starts an interactive prompt (type /help there). Otherwise it runs the -c commands, or the lines of stdin, one event per output line, and exits non-zero if a command failed.
";

async fn next(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(PUSH_WAIT, lines.next_line())
        .await
        .expect("a line in time")
        .expect("readable")
        .expect("not ended")
}

fn natter(app: &TestApp) -> Command {
    let mut cmd = Command::new(NATTER);
    cmd.env("NATTER_AUTH_URL", app.auth_url())
        .env("NATTER_WS_URL", app.ws_url())
        .env_remove("NATTER_HISTORY_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn help_output_is_pinned() {
    let out = Command::new(NATTER)
        .arg("--help")
        .env_remove("NATTER_AUTH_URL")
        .env_remove("NATTER_WS_URL")
        .env_remove("NATTER_HISTORY_FILE")
        .env("COLUMNS", "400")
        .output()
        .await
        .expect("natter runs");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELP);
}

#[tokio::test]
async fn commands_from_flags_print_one_plain_line_per_event() {
    let app = TestApp::spawn().await;
    let out = natter(&app)
        .args(["-c", "/register erin correct horse battery"])
        .output()
        .await
        .expect("natter runs");
    // The password has a space: that is a usage error, and the exit says so.
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "error: usage: /register <username> <password>\n"
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
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("registered erin (user "));
    assert_eq!(
        lines[1..],
        [
            "logged in as erin",
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
    stdin
        .write_all(format!("/login bob correct-horse\n/invite {code}\n").as_bytes())
        .await
        .expect("write");
    assert_eq!(next(&mut lines).await, "logged in as bob");
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
        format!("* you were added to general (channel {id}); /enter {id}")
    );
    stdin
        .write_all(format!("/enter {id}\n").as_bytes())
        .await
        .expect("write");
    assert!(next(&mut lines).await.starts_with("entered general"));
    alice.ok(&format!("/enter {id}")).await;
    alice.ok("hello from alice").await;
    assert!(
        next(&mut lines)
            .await
            .ends_with("] alice: hello from alice")
    );
    stdin.write_all(b"/quit 999999\n").await.expect("write");
    assert_eq!(
        next(&mut lines).await,
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
