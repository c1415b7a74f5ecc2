//! Small things done to the terminal outside the line editor: reading a
//! password without echo, reading a short answer, and erasing the line the
//! editor just echoed (a sent message is then shown once, as the message).
//!
//! Raw mode is used rather than turning echo off, so Ctrl-C cancels the
//! prompt instead of killing the process with echo still off.

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use std::io::Write;
use unicode_width::UnicodeWidthStr;

/// Reads a password without echo. `None` on Ctrl-C, Ctrl-D or Esc.
#[must_use]
pub fn read_secret(prompt: &str) -> Option<String> {
    read(prompt, false)
}

/// Reads a short answer, echoed. `None` on Ctrl-C, Ctrl-D or Esc.
#[must_use]
pub fn read_answer(prompt: &str) -> Option<String> {
    read(prompt, true)
}

fn read(prompt: &str, echo: bool) -> Option<String> {
    let mut out = std::io::stdout();
    let _ = write!(out, "{prompt}");
    let _ = out.flush();
    if terminal::enable_raw_mode().is_err() {
        return None;
    }
    let result = read_raw(&mut out, echo);
    let _ = terminal::disable_raw_mode();
    let _ = writeln!(out);
    result
}

fn read_raw(out: &mut impl Write, echo: bool) -> Option<String> {
    let mut text = String::new();
    loop {
        match event::read().ok()? {
            Event::Key(KeyEvent {
                code,
                modifiers,
                kind: KeyEventKind::Press | KeyEventKind::Repeat,
                ..
            }) => match code {
                KeyCode::Enter => return Some(text),
                KeyCode::Esc => return None,
                KeyCode::Char('c' | 'd') if modifiers.contains(KeyModifiers::CONTROL) => {
                    return None;
                }
                KeyCode::Char('u') if modifiers.contains(KeyModifiers::CONTROL) => {
                    if echo {
                        for _ in 0..text.width() {
                            let _ = write!(out, "\u{8} \u{8}");
                        }
                    }
                    text.clear();
                }
                KeyCode::Backspace => {
                    if let Some(c) = text.pop()
                        && echo
                    {
                        for _ in 0..c.to_string().width() {
                            let _ = write!(out, "\u{8} \u{8}");
                        }
                    }
                }
                KeyCode::Char(c) => {
                    text.push(c);
                    if echo {
                        let _ = write!(out, "{c}");
                    }
                }
                _ => {}
            },
            Event::Paste(pasted) => {
                let line = pasted.lines().next().unwrap_or("");
                text.push_str(line);
                if echo {
                    let _ = write!(out, "{line}");
                }
            }
            _ => {}
        }
        let _ = out.flush();
    }
}

/// How many terminal rows `prompt` followed by `line` takes at `columns`
/// wide: each line of a multi-line input starts a row (after the first,
/// behind `continuation`), and a long one wraps.
#[must_use]
pub fn rows_of(prompt: &str, continuation: &str, line: &str, columns: u16) -> u16 {
    let columns = usize::from(columns.max(1));
    let mut rows = 0usize;
    for (i, part) in line.split('\n').enumerate() {
        let lead = if i == 0 { prompt } else { continuation };
        let width = lead.width() + part.width();
        rows += width.div_ceil(columns).max(1);
    }
    u16::try_from(rows).unwrap_or(u16::MAX)
}

/// Erases the `rows` rows above the cursor (the line the editor echoed)
/// so what replaces it is shown in its place.
pub fn erase_rows_above(rows: u16) {
    if rows == 0 {
        return;
    }
    let mut out = std::io::stdout();
    let _ = execute!(
        out,
        cursor::MoveUp(rows),
        cursor::MoveToColumn(0),
        terminal::Clear(terminal::ClearType::FromCursorDown)
    );
}

/// The terminal's width, 80 when it cannot be told.
#[must_use]
pub fn columns() -> u16 {
    terminal::size().map_or(80, |(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_line_takes_a_row_per_line_and_per_wrap() {
        assert_eq!(rows_of("alice › ", "… ", "hi", 80), 1);
        assert_eq!(rows_of("alice › ", "… ", "", 80), 1);
        assert_eq!(rows_of("ab", "… ", "cdefgh", 4), 2, "8 columns at 4 wide");
        assert_eq!(rows_of("ab", "… ", "cdefghi", 4), 3);
        assert_eq!(rows_of("p › ", "… ", "one\ntwo\nthree", 80), 3);
        assert_eq!(
            rows_of("p › ", "… ", "日本語", 7),
            2,
            "wide characters count twice"
        );
    }
}
