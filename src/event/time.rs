//! Times on the wire: epoch seconds as text at the top level, ISO 8601 inside
//! data (zone-less means UTC). Kept at microseconds, Postgres' precision.

use std::sync::LazyLock;

use chrono::format::{parse, Item, Parsed, StrftimeItems};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

/// Times outside [2000-01-01, 2100-01-01) are producer bugs, not events.
const MIN_EPOCH_SECONDS: i64 = 946_684_800;
const MAX_EPOCH_SECONDS: i64 = 4_102_444_800;

fn in_range(t: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let secs = t.timestamp();
    if (MIN_EPOCH_SECONDS..MAX_EPOCH_SECONDS).contains(&secs) {
        Ok(t)
    } else {
        Err(format!("{t} is outside 2000-01-01..2100-01-01"))
    }
}

fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_micros(t.timestamp_micros())
        .single()
        .unwrap_or(t)
}

/// Parses `1730800000.123456` (Python's `str(time.time())`).
pub fn parse_epoch_seconds(text: &str) -> Result<DateTime<Utc>, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() {
        return Err(format!("{text:?} is not a finite number"));
    }
    let clamped = seconds.clamp(i64::MIN as f64 / 1e6, i64::MAX as f64 / 1e6);
    let micros = (clamped * 1e6).round() as i64;
    let t = Utc
        .timestamp_micros(micros)
        .single()
        .ok_or_else(|| format!("{text:?} is out of range"))?;
    in_range(t)
}

/// The zone-less forms (Python's `datetime.isoformat()` of a naive time,
/// and with a space), tried in this order.
const ZONE_LESS_FORMATS: [&str; 2] = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"];

/// [`ZONE_LESS_FORMATS`] compiled once: `NaiveDateTime::parse_from_str`
/// compiles its format string at every call, which cost 1.3% of the
/// service's CPU in a seed drain (most times on the wire have no zone).
static ZONE_LESS: LazyLock<[Vec<Item<'static>>; 2]> =
    LazyLock::new(|| ZONE_LESS_FORMATS.map(|format| StrftimeItems::new(format).collect()));

fn parse_zone_less(text: &str, items: &[Item<'static>]) -> Option<NaiveDateTime> {
    let mut parsed = Parsed::new();
    parse(&mut parsed, text, items.iter()).ok()?;
    parsed.to_naive_datetime_with_offset(0).ok()
}

/// Parses ISO 8601 with or without a zone; a zone-less time is UTC.
pub fn parse_iso_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            ZONE_LESS
                .iter()
                .find_map(|items| parse_zone_less(text, items))
                .map(|naive| naive.and_utc())
                .ok_or_else(|| format!("{text:?} is not an ISO 8601 time"))
        })?;
    in_range(to_micros(t))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What `parse_iso_time` did before the formats were compiled once.
    fn parse_iso_time_by_format_strings(text: &str) -> Option<DateTime<Utc>> {
        let t = DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                ZONE_LESS_FORMATS
                    .iter()
                    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                    .map(|naive| naive.and_utc())
            })?;
        in_range(to_micros(t)).ok()
    }

    /// Time-like text, mostly valid: years around the accepted range,
    /// months, days and clock fields a little past theirs, either
    /// separator (or a wrong one), fractions of any length, zones or none,
    /// and now and then a character before or after.
    fn time_like_text() -> impl Strategy<Value = String> {
        let edge = || prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("0")];
        (
            edge(),
            (1990u32..2110, 0u32..14, 0u32..33),
            prop_oneof![4 => Just('T'), 2 => Just(' '), 1 => Just('t'), 1 => Just('x')],
            (0u32..25, 0u32..61, 0u32..62),
            r"(\.[0-9]{0,12})?",
            r"(Z|z|[+-][0-1][0-9]:?[0-5][0-9])?",
            edge(),
        )
            .prop_map(|(before, (y, mo, d), sep, (h, mi, s), fraction, zone, after)| {
                format!("{before}{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{fraction}{zone}{after}")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn compiled_formats_parse_as_the_format_strings_did(text in time_like_text()) {
            prop_assert_eq!(parse_iso_time(&text).ok(), parse_iso_time_by_format_strings(&text));
        }
    }

    #[test]
    fn zone_less_iso_time_is_utc() {
        let naive = parse_iso_time("2025-11-05T10:00:00.123456").unwrap();
        let zoned = parse_iso_time("2025-11-05T10:00:00.123456+00:00").unwrap();
        let other_zone = parse_iso_time("2025-11-05T12:00:00.123456+02:00").unwrap();
        assert_eq!(naive, zoned);
        assert_eq!(naive, other_zone);
        assert_eq!(naive.timestamp_micros(), 1_762_336_800_123_456);
    }

    #[test]
    fn iso_time_is_truncated_to_microseconds() {
        let t = parse_iso_time("2025-11-05T10:00:00.123456789Z").unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_000);
    }

    #[test]
    fn epoch_seconds_parse_like_python_time() {
        let t = parse_epoch_seconds("1762336800.5").unwrap();
        assert_eq!(t.timestamp_micros(), 1_762_336_800_500_000);
    }

    #[test]
    fn bad_times_are_rejected_with_the_text() {
        for bad in [
            "",
            "yesterday",
            "NaN",
            "inf",
            "1e300",
            "-5",
            "12",
            "9999999999999",
        ] {
            let err = parse_epoch_seconds(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        for bad in [
            "2025-13-01T00:00:00",
            "05/11/2025",
            "1900-01-01T00:00:00",
            "2025-11-05",
        ] {
            assert!(parse_iso_time(bad).is_err(), "{bad}");
        }
    }
}
