//! Times on the wire: epoch seconds as text at the top level, ISO 8601 inside
//! data (zone-less means UTC). Kept at microseconds, Postgres' precision.

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

/// Parses ISO 8601 with or without a zone; a zone-less time is UTC.
pub fn parse_iso_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|naive| naive.and_utc())
                .ok_or_else(|| format!("{text:?} is not an ISO 8601 time"))
        })?;
    in_range(to_micros(t))
}

#[cfg(test)]
mod tests {
    use super::*;

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
