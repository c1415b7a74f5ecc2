//! The real binary in a real terminal (tmux): a message that arrives while
//! a line is half-typed prints above the prompt, and the half-typed line
//! survives; the password prompt hides what is typed; a sent message shows
//! once; pastes arrive whole and long ones do not stall; and the next start
//! resumes the session in its channel.

use crate::support::{Client, word_after};
use natter_server::testing::TestApp;
use std::process::Command;
use std::time::{Duration, Instant};

const NATTER: &str = env!("CARGO_BIN_EXE_natter");

struct Tmux {
    socket: String,
}

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "natter"])
    }

    /// The screen and everything scrolled off it.
    fn scrollback(&self) -> String {
        self.run(&["capture-pane", "-p", "-S", "-", "-t", "natter"])
    }

    fn send(&self, keys: &str) {
        self.run(&["send-keys", "-t", "natter", "-l", keys]);
    }

    fn enter(&self) {
        self.run(&["send-keys", "-t", "natter", "Enter"]);
    }

    fn tab(&self) {
        self.run(&["send-keys", "-t", "natter", "Tab"]);
    }

    /// Pastes `text` as a terminal does with bracketed paste on.
    fn paste(&self, text: &str) {
        self.run(&["set-buffer", "-b", "natter-paste", text]);
        self.run(&[
            "paste-buffer",
            "-p",
            "-d",
            "-b",
            "natter-paste",
            "-t",
            "natter",
        ]);
    }

    /// Runs `command` in a new session; if it ends, the pane keeps its
    /// last words for the failure message.
    fn start(&self, command: &str) {
        let command = format!("{command}; echo natter exited with $?; sleep 60");
        self.run(&[
            "new-session",
            "-d",
            "-s",
            "natter",
            "-x",
            "120",
            "-y",
            "40",
            &command,
        ]);
    }

    /// Waits until the screen satisfies `ok`; the screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} on screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The screen line that holds the prompt (the last non-empty one).
fn prompt_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_message_prints_above_a_half_typed_line_which_survives() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (apt-get install tmux); the terminal test needs it"
        );
        return;
    }
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::on(&app, "bob");
    bob.ok("/register bob correct-horse").await;
    bob.ok("/login bob correct-horse").await;
    let code = alice.ok("/invite-code user").await.remove(0);
    bob.ok(&format!(
        "/invite {}",
        word_after(&code, "your invite code: ")
    ))
    .await;
    alice.ok("/accept bob").await;
    let id = crate::support::channel_id(&alice.ok("/create general bob").await[0]);
    alice.ok(&format!("/enter {id}")).await;
    bob.session.close().await;

    let home = std::env::temp_dir().join(format!("natter-tmux-{}", uuid_like()));
    std::fs::create_dir_all(&home).expect("temp home");
    let tmux = Tmux {
        socket: format!("natter-test-{}", uuid_like()),
    };
    tmux.start(&natter_command(&app, &home));
    tmux.wait_for("banner", |s| s.contains("type /help"));

    tmux.send("/login bob correct-horse");
    tmux.enter();
    tmux.wait_for("login", |s| s.contains("logged in as bob"));
    tmux.send(&format!("/enter {id}"));
    tmux.enter();
    tmux.wait_for("prompt in the channel", |s| {
        prompt_line(s).starts_with("bob@general")
    });

    tmux.send("half a thou");
    tmux.wait_for("typed text", |s| prompt_line(s).contains("half a thou"));
    alice.ok("hello while you type").await;
    // The printer writes the message and then redraws the prompt: wait for
    // the screen that has both, the message above the half-typed line.
    let settled = |s: &str| {
        let rows: Vec<&str> = s.lines().collect();
        let message_row = rows
            .iter()
            .position(|l| l.contains("alice: hello while you type"));
        let prompt_row = rows.iter().rposition(|l| l.contains("half a thou"));
        message_row.is_some()
            && message_row < prompt_row
            && prompt_line(s).starts_with("bob@general › half a thou")
    };
    let screen = tmux.wait_for("the message above the half-typed prompt", settled);
    assert_eq!(
        screen.matches("half a thou").count(),
        1,
        "the half-typed line is shown once:\n{screen}"
    );

    // Finishing the line sends the whole thing, shown once.
    tmux.send("ght");
    tmux.enter();
    assert_eq!(
        alice.message("half a thought").await.as_deref(),
        Some("bob")
    );
    let screen = tmux.wait_for("the sent line", |s| s.contains("bob: half a thought"));
    assert_eq!(
        screen.matches("half a thought").count(),
        1,
        "the echoed input stays:\n{screen}"
    );
    tmux.send("/exit");
    tmux.enter();
    std::thread::sleep(Duration::from_millis(500));
    let history = std::fs::read_to_string(home.join("history")).unwrap_or_default();
    assert!(
        !history.contains("correct-horse"),
        "password in history: {history}"
    );
    let _ = std::fs::remove_dir_all(home);
    app.stop().await;
}

fn natter_command(app: &TestApp, home: &std::path::Path) -> String {
    format!(
        "env NATTER_AUTH_URL={} NATTER_WS_URL={} NATTER_HISTORY_FILE={} NATTER_SESSION_FILE={} TERM=xterm-256color {NATTER}",
        app.auth_url(),
        app.ws_url(),
        home.join("history").display(),
        home.join("session.json").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_hidden_pastes_arrive_whole_and_the_next_start_resumes() {
    if !Tmux::available() {
        eprintln!(
            "SKIPPED: tmux is not installed (apt-get install tmux); the terminal test needs it"
        );
        return;
    }
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::on(&app, "bob");
    bob.ok("/register bob correct-horse").await;
    bob.ok("/login bob correct-horse").await;
    let code = alice.ok("/invite-code user").await.remove(0);
    bob.ok(&format!(
        "/invite {}",
        word_after(&code, "your invite code: ")
    ))
    .await;
    alice.ok("/accept bob").await;
    let id = crate::support::channel_id(&alice.ok("/create general bob").await[0]);
    alice.ok(&format!("/enter {id}")).await;
    bob.session.close().await;

    let home = std::env::temp_dir().join(format!("natter-tmux-{}", uuid_like()));
    std::fs::create_dir_all(&home).expect("temp home");
    let tmux = Tmux {
        socket: format!("natter-test-{}", uuid_like()),
    };
    tmux.start(&natter_command(&app, &home));
    tmux.wait_for("banner", |s| s.contains("type /help"));

    // The password is asked for and never shown.
    tmux.send("/login bob");
    tmux.enter();
    tmux.wait_for("password prompt", |s| s.contains("password for bob:"));
    tmux.send("correct-horse");
    tmux.enter();
    let screen = tmux.wait_for("login", |s| s.contains("logged in as bob"));
    assert!(
        !screen.contains("correct-horse"),
        "password shown:\n{screen}"
    );
    // One Tab completes a single candidate, a channel by its title too.
    tmux.send("/ente");
    tmux.tab();
    tmux.wait_for("the command completed", |s| {
        prompt_line(s).starts_with("bob › /enter <channel>")
    });
    tmux.send("gen");
    tmux.tab();
    tmux.wait_for("the title completed", |s| {
        prompt_line(s).trim_end() == "bob › /enter general"
    });
    tmux.enter();
    tmux.wait_for("prompt in the channel", |s| {
        prompt_line(s).starts_with("bob@general")
    });

    // A multi-line paste is one message.
    tmux.paste("first line\nsecond line\nthird line");
    tmux.wait_for("the pasted lines", |s| s.contains("third line"));
    tmux.enter();
    assert_eq!(
        alice
            .message("first line\nsecond line\nthird line")
            .await
            .as_deref(),
        Some("bob")
    );

    // 3,000 characters typed in one go arrive without a key press more.
    let long: String = (0..300).map(|n| format!("{:09} ", n)).collect();
    let tail = "000000299";
    tmux.send(&long);
    tmux.wait_for("the whole long line", |s| s.contains(tail));
    tmux.enter();
    assert_eq!(alice.message(long.trim()).await.as_deref(), Some("bob"));

    // Over 4,000 characters: asked first, sent in pieces.
    let huge = "x".repeat(4500);
    tmux.paste(&huge);
    tmux.enter();
    tmux.wait_for("the question", |s| {
        s.contains("Send it as 2 messages? [y/N]")
    });
    tmux.send("y");
    tmux.enter();
    alice.message(&"x".repeat(4000)).await;
    alice.message(&"x".repeat(500)).await;

    // Closing and starting again: the same session, in the same channel.
    tmux.send("/quit");
    tmux.enter();
    tmux.wait_for("the client to close", |s| {
        s.contains("natter exited with 0")
    });
    tmux.run(&["kill-server"]);
    let tmux = Tmux {
        socket: format!("natter-test-{}", uuid_like()),
    };
    tmux.start(&natter_command(&app, &home));
    tmux.wait_for("the resumed session", |s| {
        prompt_line(s).starts_with("bob@general")
    });
    let all = tmux.scrollback();
    assert!(all.contains("resumed the session of bob"), "{all}");
    assert!(!all.contains("password for"), "asked again:\n{all}");
    tmux.send("still here");
    tmux.enter();
    assert_eq!(alice.message("still here").await.as_deref(), Some("bob"));
    let _ = std::fs::remove_dir_all(home);
    app.stop().await;
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}
