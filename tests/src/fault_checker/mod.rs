//! A randomized checker (issue 19): Envoy with the wasm filter in front of
//! three sidecars, a Redis Cluster behind fault proxies and a real
//! kube-apiserver ([`system`]); a seeded workload of incidents that fire,
//! repeat, resolve, fire again and storm, sent as Alertmanager sends them
//! and retried by its rules ([`plan`], [`sender`]); faults from a menu
//! injected at random, one at a time; then, once the system is quiet, the
//! invariants ([`invariants`]) checked against the API server, with the
//! history of everything that breaks one ([`history`]).
//!
//! Settings, from the environment (the tests give defaults):
//!
//! - `CHECKER_SEED`: the seed (decimal, or hex with `0x`); random if unset.
//!   It fixes the whole plan: incidents, deliveries and their timing, the
//!   faults and their timing. The processes' own timing still differs
//!   between replays, so a replay reproduces the run, not every race.
//! - `CHECKER_SECONDS`: how long the workload runs.
//! - `CHECKER_FAULTS`: the fault menu, comma-separated names of
//!   [`plan::FaultKind`] (`kill,term,stop,redis-drop,redis-slow,
//!   redis-delay,redis-blackhole,redis-flush,api-down,api-slow,
//!   api-blackhole`), `all` or `none`.
//!
//! Every report starts with the seed and the exact command that replays it,
//! and is written to `target/randomized-checker/seed-<seed>-<faults>.txt` (with
//! the processes' logs next to it, in `…-logs/`, when an invariant broke).

pub mod history;
pub mod invariants;
pub mod plan;
pub mod quiet;
pub mod sender;
pub mod system;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use history::History;
use invariants::{Inv, Violation};
use plan::{FaultKind, Plan, NAMESPACES};
use sender::Sender;
use system::System;

/// What one run does.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub seconds: u64,
    pub faults: Vec<FaultKind>,
}

impl Config {
    /// `CHECKER_SEED`, `CHECKER_SECONDS` and `CHECKER_FAULTS` where set,
    /// else the defaults given (no seed: a fresh one).
    pub fn from_env(seed: Option<u64>, seconds: u64, faults: &str) -> Config {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let seed = env("CHECKER_SEED")
            .map(|s| parse_seed(&s).unwrap_or_else(|e| panic!("CHECKER_SEED: {e}")))
            .or(seed)
            .unwrap_or_else(crate::rng::fresh_seed);
        let seconds = env("CHECKER_SECONDS").map_or(seconds, |s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("CHECKER_SECONDS={s:?}: {e}"))
        });
        let menu = env("CHECKER_FAULTS").unwrap_or_else(|| faults.to_string());
        let faults = FaultKind::parse_menu(&menu).unwrap_or_else(|e| panic!("CHECKER_FAULTS: {e}"));
        Config {
            seed,
            seconds,
            faults,
        }
    }

    /// The fault menu in a file name: `all`, `none` or names joined by `+`.
    pub fn menu_tag(&self) -> String {
        if self.faults == FaultKind::ALL {
            return "all".to_string();
        }
        FaultKind::menu_text(&self.faults).replace(',', "+")
    }

    /// The command that runs this configuration again.
    pub fn replay(&self) -> String {
        format!(
            "CHECKER_SEED={} CHECKER_SECONDS={} CHECKER_FAULTS={} cargo test -p \
             signalgate-tests --test fault_checker_long -- --ignored --nocapture",
            self.seed,
            self.seconds,
            FaultKind::menu_text(&self.faults)
        )
    }
}

pub fn parse_seed(s: &str) -> Result<u64, String> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?} is not a seed: {e}"))
}

/// What a run did and found.
pub struct Report {
    pub config: Config,
    pub took: Duration,
    pub faults: BTreeMap<&'static str, usize>,
    pub deliveries: usize,
    pub signals: usize,
    pub attempts: usize,
    pub acked: usize,
    pub acked_signals: usize,
    pub retried: usize,
    pub refused_4xx: usize,
    pub resources: usize,
    pub storms: usize,
    /// Outcomes of the acknowledged answers' signals.
    pub outcomes: BTreeMap<String, usize>,
    pub quiet: Result<(), String>,
    pub violations: Vec<Violation>,
    pub logs: String,
    /// Retried deliveries and faults, for the saved report.
    pub appendix: String,
}

impl Report {
    pub fn by_invariant(&self) -> BTreeMap<Inv, usize> {
        let mut by = BTreeMap::new();
        for v in &self.violations {
            *by.entry(v.inv).or_insert(0) += 1;
        }
        by
    }

    /// A few lines: what ran, what was sent and acknowledged, what broke.
    pub fn summary(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "[checker] seed {} ({} s of workload, faults {}) took {:.0?}\n",
            c.seed,
            c.seconds,
            FaultKind::menu_text(&c.faults),
            self.took
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  faults injected: {}",
            if faults.is_empty() {
                "none".to_string()
            } else {
                faults.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "  deliveries {} ({} signals, {} attempts): acknowledged {} ({} signals), retried {}, \
             refused 4xx {}, not acknowledged {}",
            self.deliveries,
            self.signals,
            self.attempts,
            self.acked,
            self.acked_signals,
            self.retried,
            self.refused_4xx,
            self.deliveries - self.acked
        );
        let _ = writeln!(
            out,
            "  resources {} ({} storms); {}",
            self.resources,
            self.storms,
            match &self.quiet {
                Ok(()) => "quiet".to_string(),
                Err(e) => e.clone(),
            }
        );
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "  acknowledged outcomes: {}", outcomes.join(", "));
        let by = self.by_invariant();
        for inv in Inv::ALL {
            let mut near: BTreeMap<&str, usize> = BTreeMap::new();
            for v in self.violations.iter().filter(|v| v.inv == inv) {
                for kind in v.near_faults() {
                    *near.entry(kind).or_insert(0) += 1;
                }
            }
            let near: Vec<String> = near.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let _ = writeln!(
                out,
                "  {}: {} violations{}",
                inv.label(),
                by.get(&inv).unwrap_or(&0),
                if near.is_empty() {
                    String::new()
                } else {
                    format!(" (faults around them: {})", near.join(", "))
                }
            );
        }
        out
    }

    /// The summary, then every violation with its history (at most
    /// `limit`), the replay command and where the logs are.
    pub fn details(&self, limit: usize) -> String {
        let mut out = self.summary();
        for (n, v) in self.violations.iter().take(limit).enumerate() {
            let _ = write!(
                out,
                "\n#{} {}: {}\n{}",
                n + 1,
                v.inv.label(),
                v.what,
                v.story
            );
        }
        if self.violations.len() > limit {
            let _ = writeln!(
                out,
                "\n... and {} more violations",
                self.violations.len() - limit
            );
        }
        let _ = write!(
            out,
            "\nseed {}; replay: {}\n{}",
            self.config.seed,
            self.config.replay(),
            self.logs
        );
        out
    }

    /// Writes the full report to `target/randomized-checker/seed-<seed>-<faults>.txt`:
    /// the details, then every delivery that was not acknowledged at its
    /// first attempt, and every fault.
    pub fn save(&self) -> std::path::PathBuf {
        let dir = report_dir();
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!(
            "seed-{}-{}.txt",
            self.config.seed,
            self.config.menu_tag()
        ));
        let _ = std::fs::write(&path, self.details(usize::MAX) + &self.appendix);
        path
    }

    /// Panics with the violations (the first 12 in full) unless there are none.
    pub fn assert_clean(&self) {
        if self.violations.is_empty() && self.quiet.is_ok() {
            return;
        }
        let path = self.save();
        panic!(
            "the randomized checker found violations (seed {}); full report: {}\n{}",
            self.config.seed,
            path.display(),
            self.details(12)
        );
    }
}

/// `target/randomized-checker`: reports, and the logs of runs that broke
/// an invariant.
pub fn report_dir() -> std::path::PathBuf {
    crate::workspace::target_dir().join("randomized-checker")
}

/// One run: start the system, send the plan's workload while injecting its
/// faults, wait until the system is quiet, check the invariants.
pub fn run(config: &Config) -> Report {
    let started_run = Instant::now();
    let duration_ms = config.seconds * 1000;
    let plan = Plan::generate(config.seed, duration_ms, &config.faults);
    eprintln!(
        "[checker] seed {}: {} incidents, {} deliveries planned over {} s, {} faults of {}\n\
         [checker] replay: {}",
        config.seed,
        plan.incidents.len(),
        plan.deliveries(),
        config.seconds,
        plan.faults.len(),
        FaultKind::menu_text(&config.faults),
        config.replay()
    );
    let mut sys = System::start();
    eprintln!("[checker] system up in {:.1?}", started_run.elapsed());
    let history = Mutex::new(History::default());
    let started = Instant::now();
    let sender = Sender {
        url: sys.url(),
        seed: config.seed,
        started,
        plan: &plan,
        upstreams: sys.upstreams(),
        history: &history,
    };
    std::thread::scope(|s| {
        for lane in 0..NAMESPACES.len() {
            let sender = &sender;
            std::thread::Builder::new()
                .name(format!("checker-lane-{lane}"))
                .spawn_scoped(s, move || sender.run_lane(lane))
                .expect("spawn a sender lane");
        }
        // Faults from this thread: it started the processes, which die with it.
        let end = started + Duration::from_millis(duration_ms);
        let mut quiet_since = started;
        for (n, f) in plan.faults.iter().enumerate() {
            let due = (started + Duration::from_millis(f.at_ms))
                .max(quiet_since + Duration::from_millis(f.gap_ms));
            let now = Instant::now();
            if due >= end || now >= end {
                break;
            }
            if due > now {
                std::thread::sleep(due - now);
            }
            let record = sys.inject(n + 1, f, started);
            quiet_since = Instant::now();
            eprintln!("[checker] {record}");
            history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .faults
                .push(record);
        }
    });
    eprintln!(
        "[checker] workload done after {:.1?}; waiting for the system to go quiet",
        started.elapsed()
    );
    let (items, quiet) = match sys.quiesce() {
        Ok(items) => (items, Ok(())),
        Err((why, items)) => (items, Err(why)),
    };
    let history = history.into_inner().unwrap_or_else(|e| e.into_inner());
    let violations = invariants::check(&plan, &history, &items);
    let mut logs = sys.layout();
    if !violations.is_empty() || quiet.is_err() {
        let dir = report_dir().join(format!("seed-{}-{}-logs", config.seed, config.menu_tag()));
        sys.save_logs(&dir);
        let _ = writeln!(logs, "  logs: {}", dir.display());
    }
    let report = report(
        config,
        &history,
        &items,
        quiet,
        violations,
        logs,
        started_run,
    );
    let path = report.save();
    eprintln!(
        "{}[checker] full report: {}",
        report.summary(),
        path.display()
    );
    report
}

fn report(
    config: &Config,
    history: &History,
    items: &[serde_json::Value],
    quiet: Result<(), String>,
    violations: Vec<Violation>,
    logs: String,
    started: Instant,
) -> Report {
    let ds = &history.deliveries;
    let mut faults = BTreeMap::new();
    for f in &history.faults {
        *faults.entry(f.kind.name()).or_insert(0) += 1;
    }
    let acked: Vec<_> = ds.iter().filter(|d| d.ack().is_some()).collect();
    let mut outcomes = BTreeMap::new();
    for d in &acked {
        for k in 0..d.alerts.len() {
            if let Some(s) = d.acked_signal(k) {
                *outcomes.entry(s.outcome.clone()).or_insert(0) += 1;
            }
        }
    }
    let mut appendix =
        String::from("\ndeliveries not acknowledged at their first attempt, or slow (over 1 s):\n");
    let mut retried: Vec<_> = ds
        .iter()
        .filter(|d| d.attempts.len() > 1 || d.ack().is_none_or(|a| a.took_ms > 1000))
        .collect();
    retried.sort_by_key(|d| d.started_ms());
    for d in retried {
        appendix.push_str(&history::delivery_lines(d, None));
    }
    appendix.push_str("\nfaults:\n");
    for f in &history.faults {
        let _ = writeln!(appendix, "  {f}");
    }
    Report {
        appendix,
        config: config.clone(),
        took: started.elapsed(),
        faults,
        deliveries: ds.len(),
        signals: ds.iter().map(|d| d.alerts.len()).sum(),
        attempts: ds.iter().map(|d| d.attempts.len()).sum(),
        acked: acked.len(),
        acked_signals: acked.iter().map(|d| d.alerts.len()).sum(),
        retried: ds.iter().filter(|d| d.attempts.len() > 1).count(),
        refused_4xx: ds
            .iter()
            .filter(|d| {
                d.attempts
                    .last()
                    .and_then(|a| a.status())
                    .is_some_and(|s| (400..500).contains(&s))
            })
            .count(),
        resources: items.len(),
        storms: items
            .iter()
            .filter(|r| r["metadata"]["labels"]["signalgate.io/storm"] == "true")
            .count(),
        outcomes,
        quiet,
        violations,
        logs,
    }
}
