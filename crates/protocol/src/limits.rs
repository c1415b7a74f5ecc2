//! Field limits of docs/protocol.md, checked at the edge (gateway) and again by
//! the message service, which must not trust its callers.

use serde::Serialize;

/// Largest WebSocket frame a client may send; larger closes with 1009.
pub const MAX_FRAME_BYTES: usize = 65_536;
/// Largest HTTP body auth accepts; larger is 413.
pub const MAX_HTTP_BODY_BYTES: usize = 64 * 1024;
/// `client_msg_id` length in chars.
pub const CLIENT_MSG_ID_CHARS: std::ops::RangeInclusive<usize> = 1..=64;
/// Message `content` length in chars.
pub const CONTENT_CHARS: std::ops::RangeInclusive<usize> = 1..=4000;
/// Channel `title` length in chars.
pub const TITLE_CHARS: std::ops::RangeInclusive<usize> = 1..=100;
/// `fetch_messages` page size.
pub const FETCH_LIMIT: std::ops::RangeInclusive<i64> = 1..=100;
/// `fetch_messages` page size when none is given.
pub const FETCH_LIMIT_DEFAULT: i64 = 50;
/// Username length in chars (`[a-z0-9_.-]`; see [`crate::Username`]).
pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=32;
/// Password length in chars.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=128;
/// Failed logins per username and client address in
/// [`LOGIN_WINDOW_SECS`] before that address gets 429.
pub const LOGIN_MAX_FAILURES: i64 = 5;
/// The login rate limit's window.
pub const LOGIN_WINDOW_SECS: i64 = 15 * 60;
/// Largest reply or push the server sends, serialized (docs/protocol.md
/// §2.6): half of NATS's default 1 MiB payload, so a reply also fits in
/// the envelope that carries it from the message service.
pub const MAX_REPLY_BYTES: usize = 512 * 1024;
/// Largest `result` of a reply: [`MAX_REPLY_BYTES`] less the frame around
/// it (`{"type":"reply","id":<20 digits>,"result":…}`).
pub const MAX_RESULT_BYTES: usize = MAX_REPLY_BYTES - 64;
/// What the entries of a list result (`messages`, `channels`,
/// `connections`) may take: [`MAX_RESULT_BYTES`] less the result's other
/// fields (`{"channel_id":<20 digits>,"messages":[…]}`).
pub const MAX_LIST_BYTES: usize = MAX_RESULT_BYTES - 64;

/// How many of `items`, from the first, fit in `budget` bytes as the
/// elements of a JSON array (their JSON and the commas between them).
/// Nothing is allocated: each item is serialized into a byte counter.
pub fn fitting<'a, T: Serialize + 'a>(
    items: impl IntoIterator<Item = &'a T>,
    budget: usize,
) -> usize {
    let mut used = 0;
    let mut count = 0;
    for item in items {
        let mut counter = ByteCounter(0);
        if serde_json::to_writer(&mut counter, item).is_err() {
            break;
        }
        used += counter.0 + usize::from(count > 0);
        if used > budget {
            break;
        }
        count += 1;
    }
    count
}

/// Counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `c` is a control character text fields refuse (docs/protocol.md
/// §2.6): C0 except `\n` and `\t`, DEL, and C1. These are what terminals
/// interpret (`ESC [2J` clears the screen), and each costs six bytes
/// escaped in JSON.
#[must_use]
pub fn is_refused_control(c: char) -> bool {
    (c.is_ascii_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)
}

/// Checks that free text holds no refused control character.
///
/// # Errors
/// A human message naming `field`.
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.chars().any(is_refused_control) {
        Err(format!(
            "{field} must not contain control characters (only newline and tab)"
        ))
    } else {
        Ok(())
    }
}

/// Checks a password's length (8–128 chars).
///
/// # Errors
/// A human message naming the field.
pub fn check_password(password: &str) -> Result<(), String> {
    if PASSWORD_CHARS.contains(&password.chars().count()) {
        Ok(())
    } else {
        Err("password must be 8 to 128 characters".into())
    }
}

/// Checks that `value` has a char count within `range`.
///
/// # Errors
/// A human message naming `field`.
pub fn check_chars(
    field: &str,
    value: &str,
    range: &std::ops::RangeInclusive<usize>,
) -> Result<(), String> {
    if range.contains(&value.chars().count()) {
        Ok(())
    } else {
        Err(format!(
            "{field} must be {} to {} characters",
            range.start(),
            range.end()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_c0_but_newline_and_tab_del_and_c1() {
        for bad in [
            "\u{1b}[2J",
            "a\rb",
            "\u{7}",
            "\u{7f}",
            "\u{80}",
            "\u{9b}2J",
            "\u{9f}",
        ] {
            assert!(check_text("content", bad).is_err(), "{bad:?}");
        }
        for good in ["line\nnext\tcol", "\u{a0}nbsp", "日本語", "😀", "\"\\"] {
            assert!(check_text("content", good).is_ok(), "{good:?}");
        }
        let err = check_text("title", "\u{1b}").expect_err("refused");
        assert!(err.contains("title"), "{err}");
    }

    #[test]
    fn fitting_counts_items_and_commas_within_the_budget() {
        let items = ["ab".to_owned(), "cd".to_owned(), "ef".to_owned()];
        // "ab" is 4 bytes; each later item costs a comma too.
        assert_eq!(fitting(&items, 3), 0);
        assert_eq!(fitting(&items, 4), 1);
        assert_eq!(fitting(&items, 8), 1);
        assert_eq!(fitting(&items, 9), 2);
        assert_eq!(fitting(&items, 14), 3);
        let joined = serde_json::to_string(&items).expect("json");
        assert_eq!(
            joined.len() - 2,
            14,
            "the budget is the array without brackets"
        );
    }

    #[test]
    fn passwords_are_counted_in_chars() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"é".repeat(129)).is_err());
    }
}
