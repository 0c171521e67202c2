//! The senders: one lane per namespace (an Alertmanager aggregation group,
//! whose notifications go one at a time), each delivery retried by
//! Alertmanager's rules: a 2xx acknowledges it; a 5xx or a transport error
//! is retried with the same body after an exponential backoff (0.5 s x1.5,
//! jittered, at most 5 s) until the retry budget is spent; a 4xx is never
//! retried.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_model::rfc3339::format_unix_millis;

use super::history::{Attempt, AttemptResult, Delivery, History, SignalAnswer};
use super::plan::{Incident, Plan, Status, Step};
use crate::rng::Rng;

/// One attempt may take this long (the sidecars' request deadline is 4 s).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
/// No attempt starts later than this after the first (Alertmanager: until
/// the flush's deadline, the group interval).
pub const RETRY_BUDGET: Duration = Duration::from_secs(25);
pub const MAX_ATTEMPTS: usize = 12;

/// The response header naming the sidecar Envoy forwarded an attempt to.
pub const UPSTREAM_HEADER: &str = "x-checker-upstream";

pub struct Sender<'a> {
    pub url: String,
    pub seed: u64,
    pub started: Instant,
    pub plan: &'a Plan,
    /// `(port, name)` of each sidecar, to name an attempt's upstream.
    pub upstreams: Vec<(u16, String)>,
    pub history: &'a Mutex<History>,
}

impl Sender<'_> {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `lane`'s steps, each at its planned time or as soon as the one
    /// before is done; a twin step is sent by both senders at once.
    pub fn run_lane(&self, lane: usize) {
        for (n, step) in self.plan.lanes[lane].iter().enumerate() {
            let due = self.started + Duration::from_millis(step.at_ms);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if step.twin {
                std::thread::scope(|s| {
                    s.spawn(|| self.deliver(lane, n, 'b', step));
                    self.deliver(lane, n, 'a', step);
                });
            } else {
                self.deliver(lane, n, 'a', step);
            }
        }
    }

    fn deliver(&self, lane: usize, step_no: usize, replica: char, step: &Step) {
        let evaluation = format!("{lane}.{step_no}");
        let body = serde_json::to_vec(&webhook(
            &self.plan.incidents,
            &step.alerts,
            replica,
            &evaluation,
        ))
        .expect("a webhook is JSON");
        let salt = ((lane as u64) << 40) | ((step_no as u64) << 8) | u64::from(replica);
        let mut rng = Rng::fork(self.seed, salt);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(ATTEMPT_TIMEOUT))
            .build()
            .into();
        let mut attempts = Vec::new();
        let first = Instant::now();
        let mut backoff_ms = 500u64;
        loop {
            let at_ms = self.now_ms();
            let began = Instant::now();
            let result = self.attempt(&agent, &body);
            attempts.push(Attempt {
                at_ms,
                took_ms: began.elapsed().as_millis() as u64,
                result,
            });
            let last = attempts.last().expect("just pushed");
            let retry = match last.status() {
                Some(s) => s >= 500,
                None => true,
            };
            if !retry || attempts.len() >= MAX_ATTEMPTS {
                break;
            }
            let wait = backoff_ms * rng.range(80, 120) / 100;
            if first.elapsed() + Duration::from_millis(wait) > RETRY_BUDGET {
                break;
            }
            std::thread::sleep(Duration::from_millis(wait));
            backoff_ms = (backoff_ms * 3 / 2).min(5000);
        }
        let delivery = Delivery {
            lane,
            step: step_no,
            replica,
            what: step.what,
            alerts: step.alerts.clone(),
            attempts,
        };
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .deliveries
            .push(delivery);
    }

    fn attempt(&self, agent: &ureq::Agent, body: &[u8]) -> AttemptResult {
        let sent = agent
            .post(&self.url)
            .header("content-type", "application/json")
            .send(body);
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return AttemptResult::Transport(e.to_string()),
        };
        let status = response.status().as_u16();
        let upstream = response
            .headers()
            .get(UPSTREAM_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|addr| self.upstream_name(addr));
        let text = match response.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return AttemptResult::Transport(format!("{status}, body lost: {e}")),
        };
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let signals = json
            .as_ref()
            .and_then(|j| j["signals"].as_array())
            .map(|a| {
                a.iter()
                    .map(|s| SignalAnswer {
                        fingerprint: s["fingerprint"].as_str().unwrap_or("").to_string(),
                        outcome: s["outcome"].as_str().unwrap_or("?").to_string(),
                        resource: s["resource"].as_str().map(str::to_string),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let problem = if (200..300).contains(&status) {
            None
        } else {
            Some(match json.as_ref().and_then(|j| j["type"].as_str()) {
                Some(t) => t.rsplit('/').next().unwrap_or(t).to_string(),
                None => text.chars().take(80).collect::<String>().replace('\n', " "),
            })
        };
        AttemptResult::Answer {
            status,
            upstream,
            signals,
            problem,
        }
    }

    fn upstream_name(&self, addr: &str) -> String {
        let port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        self.upstreams
            .iter()
            .find(|(p, _)| Some(*p) == port)
            .map_or_else(|| addr.to_string(), |(_, name)| name.clone())
    }
}

/// The Alertmanager (version 4) webhook of one group's notification, sent
/// by pair member `replica`.
/// The notification of `alerts` by Alertmanager `replica`; `evaluation`
/// names the rule evaluation whose value the alerts' annotations carry.
/// Alertmanager sends the same alerts again only after its repeat interval
/// (hours), or when they changed: a rule's `{{ $value }}` in an annotation
/// changes them. The plan's repeats, seconds apart, stand for such
/// notifications, so each delivery's body is its own; the same body again
/// is a retry of one delivery (the sidecar counts it once).
pub fn webhook(
    incidents: &[Incident],
    alerts: &[(usize, Status)],
    replica: char,
    evaluation: &str,
) -> Value {
    let ns = alerts.first().map_or("", |(i, _)| incidents[*i].namespace);
    let any_firing = alerts.iter().any(|(_, s)| *s == Status::Firing);
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(i, status)| alert(&incidents[*i], *status, evaluation))
        .collect();
    json!({
        "version": "4",
        "receiver": "signalgate",
        "status": if any_firing { "firing" } else { "resolved" },
        "groupKey": format!("{{}}:{{namespace=\"{ns}\"}}"),
        "truncatedAlerts": 0,
        "groupLabels": {"namespace": ns},
        "commonLabels": {"namespace": ns},
        "commonAnnotations": {},
        "externalURL": format!("http://alertmanager-{replica}:9093"),
        "alerts": alerts
    })
}

fn alert(i: &Incident, status: Status, evaluation: &str) -> Value {
    let ends = match (status, i.ends_ms) {
        (Status::Resolved, Some(ms)) => format_unix_millis(ms),
        _ => "0001-01-01T00:00:00Z".to_string(),
    };
    // Alertmanager's own fingerprint: of the label set.
    let label_hash = format!("{}/{}/{}", i.namespace, i.pod, i.alertname)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    json!({
        "status": status.as_str(),
        "labels": {
            "alertname": i.alertname, "namespace": i.namespace, "pod": i.pod,
            "severity": "warning"
        },
        "annotations": {
            "summary": format!("{} on {}/{}", i.alertname, i.namespace, i.pod),
            "value": evaluation
        },
        "startsAt": format_unix_millis(i.starts_ms),
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": format!("{label_hash:016x}")
    })
}
