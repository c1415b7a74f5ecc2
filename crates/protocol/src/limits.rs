//! Field limits of docs/protocol.md, checked at the edge (gateway) and again by
//! the message service, which must not trust its callers.

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
    fn passwords_are_counted_in_chars() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"é".repeat(128)).is_ok());
        assert!(check_password(&"é".repeat(129)).is_err());
    }
}
