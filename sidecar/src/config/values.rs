//! How knob values are read. Each reader says what is wrong with a bad
//! value; the knob puts its variable's name in front.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use signalgate_model::namespace::is_namespace_name;

use super::{LogFormat, LookupReads, SinkConfig};

/// Longest duration a knob takes: far beyond any sensible setting, and small
/// enough that adding it to a clock reading can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `300ms`, `4s`, `5m`, `1h` (positive, at most [`MAX_DURATION`]).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero() && d <= MAX_DURATION).then_some(d)
}

pub(super) fn duration(v: &str) -> Result<Duration, String> {
    parse_duration(v).ok_or_else(|| {
        format!("{v:?} is not a positive duration of at most a year (examples: 300ms, 4s, 5m, 1h)")
    })
}

/// A duration, or zero (`0`, `0s`, `0ms`): off.
pub(super) fn duration_or_zero(v: &str) -> Result<Duration, String> {
    match v.trim() {
        "0" | "0s" | "0ms" => Ok(Duration::ZERO),
        v => duration(v),
    }
}

pub(super) fn number<T: std::str::FromStr + PartialOrd + Default>(v: &str) -> Result<T, String> {
    match v.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(format!("{v:?} is not a positive whole number")),
    }
}

/// A comma-separated list of `status.phase` values (at least one).
pub(super) fn phases(v: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    if list.is_empty() {
        return Err(format!("{v:?} names no phase (example: Completed,Failed)"));
    }
    Ok(list)
}

pub(super) fn addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{v:?} is not an address like 127.0.0.1:8081"))
}

/// Empty: none (the in-memory store).
pub(super) fn redis_url(v: &str) -> Result<Option<String>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let schemes = [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ];
    if !schemes.iter().any(|p| v.starts_with(p)) {
        return Err(format!(
            "{v:?} must start with redis://, rediss:// or redis+cluster://"
        ));
    }
    Ok(Some(v.to_string()))
}

pub(super) fn sink(v: &str) -> Result<SinkConfig, String> {
    if v == "kube" {
        return Ok(SinkConfig::Kube);
    }
    match v.strip_prefix("dir:") {
        Some(path) if !path.is_empty() => Ok(SinkConfig::Dir(PathBuf::from(path))),
        _ => Err(format!("{v:?} is not dir:<path> or kube")),
    }
}

pub(super) fn lookup_reads(v: &str) -> Result<LookupReads, String> {
    match v.trim() {
        "auto" => Ok(LookupReads::Auto),
        "consistent" => Ok(LookupReads::Consistent),
        "cache" => Ok(LookupReads::Cache),
        other => Err(format!("{other:?} is not auto, consistent or cache")),
    }
}

pub(super) fn namespace(v: &str) -> Result<String, String> {
    if !is_namespace_name(v) {
        return Err(format!("{v:?} is not a valid namespace name"));
    }
    Ok(v.to_string())
}

pub(super) fn log_format(v: &str) -> Result<LogFormat, String> {
    match v {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not text or json")),
    }
}

/// A count, or `auto` (`None`): one per CPU the process may use.
pub(super) fn worker_threads(v: &str) -> Result<Option<usize>, String> {
    match v.trim() {
        n if n.eq_ignore_ascii_case("auto") => Ok(None),
        n => number(n).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_ms_s_m_h() {
        assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_duration("4s"), Some(Duration::from_secs(4)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("8784h"), Some(MAX_DURATION));
        // Longer ones would overflow a deadline computed from them.
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-1s",
            "0s",
            "1.5s",
            "8785h",
            "2500000000000000h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
