//! A client as a test drives it: a session plus the pushes it received.

use natter_client::cli::Endpoints;
use natter_client::render::{Event, Look, Zone, render};
use natter_client::session::{Action, Output, Session};
use natter_server::testing::TestApp;
use std::time::Duration;
use tokio::sync::mpsc;

/// The password every test user gets.
pub const PASSWORD: &str = "correct-horse-battery";

/// How long a push may take to arrive through the stack.
pub const PUSH_WAIT: Duration = Duration::from_secs(10);

pub struct Client {
    pub name: String,
    pub session: Session,
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl Client {
    pub fn new(name: &str, endpoints: &Endpoints) -> Self {
        let (session, events) = Session::new(endpoints);
        Self {
            name: name.to_owned(),
            session,
            events,
        }
    }

    pub fn on(app: &TestApp, name: &str) -> Self {
        Self::new(
            name,
            &Endpoints {
                auth_url: app.auth_url(),
                ws_url: app.ws_url(),
            },
        )
    }

    /// Registers and logs in.
    pub async fn online(app: &TestApp, name: &str) -> Self {
        let mut c = Self::on(app, name);
        c.ok(&format!("/register {name} {PASSWORD}")).await;
        c.ok(&format!("/login {name} {PASSWORD}")).await;
        c
    }

    /// Runs a line; its output as plain lines.
    pub async fn run(&mut self, line: &str) -> Output {
        self.session.run_line(line).await
    }

    /// Runs a line that must succeed; its plain lines.
    pub async fn ok(&mut self, line: &str) -> Vec<String> {
        let out = self.run(line).await;
        let lines = plain(&out.events);
        assert!(out.ok, "{}: {line} failed: {lines:?}", self.name);
        lines
    }

    /// Runs a line that asks a question, answers it; the answer's output.
    pub async fn answering(&mut self, line: &str, reply: &str) -> Output {
        let out = self.run(line).await;
        assert!(
            matches!(out.action, Action::Ask(_)),
            "{}: {line} asked nothing: {:?}",
            self.name,
            plain(&out.events)
        );
        self.session.answer(Some(reply.to_owned())).await
    }

    /// Runs a line that asks for a yes, says yes; its plain lines, which
    /// must be a success.
    pub async fn confirmed(&mut self, line: &str) -> Vec<String> {
        let out = self.answering(line, "y").await;
        let lines = plain(&out.events);
        assert!(out.ok, "{}: {line} failed: {lines:?}", self.name);
        lines
    }

    /// Runs a line that must fail; its one error line.
    pub async fn fails(&mut self, line: &str) -> String {
        let out = self.run(line).await;
        let lines = plain(&out.events);
        assert!(!out.ok, "{}: {line} succeeded: {lines:?}", self.name);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].clone()
    }

    /// Waits for a push matching `want`, skipping others; panics after
    /// [`PUSH_WAIT`].
    pub async fn push(&mut self, what: &str, want: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + PUSH_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if want(&event) => return event,
                Ok(Some(_)) => {}
                Ok(None) => panic!("{}: event channel closed waiting for {what}", self.name),
                Err(_) => panic!("{}: no {what} within {PUSH_WAIT:?}", self.name),
            }
        }
    }

    /// Waits for a chat message with this content; its author.
    pub async fn message(&mut self, content: &str) -> Option<String> {
        match self
            .push(
                &format!("message {content:?}"),
                |e| matches!(e, Event::Message { content: c, .. } if c == content),
            )
            .await
        {
            Event::Message { username, .. } => username,
            _ => unreachable!(),
        }
    }

    /// The pushes that arrive within `wait`.
    pub async fn pushes_within(&mut self, wait: Duration) -> Vec<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut all = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            all.push(event);
        }
        all
    }
}

pub fn plain(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| render(e, &Look::plain(Zone::Local)))
        .collect()
}

/// The word after `label` in `line` (e.g. an invite code).
pub fn word_after<'a>(line: &'a str, label: &str) -> &'a str {
    let rest = line
        .split_once(label)
        .unwrap_or_else(|| panic!("{label:?} not in {line:?}"))
        .1;
    rest.split_whitespace().next().expect("a word follows")
}

/// The channel id in "created general (channel 7, …".
pub fn channel_id(line: &str) -> String {
    word_after(line, "(channel ")
        .trim_end_matches([',', ')'])
        .to_owned()
}
