//! UTC time arithmetic for buckets: event timestamps, hours, calendar months, billing periods.
//!
//! Timestamps are `i64` microseconds since the Unix epoch; buckets are `u32` indices (hours
//! since the epoch, months since year 0) so they encode as fixed-width big-endian keys.

use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_HOUR: i64 = 3_600 * MICROS_PER_SECOND;

/// A point in time: microseconds since the Unix epoch, UTC.
pub type UnixMicros = i64;

/// Hours since the epoch; events before 1970 never get this far (the late window refuses them).
pub fn hour_index(at: UnixMicros) -> u32 {
    u32::try_from(at.div_euclid(MICROS_PER_HOUR)).unwrap_or(0)
}

pub fn hour_start(hour: u32) -> UnixMicros {
    i64::from(hour) * MICROS_PER_HOUR
}

/// Months since January of year 0 (`year * 12 + month0`).
pub fn month_index(at: UnixMicros) -> u32 {
    let date = to_datetime(at);
    u32::try_from(date.year()).unwrap_or(0) * 12 + date.month0()
}

pub fn month_start(month: u32) -> UnixMicros {
    let year = i32::try_from(month / 12).unwrap_or(i32::MAX);
    Utc.with_ymd_and_hms(year, month % 12 + 1, 1, 0, 0, 0)
        .single()
        .map_or(0, |d| d.timestamp_micros())
}

pub fn month_of_hour(hour: u32) -> u32 {
    month_index(hour_start(hour))
}

pub fn to_datetime(at: UnixMicros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at).unwrap_or_default()
}

/// RFC 3339 with second precision and a `Z`, as the F5 responses show timestamps.
pub fn format_rfc3339(at: UnixMicros) -> String {
    to_datetime(at).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses RFC 3339 into micros; `None` for anything else.
///
/// A leap second (`23:59:60.x`) becomes the last microsecond of the second before it, so it
/// counts in the minute, hour and day it is written in; chrono carries it into the next one.
pub fn parse_rfc3339(text: &str) -> Option<UnixMicros> {
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    let within_second = i64::from(parsed.timestamp_subsec_micros()).min(MICROS_PER_SECOND - 1);
    parsed
        .timestamp()
        .checked_mul(MICROS_PER_SECOND)?
        .checked_add(within_second)
}

/// Parses `unix_timestamp|RFC 3339`, the form `usage_summary` accepts.
pub fn parse_unix_or_rfc3339(text: &str) -> Option<UnixMicros> {
    if let Ok(seconds) = text.parse::<i64>() {
        return seconds.checked_mul(MICROS_PER_SECOND);
    }
    parse_rfc3339(text)
}

/// The engine's clock, injectable so tests can move time.
pub type Clock = std::sync::Arc<dyn Fn() -> UnixMicros + Send + Sync>;

/// Wall-clock time.
pub fn system_clock() -> Clock {
    std::sync::Arc::new(|| Utc::now().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip() {
        let at = parse_rfc3339("2026-02-28T23:59:59.999Z").unwrap();
        let hour = hour_index(at);
        assert_eq!(format_rfc3339(hour_start(hour)), "2026-02-28T23:00:00Z");
        let month = month_index(at);
        assert_eq!(format_rfc3339(month_start(month)), "2026-02-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(month_start(month + 1)),
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(
            format_rfc3339(month_start(month + 11)),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(month_of_hour(hour + 1), month + 1);
    }

    /// Regression: `23:59:60` on the last day of November was bucketed in December.
    #[test]
    fn a_leap_second_counts_in_the_minute_it_is_written_in() {
        let leap = parse_rfc3339("2026-11-30T23:59:60Z").unwrap();
        assert_eq!(leap, parse_rfc3339("2026-11-30T23:59:59.999999Z").unwrap());
        assert_eq!(
            parse_rfc3339("2026-11-30T23:59:60.5Z").unwrap(),
            leap,
            "every instant of the leap second stays in it"
        );
        assert_eq!(
            format_rfc3339(month_start(month_index(leap))),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(
            format_rfc3339(hour_start(hour_index(leap))),
            "2026-11-30T23:00:00Z"
        );
        // Written with an offset, it is the same UTC second.
        assert_eq!(parse_rfc3339("2026-12-01T00:59:60+01:00"), Some(leap));
        // Ordinary seconds are untouched.
        assert_eq!(
            parse_rfc3339("2026-12-01T00:00:00.25Z").unwrap() - leap,
            250_001
        );
    }

    #[test]
    fn parses_both_time_forms() {
        assert_eq!(parse_unix_or_rfc3339("60"), Some(60 * MICROS_PER_SECOND));
        assert_eq!(
            parse_unix_or_rfc3339("1970-01-01T00:01:00+00:00"),
            Some(60 * MICROS_PER_SECOND)
        );
        assert_eq!(parse_unix_or_rfc3339("yesterday"), None);
    }
}
