//! The shipped alerts end to end (issue 23): a real Prometheus (loopback,
//! free port, scraping and evaluating every second, its own temp dir) scrapes
//! a real sidecar backed by a real Redis and a real Envoy with the
//! signalgate filter, as the PodMonitor does in a cluster. The test stops
//! Redis while one source floods past its limit and an ordinary sender keeps
//! sending: `SignalgateStoreUnavailable` and `SignalgateSenderRateLimited`
//! become firing in Prometheus's alerts API. After Redis is back and the
//! flood stops, both clear. Every wait is bounded and polls; timings are
//! printed as `[monitoring-e2e] ...` (run with `--nocapture`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use signalgate_tests::edge_client::{Client, Request};
use signalgate_tests::envoy::Envoy;
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::temp_dir;
use signalgate_tests::prometheus::{Prometheus, Target};
use signalgate_tests::redis::RedisServer;
use signalgate_tests::sidecar::Sidecar;
use signalgate_tests::workspace;

const RULES: &str = "deploy/monitoring/signalgate-rules.yaml";
const STORE_ALERT: &str = "SignalgateStoreUnavailable";
const LIMIT_ALERT: &str = "SignalgateSenderRateLimited";
const ALERTS_PATH: &str = "/api/v1/signals/prometheus";
/// The labels a PodMonitor gives every target of one pod.
const NAMESPACE: &str = "signalgate-e2e";
const POD: &str = "signalgate-e2e-0";

/// The shipped `for:` durations are minutes; this test loads a copy of the
/// shipped rules with only `for:` set to this. Expressions are the shipped ones.
const E2E_FOR: &str = "3s";
/// Both alerts fire within seconds of the fault (1 s scrapes, 3 s `for:`).
const FIRE_TIMEOUT: Duration = Duration::from_secs(90);
/// Both clear once their 2 minute rate windows no longer see an increase.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(240);
/// Two requests a second per source (burst 5): the ordinary sender stays
/// under it, the flooding one goes far over however slowly the sidecar
/// answers the few it lets through.
const FILTER: &str = r#"{"requests_per_minute": 120, "burst": 5}"#;
/// Requests the flooding source sends per round.
const FLOOD: usize = 30;
/// Pause between rounds of traffic: the ordinary sender's pace (< 2/s).
const ROUND_GAP: Duration = Duration::from_millis(600);

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    Value::deserialize(serde_yaml::Deserializer::from_str(&text)).expect("valid YAML")
}

fn each_rule(rules: &mut Value, mut f: impl FnMut(&mut Value)) {
    for group in rules["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            f(rule);
        }
    }
}

/// The shipped rules with `for:` shortened to [`E2E_FOR`], written into
/// `dir` (JSON is YAML). Checks that nothing else differs.
fn rules_with_short_for(dir: &Path) -> PathBuf {
    let shipped = yaml(&workspace::root().join(RULES));
    let mut copy = shipped.clone();
    each_rule(&mut copy, |rule| rule["for"] = json!(E2E_FOR));
    let without_for = |mut rules: Value| {
        each_rule(&mut rules, |rule| {
            rule.as_object_mut().expect("rule").remove("for");
        });
        rules
    };
    assert_eq!(
        without_for(copy.clone()),
        without_for(shipped),
        "only `for:` may differ from the shipped rules"
    );
    let path = dir.join("signalgate-rules.e2e.yaml");
    std::fs::write(&path, serde_json::to_vec_pretty(&copy).expect("json")).expect("write rules");
    path
}

/// Every `signalgate_*` metric name the shipped expressions read.
fn metric_names_in_rules() -> BTreeSet<String> {
    let mut rules = yaml(&workspace::root().join(RULES));
    let mut names = BTreeSet::new();
    each_rule(&mut rules, |rule| {
        let expr = rule["expr"].as_str().expect("expr");
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if token.starts_with("signalgate_") {
                names.insert(token.to_string());
            }
        }
    });
    names
}

/// The ordinary sender (within its limit) and the flooding one, both
/// through Envoy, from different loopback addresses (= different sources).
struct Traffic {
    ordinary: Client,
    flooder: Client,
    request: Request,
}

impl Traffic {
    fn new(envoy: &Envoy) -> Traffic {
        let from = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let body = webhook(vec![alert("MonitoringE2e", "shop", "checkout-0")]);
        Traffic {
            ordinary: envoy.client_from(from(3)),
            flooder: envoy.client_from(from(2)),
            request: Request::post_json(ALERTS_PATH, serde_json::to_vec(&body).expect("json")),
        }
    }

    /// One round: one ordinary request (its status), and [`FLOOD`] from the
    /// flooding source when `flood`; then the pause between rounds.
    fn round(&mut self, flood: bool) -> u16 {
        let status = self.ordinary.send(&self.request).status;
        if flood {
            for _ in 0..FLOOD {
                self.flooder.send(&self.request);
            }
        }
        std::thread::sleep(ROUND_GAP);
        status
    }
}

/// Sends rounds of traffic until `done` holds (checked after each round),
/// or panics after `timeout` with `what` and the Prometheus alerts.
fn traffic_until(
    traffic: &mut Traffic,
    prometheus: &Prometheus,
    flood: bool,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(u16) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let status = traffic.round(flood);
        if done(status) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; alerts:\n{:#}\nsignalgate_rate_limited: {}\ntargets: {}\nprometheus log:\n{}",
            json!(prometheus.alerts()),
            json!(prometheus.query("signalgate_rate_limited")),
            prometheus.api("targets"),
            prometheus.log_tail(20)
        );
    }
}

/// When Prometheus last evaluated the rule group (changes every evaluation).
fn last_evaluation(prometheus: &Prometheus) -> String {
    prometheus.api("rules")["groups"][0]["lastEvaluation"]
        .as_str()
        .expect("a loaded rule group")
        .to_string()
}

fn firing(prometheus: &Prometheus, name: &str) -> bool {
    prometheus.alert_states(name).iter().any(|s| s == "firing")
}

fn active(prometheus: &Prometheus, name: &str) -> bool {
    !prometheus.alert_states(name).is_empty()
}

#[test]
fn store_and_rate_limit_alerts_fire_in_a_real_prometheus_and_clear_after_recovery() {
    let started = Instant::now();
    let mut redis = RedisServer::start();
    let sidecar = Sidecar::start(&[
        ("SIGNALGATE_REDIS_URL", &redis.url()),
        ("SIGNALGATE_REDIS_TIMEOUT", "200ms"),
        ("SIGNALGATE_REQUEST_DEADLINE", "2s"),
    ]);
    let envoy = Envoy::start(FILTER, sidecar.api.port());
    let tmp = temp_dir("monitoring-e2e");
    let rules = rules_with_short_for(tmp.path());
    let pod = |t: Target| t.label("namespace", NAMESPACE).label("pod", POD);
    let prometheus = Prometheus::start(
        &[
            pod(Target::new("signalgate-sidecar", sidecar.admin, "/metrics")),
            pod(
                Target::new("signalgate-envoy", envoy.admin(), "/stats/prometheus")
                    .label("container", "envoy"),
            ),
        ],
        &[rules],
    );
    prometheus.wait_targets_up(Duration::from_secs(30));
    let mut traffic = Traffic::new(&envoy);

    // Healthy: the ordinary sender is answered, and the rules have been
    // evaluated twice since Prometheus saw its traffic: neither alert is active.
    let mut evaluations: Vec<String> = Vec::new();
    traffic_until(
        &mut traffic,
        &prometheus,
        false,
        "two rule evaluations over healthy traffic",
        Duration::from_secs(30),
        |status| {
            assert!(
                (200..300).contains(&status),
                "healthy sidecar answered {status}\n{}",
                sidecar.log_tail(20)
            );
            let traffic_seen = !prometheus
                .query("rate(signalgate_request_duration_seconds_count[2m]) > 0")
                .is_empty();
            let last = last_evaluation(&prometheus);
            if traffic_seen && evaluations.last() != Some(&last) {
                evaluations.push(last);
            }
            evaluations.len() > 2
        },
    );
    for name in [STORE_ALERT, LIMIT_ALERT] {
        assert!(
            !active(&prometheus, name),
            "{name} is active while healthy: {:#}",
            json!(prometheus.alerts())
        );
    }

    // Redis down while one source floods: both alerts fire.
    redis.stop();
    let fired = traffic_until(
        &mut traffic,
        &prometheus,
        true,
        "both alerts firing",
        FIRE_TIMEOUT,
        |_| firing(&prometheus, STORE_ALERT) && firing(&prometheus, LIMIT_ALERT),
    );
    for name in [STORE_ALERT, LIMIT_ALERT] {
        let alerts = prometheus.alerts();
        let alert = alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .expect("active");
        assert_eq!(alert["labels"]["pod"], POD, "{alert}");
        assert_eq!(alert["labels"]["namespace"], NAMESPACE, "{alert}");
    }
    // Every metric the shipped rules read is really exported under that name.
    let scraped: BTreeSet<String> = prometheus
        .query(r#"count by (__name__) ({__name__=~"signalgate_.+"})"#)
        .iter()
        .filter_map(|s| s["metric"]["__name__"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<String> = metric_names_in_rules()
        .difference(&scraped)
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "rules read metrics nobody exports: {missing:?}"
    );

    // Redis back, the flood over: the ordinary sender is served again, and
    // both alerts clear.
    redis.start_again();
    let cleared = traffic_until(
        &mut traffic,
        &prometheus,
        false,
        "both alerts cleared after recovery",
        CLEAR_TIMEOUT,
        |_| !active(&prometheus, STORE_ALERT) && !active(&prometheus, LIMIT_ALERT),
    );
    let status = traffic.round(false);
    assert!(
        (200..300).contains(&status),
        "recovered sidecar answered {status}\n{}",
        sidecar.log_tail(20)
    );
    println!(
        "[monitoring-e2e] fired after {:.1}s, cleared {:.1}s after recovery, {:.1}s in all",
        fired.as_secs_f64(),
        cleared.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
