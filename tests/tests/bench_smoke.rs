//! `make bench` cannot rot: the smoke mode (`BENCH_QUICK=1 scripts/bench.sh`)
//! runs every part of the benchmark once, briefly, and must leave a report,
//! its JSON and the chart, with every section present and its figures
//! positive. No performance threshold: this runs on busy CI machines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use signalgate_tests::workspace;

/// Builds included: a release build of the sidecar and the bench tool from
/// scratch takes minutes on two cores.
const DEADLINE: Duration = Duration::from_secs(45 * 60);

fn run_smoke(out: &Path, log: &Path) {
    let log_file = std::fs::File::create(log).expect("create the log file");
    let err = log_file.try_clone().expect("clone the log handle");
    let mut child = Command::new("bash")
        .arg(workspace::root().join("scripts/bench.sh"))
        .current_dir(workspace::root())
        .env("BENCH_QUICK", "1")
        .env("BENCH_OUT", out)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err)
        .spawn()
        .expect("start scripts/bench.sh");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for scripts/bench.sh") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            // SIGTERM: the script's trap stops everything it started.
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = child.wait();
            panic!(
                "scripts/bench.sh (BENCH_QUICK=1) still running after {DEADLINE:?}; log:\n{}",
                tail(log, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "BENCH_QUICK=1 scripts/bench.sh failed ({status}); log:\n{}",
        tail(log, 80)
    );
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The median of `metric` in a section entry, asserting it is a positive number.
fn positive(section: &str, entry: &Value, metric: &str) -> f64 {
    match entry["metrics"][metric]["median"].as_f64() {
        Some(x) if x > 0.0 && x.is_finite() => x,
        v => panic!(
            "{section} {}: {metric} is {v:?}, expected a positive number; entry: {entry}",
            entry["labels"]
        ),
    }
}

fn section<'a>(report: &'a Value, name: &str) -> &'a Vec<Value> {
    let s = report[name]
        .as_array()
        .unwrap_or_else(|| panic!("report.json has no section {name:?}"));
    assert!(!s.is_empty(), "report.json section {name:?} is empty");
    s
}

#[test]
fn quick_benchmark_writes_a_complete_report() {
    let out: PathBuf = workspace::target_dir().join("bench-smoke");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create the output directory");
    let log = out.join("bench.log");
    run_smoke(&out, &log);

    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md written");
    for heading in [
        "## Targets",
        "## 1. Edge",
        "## 2. Sidecar",
        "## 3. Peer",
        "## 4. Full chain",
        "chart.png",
    ] {
        assert!(md.contains(heading), "report.md lacks {heading:?}:\n{md}");
    }
    let png = std::fs::read(out.join("chart.png")).expect("chart.png written");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "chart.png is not a PNG chart ({} bytes)",
        png.len()
    );
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");

    let edge = section(&report, "edge");
    assert_eq!(
        edge.len(),
        30,
        "5 configurations x 3 payloads x 2 worker counts"
    );
    for (config, what) in [("floor", "the wasm floor"), ("module", "the native module")] {
        let n = edge
            .iter()
            .filter(|e| e["labels"]["config"] == config)
            .count();
        assert_eq!(n, 6, "{what} at every payload and worker count");
    }
    for e in edge {
        for m in [
            "rps",
            "p50_ms",
            "p99_ms",
            "cpu_us_per_req.envoy",
            "body_bytes",
        ] {
            positive("edge", e, m);
        }
        assert_eq!(e["metrics"]["unexpected"]["median"].as_f64(), Some(0.0));
    }
    let memory = section(&report, "edge_memory");
    assert!(memory.len() >= 3, "RSS before and at two checkpoints");
    for e in memory {
        positive("edge_memory", e, "rss_kib");
    }
    let sidecar = section(&report, "sidecar");
    for path in ["duplicate", "created", "storm"] {
        let e = sidecar
            .iter()
            .find(|e| e["labels"]["path"] == path && e["labels"]["sink"] == "dir")
            .unwrap_or_else(|| panic!("no sidecar {path} run with the directory sink"));
        for m in [
            "alerts_per_s",
            "p50_ms",
            "p99_ms",
            "cpu_us_per_req.sidecar",
            "redis_calls_per_req",
            "round_trips_per_req",
        ] {
            positive("sidecar", e, m);
        }
    }
    for e in section(&report, "redis_benchmark") {
        positive("redis_benchmark", e, "rps");
    }
    let peer = section(&report, "peer");
    assert_eq!(peer.len(), 2, "Alertmanager with repeated and new alerts");
    for e in peer {
        positive("peer", e, "alerts_per_s");
    }
    let chain = section(&report, "chain");
    assert_eq!(chain.len(), 2, "full chain, duplicate and created paths");
    for e in chain {
        for m in [
            "alerts_per_s",
            "p99_ms",
            "cpu_us_per_req.envoy",
            "cpu_us_per_req.sidecar",
            "cpu_us_per_req.redis",
        ] {
            positive("chain", e, m);
        }
    }
    let targets = section(&report, "targets");
    // Reference rows (the wasm floor) carry no verdict; every target does.
    let (references, goals): (Vec<&Value>, Vec<&Value>) = targets.iter().partition(|t| {
        t["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("reference:"))
    });
    assert_eq!(references.len(), 2, "the wasm floor, 1 and 2 workers");
    assert!(goals.len() >= 8, "every target stated: {goals:?}");
    for w in ["1", "2"] {
        let name = format!("edge: native module vs native local_ratelimit, 4 KB, {w} worker(s)");
        assert!(
            goals.iter().any(|t| t["name"] == name.as_str()),
            "no target {name:?}: {goals:?}"
        );
    }
    assert!(
        md.contains("**The native module against native local_ratelimit**"),
        "report.md lacks the module's comparison:\n{md}"
    );
    for t in references {
        assert!(t["met"].is_null(), "a reference with a verdict: {t}");
    }
    for t in goals {
        assert!(t["met"].is_boolean(), "target without a verdict: {t}");
    }
    assert!(report["ratios"]["stages"].is_array(), "where the time goes");
}
