//! Times on the wire (docs/protocol.md, "Conventions"): RFC 3339 in UTC
//! with `Z` and microseconds, identical wherever the same time appears.
//! Postgres keeps microseconds, so formatting with exactly six fractional
//! digits makes the same instant render the same everywhere.

use serde::{Deserialize, Deserializer, Serializer};
use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Formats an instant as `2026-11-25T17:41:33.123456Z`.
#[must_use]
pub fn format(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC)
        .format(FORMAT)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Serde `with` adaptor for [`OffsetDateTime`] fields on the wire.
pub mod rfc3339_micros {
    use super::{Deserialize, Deserializer, OffsetDateTime, Serializer};

    /// Serializes with [`super::format`].
    ///
    /// # Errors
    /// Never, beyond the serializer's own.
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*t))
    }

    /// Accepts any RFC 3339 time.
    ///
    /// # Errors
    /// When the string is not RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_six_fraction_digits() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_120_000_000).expect("time");
        assert_eq!(format(t), "2023-11-14T22:13:20.120000Z");
    }
}
