//! A private, real Alertmanager (Debian's `prometheus-alertmanager`, 0.25)
//! for end-to-end tests: its own configuration file and `--storage.path`,
//! the web API on a free loopback port, gossip disabled, and one webhook
//! receiver pointing at the URL a test gives (optionally with a bearer
//! token), with short `group_wait`/`group_interval`/`repeat_interval` so a
//! test sees several notification rounds in a few seconds.
//!
//! ```no_run
//! use signalgate_tests::alertmanager::{firing, Alertmanager, Receiver};
//! let am = Alertmanager::start(&Receiver::new("http://127.0.0.1:8080/api/v1/signals/prometheus"));
//! am.push(&[firing("KubePodCrashLooping", "shop", "cart-1")]);
//! let n = am.notifications();
//! assert_eq!(n.failed, 0.0);
//! ```
//!
//! Alertmanager's retry rules (0.25): a webhook answered 2xx is delivered;
//! 5xx and transport errors are retried with exponential backoff (0.5 s
//! x1.5, jittered) until the flush's deadline (the group interval, at least
//! 10 s); every 4xx, 429 included, fails the notification at once. A group
//! whose notification failed is sent again at its next `group_interval`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::client;
use crate::process::{free_port, temp_dir, Proc};

/// How long Alertmanager may take to answer `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Alertmanager binary (`ALERTMANAGER_BIN`, else `prometheus-alertmanager`
/// on `PATH`, as Debian installs it; `scripts/install-deps.sh` does).
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ALERTMANAGER_BIN") {
        return PathBuf::from(bin);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("prometheus-alertmanager"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "prometheus-alertmanager not found on PATH (ALERTMANAGER_BIN unset): \
             install it with scripts/install-deps.sh (Debian package prometheus-alertmanager)"
        )
    })
}

/// The one receiver (a webhook) and the route in front of it.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// Where the webhook goes, e.g. `http://127.0.0.1:PORT/api/v1/signals/prometheus`.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` (`http_config.authorization`).
    pub bearer_token: Option<String>,
    /// Labels that make one group (one notification = one webhook request
    /// per group). `["..."]` makes every alert its own group.
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    /// `send_resolved` of the webhook.
    pub send_resolved: bool,
    /// `max_alerts` of the webhook (0 = all alerts of the group).
    pub max_alerts: u32,
}

impl Receiver {
    /// A webhook to `url`, grouped by namespace, group_wait 1 s,
    /// group_interval 1 s, repeat_interval 1 s (every group is sent again
    /// about every second or two), resolved alerts not sent.
    pub fn new(url: &str) -> Receiver {
        Receiver {
            url: url.to_string(),
            bearer_token: None,
            group_by: vec!["namespace".to_string()],
            group_wait: Duration::from_secs(1),
            group_interval: Duration::from_secs(1),
            repeat_interval: Duration::from_secs(1),
            send_resolved: false,
            max_alerts: 0,
        }
    }

    pub fn bearer_token(mut self, token: &str) -> Receiver {
        self.bearer_token = Some(token.to_string());
        self
    }

    /// Group by these labels (`&["..."]`: every alert alone).
    pub fn group_by(mut self, labels: &[&str]) -> Receiver {
        self.group_by = labels.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn group_interval(mut self, d: Duration) -> Receiver {
        self.group_interval = d;
        self
    }

    pub fn repeat_interval(mut self, d: Duration) -> Receiver {
        self.repeat_interval = d;
        self
    }

    pub fn group_wait(mut self, d: Duration) -> Receiver {
        self.group_wait = d;
        self
    }

    /// Whether resolved alerts are sent too (`send_resolved` of the webhook).
    pub fn send_resolved(mut self, yes: bool) -> Receiver {
        self.send_resolved = yes;
        self
    }

    /// The Alertmanager configuration file (JSON, which is YAML).
    pub fn config(&self) -> String {
        let mut webhook = json!({
            "url": self.url,
            "send_resolved": self.send_resolved,
            "max_alerts": self.max_alerts,
        });
        if let Some(token) = &self.bearer_token {
            webhook["http_config"] = json!({
                "authorization": {"type": "Bearer", "credentials": token}
            });
        }
        let config = json!({
            "route": {
                "receiver": "signalgate",
                "group_by": self.group_by,
                "group_wait": duration(self.group_wait),
                "group_interval": duration(self.group_interval),
                "repeat_interval": duration(self.repeat_interval),
            },
            "receivers": [{"name": "signalgate", "webhook_configs": [webhook]}],
        });
        serde_json::to_string_pretty(&config).expect("json")
    }
}

/// A duration as Alertmanager writes them (`1s`, `1500ms`).
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The webhook integration's notification counters (`/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Notifications {
    /// `alertmanager_notifications_total{integration="webhook"}`: notifications
    /// attempted (one per group flush, retries not counted).
    pub total: f64,
    /// `alertmanager_notifications_failed_total{integration="webhook"}`:
    /// notifications given up on (a 4xx, or retries past the deadline).
    pub failed: f64,
    /// `alertmanager_notification_requests_total{integration="webhook"}`:
    /// HTTP requests, retries included.
    pub requests: f64,
    /// `alertmanager_notification_requests_failed_total{integration="webhook"}`:
    /// HTTP requests that failed (non-2xx or transport error).
    pub requests_failed: f64,
}

/// A running Alertmanager (killed when dropped).
pub struct Alertmanager {
    proc: Option<Proc>,
    addr: SocketAddr,
    receiver: Receiver,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager with `receiver` on a free port and waits until
    /// `/-/ready` answers 200 (panics with its log otherwise).
    pub fn start(receiver: &Receiver) -> Alertmanager {
        let dir = temp_dir("alertmanager");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, receiver.config())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let mut am = Alertmanager {
            proc: None,
            addr,
            receiver: receiver.clone(),
            dir,
        };
        am.spawn();
        am
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("create alertmanager data dir");
        let mut cmd = Command::new(binary());
        cmd.arg(format!(
            "--config.file={}",
            self.dir.path().join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", data.display()))
        .arg(format!("--web.listen-address={}", self.addr))
        // An empty address disables gossip: a lone, private instance.
        .arg("--cluster.listen-address=")
        .arg("--log.level=debug");
        let mut proc = Proc::spawn("alertmanager", cmd, self.dir.path());
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proc.try_wait() {
                panic!(
                    "alertmanager exited early ({status}); log:\n{}",
                    proc.log_tail(40)
                );
            }
            if client::get(&self.url("/-/ready")).is_ok_and(|a| a.status == 200) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "alertmanager not ready within {READY_TIMEOUT:?}; log:\n{}",
                proc.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(proc);
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn receiver(&self) -> &Receiver {
        &self.receiver
    }

    /// The private directory (configuration, data, `alertmanager.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes alerts (API v2 objects, see [`alert`]) with `POST
    /// /api/v2/alerts`, as Prometheus does; panics unless it answers 200.
    pub fn push(&self, alerts: &[Value]) {
        let body = serde_json::to_vec(alerts).expect("json");
        let url = self.url("/api/v2/alerts");
        let answer = client::post_json(&url, &body, &[])
            .unwrap_or_else(|e| panic!("POST {url}: {e}\n{}", self.log_tail(20)));
        assert_eq!(
            answer.status, 200,
            "POST {url} answered {}: {}",
            answer.status, answer.body
        );
    }

    /// Silences every alert (`POST /api/v2/silences`, `alertname=~".+"`, one
    /// hour): no new notification starts; one already being sent finishes.
    /// Returns the silence id.
    pub fn silence_all(&self) -> String {
        let now = SystemTime::now();
        let silence = json!({
            "matchers": [{"name": "alertname", "value": ".+", "isRegex": true, "isEqual": true}],
            "startsAt": rfc3339(now - Duration::from_secs(1)),
            "endsAt": rfc3339(now + Duration::from_secs(3600)),
            "createdBy": "signalgate-tests",
            "comment": "quiesce the webhook",
        });
        let url = self.url("/api/v2/silences");
        let body = serde_json::to_vec(&silence).expect("json");
        let answer = client::post_json(&url, &body, &[])
            .unwrap_or_else(|e| panic!("POST {url}: {e}\n{}", self.log_tail(20)));
        assert_eq!(
            answer.status, 200,
            "POST {url} answered {}: {}",
            answer.status, answer.body
        );
        answer.json()["silenceID"]
            .as_str()
            .unwrap_or_else(|| panic!("POST {url}: no silenceID in {}", answer.body))
            .to_string()
    }

    /// The alerts Alertmanager holds (`GET /api/v2/alerts`).
    pub fn alerts(&self) -> Vec<Value> {
        let answer = client::get(&self.url("/api/v2/alerts")).expect("GET /api/v2/alerts");
        answer
            .json()
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("GET /api/v2/alerts: not a list: {}", answer.body))
    }

    /// `/metrics` as text.
    pub fn metrics_text(&self) -> String {
        client::get(&self.url("/metrics"))
            .map(|a| a.body)
            .unwrap_or_else(|e| panic!("GET /metrics of alertmanager: {e}"))
    }

    /// The sum of every sample of metric `name` whose labels include
    /// `label` (e.g. `integration="webhook"`; empty: all samples).
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        sum_samples(&self.metrics_text(), name, label)
    }

    /// The webhook integration's notification counters.
    pub fn notifications(&self) -> Notifications {
        let text = self.metrics_text();
        let w = "integration=\"webhook\"";
        Notifications {
            total: sum_samples(&text, "alertmanager_notifications_total", w),
            failed: sum_samples(&text, "alertmanager_notifications_failed_total", w),
            requests: sum_samples(&text, "alertmanager_notification_requests_total", w),
            requests_failed: sum_samples(
                &text,
                "alertmanager_notification_requests_failed_total",
                w,
            ),
        }
    }

    /// Kills Alertmanager (SIGKILL): it sends nothing more.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }
}

/// Sums the samples of `name` (exactly that metric, not `name_bucket`)
/// whose label set contains `label`; a value that is not a number is a panic.
pub fn sum_samples(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            if !label.is_empty() && !labels.split(',').any(|l| l == label) {
                return None;
            }
            let value = value
                .trim()
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("metrics: {l:?} has no number: {e}"));
            Some(value)
        })
        .sum()
}

/// An API v2 alert with `labels` and `annotations`, firing since now and for
/// the next hour (so Alertmanager keeps it active for the whole test).
pub fn alert(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Value {
    let now = SystemTime::now();
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(now - Duration::from_secs(1)),
        "endsAt": rfc3339(now + Duration::from_secs(3600)),
        "generatorURL": "http://prometheus.e2e:9090/graph",
    })
}

/// A firing alert `name` about `pod` in `namespace`, severity critical.
pub fn firing(name: &str, namespace: &str, pod: &str) -> Value {
    alert(
        &[
            ("alertname", name),
            ("namespace", namespace),
            ("pod", pod),
            ("severity", "critical"),
        ],
        &[("summary", &format!("{name} on {namespace}/{pod}"))],
    )
}

/// `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T20:57:15.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).expect("time after 1970");
    signalgate_model::rfc3339::format_unix_millis(d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_726_635_123);
        assert_eq!(rfc3339(t), "2026-11-26T20:57:15.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn renders_durations_and_the_receiver() {
        assert_eq!(duration(Duration::from_secs(2)), "2s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        let r = Receiver::new("http://127.0.0.1:1/x")
            .bearer_token("t0k")
            .group_by(&["..."]);
        let c: Value = serde_json::from_str(&r.config()).unwrap();
        assert_eq!(c["route"]["group_by"], json!(["..."]));
        assert_eq!(c["route"]["group_wait"], "1s");
        let hook = &c["receivers"][0]["webhook_configs"][0];
        assert_eq!(hook["url"], "http://127.0.0.1:1/x");
        assert_eq!(hook["http_config"]["authorization"]["credentials"], "t0k");
    }

    #[test]
    fn sums_samples_by_label() {
        let text = "# HELP x\nx_total{integration=\"webhook\"} 2\nx_total{integration=\"email\"} 5\n\
                    x_total{integration=\"webhook\",reason=\"other\"} 1\nx_total_bucket{integration=\"webhook\"} 9\n";
        assert_eq!(sum_samples(text, "x_total", "integration=\"webhook\""), 3.0);
        assert_eq!(sum_samples(text, "x_total", ""), 8.0);
    }
}
