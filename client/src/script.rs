//! Non-interactive mode: commands from `-c` or from stdin, one output line
//! per event, no colours, a non-zero exit when a command failed. Pushes are
//! printed between commands and while waiting for the next stdin line, so a
//! pipeline can keep natter open and read what arrives.

use crate::render::{Event, Palette, render};
use crate::session::{Action, Session};
use std::io::Write;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::mpsc;

/// How a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Whether every command succeeded.
    pub ok: bool,
}

/// Runs `commands` in order, stopping at `/exit`.
pub async fn run_commands(
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<Event>,
    commands: &[String],
    out: &mut impl Write,
) -> Outcome {
    let mut ok = true;
    for line in commands {
        let (line_ok, exit) = step(session, events, line, out).await;
        ok &= line_ok;
        if exit {
            break;
        }
    }
    session.close().await;
    drain(events, out);
    Outcome { ok }
}

/// Runs the lines of `input` until it ends or `/exit`, printing pushes as
/// they come while it waits.
pub async fn run_lines(
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<Event>,
    input: impl AsyncBufRead + Unpin,
    out: &mut impl Write,
) -> Outcome {
    let mut ok = true;
    let mut lines = input.lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let (line_ok, exit) = step(session, events, &line, out).await;
                    ok &= line_ok;
                    if exit {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    print(out, &Event::Error(format!("cannot read stdin: {e}")));
                    ok = false;
                    break;
                }
            },
            Some(event) = events.recv() => print(out, &event),
        }
    }
    session.close().await;
    drain(events, out);
    Outcome { ok }
}

async fn step(
    session: &mut Session,
    events: &mut mpsc::UnboundedReceiver<Event>,
    line: &str,
    out: &mut impl Write,
) -> (bool, bool) {
    // Pushes that came before the command are shown before its output.
    drain(events, out);
    let output = session.run_line(line).await;
    for event in &output.events {
        print(out, event);
    }
    drain(events, out);
    (output.ok, output.action == Action::Exit)
}

fn drain(events: &mut mpsc::UnboundedReceiver<Event>, out: &mut impl Write) {
    while let Ok(event) = events.try_recv() {
        print(out, &event);
    }
}

fn print(out: &mut impl Write, event: &Event) {
    // A closed stdout (e.g. `| head`) is not worth a panic: stop quietly.
    let _ = writeln!(out, "{}", render(event, &Palette::new(false)));
    let _ = out.flush();
}
