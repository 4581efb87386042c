//! The two time formats TopoLVM writes into annotations, in Go's spelling.
//!
//! - `topolvm.io/resize-requested-at` on LogicalVolumes holds `time.Now().UTC().String()`:
//!   Go's default layout `2006-01-02 15:04:05.999999999 -0700 MST`, which for a UTC time reads
//!   `2025-01-02 03:04:05.123456789 +0000 UTC` ([`format_go_utc`]). Nobody parses it back.
//! - `topolvm.io/last-resizefs-requested-at` on Pods holds `time.Now().Format(RFC3339Nano)`
//!   (`2006-01-02T15:04:05.999999999Z07:00`) and is parsed back with the same layout
//!   ([`format_rfc3339_nano`], [`parse_rfc3339_nano`]).
//!
//! In both, Go's `.999999999` prints the fraction of a second without trailing zeros and
//! leaves out the dot when the fraction is zero.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::civil::DateTime;
use k8s_openapi::jiff::tz::Offset;

/// Why a string is not an RFC 3339 time as Go's `time.Parse(time.RFC3339Nano, s)` reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 time: {0:?}")]
pub struct TimestampError(pub String);

/// `t.UTC().String()` in Go: `2025-01-02 03:04:05.123456789 +0000 UTC`.
///
/// ```
/// use topolvm_core::timestamp::format_go_utc;
/// let t = "2025-01-02T03:04:05.1234Z".parse().unwrap();
/// assert_eq!(format_go_utc(t), "2025-01-02 03:04:05.1234 +0000 UTC");
/// ```
pub fn format_go_utc(t: Timestamp) -> String {
    let mut out = civil_utc(t, ' ');
    out.push_str(" +0000 UTC");
    out
}

/// `t.UTC().Format(time.RFC3339Nano)` in Go: `2025-01-02T03:04:05.123456789Z`.
///
/// ```
/// use topolvm_core::timestamp::format_rfc3339_nano;
/// let t = "2025-01-02T03:04:05.5Z".parse().unwrap();
/// assert_eq!(format_rfc3339_nano(t), "2025-01-02T03:04:05.5Z");
/// ```
pub fn format_rfc3339_nano(t: Timestamp) -> String {
    let mut out = civil_utc(t, 'T');
    out.push('Z');
    out
}

/// `YYYY-MM-DD<sep>hh:mm:ss[.fraction]` of `t` in UTC, the fraction without trailing zeros.
fn civil_utc(t: Timestamp, separator: char) -> String {
    let dt = Offset::UTC.to_datetime(t);
    let mut out = String::with_capacity(40);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}{separator}{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let nanos = dt.subsec_nanosecond();
    if nanos != 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out
}

/// Parses what Go's `time.Parse(time.RFC3339Nano, s)` accepts in its RFC 3339 form:
/// `YYYY-MM-DDThh:mm:ss`, an optional `.` with one or more digits (digits past the ninth are
/// ignored, as Go does), then `Z` or `±hh:mm`. Dates and times must exist (no February 30th,
/// no second 60).
///
/// Go falls back to a more lenient general parser for strings that are not in this form (it
/// accepts, for instance, a one-digit hour); those are refused here. The only reader is the
/// controller's filesystem-resize nudge, which treats a refused value as absent and writes a
/// fresh one, so the difference costs at most one extra pod update.
pub fn parse_rfc3339_nano(s: &str) -> Result<Timestamp, TimestampError> {
    let invalid = || TimestampError(s.to_owned());
    let b = s.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
        let digits = b.get(range).ok_or_else(invalid)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(invalid());
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let expect = |at: usize, c: u8| -> Result<(), TimestampError> {
        (b.get(at) == Some(&c)).then_some(()).ok_or_else(invalid)
    };
    let year = number(0..4)?;
    expect(4, b'-')?;
    let month = number(5..7)?;
    expect(7, b'-')?;
    let day = number(8..10)?;
    expect(10, b'T')?;
    let hour = number(11..13)?;
    expect(13, b':')?;
    let minute = number(14..16)?;
    expect(16, b':')?;
    let second = number(17..19)?;

    let mut at = 19;
    let mut nanos: i64 = 0;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return Err(invalid());
        }
        let kept = digits.min(9);
        nanos = number(at + 1..at + 1 + kept)? * 10_i64.pow(9 - kept as u32);
        at += 1 + digits;
    }

    let offset_seconds = match &b[at..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hours = number(at + 1..at + 3)?;
            let minutes = number(at + 4..at + 6)?;
            if hours > 23 || minutes > 59 {
                return Err(invalid());
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return Err(invalid()),
    };

    let small = |n: i64| i8::try_from(n).map_err(|_| invalid());
    let datetime = DateTime::new(
        i16::try_from(year).map_err(|_| invalid())?,
        small(month)?,
        small(day)?,
        small(hour)?,
        small(minute)?,
        small(second)?,
        i32::try_from(nanos).map_err(|_| invalid())?,
    )
    .map_err(|_| invalid())?;
    let offset = Offset::from_seconds(i32::try_from(offset_seconds).map_err(|_| invalid())?)
        .map_err(|_| invalid())?;
    offset.to_timestamp(datetime).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn fractions_lose_trailing_zeros_and_the_dot() {
        let cases = [
            ("2025-01-02T03:04:05Z", "2025-01-02 03:04:05 +0000 UTC"),
            ("2025-01-02T03:04:05.1Z", "2025-01-02 03:04:05.1 +0000 UTC"),
            (
                "2025-01-02T03:04:05.000000001Z",
                "2025-01-02 03:04:05.000000001 +0000 UTC",
            ),
            (
                "2025-01-02T03:04:05.120Z",
                "2025-01-02 03:04:05.12 +0000 UTC",
            ),
            (
                "1999-12-31T23:59:59.999999999Z",
                "1999-12-31 23:59:59.999999999 +0000 UTC",
            ),
            // A time in another offset is printed in UTC.
            ("2025-01-02T03:04:05+09:00", "2025-01-01 18:04:05 +0000 UTC"),
        ];
        for (input, expected) in cases {
            assert_eq!(format_go_utc(ts(input)), expected, "{input}");
        }
        assert_eq!(
            format_rfc3339_nano(ts("2025-01-02T03:04:05.120Z")),
            "2025-01-02T03:04:05.12Z"
        );
        assert_eq!(
            format_rfc3339_nano(ts("2025-01-02T03:04:05Z")),
            "2025-01-02T03:04:05Z"
        );
    }

    #[test]
    fn rfc3339_nano_round_trips() {
        for input in [
            "2025-01-02T03:04:05Z",
            "2025-01-02T03:04:05.123456789Z",
            "2024-02-29T00:00:00.5Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(
                format_rfc3339_nano(parse_rfc3339_nano(input).expect(input)),
                input
            );
        }
    }

    #[test]
    fn rfc3339_nano_parsing() {
        let ok = [
            ("2025-01-02T03:04:05+01:30", "2025-01-02T01:34:05Z"),
            ("2025-01-02T03:04:05-00:30", "2025-01-02T03:34:05Z"),
            (
                "2025-01-02T03:04:05.1234567891234Z",
                "2025-01-02T03:04:05.123456789Z",
            ),
            ("2025-01-02T03:04:05.1+00:00", "2025-01-02T03:04:05.1Z"),
        ];
        for (input, expected) in ok {
            assert_eq!(parse_rfc3339_nano(input), Ok(ts(expected)), "{input}");
        }
        for bad in [
            "",
            "2025-01-02",
            "2025-01-02 03:04:05Z",
            "2025-01-02t03:04:05Z",
            "2025-01-02T03:04:05",
            "2025-01-02T03:04:05z",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+0100",
            "2025-01-02T03:04:05+24:00",
            "2025-02-30T03:04:05Z",
            "2025-01-02T24:00:00Z",
            "2025-01-02T03:04:60Z",
            "2025-01-02T03:04:05Z ",
            "+025-01-02T03:04:05Z",
            "2025-01-02 03:04:05.123 +0000 UTC",
        ] {
            assert!(parse_rfc3339_nano(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
