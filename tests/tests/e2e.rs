//! End to end, the way a user runs signalgate (issue 5): a real
//! Alertmanager sends its webhooks to Envoy with the signalgate filter, the
//! sidecar decides with Redis, and RemediationRequests land in a real
//! kube-apiserver. Each scenario checks the END STATE (resources and their
//! counts in the API server), waits on conditions with deadlines, and prints
//! `[e2e] <scenario>: alerts sent, resources expected/found, time` (run with
//! `--nocapture` to see them).
//!
//! Alertmanager here groups by namespace (or one group per alert), waits 1 s
//! before the first notification and re-sends every group about every 1-2 s,
//! so "mid-stream" is always true: a fault hits a chain that keeps sending.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_tests::alertmanager::{firing, sum_samples, Alertmanager, Notifications, Receiver};
use signalgate_tests::client;
use signalgate_tests::envoy::{envoy_bin, parse_prometheus, render, wasm_path, yaml_single_quoted};
use signalgate_tests::k8s::{ApiServer, Identity};
use signalgate_tests::process::{free_port, temp_dir, Proc};
use signalgate_tests::redis::{RedisCluster, RedisServer};
use signalgate_tests::sidecar::{self, Sidecar};
use signalgate_tests::workspace;

const FALLBACK: &str = "signalgate-system";
const ALERTS_PATH: &str = "/api/v1/signals/prometheus";
const EVENTS_PATH: &str = "/api/v1/signals/kubernetes-event";

/// The bearer token Alertmanager sends, and its tenant in the filter.
const TOKEN: &str = "e2e-alertmanager-token";
const TOKEN_SHA256: &str = "60e2676050a68a41eb4a89c3e5b4dec4e87eeb22628dccc2e089f14776d284ac";
const TENANT: &str = "alertmanager-e2e";

/// The filter for scenarios that are not about rate limits: no practical
/// limit, 503 if one were hit.
const OPEN: &str = r#"{"requests_per_minute": 100000, "burst": 100000, "over_limit_status": 503}"#;

/// How long a scenario may wait for its end state.
const SETTLE: Duration = Duration::from_secs(90);
/// How long a fault lasts at least ("longer than a few seconds").
const OUTAGE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The chain's parts
// ---------------------------------------------------------------------------

/// CRD, the sidecar's RBAC and its namespace, as an operator applies them.
fn prepare(k: &ApiServer) {
    k.apply_file(&workspace::root().join("deploy/crds"));
    k.create_namespace(FALLBACK);
    k.apply_file(&workspace::root().join("deploy/base/rbac.yaml"));
}

/// One API server for every scenario that does not stop it (each uses its
/// own namespaces).
fn shared_k8s() -> &'static ApiServer {
    static K8S: OnceLock<ApiServer> = OnceLock::new();
    K8S.get_or_init(|| {
        let k = ApiServer::start();
        prepare(&k);
        k
    })
}

/// A sidecar with the kube sink (as its service account) and Redis at
/// `redis_url`; short lease and deadline so faults resolve in seconds.
fn sidecar(k: &ApiServer, name: &str, redis_url: &str, extra: &[(&str, &str)]) -> Sidecar {
    let kubeconfig = k.kubeconfig(Identity::Sidecar).display().to_string();
    let mut env = vec![
        ("SIGNALGATE_SINK", "kube"),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("SIGNALGATE_FALLBACK_NAMESPACE", FALLBACK),
        ("SIGNALGATE_REDIS_URL", redis_url),
        ("SIGNALGATE_REDIS_TIMEOUT", "500ms"),
        ("SIGNALGATE_CLAIM_LEASE", "3s"),
        ("SIGNALGATE_REQUEST_DEADLINE", "4s"),
        ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
        ("SIGNALGATE_STORM_THRESHOLD", "10"),
    ];
    env.extend_from_slice(extra);
    Sidecar::start_named(name, &env)
}

/// The filter configuration with Alertmanager as a bearer-token tenant.
fn tenant_config() -> String {
    json!({
        "requests_per_minute": 100000,
        "burst": 100000,
        "over_limit_status": 503,
        "tenants": [{"name": TENANT, "token_sha256": TOKEN_SHA256}],
    })
    .to_string()
}

/// Envoy with the signalgate filter in front of one or more sidecars (one
/// cluster, round robin; `envoy/e2e.yaml.tmpl`), restartable on the same
/// ports.
struct Edge {
    proc: Option<Proc>,
    listen: u16,
    admin: u16,
    dir: tempfile::TempDir,
}

impl Edge {
    fn start(plugin_config: &str, upstream_ports: &[u16]) -> Edge {
        let dir = temp_dir("e2e-envoy");
        let (listen, admin) = (free_port(), free_port());
        let endpoint = |port: &u16| {
            "{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: PORT}}}}"
                .replace("PORT", &port.to_string())
        };
        let endpoints: Vec<String> = upstream_ports.iter().map(endpoint).collect();
        let template_path = workspace::root().join("envoy/e2e.yaml.tmpl");
        let template = std::fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", template_path.display()));
        let config = render(
            &template,
            &[
                ("LISTEN_PORT", listen.to_string()),
                ("ADMIN_PORT", admin.to_string()),
                ("UPSTREAM_ENDPOINTS", format!("[{}]", endpoints.join(", "))),
                (
                    "WASM_PATH",
                    yaml_single_quoted(&wasm_path().display().to_string()),
                ),
                ("PLUGIN_CONFIG", yaml_single_quoted(plugin_config)),
            ],
        );
        std::fs::write(dir.path().join("envoy.yaml"), config).expect("write envoy.yaml");
        let mut edge = Edge {
            proc: None,
            listen,
            admin,
            dir,
        };
        edge.spawn();
        edge
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(self.dir.path().join("envoy.yaml"))
            .arg("--concurrency")
            .arg("1")
            .arg("--disable-hot-restart")
            .args(["-l", "warning", "--component-log-level", "wasm:info"]);
        let mut proc = Proc::spawn("envoy", cmd, self.dir.path());
        let ready = format!("http://127.0.0.1:{}/ready", self.admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            proc.assert_running();
            if client::get(&ready).is_ok_and(|a| a.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in 60 s; log:\n{}",
                proc.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(proc);
    }

    /// SIGKILL: the listener is gone (connection refused) until `start_again`.
    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts Envoy again, same ports and configuration, with fresh state.
    fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    /// A counter or gauge from `/stats/prometheus` (labels summed; 0 if absent).
    fn stat(&self, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats/prometheus", self.admin);
        let text = client::get(&url).map(|a| a.body).unwrap_or_default();
        parse_prometheus(&text).get(name).copied().unwrap_or(0)
    }

    fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Expectations and waiting
// ---------------------------------------------------------------------------

/// One incident: what one resource stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Incident {
    namespace: String,
    name: String,
    pod: String,
}

impl std::fmt::Display for Incident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.pod, self.name)
    }
}

fn incidents(alerts: &[Value]) -> Vec<Incident> {
    let mut v: Vec<Incident> = alerts
        .iter()
        .map(|a| Incident {
            namespace: a["labels"]["namespace"].as_str().unwrap_or("").to_string(),
            name: a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
            pod: a["labels"]["pod"].as_str().unwrap_or("").to_string(),
        })
        .collect();
    v.sort();
    v
}

/// `n` firing alerts `name` about pods `<prefix>-<i>` in `namespace`.
fn alerts(name: &str, namespace: &str, prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| firing(name, namespace, &format!("{prefix}-{i:02}")))
        .collect()
}

/// The RemediationRequests in `ns` (read as the admin over HTTP).
fn rrs(k: &ApiServer, ns: &str) -> Result<Vec<Value>, String> {
    let url = format!(
        "{}/apis/signalgate.io/v1alpha1/namespaces/{ns}/remediationrequests",
        k.url()
    );
    match k.try_request(Identity::Admin, "GET", &url, None) {
        Ok((200, body)) => {
            let list: Value =
                serde_json::from_str(&body).map_err(|e| format!("list {ns}: {e}: {body}"))?;
            let mut items = list["items"].as_array().cloned().unwrap_or_default();
            items.sort_by(|a, b| {
                a["metadata"]["name"]
                    .as_str()
                    .cmp(&b["metadata"]["name"].as_str())
            });
            Ok(items)
        }
        Ok((status, body)) => Err(format!("listing resources in {ns}: HTTP {status}: {body}")),
        Err(e) => Err(format!("listing resources in {ns}: {e}")),
    }
}

fn is_storm(rr: &Value) -> bool {
    rr["metadata"]["labels"]["signalgate.io/storm"] == "true"
}

fn count(rr: &Value) -> u64 {
    rr["spec"]["deduplication"]["occurrenceCount"]
        .as_u64()
        .unwrap_or(0)
}

fn name_of(rr: &Value) -> String {
    rr["metadata"]["name"].as_str().unwrap_or("?").to_string()
}

/// Every resource in the namespaces of `expected`, if each incident has
/// exactly one (non-storm) resource and there is no other non-storm
/// resource; else what is missing, doubled or unexpected.
fn one_each(k: &ApiServer, expected: &[Incident]) -> Result<Vec<Value>, Wait> {
    let namespaces: BTreeSet<&str> = expected.iter().map(|i| i.namespace.as_str()).collect();
    let mut found: BTreeMap<Incident, Vec<String>> = BTreeMap::new();
    let mut all = Vec::new();
    for ns in namespaces {
        for rr in rrs(k, ns)? {
            if !is_storm(&rr) {
                let incident = Incident {
                    namespace: ns.to_string(),
                    name: rr["spec"]["signalName"].as_str().unwrap_or("").to_string(),
                    pod: rr["spec"]["targetResource"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                };
                found.entry(incident).or_default().push(name_of(&rr));
            }
            all.push(rr);
        }
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|i| !found.contains_key(i))
        .map(ToString::to_string)
        .collect();
    let doubled: Vec<String> = found
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(i, names)| format!("{i} x{} {names:?}", names.len()))
        .collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|i| !expected.contains(i))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() && doubled.is_empty() && unexpected.is_empty() {
        return Ok(all);
    }
    // A resource too many never goes away: no point in waiting.
    let wait = if doubled.is_empty() && unexpected.is_empty() {
        Wait::Retry
    } else {
        Wait::Fail
    };
    Err(wait(format!(
        "{} of {} incidents have their resource; missing ({}): {missing:?}; \
         more than one resource ({}): {doubled:?}; unexpected ({}): {unexpected:?}",
        expected.len() - missing.len(),
        expected.len(),
        missing.len(),
        doubled.len(),
        unexpected.len()
    )))
}

/// The non-storm resources of `all`.
fn individual(all: &[Value]) -> Vec<&Value> {
    all.iter().filter(|r| !is_storm(r)).collect()
}

/// A storm namespace's end state: `threshold` individual resources, ONE
/// storm resource, and together they cover exactly `pods` (each once).
fn storm_state(
    k: &ApiServer,
    ns: &str,
    pods: &[String],
    threshold: usize,
) -> Result<(Vec<Value>, Value), Wait> {
    let all = rrs(k, ns)?;
    let (storms, singles): (Vec<Value>, Vec<Value>) = all.into_iter().partition(is_storm);
    let single_pods: Vec<String> = singles
        .iter()
        .map(|r| {
            r["spec"]["targetResource"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    if storms.len() != 1 || singles.len() != threshold {
        let wait = if storms.len() > 1 || singles.len() > threshold {
            Wait::Fail
        } else {
            Wait::Retry
        };
        return Err(wait(format!(
            "{ns}: {} individual resources (expected {threshold}) and {} storm resources \
             (expected 1); individual pods: {single_pods:?}",
            singles.len(),
            storms.len()
        )));
    }
    let storm = storms.into_iter().next().expect("one storm");
    let affected: Vec<String> = storm["spec"]["storm"]["affectedResources"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|s| s.strip_prefix("Pod/").unwrap_or(s).to_string())
                .collect()
        })
        .unwrap_or_default();
    let alert_count = storm["spec"]["storm"]["alertCount"].as_u64().unwrap_or(0);
    let expected_members = pods.len() - threshold;
    let mut covered: Vec<String> = single_pods.iter().chain(&affected).cloned().collect();
    covered.sort();
    let mut want = pods.to_vec();
    want.sort();
    if alert_count != expected_members as u64 || affected.len() != expected_members {
        let wait = if alert_count > expected_members as u64 {
            Wait::Fail
        } else {
            Wait::Retry
        };
        return Err(wait(format!(
            "{ns}: storm {} has alertCount {alert_count} and {} affected resources, \
             expected {expected_members} of each: {affected:?}",
            name_of(&storm),
            affected.len()
        )));
    }
    if covered != want {
        let missing: Vec<&String> = want.iter().filter(|p| !covered.contains(p)).collect();
        return Err(Wait::Fail(format!(
            "{ns}: individual + storm-affected pods do not match what was sent \
             (each once): missing {missing:?}; covered {covered:?}"
        )));
    }
    Ok((singles, storm))
}

/// Why a condition does not hold (yet).
enum Wait {
    /// Not yet: look again.
    Retry(String),
    /// Never will (e.g. a resource too many): stop waiting.
    Fail(String),
}

impl From<String> for Wait {
    fn from(s: String) -> Wait {
        Wait::Retry(s)
    }
}

/// Polls `cond` every 200 ms until `Ok`; the last reason after `timeout`,
/// or at once when `cond` says it can never hold.
fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, Wait>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        let why = match cond() {
            Ok(v) => return Ok(v),
            Err(Wait::Fail(why)) => {
                return Err(format!(
                    "{what}: failed after {:.1}s: {why}",
                    started.elapsed().as_secs_f64()
                ))
            }
            Err(Wait::Retry(why)) => why,
        };
        if started.elapsed() >= timeout {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}: {why}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Logs of the chain for failure messages.
fn diag(sidecars: &[&Sidecar], am: Option<&Alertmanager>, edge: Option<&Edge>) -> String {
    let mut out = String::new();
    for s in sidecars {
        out.push_str(&format!("--- sidecar log ---\n{}\n", s.log_tail(10)));
    }
    if let Some(am) = am {
        out.push_str(&format!(
            "--- alertmanager {:?} ---\n{}\n",
            am.notifications(),
            am.log_tail(10)
        ));
    }
    if let Some(e) = edge {
        out.push_str(&format!("--- envoy log ---\n{}\n", e.log_tail(5)));
    }
    out
}

fn check<T>(r: Result<T, String>, diag: impl FnOnce() -> String) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", diag()))
}

/// A sample summed over the sidecar's `/metrics` (labels containing `label`).
fn sidecar_metric(s: &Sidecar, name: &str, label: &str) -> f64 {
    sum_samples(&s.admin_get("/metrics").body, name, label)
}

/// Firing signals the sidecar counted (every outcome but `resolved`).
fn firing_signals(s: &Sidecar) -> u64 {
    let text = s.admin_get("/metrics").body;
    let all = sum_samples(&text, "signalgate_signals_total", "");
    let resolved = sum_samples(&text, "signalgate_signals_total", "outcome=\"resolved\"");
    (all - resolved) as u64
}

/// Requests the sidecar answered 503.
fn sidecar_503s(s: &Sidecar) -> f64 {
    sidecar_metric(
        s,
        "signalgate_request_duration_seconds_count",
        "status=\"503\"",
    )
}

/// Waits until Alertmanager has made at least `n` more notification
/// requests that failed than `before` (its retries under a fault).
fn wait_failed_requests(am: &Alertmanager, before: f64, n: f64, what: &str) -> f64 {
    check(
        eventually(what, Duration::from_secs(30), || {
            let now = am.notifications().requests_failed;
            if now >= before + n {
                Ok(now)
            } else {
                Err(Wait::Retry(format!(
                    "{} failed requests so far",
                    now - before
                )))
            }
        }),
        || diag(&[], Some(am), None),
    )
}

/// Waits until Alertmanager has sent `n` more notifications than now:
/// every group was re-sent after the state checked so far.
fn wait_more_notifications(am: &Alertmanager, n: f64) {
    let start = am.notifications().total;
    check(
        eventually(
            &format!("{n} more notifications from Alertmanager"),
            Duration::from_secs(60),
            || {
                let now = am.notifications().total;
                if now >= start + n {
                    Ok(())
                } else {
                    Err(Wait::Retry(format!("{} so far", now - start)))
                }
            },
        ),
        || diag(&[], Some(am), None),
    );
}

/// Once Alertmanager sends nothing more (e.g. after [`Alertmanager::silence_all`]):
/// no notification in flight (each notification made exactly one request)
/// and the counters unchanged over two group intervals. Returns them.
fn wait_quiet(am: &Alertmanager) -> Notifications {
    let interval = am.receiver().group_interval * 2;
    let mut last = am.notifications();
    let mut since = Instant::now();
    check(
        eventually("Alertmanager to go quiet", Duration::from_secs(60), || {
            let now = am.notifications();
            if now != last {
                last = now;
                since = Instant::now();
            }
            if now.total == now.requests && since.elapsed() >= interval {
                Ok(now)
            } else {
                Err(Wait::Retry(format!("still sending: {now:?}")))
            }
        }),
        || diag(&[], Some(am), None),
    )
}

/// Keeps a fault in place until `OUTAGE` has passed since `since` (the
/// scenario's outage length is a parameter, not a wait for a condition).
fn hold_outage(since: Instant) {
    while since.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report(
    scenario: &str,
    sent: usize,
    expected: usize,
    found: usize,
    started: Instant,
    more: &str,
) {
    report_as(
        scenario,
        "alerts sent",
        sent,
        expected,
        found,
        started,
        more,
    );
}

fn report_as(
    scenario: &str,
    what: &str,
    sent: usize,
    expected: usize,
    found: usize,
    started: Instant,
    more: &str,
) {
    eprintln!(
        "[e2e] {scenario}: {what} {sent}, resources expected {expected}, found {found}, \
         time {:.1}s{more}",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 1. Happy path
// ---------------------------------------------------------------------------

#[test]
fn s1_happy_path_alerts_become_resources_and_repeats_only_count() {
    let started = Instant::now();
    let k = shared_k8s();
    let namespaces = ["e2e-happy-a", "e2e-happy-b", "e2e-happy-c"];
    for ns in namespaces {
        k.create_namespace(ns);
    }
    let redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(&tenant_config(), &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)).bearer_token(TOKEN));

    let mut sent = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        sent.extend(alerts("KubePodCrashLooping", ns, "web", 3 + i));
    }
    // Another alert about a pod that already has one: its own incident.
    sent.push(firing("KubePodOOMKilled", "e2e-happy-a", "web-00"));
    am.push(&sent);
    let expected = incidents(&sent);
    let d = || diag(&[&s], Some(&am), Some(&edge));

    let items = check(
        eventually("one resource per alert", SETTLE, || one_each(k, &expected)),
        d,
    );
    for rr in &items {
        let spec = &rr["spec"];
        assert_eq!(spec["source"], TENANT, "the bearer token's tenant: {rr}");
        assert_eq!(spec["signalType"], "prometheus", "{rr}");
        assert_eq!(spec["severity"], "critical", "{rr}");
        assert_eq!(spec["targetResource"]["kind"], "Pod", "{rr}");
        assert_eq!(
            spec["signalLabels"]["namespace"], rr["metadata"]["namespace"],
            "{rr}"
        );
    }

    // Repeats over several group intervals raise counts and nothing else.
    let items = check(
        eventually("every resource counted at least 3 times", SETTLE, || {
            let items = one_each(k, &expected)?;
            let low: Vec<String> = items
                .iter()
                .filter(|r| count(r) < 3)
                .map(|r| format!("{}={}", name_of(r), count(r)))
                .collect();
            if low.is_empty() {
                Ok(items)
            } else {
                Err(Wait::Retry(format!("counts still below 3: {low:?}")))
            }
        }),
        d,
    );
    assert!(individual(&items).len() == expected.len() && items.iter().all(|r| !is_storm(r)));

    // Exact accounting once Alertmanager is quiet: the counts in the API
    // server add up to the signals the sidecar processed, and every webhook
    // request Alertmanager made went through the filter to the sidecar.
    am.silence_all();
    let n = wait_quiet(&am);
    let (counted, processed) = check(
        eventually(
            "the resources' occurrence counts to add up to the signals processed",
            Duration::from_secs(30),
            || {
                let items = one_each(k, &expected)?;
                let counted: u64 = items.iter().map(count).sum();
                let processed = firing_signals(&s);
                let pending = sidecar_metric(&s, "signalgate_pending_updates", "");
                if counted == processed && pending == 0.0 {
                    Ok((counted, processed))
                } else {
                    Err(Wait::Retry(format!(
                        "sum of occurrenceCount {counted}, signals processed {processed}, \
                         pending updates {pending}"
                    )))
                }
            },
        ),
        || diag(&[&s], None, Some(&edge)),
    );
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    assert_eq!(n.requests_failed, 0.0, "failed webhook requests: {n:?}");
    let accepted = edge.stat("signalgate_accepted");
    let upstream = edge.stat("envoy_cluster_upstream_rq_completed");
    let answered = sidecar_metric(&s, "signalgate_request_duration_seconds_count", "") as u64;
    assert!(
        accepted == upstream && upstream == answered && answered == n.requests as u64,
        "Alertmanager made {} webhook requests; the filter accepted {accepted}, Envoy \
         completed {upstream} upstream, the sidecar answered {answered}",
        n.requests
    );
    report(
        "1 happy path",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (sum of occurrenceCount {counted} = signals processed {processed}; \
             {} notifications, {} webhook requests, 0 failed)",
            n.total, n.requests
        ),
    );
}

// ---------------------------------------------------------------------------
// 2. Storm
// ---------------------------------------------------------------------------

#[test]
fn s2_storm_in_one_burst_gives_threshold_resources_and_one_storm() {
    let started = Instant::now();
    let k = shared_k8s();
    let (storm_ns, calm_ns) = ("e2e-storm", "e2e-storm-calm");
    k.create_namespace(storm_ns);
    k.create_namespace(calm_ns);
    let redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));

    let storm = alerts("PodNotReady", storm_ns, "job", 25);
    let calm = alerts("PodNotReady", calm_ns, "job", 3);
    let pods: Vec<String> = incidents(&storm).into_iter().map(|i| i.pod).collect();
    let calm_expected = incidents(&calm);
    let mut sent = storm.clone();
    sent.extend(calm.iter().cloned());
    am.push(&sent);
    let d = || diag(&[&s], Some(&am), Some(&edge));

    let (singles, storm_rr) = check(
        eventually(
            "10 resources and 1 storm resource listing the other 15 (and 3 calm resources)",
            SETTLE,
            || {
                let state = storm_state(k, storm_ns, &pods, 10)?;
                one_each(k, &calm_expected)?;
                Ok(state)
            },
        ),
        d,
    );
    let spec = &storm_rr["spec"];
    assert_eq!(spec["signalName"], "SignalStorm", "{storm_rr}");
    assert_eq!(
        spec["targetResource"],
        json!({"kind": "Namespace", "name": storm_ns}),
        "{storm_rr}"
    );

    // Repeats of the whole group are duplicates: of each individual
    // resource, and of the storm resource for its members.
    let first = count(&storm_rr);
    let storm_rr = check(
        eventually(
            "two more rounds counted in the storm resource",
            SETTLE,
            || {
                let (_, st) = storm_state(k, storm_ns, &pods, 10)?;
                one_each(k, &calm_expected)?;
                if count(&st) >= first + 2 * 15 {
                    Ok(st)
                } else {
                    Err(Wait::Retry(format!(
                        "storm occurrenceCount {} (was {first})",
                        count(&st)
                    )))
                }
            },
        ),
        d,
    );
    let n = am.notifications();
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    report(
        "2 storm",
        sent.len(),
        10 + 1 + 3,
        singles.len() + 1 + calm_expected.len(),
        started,
        &format!(
            " (storm alertCount {}, {} affected resources, occurrenceCount {} after repeats)",
            storm_rr["spec"]["storm"]["alertCount"],
            storm_rr["spec"]["storm"]["affectedResources"]
                .as_array()
                .map_or(0, Vec::len),
            count(&storm_rr)
        ),
    );
}

// ---------------------------------------------------------------------------
// 3-5. Faults mid-stream
// ---------------------------------------------------------------------------

/// Pushes `alerts` while `component` is down (since `down`): waits until
/// Alertmanager's webhook requests fail, keeps the fault in place for
/// `OUTAGE`, and checks the sidecar answered 503 meanwhile (how many times).
fn push_during_outage(
    am: &Alertmanager,
    s: &Sidecar,
    alerts: &[Value],
    failed_before: f64,
    down: Instant,
    component: &str,
    d: impl Fn() -> String,
) -> f64 {
    am.push(alerts);
    wait_failed_requests(
        am,
        failed_before,
        2.0,
        &format!("webhook requests to fail while {component} is down"),
    );
    hold_outage(down);
    let refused = sidecar_503s(s);
    assert!(
        refused > 0.0,
        "the sidecar never answered 503 while {component} was down\n{}",
        d()
    );
    refused
}

/// After the fault: every alert has its resource, and it stays exactly one
/// while Alertmanager re-sends every group twice more.
fn settle_exactly_once(
    k: &ApiServer,
    am: &Alertmanager,
    expected: &[Incident],
    groups: usize,
    hint: &str,
    d: impl Fn() -> String,
) -> Vec<Value> {
    check(
        eventually("one resource per alert after the fault", SETTLE, || {
            one_each(k, expected)
        }),
        || format!("{hint}\n{}", d()),
    );
    wait_more_notifications(am, (2 * groups) as f64);
    check(
        one_each(k, expected).map_err(|w| match w {
            Wait::Retry(e) | Wait::Fail(e) => {
                format!("after Alertmanager re-sent every group twice more: {e}")
            }
        }),
        || format!("{hint}\n{}", d()),
    )
}

#[test]
fn s3_redis_restarted_empty_mid_stream_every_alert_once() {
    let started = Instant::now();
    let k = shared_k8s();
    let ns = ["e2e-redis-before", "e2e-redis-during", "e2e-redis-after"];
    for n in ns {
        k.create_namespace(n);
    }
    let mut redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));
    let d = || diag(&[&s], Some(&am), Some(&edge));

    let before = alerts("E2eRedisOutage", ns[0], "api", 4);
    am.push(&before);
    check(
        eventually(
            "the resources of the alerts sent before the outage",
            SETTLE,
            || one_each(k, &incidents(&before)),
        ),
        d,
    );

    let failed = am.notifications().requests_failed;
    redis.stop();
    let down = Instant::now();
    let during = alerts("E2eRedisOutage", ns[1], "api", 4);
    let refused = push_during_outage(&am, &s, &during, failed, down, "Redis", d);
    redis.start_again();
    let outage = down.elapsed();
    let after = alerts("E2eRedisOutage", ns[2], "api", 4);
    am.push(&after);

    let sent: Vec<Value> = [before, during, after].concat();
    let expected = incidents(&sent);
    let hint = "Redis came back EMPTY: an alert that Alertmanager re-sends after the restart \
                is new to the store, gets a new claim with a new first-seen time and so a new \
                resource name (rr-<fingerprint>-<first seen>) beside the one created before \
                the outage";
    let items = settle_exactly_once(k, &am, &expected, ns.len(), hint, d);
    let n = am.notifications();
    report(
        "3 redis restarted empty",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (Redis down {:.1}s; sidecar answered 503 {refused} times; Alertmanager: {} failed \
             requests, {} failed notifications)",
            outage.as_secs_f64(),
            n.requests_failed,
            n.failed
        ),
    );
}

#[test]
fn s4_sidecar_killed_and_envoy_restarted_mid_stream_every_alert_once() {
    let started = Instant::now();
    let k = shared_k8s();
    let ns = [
        "e2e-kill-before",
        "e2e-kill-sidecar",
        "e2e-kill-envoy",
        "e2e-kill-after",
    ];
    for n in ns {
        k.create_namespace(n);
    }
    let redis = RedisServer::start();
    let mut s = sidecar(k, "sidecar", &redis.url(), &[]);
    let mut edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));

    let before = alerts("E2eKill", ns[0], "db", 4);
    am.push(&before);
    check(
        eventually("the resources of the first alerts", SETTLE, || {
            one_each(k, &incidents(&before))
        }),
        || diag(&[&s], Some(&am), Some(&edge)),
    );

    // SIGKILL the sidecar as soon as the next batch has claims in Redis, so
    // the kill is likely to fall between claim and create (or commit).
    let failed = am.notifications().requests_failed;
    let second = alerts("E2eKill", ns[1], "db", 4);
    am.push(&second);
    let pattern = format!("sg:{{{}}}:f:*", ns[1]);
    check(
        eventually("the second batch's first claim in Redis", SETTLE, || {
            if redis.cli(&["KEYS", &pattern]).trim().is_empty() {
                Err(Wait::Retry("no claim yet".into()))
            } else {
                Ok(())
            }
        }),
        || diag(&[&s], Some(&am), Some(&edge)),
    );
    s.kill();
    let claims: Vec<String> = redis
        .cli(&["KEYS", &pattern])
        .lines()
        .map(str::to_string)
        .collect();
    let pending = claims
        .iter()
        .filter(|key| redis.cli(&["HGET", key, "p"]).trim() == "1")
        .count();
    let landed = rrs(k, ns[1]).map_or(0, |r| r.len());
    let down = Instant::now();
    wait_failed_requests(
        &am,
        failed,
        2.0,
        "webhook requests to fail while the sidecar is dead",
    );
    hold_outage(down);
    s.restart();
    let sidecar_down = down.elapsed();
    let mut sent: Vec<Value> = [before, second].concat();
    check(
        eventually("every resource after the sidecar restarted", SETTLE, || {
            one_each(k, &incidents(&sent))
        }),
        || diag(&[&s], Some(&am), Some(&edge)),
    );

    // Envoy goes away (connection refused) while new alerts come in.
    let failed = am.notifications().requests_failed;
    edge.stop();
    let down = Instant::now();
    let third = alerts("E2eKill", ns[2], "db", 4);
    am.push(&third);
    wait_failed_requests(
        &am,
        failed,
        2.0,
        "webhook requests to fail while Envoy is down",
    );
    hold_outage(down);
    edge.start_again();
    let envoy_down = down.elapsed();
    let fourth = alerts("E2eKill", ns[3], "db", 4);
    am.push(&fourth);
    sent.extend(third);
    sent.extend(fourth);

    let expected = incidents(&sent);
    let hint = "the sidecar was killed (SIGKILL) with claims pending, and Envoy restarted";
    let items = settle_exactly_once(k, &am, &expected, ns.len(), hint, || {
        diag(&[&s], Some(&am), Some(&edge))
    });
    let n = am.notifications();
    report(
        "4 sidecar SIGKILL + Envoy restart",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (SIGKILL with {} claims of the batch made, {pending} pending, {landed} of 4 \
             resources written; sidecar down {:.1}s, \
             Envoy down {:.1}s; Alertmanager: {} failed requests, {} failed notifications)",
            claims.len(),
            sidecar_down.as_secs_f64(),
            envoy_down.as_secs_f64(),
            n.requests_failed,
            n.failed
        ),
    );
}

#[test]
fn s5_api_server_unavailable_mid_stream_every_resource_once() {
    let started = Instant::now();
    // Private: this scenario stops it.
    let mut k = ApiServer::start();
    prepare(&k);
    let ns = ["e2e-api-before", "e2e-api-during", "e2e-api-after"];
    for n in ns {
        k.create_namespace(n);
    }
    let redis = RedisServer::start();
    let s = sidecar(&k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));

    let before = alerts("E2eApiOutage", ns[0], "queue", 4);
    am.push(&before);
    check(
        eventually(
            "the resources of the alerts sent before the outage",
            SETTLE,
            || one_each(&k, &incidents(&before)),
        ),
        || diag(&[&s], Some(&am), Some(&edge)),
    );

    let failed = am.notifications().requests_failed;
    k.stop();
    let down = Instant::now();
    let during = alerts("E2eApiOutage", ns[1], "queue", 4);
    let refused = push_during_outage(&am, &s, &during, failed, down, "the API server", || {
        diag(&[&s], Some(&am), Some(&edge))
    });
    k.restart();
    let outage = down.elapsed();
    let after = alerts("E2eApiOutage", ns[2], "queue", 4);
    am.push(&after);

    let sent: Vec<Value> = [before, during, after].concat();
    let expected = incidents(&sent);
    let hint = "the API server was down: creates failed, claims were released, 503s answered";
    let items = settle_exactly_once(&k, &am, &expected, ns.len(), hint, || {
        diag(&[&s], Some(&am), Some(&edge))
    });
    let n = am.notifications();
    report(
        "5 API server unavailable",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (API server down {:.1}s; sidecar answered 503 {refused} times; Alertmanager: {} \
             failed requests, {} failed notifications)",
            outage.as_secs_f64(),
            n.requests_failed,
            n.failed
        ),
    );
}

// ---------------------------------------------------------------------------
// 6. Rate limit with an Alertmanager sender
// ---------------------------------------------------------------------------

/// Burst 3, then 2 requests per second; 8 groups of one alert each notify at
/// once. Succeeded groups are not re-sent (repeat interval 1 h), failed ones
/// at their next group interval (4 s).
fn rate_limited_chain(
    ns: &str,
    status: u16,
) -> (RedisServer, Sidecar, Edge, Alertmanager, Vec<Value>) {
    let k = shared_k8s();
    k.create_namespace(ns);
    let redis = RedisServer::start();
    let s = sidecar(
        k,
        "sidecar",
        &redis.url(),
        &[("SIGNALGATE_STORM_THRESHOLD", "100")],
    );
    let limit = json!({"requests_per_minute": 120, "burst": 3, "over_limit_status": status});
    let edge = Edge::start(&limit.to_string(), &[s.api.port()]);
    let am = Alertmanager::start(
        &Receiver::new(&edge.url(ALERTS_PATH))
            .group_by(&["..."])
            .group_interval(Duration::from_secs(4))
            .repeat_interval(Duration::from_secs(3600)),
    );
    let burst = alerts("E2eBurst", ns, "svc", 8);
    (redis, s, edge, am, burst)
}

#[test]
fn s6a_rate_limited_with_503_alertmanager_retries_and_delivers_everything() {
    let started = Instant::now();
    let k = shared_k8s();
    let ns = "e2e-ratelimit-503";
    let (_redis, s, edge, am, burst) = rate_limited_chain(ns, 503);
    let pushed = Instant::now();
    am.push(&burst);
    let expected = incidents(&burst);
    let d = || diag(&[&s], Some(&am), Some(&edge));
    let items = check(
        eventually("every alert of the burst delivered", SETTLE, || {
            one_each(k, &expected)
        }),
        d,
    );
    let elapsed = pushed.elapsed();
    let n = am.notifications();
    let limited = edge.stat("signalgate_rate_limited");
    assert!(
        limited >= 1,
        "8 simultaneous notifications should exceed a burst of 3\n{}",
        d()
    );
    assert_eq!(
        n.requests_failed, limited as f64,
        "every failed webhook request should be a 503 from the rate limit: {n:?}"
    );
    assert_eq!(
        n.failed, 0.0,
        "with 503 every notification succeeds within Alertmanager's own retries: {n:?}"
    );
    assert_eq!(
        n.total, 8.0,
        "one notification per group, none repeated: {n:?}"
    );
    report(
        "6a rate limit, over_limit_status 503",
        burst.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " ({limited} requests refused with 503 and retried by Alertmanager; \
             {} notifications, 0 failed; all delivered {:.1}s after the push)",
            n.total,
            elapsed.as_secs_f64()
        ),
    );
}

#[test]
fn s6b_rate_limited_with_429_alertmanager_drops_until_the_next_group_interval() {
    let started = Instant::now();
    let k = shared_k8s();
    let ns = "e2e-ratelimit-429";
    let (_redis, s, edge, am, burst) = rate_limited_chain(ns, 429);
    am.push(&burst);
    let expected = incidents(&burst);
    let d = || diag(&[&s], Some(&am), Some(&edge));

    // The first flush of all 8 groups: some refused with 429, and each of
    // those is a failed notification at once: Alertmanager does not retry.
    let first = check(
        eventually(
            "the first webhook request of each of the 8 groups to complete",
            Duration::from_secs(30),
            || {
                let n = am.notifications();
                if n.requests >= 8.0 && n.failed == n.requests_failed {
                    Ok(n)
                } else {
                    Err(Wait::Retry(format!("{n:?}")))
                }
            },
        ),
        d,
    );
    let at_first = Instant::now();
    let present = rrs(k, ns).unwrap_or_else(|e| panic!("{e}"));
    let limited = edge.stat("signalgate_rate_limited");
    assert!(
        first.failed >= 1.0,
        "8 simultaneous notifications should exceed a burst of 3: {first:?}\n{}",
        d()
    );
    assert_eq!(
        first.requests, 8.0,
        "a 429 must not be retried within the flush: {first:?}"
    );
    assert_eq!(
        first.failed, limited as f64,
        "every failed notification is a 429 of the filter: {first:?}"
    );
    assert_eq!(
        present.len() as f64 + first.failed,
        8.0,
        "right after the first flush, the refused alerts have no resource ({} present, \
         {} refused)",
        present.len(),
        first.failed
    );

    // At later group intervals the refused groups are sent again (tokens
    // have come back) and finally everything is there.
    let items = check(
        eventually(
            "the refused alerts to arrive at a later group interval",
            SETTLE,
            || one_each(k, &expected),
        ),
        d,
    );
    let late = at_first.elapsed();
    let n = am.notifications();
    assert!(
        n.total > 8.0,
        "the refused groups must have been notified again: {n:?}"
    );
    report(
        "6b rate limit, over_limit_status 429",
        burst.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (first flush: {} of 8 notifications refused with 429, failed without retry, \
             {} resources present; the rest arrived {:.1}s later at later group intervals; \
             in all {} notifications, {} failed)",
            first.failed,
            present.len(),
            late.as_secs_f64(),
            n.total,
            n.failed
        ),
    );
}

// ---------------------------------------------------------------------------
// 7. Two sidecars behind one Envoy cluster, Redis Cluster
// ---------------------------------------------------------------------------

#[test]
fn s7_two_sidecars_on_a_redis_cluster_make_one_resource_per_incident() {
    let started = Instant::now();
    let k = shared_k8s();
    let (happy, storm_ns) = (["e2e-duo-a", "e2e-duo-b"], "e2e-duo-storm");
    for ns in happy.iter().chain([&storm_ns]) {
        k.create_namespace(ns);
    }
    let cluster = RedisCluster::start(3);
    let s1 = sidecar(k, "sidecar-1", &cluster.url(), &[]);
    let s2 = sidecar(k, "sidecar-2", &cluster.url(), &[]);
    let edge = Edge::start(OPEN, &[s1.api.port(), s2.api.port()]);
    // One group per alert: many concurrent requests, spread over both sidecars.
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)).group_by(&["..."]));
    let d = || diag(&[&s1, &s2], Some(&am), Some(&edge));

    let mut calm = alerts("KubeDeploymentReplicasMismatch", happy[0], "web", 3);
    calm.extend(alerts("KubeDeploymentReplicasMismatch", happy[1], "web", 3));
    let storm = alerts("PodNotReady", storm_ns, "job", 25);
    let pods: Vec<String> = incidents(&storm).into_iter().map(|i| i.pod).collect();
    let calm_expected = incidents(&calm);
    let sent: Vec<Value> = [calm.clone(), storm.clone()].concat();
    am.push(&sent);

    let (_, storm_rr) = check(
        eventually(
            "6 resources, and 10 + 1 storm resource in the storm namespace",
            SETTLE,
            || {
                one_each(k, &calm_expected)?;
                storm_state(k, storm_ns, &pods, 10)
            },
        ),
        d,
    );
    let first = count(&storm_rr);
    let storm_rr = check(
        eventually(
            "two more rounds counted in the storm resource",
            SETTLE,
            || {
                one_each(k, &calm_expected)?;
                let (_, st) = storm_state(k, storm_ns, &pods, 10)?;
                if count(&st) >= first + 2 * 15 {
                    Ok(st)
                } else {
                    Err(Wait::Retry(format!(
                        "storm occurrenceCount {} (was {first})",
                        count(&st)
                    )))
                }
            },
        ),
        d,
    );
    let (one, two) = (firing_signals(&s1), firing_signals(&s2));
    assert!(
        one > 0 && two > 0,
        "both sidecars should have served signals: {one} and {two}"
    );
    let n = am.notifications();
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    report(
        "7 two sidecars + Redis Cluster",
        sent.len(),
        calm_expected.len() + 10 + 1,
        calm_expected.len() + 10 + 1,
        started,
        &format!(
            " (signals served: sidecar-1 {one}, sidecar-2 {two}; storm alertCount {}, \
             occurrenceCount {})",
            storm_rr["spec"]["storm"]["alertCount"],
            count(&storm_rr)
        ),
    );
}

// ---------------------------------------------------------------------------
// 8. Kubernetes Events, as kubernetes-event-exporter posts them
// ---------------------------------------------------------------------------

/// RFC 3339 with whole seconds (what `metav1.Time` writes).
fn now_secs() -> String {
    let t = signalgate_tests::alertmanager::rfc3339(std::time::SystemTime::now());
    format!("{}Z", &t[..19])
}

/// A Warning event about `pod` as the kubelet writes it (count 1).
fn kubelet_event(ns: &str, name: &str, pod: &str, reason: &str, message: &str) -> Value {
    let now = now_secs();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "v1",
            "uid": "8d3c1f9e-0000-4000-8000-00000000e2e0", "fieldPath": "spec.containers{web}"
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "kubelet", "host": "node-e2e"},
        "reportingComponent": "kubelet",
        "reportingInstance": "node-e2e"
    })
}

#[test]
fn s8_kubernetes_events_are_deduplicated_across_count_increments() {
    let started = Instant::now();
    let k = shared_k8s();
    let ns = "e2e-events";
    k.create_namespace(ns);
    let redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let tmp = temp_dir("e2e-events");

    // (event name, pod, reason, message, times the count grows to)
    let events = [
        (
            "web-0.backoff",
            "web-0",
            "BackOff",
            "Back-off restarting failed container web",
            4u64,
        ),
        (
            "web-0.unhealthy",
            "web-0",
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
            2,
        ),
    ];
    let mut posts = Vec::new();
    for (name, pod, reason, message, times) in events {
        let file: PathBuf = tmp.path().join(format!("{name}.json"));
        let event = kubelet_event(ns, name, pod, reason, message);
        std::fs::write(&file, event.to_string()).expect("write event");
        k.kubectl_ok(&["create", "-f", file.to_str().expect("utf-8"), "-o", "name"]);
        for c in 1..=times {
            if c > 1 {
                // The kubelet saw it again: count grows (client-go's event correlation).
                let patch = json!({"count": c, "lastTimestamp": now_secs()}).to_string();
                k.kubectl_ok(&[
                    "patch",
                    "event",
                    name,
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    &patch,
                ]);
            }
            // kubernetes-event-exporter: the event as read from the API,
            // plus clusterName and the involved object's labels, one per request.
            let mut posted: Value = serde_json::from_str(
                &k.kubectl_ok(&["get", "event", name, "-n", ns, "-o", "json"]),
            )
            .expect("kubectl json");
            assert_eq!(posted["count"], c, "{posted}");
            posted["clusterName"] = json!("e2e");
            posted["involvedObject"]["labels"] = json!({"app": "web"});
            let body = serde_json::to_vec(&posted).expect("json");
            let answer = client::post_json(&edge.url(EVENTS_PATH), &body, &[])
                .unwrap_or_else(|e| panic!("POST event: {e}"));
            let want = if c == 1 { 201 } else { 202 };
            assert_eq!(
                answer.status,
                want,
                "{reason} count {c}: {}\n{}",
                answer.body,
                s.log_tail(20)
            );
            posts.push((reason, c, answer.status));
        }
    }

    let expected: BTreeMap<&str, u64> = events.iter().map(|e| (e.2, e.4)).collect();
    let items = check(
        eventually(
            "one resource per event whose occurrenceCount is the number of posts",
            SETTLE,
            || {
                let items = rrs(k, ns)?;
                let got: BTreeMap<String, u64> = items
                    .iter()
                    .map(|r| {
                        (
                            r["spec"]["signalName"].as_str().unwrap_or("").to_string(),
                            count(r),
                        )
                    })
                    .collect();
                let want: BTreeMap<String, u64> =
                    expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                if items.len() > expected.len() {
                    return Err(Wait::Fail(format!("too many resources: {got:?}")));
                }
                if got == want {
                    Ok(items)
                } else {
                    Err(Wait::Retry(format!(
                        "resources by reason with occurrenceCount: {got:?}, expected {want:?}"
                    )))
                }
            },
        ),
        || diag(&[&s], None, Some(&edge)),
    );
    for rr in &items {
        let spec = &rr["spec"];
        assert_eq!(spec["signalType"], "kubernetes-event", "{rr}");
        assert_eq!(spec["severity"], "warning", "{rr}");
        assert_eq!(
            spec["targetResource"],
            json!({"kind": "Pod", "name": "web-0", "namespace": ns}),
            "{rr}"
        );
    }
    report_as(
        "8 kubernetes events",
        "events posted",
        posts.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (posts: {}; occurrenceCount {:?})",
            posts
                .iter()
                .map(|(r, c, st)| format!("{r}#{c}->{st}"))
                .collect::<Vec<_>>()
                .join(" "),
            items
                .iter()
                .map(|r| format!(
                    "{}={}",
                    r["spec"]["signalName"].as_str().unwrap_or("?"),
                    count(r)
                ))
                .collect::<Vec<_>>()
        ),
    );
}

// ---------------------------------------------------------------------------
// make demo
// ---------------------------------------------------------------------------

/// `scripts/demo.sh` with `DEMO_EXIT=1` on free ports: it starts the chain
/// (Alertmanager, Envoy + filter, sidecar on the in-memory store and the
/// directory sink), fires its storm, and leaves the expected resources.
#[test]
fn demo_script_starts_the_chain_and_writes_the_storm() {
    use std::os::unix::process::CommandExt;

    let started = Instant::now();
    let out = temp_dir("e2e-demo");
    let mut cmd = Command::new("bash");
    cmd.arg(workspace::root().join("scripts/demo.sh"))
        .env("DEMO_EXIT", "1")
        .env("DEMO_DIR", out.path())
        .env("DEMO_LISTEN_PORT", free_port().to_string())
        .env("DEMO_ENVOY_ADMIN_PORT", free_port().to_string())
        .env("DEMO_SIDECAR_PORT", free_port().to_string())
        .env("DEMO_SIDECAR_ADMIN_PORT", free_port().to_string())
        .env("DEMO_ALERTMANAGER_PORT", free_port().to_string())
        .env("SIGNALGATE_SIDECAR_BIN", sidecar::binary())
        .env("SIGNALGATE_FILTER_WASM", wasm_path())
        .env("ENVOY_BIN", envoy_bin())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a hung demo is killed with its children.
        .process_group(0);
    let mut child = cmd.spawn().expect("run scripts/demo.sh");
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for demo.sh") {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: signals the process group we created above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = child.wait();
            panic!("scripts/demo.sh did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().expect("demo.sh output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs = || {
        ["sidecar.log", "envoy.log", "alertmanager.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(out.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                format!(
                    "--- {f} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        status.success(),
        "demo.sh exited {status}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        logs()
    );
    assert!(stdout.contains("signalgate demo is running"), "{stdout}");

    let resources = sidecar::read_resources(&out.path().join("remediationrequests"));
    let by_ns = |ns: &str| -> Vec<&Value> {
        resources
            .iter()
            .filter(|r| r["metadata"]["namespace"] == ns)
            .collect()
    };
    let shop = by_ns("shop");
    let storms: Vec<&&Value> = shop.iter().filter(|r| is_storm(r)).collect();
    assert_eq!(
        (
            shop.len(),
            storms.len(),
            by_ns("payments").len(),
            by_ns("search").len()
        ),
        (11, 1, 2, 1),
        "expected shop 10 + 1 storm, payments 2, search 1: {resources:?}"
    );
    assert_eq!(storms[0]["spec"]["storm"]["alertCount"], 5, "{}", storms[0]);
    report(
        "demo (scripts/demo.sh, DEMO_EXIT=1)",
        18,
        14,
        resources.len(),
        started,
        "",
    );
}
