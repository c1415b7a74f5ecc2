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

/// Bytes of a formatted time with a four-digit year.
const LEN: usize = "2026-11-25T17:41:33.123456Z".len();

/// Formats an instant as `2026-11-25T17:41:33.123456Z`.
#[must_use]
pub fn format(t: OffsetDateTime) -> String {
    let mut buf = [0; LEN];
    match write(t, &mut buf) {
        Some(text) => text.to_owned(),
        None => format_otherwise(t),
    }
}

/// [`format`] by `time`'s formatter: for the years [`write`] leaves out.
fn format_otherwise(t: OffsetDateTime) -> String {
    t.checked_to_offset(UtcOffset::UTC)
        .and_then(|utc| utc.format(FORMAT).ok())
        .unwrap_or_else(|| t.unix_timestamp().to_string())
}

/// Writes `t` as [`format`] does into `buf`, for years 0 to 9999 (`None`
/// otherwise). Written out digit by digit: every message's frame and
/// answer carries a time, and `time`'s general formatter, which walks the
/// format description item by item, was ~1.5 % of natter-server's CPU
/// under bench/run's throughput.
fn write(t: OffsetDateTime, buf: &mut [u8; LEN]) -> Option<&str> {
    let t = t.checked_to_offset(UtcOffset::UTC)?;
    let year = u32::try_from(t.year()).ok().filter(|y| *y <= 9999)?;
    let fields = [
        (0, 4, year),
        (5, 2, u32::from(u8::from(t.month()))),
        (8, 2, u32::from(t.day())),
        (11, 2, u32::from(t.hour())),
        (14, 2, u32::from(t.minute())),
        (17, 2, u32::from(t.second())),
        (20, 6, t.microsecond()),
    ];
    for (at, digits, mut value) in fields {
        for slot in buf[at..at + digits].iter_mut().rev() {
            // A digit: `value % 10` is below 10.
            *slot = b'0' + u8::try_from(value % 10).unwrap_or(0);
            value /= 10;
        }
    }
    for (at, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        buf[at] = separator;
    }
    std::str::from_utf8(buf).ok()
}

/// Serde `with` adaptor for [`OffsetDateTime`] fields on the wire.
pub mod rfc3339_micros {
    use super::{Deserialize, Deserializer, OffsetDateTime, Serializer};

    /// Serializes with [`super::format`].
    ///
    /// # Errors
    /// Never, beyond the serializer's own.
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0; super::LEN];
        match super::write(*t, &mut buf) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&super::format_otherwise(*t)),
        }
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

    use proptest::prelude::*;

    #[test]
    fn formats_utc_with_six_fraction_digits() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_120_000_000).expect("time");
        assert_eq!(format(t), "2023-11-14T22:13:20.120000Z");
    }

    #[test]
    fn years_outside_four_digits_are_formatted_too() {
        let before = time::macros::datetime!(-0001-12-31 23:59:59.5 UTC);
        assert_eq!(format(before), format_otherwise(before));
        assert!(format(before).starts_with("-0001-12-31T23:59:59.500000"));
        let after = time::macros::datetime!(9999-12-31 23:59:59.999999999 +01:00);
        assert_eq!(format(after), "9999-12-31T22:59:59.999999Z");
        // In UTC past year 9999, which `time` cannot hold: the Unix time.
        let beyond = time::macros::datetime!(9999-12-31 23:30 -01:00);
        assert_eq!(format(beyond), beyond.unix_timestamp().to_string());
    }

    proptest! {
        /// The hand-written formatter says what `time`'s says, for any
        /// instant of years 0 to 9999 at any offset (a day short of the
        /// end, where a positive offset would pass year 9999).
        #[test]
        fn formats_as_time_s_formatter_does(
            nanos in -62_167_219_200_000_000_000_i128..253_402_214_399_999_999_999_i128,
            offset in -86_399_i32..86_399,
        ) {
            let offset = UtcOffset::from_whole_seconds(offset).expect("an offset");
            let t = OffsetDateTime::from_unix_timestamp_nanos(nanos)
                .expect("a time")
                .to_offset(offset);
            prop_assert_eq!(format(t), format_otherwise(t));
            prop_assert_eq!(
                serde_json::to_string(&Stamp(t)).expect("serialized"),
                format!("\"{}\"", format_otherwise(t))
            );
        }
    }

    #[derive(serde::Serialize)]
    struct Stamp(#[serde(with = "rfc3339_micros")] OffsetDateTime);
}
