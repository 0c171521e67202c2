//! Counters read before and after a measurement window: Redis `INFO`
//! (commandstats and stats) over a bare RESP connection, and the sidecar's
//! Prometheus `/metrics` (store round trips by operation).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Per-command counters from `INFO commandstats`, plus `total_reads_processed`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisStats {
    /// command → (calls, usec)
    pub commands: BTreeMap<String, (u64, u64)>,
    pub reads_processed: u64,
}

impl RedisStats {
    pub fn fetch(addr: &str) -> Result<RedisStats, String> {
        let text = redis_command(addr, &["INFO", "stats", "commandstats"])?;
        Ok(RedisStats::parse(&text))
    }

    pub fn parse(text: &str) -> RedisStats {
        let mut s = RedisStats::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("total_reads_processed:") {
                s.reads_processed = v.parse().unwrap_or(0);
            }
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let mut calls = 0;
            let mut usec = 0;
            for field in fields.split(',') {
                match field.split_once('=') {
                    Some(("calls", v)) => calls = v.parse().unwrap_or(0),
                    Some(("usec", v)) => usec = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            s.commands.insert(name.to_string(), (calls, usec));
        }
        s
    }

    /// What happened between `self` (before) and `after`: command →
    /// (calls, usec), leaving out the probe's own `INFO`.
    pub fn delta(&self, after: &RedisStats) -> BTreeMap<String, (u64, u64)> {
        after
            .commands
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .filter_map(|(name, &(calls, usec))| {
                let (c0, u0) = self.commands.get(name).copied().unwrap_or((0, 0));
                let calls = calls.saturating_sub(c0);
                (calls > 0).then(|| (name.clone(), (calls, usec.saturating_sub(u0))))
            })
            .collect()
    }
}

/// Sends one command (RESP array of bulk strings) and returns its bulk or
/// simple-string answer.
pub fn redis_command(addr: &str, args: &[&str]) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("redis {addr}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    reader
        .read_line(&mut head)
        .map_err(|e| format!("redis {addr}: {e}"))?;
    let head = head.trim_end();
    match head.as_bytes().first() {
        Some(b'$') => {
            let len: usize = head[1..]
                .parse()
                .map_err(|_| format!("redis {addr}: bad reply {head:?}"))?;
            let mut buf = vec![0u8; len + 2];
            reader
                .read_exact(&mut buf)
                .map_err(|e| format!("redis {addr}: {e}"))?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Some(b'+') | Some(b':') => Ok(head[1..].to_string()),
        _ => Err(format!("redis {addr}: error reply {head:?}")),
    }
}

/// `signalgate_store_duration_seconds_count` by `op` from a sidecar's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarStats {
    pub round_trips: BTreeMap<String, u64>,
}

impl SidecarStats {
    pub fn fetch(url: &str) -> Result<SidecarStats, String> {
        Ok(SidecarStats::parse(&http_get(url)?))
    }

    pub fn parse(text: &str) -> SidecarStats {
        let mut s = SidecarStats::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("signalgate_store_duration_seconds_count{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let op = labels
                .split(',')
                .find_map(|l| l.strip_prefix("op=\""))
                .map(|v| v.trim_end_matches('"'))
                .unwrap_or("?");
            let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            *s.round_trips.entry(op.to_string()).or_default() += n;
        }
        s
    }

    pub fn delta(&self, after: &SidecarStats) -> BTreeMap<String, u64> {
        after
            .round_trips
            .iter()
            .map(|(op, &n)| {
                let before = self.round_trips.get(op).copied().unwrap_or(0);
                (op.clone(), n.saturating_sub(before))
            })
            .collect()
    }
}

/// A plain HTTP/1.0 GET of `http://host:port/path`, returning the body.
pub fn http_get(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).map_err(|e| format!("{url}: {e}"))?;
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("{url}: {e}"))?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "{url}: unexpected answer {:?}",
            text.lines().next().unwrap_or("")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_deltas() {
        let before = RedisStats::parse(
            "# Stats\r\ntotal_reads_processed:10\r\n# Commandstats\r\n\
             cmdstat_evalsha:calls=100,usec=500,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=1,usec=10,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n",
        );
        let after = RedisStats::parse(
            "total_reads_processed:60\r\n\
             cmdstat_evalsha:calls=300,usec=1500,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_script|load:calls=2,usec=40,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
             cmdstat_info:calls=2,usec=20,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n",
        );
        assert_eq!(after.reads_processed, 60);
        let d = before.delta(&after);
        assert_eq!(d.get("evalsha"), Some(&(200, 1000)));
        assert_eq!(d.get("script|load"), Some(&(2, 40)));
        assert!(!d.contains_key("info"));
    }

    #[test]
    fn store_round_trips_from_metrics() {
        let before = SidecarStats::parse(
            "# TYPE signalgate_store_duration_seconds histogram\n\
             signalgate_store_duration_seconds_bucket{op=\"decide\",le=\"0.001\"} 3\n\
             signalgate_store_duration_seconds_count{op=\"decide\"} 5\n",
        );
        let after = SidecarStats::parse(
            "signalgate_store_duration_seconds_count{op=\"decide\"} 15\n\
             signalgate_store_duration_seconds_count{op=\"commit\"} 4\n",
        );
        let d = before.delta(&after);
        assert_eq!(d.get("decide"), Some(&10));
        assert_eq!(d.get("commit"), Some(&4));
    }
}
