//! Real Prometheus for the alerting-rule tests: `promtool` to check and
//! unit-test `deploy/monitoring/`, and a private `prometheus` server (free
//! loopback port, its own temporary data directory, scraping every second)
//! whose alerts API shows which shipped alerts fire.
//!
//! Both come from the Debian package `prometheus`, which `make deps`
//! (`scripts/install-deps.sh`) installs; `PROMTOOL_BIN` and `PROMETHEUS_BIN`
//! override the lookup on `PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client;
use crate::process::{free_port, temp_dir, wait_for, Proc};
use crate::workspace;

/// How long Prometheus may take to answer `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `promtool` binary.
pub fn promtool_bin() -> PathBuf {
    workspace::installed_binary("PROMTOOL_BIN", "promtool", "prometheus")
}

/// The `prometheus` server binary.
pub fn prometheus_bin() -> PathBuf {
    workspace::installed_binary("PROMETHEUS_BIN", "prometheus", "prometheus")
}

/// Runs `promtool args...` in `dir`; its output, whatever the exit status.
pub fn promtool(dir: &Path, args: &[&str]) -> Output {
    let bin = promtool_bin();
    Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

/// One thing to scrape, with the labels a PodMonitor would attach.
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub addr: SocketAddr,
    pub metrics_path: String,
    pub labels: Vec<(String, String)>,
}

impl Target {
    pub fn new(job: &str, addr: SocketAddr, metrics_path: &str) -> Target {
        Target {
            job: job.to_string(),
            addr,
            metrics_path: metrics_path.to_string(),
            labels: Vec::new(),
        }
    }

    pub fn label(mut self, name: &str, value: &str) -> Target {
        self.labels.push((name.to_string(), value.to_string()));
        self
    }
}

/// The configuration: scrape and evaluate every second, `rule_files`, one
/// job per target. JSON is YAML, so it is written as JSON.
pub fn config(targets: &[Target], rule_files: &[PathBuf]) -> Value {
    let scrapes: Vec<Value> = targets
        .iter()
        .map(|t| {
            let labels: serde_json::Map<String, Value> = t
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({
                "job_name": t.job,
                "metrics_path": t.metrics_path,
                "static_configs": [{"targets": [t.addr.to_string()], "labels": labels}],
            })
        })
        .collect();
    json!({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "scrape_configs": scrapes,
    })
}

/// A running Prometheus (killed when dropped).
pub struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` and evaluating `rule_files`, and
    /// waits until it is ready (panics with its log otherwise).
    pub fn start(targets: &[Target], rule_files: &[PathBuf]) -> Prometheus {
        let dir = temp_dir("prometheus");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let config_path = dir.path().join("prometheus.yml");
        let text = serde_json::to_string_pretty(&config(targets, rule_files)).expect("json");
        std::fs::write(&config_path, text).expect("write prometheus.yml");
        let mut cmd = Command::new(prometheus_bin());
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info");
        let mut proc = Proc::spawn("prometheus", cmd, dir.path());
        let url = format!("http://{addr}/-/ready");
        let started = std::time::Instant::now();
        loop {
            if client::get(&url).is_ok_and(|a| a.status == 200) {
                break;
            }
            if let Some(status) = proc.try_wait() {
                panic!("prometheus exited ({status}); log:\n{}", proc.log_tail(40));
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "prometheus not ready in {READY_TIMEOUT:?}; log:\n{}",
                proc.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Prometheus { proc, addr, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its private directory (configuration, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc.log_tail(n)
    }

    /// `GET /api/v1/<path>`: the `data` of a `success` answer (panics otherwise).
    pub fn api(&self, path: &str) -> Value {
        let url = self.url(&format!("/api/v1/{path}"));
        let answer = client::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = answer.json();
        assert_eq!(
            body["status"], "success",
            "GET {url} answered {}: {}",
            answer.status, answer.body
        );
        body["data"].clone()
    }

    /// The active alerts (pending and firing) of every loaded rule.
    pub fn alerts(&self) -> Vec<Value> {
        self.api("alerts")["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The states (`pending`, `firing`) of the active alerts named `name`.
    pub fn alert_states(&self, name: &str) -> Vec<String> {
        self.alerts()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter_map(|a| a["state"].as_str().map(str::to_string))
            .collect()
    }

    /// An instant query: the `result` vector.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.api(&format!("query?query={encoded}"))["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until every scrape target has been scraped successfully.
    pub fn wait_targets_up(&self, timeout: Duration) {
        wait_for("every scrape target up", timeout, || {
            let targets = self.api("targets")["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (!targets.is_empty() && targets.iter().all(|t| t["health"] == "up")).then_some(())
        });
    }
}
