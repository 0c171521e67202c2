//! Part 1 of the report, the native module (`edge-native/`) against Envoy's
//! native per-source `local_ratelimit`: throughput and p99 side by side, and
//! the module's target.

use std::fmt::Write as _;

use super::target::Target;
use crate::figures::{num, ratio_cell};
use crate::stats::{distinct_values, find, paired_ratio, Group};

/// The module's target at 4 KB: at least this fraction of native
/// `local_ratelimit`'s req/s ...
const MIN_RPS_RATIO: f64 = 0.9;
/// ... and a p99 at most this multiple of its p99.
const MAX_P99_RATIO: f64 = 1.1;

/// The table of the module against native `local_ratelimit` (every payload
/// and worker count) and the module's target, 1 and 2 workers; empty when the
/// run has no module.
pub fn comparison(edge: &[Group], targets: &mut Vec<Target>) -> String {
    let mut md = String::new();
    if find(edge, &[("config", "module")]).is_none() {
        return md;
    }
    let _ = writeln!(
        md,
        "\n\n**The native module against native local_ratelimit** (ratios run by run; p99 and Envoy CPU \
         per request side by side; the wasm filter's req/s ratio for comparison):\n"
    );
    let _ = writeln!(
        md,
        "| workers | payload | module req/s vs native | module p99 vs native | p99 ms module / native | \
         Envoy CPU µs/req module / native | wasm filter req/s vs native |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for w in distinct_values(edge, "workers") {
        for p in distinct_values(edge, "payload") {
            let at = |c| find(edge, &[("workers", &w), ("payload", &p), ("config", c)]);
            let (Some(m), Some(n)) = (at("module"), at("native")) else {
                continue;
            };
            let both = |metric: &str| {
                format!(
                    "{} / {}",
                    m.median(metric).map_or("n/a".into(), num),
                    n.median(metric).map_or("n/a".into(), num)
                )
            };
            let _ = writeln!(
                md,
                "| {w} | {p} | {} | {} | {} | {} | {} |",
                ratio_cell(paired_ratio(m, n, "rps")),
                ratio_cell(paired_ratio(m, n, "p99_ms")),
                both("p99_ms"),
                both("cpu_us_per_req.envoy"),
                ratio_cell(at("filter").and_then(|f| paired_ratio(f, n, "rps"))),
            );
        }
    }
    for w in distinct_values(edge, "workers") {
        let at = |c| find(edge, &[("workers", &w), ("payload", "4k"), ("config", c)]);
        if let (Some(m), Some(n)) = (at("module"), at("native")) {
            targets.push(target(&w, m, n));
        }
    }
    md
}

/// The module's target at 4 KB with `w` workers: module `m`, native `n`.
fn target(w: &str, m: &Group, n: &Group) -> Target {
    let rps = paired_ratio(m, n, "rps");
    let p99 = paired_ratio(m, n, "p99_ms");
    let median = |g: &Group, metric| g.median(metric).unwrap_or(f64::NAN);
    Target {
        name: format!("edge: native module vs native local_ratelimit, 4 KB, {w} worker(s)"),
        goal: format!(
            "throughput >= {MIN_RPS_RATIO}x while also validating; p99 within 10% (<= {MAX_P99_RATIO}x)"
        ),
        measured: format!(
            "{} ({} vs {} req/s); p99 {} ({} vs {} ms)",
            ratio_cell(rps),
            num(median(m, "rps")),
            num(median(n, "rps")),
            ratio_cell(p99),
            num(median(m, "p99_ms")),
            num(median(n, "p99_ms")),
        ),
        met: rps
            .zip(p99)
            .map(|(r, l)| r.median >= MIN_RPS_RATIO && l.median <= MAX_P99_RATIO),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::record::Record;
    use crate::stats::groups;

    /// Edge records of one run: (config, rps, p99 ms) at 4 KB, `workers`.
    fn edge(workers: &str, configs: &[(&str, f64, f64)]) -> Vec<Group> {
        let records: Vec<Record> = configs
            .iter()
            .map(|(c, rps, p99)| Record {
                labels: [
                    ("part", "edge"),
                    ("config", c),
                    ("payload", "4k"),
                    ("workers", workers),
                    ("run", "1"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                metrics: [("rps".to_string(), *rps), ("p99_ms".to_string(), *p99)].into(),
                info: BTreeMap::new(),
            })
            .collect();
        groups(&records, "edge")
    }

    fn verdict(configs: &[(&str, f64, f64)]) -> (Option<bool>, String) {
        let mut targets = Vec::new();
        let md = comparison(&edge("1", configs), &mut targets);
        assert_eq!(targets.len(), 1, "{targets:?}");
        (targets[0].met, md)
    }

    #[test]
    fn met_only_with_the_throughput_and_the_p99() {
        let (met, md) = verdict(&[("native", 1000.0, 2.0), ("module", 950.0, 2.1)]);
        assert_eq!(met, Some(true));
        assert!(
            md.contains("| 1 | 4k | 0.95x | 1.05x | 2.10 / 2.00 |"),
            "{md}"
        );
        let (met, _) = verdict(&[("native", 1000.0, 2.0), ("module", 890.0, 2.0)]);
        assert_eq!(met, Some(false), "req/s below 0.9x");
        let (met, _) = verdict(&[("native", 1000.0, 2.0), ("module", 1000.0, 2.3)]);
        assert_eq!(met, Some(false), "p99 more than 10% over");
    }

    #[test]
    fn nothing_without_the_module() {
        let mut targets = Vec::new();
        let md = comparison(&edge("1", &[("native", 1000.0, 2.0)]), &mut targets);
        assert!(md.is_empty() && targets.is_empty());
    }
}
