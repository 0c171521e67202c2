//! RFC 3339 timestamps (`2026-11-26T20:57:15.123Z`, `...+01:00`).

/// Seconds since the Unix epoch (UTC) and the fractional nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub unix_seconds: i64,
    pub nanos: u32,
}

/// Milliseconds since the Unix epoch of an RFC 3339 date-time (`None`
/// when it is not one).
pub fn unix_millis(s: &str) -> Option<i64> {
    let t = parse(s)?;
    Some(t.unix_seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// Parses an RFC 3339 date-time; `None` when it is not one (including
/// impossible dates such as February 30th).
pub fn parse(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)? as i64;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // 60 allows a leap second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..9 {
            nanos *= 10;
        }
    }
    let offset_seconds: i64 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = digits(b, i + 1, 2)?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let unix_seconds =
        days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
            - offset_seconds;
    Some(Timestamp {
        unix_seconds,
        nanos,
    })
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_unix_seconds(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Formats Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_unix_millis(unix_millis: i64) -> String {
    let secs = format_unix_seconds(unix_millis.div_euclid(1000));
    format!(
        "{}.{:03}Z",
        &secs[..secs.len() - 1],
        unix_millis.rem_euclid(1000)
    )
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for &c in b.get(at..at + n)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-date algorithms (days since 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets_to_the_same_instant() {
        let a = parse("2026-11-26T20:57:15Z").map(|t| t.unix_seconds);
        let b = parse("2026-11-26T21:57:15+01:00").map(|t| t.unix_seconds);
        assert_eq!(a, Some(1_795_726_635));
        assert_eq!(a, b);
    }

    #[test]
    fn parses_fractions_and_alertmanager_zero_time() {
        let t = parse("2026-11-26T20:57:15.123456789Z");
        assert_eq!(t.map(|t| t.nanos), Some(123_456_789));
        assert_eq!(
            parse("2026-11-26T20:57:15.5Z").map(|t| t.nanos),
            Some(500_000_000)
        );
        assert!(parse("0001-01-01T00:00:00Z").is_some());
    }

    #[test]
    fn rejects_non_timestamps() {
        for bad in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-11-26T20:57:15",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T20:57:15.Z",
            "2026-11-26T20:57:15+0100",
            "2026-11-26T20:57:15Zjunk",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn leap_years() {
        assert!(parse("2024-02-29T00:00:00Z").is_some());
        assert!(parse("2000-02-29T00:00:00Z").is_some());
        assert!(parse("1900-02-29T00:00:00Z").is_none());
    }

    #[test]
    fn formats_round_trip() {
        assert_eq!(format_unix_seconds(1_795_726_635), "2026-11-26T20:57:15Z");
        assert_eq!(format_unix_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_unix_millis(1_795_726_635_007),
            "2026-11-26T20:57:15.007Z"
        );
        let s = format_unix_seconds(-62_135_596_800);
        assert_eq!(s, "0001-01-01T00:00:00Z");
        assert_eq!(parse(&s).map(|t| t.unix_seconds), Some(-62_135_596_800));
    }
}
