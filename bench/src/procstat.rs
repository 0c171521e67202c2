//! What `/proc` says about a process: CPU time used so far and resident memory.

use std::time::Duration;

/// User + system CPU time of `pid` so far, all its threads (living and
/// exited) included: fields 14 and 15 of `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text, clock_ticks_per_second())
}

/// CPU time of this process.
pub fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime from the text of `/proc/<pid>/stat`. The command name (field
/// 2) is in parentheses and may hold spaces: count fields after the last `)`.
pub fn parse_stat_cpu(text: &str, ticks_per_second: u64) -> Option<Duration> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_micros(
        ticks * 1_000_000 / ticks_per_second.max(1),
    ))
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_rss(&text)
}

pub fn parse_status_rss(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let text = "1234 (envoy worker 0) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 \
                    3 0 100 1000 10 18446744073709551615";
        assert_eq!(parse_stat_cpu(text, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn rss_from_status() {
        let text = "Name:\tenvoy\nVmPeak:\t  9999 kB\nVmRSS:\t   45678 kB\nThreads:\t12\n";
        assert_eq!(parse_status_rss(text), Some(45678));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(own_cpu_time().is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
