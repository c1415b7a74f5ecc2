//! Text from the network made safe to print (docs/protocol.md §2.6: a
//! client renders what it receives without interpreting escape sequences).
//!
//! Usernames, titles, message content and the server's error messages all
//! reach the terminal. Unfiltered, `ESC[2J` in a message clears the reader's
//! screen, an OSC sequence can set their window title or write a clipboard,
//! and a bare `\r` can overwrite the line it sits on. So every escape
//! sequence (CSI, OSC, DCS/SOS/PM/APC strings and two-byte escapes, in their
//! 7-bit and C1 forms) is dropped whole, and every other control character
//! (C0, DEL, C1) is dropped, except newline and tab where the text may span
//! lines ([`text`]); a one-line field ([`line()`]) turns them into spaces.
//! Pure, so the hostile cases are unit-tested.

/// Message content: escape sequences and control characters removed,
/// newlines and tabs kept.
#[must_use]
pub fn text(s: &str) -> String {
    clean(s, true)
}

/// A one-line field (a username, a title, an error message): as [`text`],
/// with newlines and tabs turned into spaces.
#[must_use]
pub fn line(s: &str) -> String {
    clean(s, false)
}

/// Where the scanner is inside an escape sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Text,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (0x20–0x2F): ends at a final byte.
    EscapeIntermediate,
    /// Inside CSI parameters: ends at a byte 0x40–0x7E.
    Csi,
    /// Inside an OSC/DCS/SOS/PM/APC string: ends at BEL or ST.
    String,
    /// ESC seen inside a string: `\` ends it (ST).
    StringEscape,
}

fn clean(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut state = State::Text;
    for c in s.chars() {
        state = match state {
            State::Text => match c {
                '\u{1b}' => State::Escape,
                '\u{9b}' => State::Csi,
                '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => State::String,
                '\n' | '\t' => {
                    out.push(if multiline { c } else { ' ' });
                    State::Text
                }
                c if c.is_control() => State::Text,
                c => {
                    out.push(c);
                    State::Text
                }
            },
            State::Escape => match c {
                '[' => State::Csi,
                ']' | 'P' | 'X' | '^' | '_' => State::String,
                '\u{20}'..='\u{2f}' => State::EscapeIntermediate,
                _ => State::Text,
            },
            State::EscapeIntermediate => match c {
                '\u{20}'..='\u{2f}' => State::EscapeIntermediate,
                _ => State::Text,
            },
            State::Csi => match c {
                '\u{40}'..='\u{7e}' => State::Text,
                '\u{1b}' => State::Escape,
                _ => State::Csi,
            },
            State::String => match c {
                '\u{7}' | '\u{9c}' => State::Text,
                '\u{1b}' => State::StringEscape,
                _ => State::String,
            },
            State::StringEscape => match c {
                '\\' => State::Text,
                '\u{1b}' => State::StringEscape,
                _ => State::String,
            },
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_and_unicode_pass_unchanged() {
        for s in [
            "hello",
            "héllo wörld",
            "日本語のテキスト",
            "emoji 🎉 ok",
            "",
        ] {
            assert_eq!(text(s), s);
            assert_eq!(line(s), s);
        }
    }

    #[test]
    fn csi_sequences_are_dropped_whole() {
        assert_eq!(text("a\u{1b}[2Jb"), "ab", "clear screen");
        assert_eq!(text("\u{1b}[31;1mred\u{1b}[0m"), "red", "colours");
        assert_eq!(text("x\u{1b}[10;20Hy"), "xy", "cursor move");
        assert_eq!(text("x\u{1b}[?1049hy"), "xy", "alternate screen");
        assert_eq!(text("x\u{9b}2Jy"), "xy", "8-bit CSI");
    }

    #[test]
    fn osc_and_other_strings_are_dropped_up_to_their_terminator() {
        assert_eq!(text("a\u{1b}]0;pwned\u{7}b"), "ab", "title, BEL");
        assert_eq!(
            text("a\u{1b}]52;c;ZXZpbA==\u{1b}\\b"),
            "ab",
            "clipboard, ST"
        );
        assert_eq!(
            text("a\u{1b}]8;;http://evil\u{1b}\\link\u{1b}]8;;\u{1b}\\b"),
            "alinkb",
            "hyperlink"
        );
        assert_eq!(text("a\u{1b}Pq#0;2;0;0;0\u{1b}\\b"), "ab", "DCS (sixel)");
        assert_eq!(text("a\u{9d}0;t\u{9c}b"), "ab", "8-bit OSC and ST");
        assert_eq!(text("a\u{1b}]0;never ends"), "a", "unterminated");
    }

    #[test]
    fn two_byte_escapes_and_bare_controls_are_dropped() {
        assert_eq!(text("a\u{1b}cb"), "ab", "full reset");
        assert_eq!(text("a\u{1b}(0b"), "ab", "charset switch");
        assert_eq!(text("a\u{1b}"), "a", "trailing ESC");
        assert_eq!(text("over\rwrite"), "overwrite", "carriage return");
        assert_eq!(
            text("bell\u{7}\u{8}\u{0}\u{7f}\u{85}"),
            "bell",
            "C0, DEL, C1"
        );
    }

    #[test]
    fn newlines_and_tabs_survive_in_text_and_become_spaces_in_a_line() {
        assert_eq!(text("one\ntwo\tthree"), "one\ntwo\tthree");
        assert_eq!(line("one\ntwo\tthree"), "one two three");
        assert_eq!(line("evil\u{1b}[2J\nname"), "evil name");
    }
}
