//! Usernames, parsed once at the edge (auth's register and login) into a
//! type that cannot hold an invalid one.

use crate::limits::USERNAME_CHARS;
use std::fmt;

/// A username docs/protocol.md §1 allows: 3–32 characters of
/// `[a-z0-9_.-]`. It is never case-folded: `Alice` is refused, not turned
/// into `alice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

/// Why a string is not a [`Username`]; its `Display` is the message
/// a client is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidUsername {
    /// Fewer than 3 or more than 32 characters.
    Length,
    /// A character outside `[a-z0-9_.-]`.
    Character,
}

impl Username {
    /// Checks `raw` against the protocol's rule.
    ///
    /// # Errors
    /// Which part of the rule `raw` breaks.
    pub fn parse(raw: impl Into<String>) -> Result<Self, InvalidUsername> {
        let raw = raw.into();
        if !USERNAME_CHARS.contains(&raw.chars().count()) {
            return Err(InvalidUsername::Length);
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
        {
            return Err(InvalidUsername::Character);
        }
        Ok(Self(raw))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    #[must_use]
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for InvalidUsername {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Length => "username must be 3 to 32 characters",
            Self::Character => "username may contain only a-z, 0-9, '_', '.' and '-'",
        })
    }
}

impl std::error::Error for InvalidUsername {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_allowed_characters_and_length_parse_unchanged() {
        for ok in ["abc", "a.b-c_9", "007", &"x".repeat(32)] {
            assert_eq!(
                Username::parse(ok).map(Username::into_inner),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn names_too_short_or_too_long_are_refused_by_length() {
        for bad in ["", "ab", &"x".repeat(33)] {
            assert_eq!(Username::parse(bad), Err(InvalidUsername::Length), "{bad}");
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(Username::parse("éé"), Err(InvalidUsername::Length));
        assert_eq!(Username::parse("ééé"), Err(InvalidUsername::Character));
    }

    #[test]
    fn capitals_spaces_and_other_characters_are_refused_not_folded() {
        for bad in ["Abc", "ab c", "héllo", "a\0bc", "abc/"] {
            assert_eq!(
                Username::parse(bad),
                Err(InvalidUsername::Character),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_refusal_reads_as_a_field_message() {
        assert_eq!(
            InvalidUsername::Length.to_string(),
            "username must be 3 to 32 characters"
        );
        assert!(
            InvalidUsername::Character
                .to_string()
                .starts_with("username may contain only")
        );
    }
}
