//! Non-interactive mode: commands from `-c` or from stdin, one output line
//! per event on stdout (each line about a channel starts with `#<id>`),
//! errors on stderr, no colours. It stops at the first command that fails
//! (exit non-zero) unless `--keep-going`. Pushes are printed between
//! commands and while waiting for the next stdin line, so a pipeline can
//! keep natter open and read what arrives.
//!
//! A question a command asks is answered here: a password from
//! `NATTER_PASSWORD`, else the next line of stdin (asked without echo when
//! stdin is a terminal); a confirmation is taken as yes — the script said
//! what it wants.

use crate::render::{Event, Look, render};
use crate::session::{Action, Output, Question, Session};
use std::io::{IsTerminal, Write};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, Lines};
use tokio::sync::mpsc;

/// How a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether every command succeeded.
    pub ok: bool,
}

/// How a script runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Go on after a failed command.
    pub keep_going: bool,
    /// The password to answer password questions with.
    pub password: Option<String>,
}

/// Where a script's lines go: events to `out`, errors to `err`.
pub struct Out {
    out: Box<dyn Write + Send>,
    err: Box<dyn Write + Send>,
}

impl Out {
    /// stdout and stderr.
    #[must_use]
    pub fn stdio() -> Self {
        Self::new(Box::new(std::io::stdout()), Box::new(std::io::stderr()))
    }

    /// Any two writers.
    #[must_use]
    pub fn new(out: Box<dyn Write + Send>, err: Box<dyn Write + Send>) -> Self {
        Self { out, err }
    }

    fn print(&mut self, event: &Event) {
        let text = render(event, &Look::script());
        // A closed stdout (e.g. `| head`) is not worth a panic: stop quietly.
        let to = if matches!(event, Event::Error(_)) {
            &mut self.err
        } else {
            &mut self.out
        };
        let _ = writeln!(to, "{text}");
        let _ = to.flush();
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.err, "{text}");
        let _ = self.err.flush();
    }
}

/// Runs `commands` in order, stopping at `/exit` or (unless `keep_going`)
/// the first failure. `stdin` answers password questions.
pub async fn run_commands(
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<Event>,
    commands: &[String],
    stdin: impl AsyncBufRead + Unpin,
    out: &mut Out,
    options: &Options,
) -> Outcome {
    let mut input = stdin.lines();
    resume(session, out).await;
    let mut ok = true;
    for line in commands {
        let (line_ok, exit) = step(session, events, line, out, options, &mut input).await;
        ok &= line_ok;
        if exit || !line_ok && !options.keep_going {
            break;
        }
    }
    session.close().await;
    drain(events, out);
    Outcome { ok }
}

/// Runs the lines of `input` until it ends, `/exit` or (unless
/// `keep_going`) the first failure, printing pushes as they come while it
/// waits.
pub async fn run_lines(
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<Event>,
    input: impl AsyncBufRead + Unpin,
    out: &mut Out,
    options: &Options,
) -> Outcome {
    resume(session, out).await;
    let mut ok = true;
    let mut lines = input.lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let (line_ok, exit) =
                        step(session, events, &line, out, options, &mut lines).await;
                    ok &= line_ok;
                    if exit || !line_ok && !options.keep_going {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.print(&Event::Error(format!("cannot read stdin: {e}")));
                    ok = false;
                    break;
                }
            },
            Some(event) = events.recv() => out.print(&event),
        }
    }
    session.close().await;
    drain(events, out);
    Outcome { ok }
}

/// The saved session's resume says what it did on stderr: stdout is the
/// commands' own.
async fn resume(session: &mut Session, out: &mut Out) {
    let output = session.resume().await;
    for event in &output.events {
        out.note(&render(event, &Look::script()));
    }
}

async fn step<R: AsyncBufRead + Unpin>(
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<Event>,
    line: &str,
    out: &mut Out,
    options: &Options,
    input: &mut Lines<R>,
) -> (bool, bool) {
    // Pushes that came before the command are shown before its output.
    drain(events, out);
    let mut output: Output = session.run_line(line).await;
    let mut ok = true;
    loop {
        ok &= output.ok;
        for event in &output.events {
            out.print(event);
        }
        let Action::Ask(question) = output.action else {
            break;
        };
        let reply = match question {
            Question::Confirm(text) => {
                out.note(&format!("{text}yes (a script means it)"));
                Some("yes".to_owned())
            }
            Question::Secret(prompt) => secret(&prompt, options, input).await,
        };
        output = session.answer(reply).await;
    }
    drain(events, out);
    (ok, output.action == Action::Exit)
}

async fn secret<R: AsyncBufRead + Unpin>(
    prompt: &str,
    options: &Options,
    input: &mut Lines<R>,
) -> Option<String> {
    if let Some(password) = &options.password {
        return Some(password.clone());
    }
    if std::io::stdin().is_terminal() {
        let prompt = prompt.to_owned();
        return tokio::task::spawn_blocking(move || crate::terminal::read_secret(&prompt))
            .await
            .ok()
            .flatten();
    }
    input.next_line().await.ok().flatten()
}

fn drain(events: &mut mpsc::UnboundedReceiver<Event>, out: &mut Out) {
    while let Ok(event) = events.try_recv() {
        out.print(&event);
    }
}
