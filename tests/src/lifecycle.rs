//! Incident lifecycle end to end (issue 18): one resource per firing
//! instance (an alert's `startsAt`, an event series' first timestamp) however
//! long it fires, its resolution recorded, and the remediation controller's
//! `status.phase` respected.
//!
//! What the scenarios (`tests/tests/lifecycle_*.rs`) share: alerts and
//! events at chosen instants, the sidecar's answer for one signal, a view of
//! a resource's lifecycle fields for messages, and the controller, played
//! by the test: on the directory sink by rewriting the resource's file (a
//! temporary file in the same directory renamed over it), on the kube sink
//! as an identity of its own whose RBAC allows only `patch` on
//! `remediationrequests/status`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use signalgate_model::rfc3339;

use crate::alertmanager::Alertmanager;
use crate::client::Answer;
use crate::e2e::wait::{check, eventually, firing_signals, Wait};
use crate::k8s::{ApiServer, Identity};
use crate::payloads;
use crate::sidecar::Sidecar;

/// Who the controller is on the kube sink: a user of its own, reached by
/// impersonation (the admin token with `Impersonate-User`), so the API
/// server authorizes every request with this user's RBAC only.
pub const CONTROLLER_USER: &str = "signalgate-test-controller";

// ---------------------------------------------------------------------------
// Clock
// ---------------------------------------------------------------------------

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time after 1970")
        .as_millis() as i64
}

/// `ms` as RFC 3339 with milliseconds, e.g. `2026-11-26T20:57:15.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339::format_unix_millis(ms)
}

/// An RFC 3339 timestamp as milliseconds since the epoch.
pub fn parse_ms(s: &str) -> Option<i64> {
    let t = rfc3339::parse(s)?;
    Some(t.unix_seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// Waits until the wall clock has passed `deadline_ms` (a time the contract
/// is about, e.g. the end of a dedup window or of the re-open cooldown: there
/// is no condition to poll but the clock).
pub fn wait_for_clock(deadline_ms: i64) {
    loop {
        let left = deadline_ms - now_ms();
        if left < 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(left.clamp(1, 50) as u64));
    }
}

// ---------------------------------------------------------------------------
// Signals at chosen instants
// ---------------------------------------------------------------------------

/// The alert of [`payloads::alert`] firing since `starts_ms` (as Alertmanager
/// sends it: `endsAt` zero).
pub fn firing_alert(name: &str, namespace: &str, pod: &str, starts_ms: i64) -> Value {
    let mut a = payloads::alert(name, namespace, pod);
    a["startsAt"] = json!(rfc3339_ms(starts_ms));
    a
}

/// The same alert, resolved at `ends_ms`.
pub fn resolved_alert(
    name: &str,
    namespace: &str,
    pod: &str,
    starts_ms: i64,
    ends_ms: i64,
) -> Value {
    let mut a = firing_alert(name, namespace, pod, starts_ms);
    a["status"] = json!("resolved");
    a["endsAt"] = json!(rfc3339_ms(ends_ms));
    a
}

/// A webhook of one alert.
pub fn hook(alert: Value) -> Value {
    payloads::webhook(vec![alert])
}

/// An Alertmanager API v2 alert about `pod` (to push): active from
/// `starts_ms` until `ends_ms` (in the future: firing; now: resolved).
pub fn api_alert(name: &str, namespace: &str, pod: &str, starts_ms: i64, ends_ms: i64) -> Value {
    json!({
        "labels": {
            "alertname": name, "namespace": namespace, "pod": pod, "severity": "critical"
        },
        "annotations": {"summary": format!("{name} on {namespace}/{pod}")},
        "startsAt": rfc3339_ms(starts_ms),
        "endsAt": rfc3339_ms(ends_ms),
        "generatorURL": "http://prometheus.e2e:9090/graph",
    })
}

/// A core/v1 Warning event about `pod` as kubernetes-event-exporter posts
/// it: the series began at `first_ms`, seen `count` times, last at `last_ms`.
pub fn core_event(
    namespace: &str,
    pod: &str,
    reason: &str,
    first_ms: i64,
    count: u64,
    last_ms: i64,
) -> Value {
    // metav1.Time: whole seconds.
    let secs = |ms: i64| rfc3339::format_unix_seconds(ms.div_euclid(1000));
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{pod}.{first_ms:x}"), "namespace": namespace},
        "involvedObject": {
            "kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "v1",
            "fieldPath": "spec.containers{app}"
        },
        "reason": reason,
        "message": format!("{reason} for {pod}"),
        "type": "Warning",
        "count": count,
        "firstTimestamp": secs(first_ms),
        "lastTimestamp": secs(last_ms),
        "source": {"component": "kubelet", "host": "node-e2e"},
        "reportingComponent": "kubelet",
        "reportingInstance": "node-e2e",
        "clusterName": "e2e"
    })
}

/// An events.k8s.io/v1 Warning event about deployment `name`: first
/// observed at `first_ms` (`eventTime`), seen `count` times (`series`),
/// last at `last_ms`.
pub fn series_event(
    namespace: &str,
    name: &str,
    reason: &str,
    first_ms: i64,
    count: u64,
    last_ms: i64,
) -> Value {
    // MicroTime.
    let micros = |ms: i64| rfc3339_ms(ms).replace('Z', "000Z");
    let mut event = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{first_ms:x}"), "namespace": namespace},
        "regarding": {"kind": "Deployment", "namespace": namespace, "name": name,
                      "apiVersion": "apps/v1"},
        "reason": reason,
        "note": format!("{reason} for {name}"),
        "type": "Warning",
        "action": "Scaling",
        "eventTime": micros(first_ms),
        "reportingController": "deployment-controller",
        "reportingInstance": "kcm-e2e"
    });
    if count > 1 {
        event["series"] = json!({"count": count, "lastObservedTime": micros(last_ms)});
    }
    event
}

// ---------------------------------------------------------------------------
// The sidecar's answer for one signal
// ---------------------------------------------------------------------------

/// What the sidecar answered for a request of exactly one signal.
#[derive(Debug, Clone)]
pub struct Answered {
    pub status: u16,
    pub outcome: String,
    /// `namespace/name`, when the answer names one.
    pub resource: Option<String>,
    pub body: String,
}

/// The one signal of `answer`; panics (with the body) unless it is a 2xx
/// naming exactly one signal.
pub fn single(answer: &Answer) -> Answered {
    assert!(
        (200..300).contains(&answer.status),
        "expected a 2xx answer, got {}: {}",
        answer.status,
        answer.body
    );
    let json = answer.json();
    let signals = json["signals"]
        .as_array()
        .unwrap_or_else(|| panic!("no signals in the answer: {}", answer.body));
    assert_eq!(signals.len(), 1, "one signal expected: {}", answer.body);
    Answered {
        status: answer.status,
        outcome: signals[0]["outcome"].as_str().unwrap_or("").to_string(),
        resource: signals[0]["resource"].as_str().map(str::to_string),
        body: answer.body.clone(),
    }
}

/// Checks the answer for one signal: `status`, `outcome`; returns the
/// resource it names (panics with `what` and `log` otherwise).
pub fn expect(
    answer: &Answer,
    status: u16,
    outcome: &str,
    what: &str,
    log: &str,
) -> Option<String> {
    let a = single(answer);
    assert!(
        a.status == status && a.outcome == outcome,
        "{what}: expected {status} {outcome}, got {} {} ({})\nsidecar log:\n{log}",
        a.status,
        a.outcome,
        a.body
    );
    a.resource
}

// ---------------------------------------------------------------------------
// A resource's lifecycle fields
// ---------------------------------------------------------------------------

/// `namespace/name` of a resource.
pub fn key(rr: &Value) -> String {
    format!(
        "{}/{}",
        rr["metadata"]["namespace"].as_str().unwrap_or("?"),
        rr["metadata"]["name"].as_str().unwrap_or("?")
    )
}

pub fn occurrence_count(rr: &Value) -> u64 {
    rr["spec"]["deduplication"]["occurrenceCount"]
        .as_u64()
        .unwrap_or(0)
}

/// `spec.deduplication.firingCount` (`None`: the resource has no such field).
pub fn firing_count(rr: &Value) -> Option<u64> {
    rr["spec"]["deduplication"]["firingCount"].as_u64()
}

/// `spec.deduplication.lastFiringTime` in ms.
pub fn last_firing_ms(rr: &Value) -> Option<i64> {
    rr["spec"]["deduplication"]["lastFiringTime"]
        .as_str()
        .and_then(parse_ms)
}

/// The firing instance a resource counts last: `lastFiringTime`, else
/// `firingTime` (ms).
pub fn instance_ms(rr: &Value) -> Option<i64> {
    last_firing_ms(rr).or_else(|| rr["spec"]["firingTime"].as_str().and_then(parse_ms))
}

/// `spec.resolution.resolvedAt` in ms (`None`: open, or no such field).
pub fn resolved_at_ms(rr: &Value) -> Option<i64> {
    rr["spec"]["resolution"]["resolvedAt"]
        .as_str()
        .and_then(parse_ms)
}

/// Whether `spec.resolution` is set at all.
pub fn is_resolved(rr: &Value) -> bool {
    !rr["spec"]["resolution"].is_null()
}

pub fn phase(rr: &Value) -> Option<&str> {
    rr["status"]["phase"].as_str()
}

/// One line per resource with its lifecycle fields, for messages.
pub fn summary(rrs: &[Value]) -> String {
    if rrs.is_empty() {
        return "(none)".to_string();
    }
    rrs.iter()
        .map(|rr| {
            let d = &rr["spec"]["deduplication"];
            format!(
                "{} occurrenceCount={} firingCount={} lastFiringTime={} firingTime={} \
                 receivedTime={} resolution={} status={}",
                key(rr),
                d["occurrenceCount"],
                d["firingCount"],
                d["lastFiringTime"],
                rr["spec"]["firingTime"],
                rr["spec"]["receivedTime"],
                rr["spec"]["resolution"],
                rr["status"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The resource named `key` among `rrs`.
pub fn find<'a>(rrs: &'a [Value], key_: &str) -> Option<&'a Value> {
    rrs.iter().find(|rr| key(rr) == key_)
}

// ---------------------------------------------------------------------------
// Waiting on the resources of a scenario
// ---------------------------------------------------------------------------

/// Reads a scenario's resources (of its namespace, in the sink under test).
pub type List<'a> = &'a dyn Fn() -> Result<Vec<Value>, String>;

/// Polls `list` until `cond` holds (its `Err` says why not yet), up to
/// `timeout`; fails at once when there are more than `max` resources (a
/// resource too many never goes away). Panics with the reason, the
/// resources and `diag()`.
pub fn wait_state<T>(
    what: &str,
    timeout: Duration,
    list: List,
    max: usize,
    mut cond: impl FnMut(&[Value]) -> Result<T, String>,
    diag: &dyn Fn() -> String,
) -> T {
    check(
        eventually(what, timeout, || {
            let rrs = list().map_err(Wait::Retry)?;
            if rrs.len() > max {
                return Err(Wait::Fail(format!(
                    "expected {max} resource(s), found {}:\n  {}",
                    rrs.len(),
                    summary(&rrs)
                )));
            }
            cond(&rrs).map_err(|why| Wait::Retry(format!("{why}; resources:\n  {}", summary(&rrs))))
        }),
        diag,
    )
}

/// Pushes `alert` (API v2, firing) to Alertmanager and waits until it was
/// notified `1 + resends` times (each re-send past the sidecar's short dedup
/// window) while `list` holds exactly one resource whose occurrence count
/// is every firing signal the sidecar processed: the count rose with each
/// re-send. Returns the resource.
pub fn fire_across_windows(
    am: &Alertmanager,
    s: &Sidecar,
    list: List,
    alert: &Value,
    resends: u32,
    diag: &dyn Fn() -> String,
) -> Value {
    let before = am.notifications().total;
    am.push(std::slice::from_ref(alert));
    let mut counts: Vec<u64> = Vec::new();
    let rr = wait_state(
        &format!("one resource counting the first notification and {resends} re-sends"),
        Duration::from_secs(30 + 10 * u64::from(resends)),
        list,
        1,
        |rrs| {
            let sent = am.notifications().total - before;
            let rr = rrs.first().ok_or("no resource yet")?;
            let count = occurrence_count(rr);
            if counts.last() != Some(&count) {
                counts.push(count);
            }
            let processed = firing_signals(s);
            if sent >= f64::from(1 + resends) && count == processed {
                Ok(rr.clone())
            } else {
                Err(format!(
                    "{sent} notifications, occurrenceCount {count}, firing signals processed \
                     {processed}"
                ))
            }
        },
        diag,
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && occurrence_count(&rr) > u64::from(resends),
        "occurrenceCount must rise with each re-send; seen {counts:?}: {}",
        summary(std::slice::from_ref(&rr))
    );
    rr
}

/// Resolves `alert` (API v2) in Alertmanager at `ends_ms` (now) and waits
/// until resource `resource` records the resolution (`resolvedAt` = the
/// alert's `endsAt`) while `list` holds `n` resources. Returns it.
pub fn resolve_via_alertmanager(
    am: &Alertmanager,
    list: List,
    n: usize,
    resource: &str,
    alert: &Value,
    ends_ms: i64,
    diag: &dyn Fn() -> String,
) -> Value {
    let mut resolved = alert.clone();
    resolved["endsAt"] = json!(rfc3339_ms(ends_ms));
    am.push(&[resolved]);
    wait_resolution(list, n, resource, ends_ms, Duration::from_secs(20), diag)
}

/// Waits until resource `resource` records the resolution at `ends_ms`
/// while `list` holds `n` resources. Returns it.
pub fn wait_resolution(
    list: List,
    n: usize,
    resource: &str,
    ends_ms: i64,
    timeout: Duration,
    diag: &dyn Fn() -> String,
) -> Value {
    wait_state(
        &format!(
            "{resource} to record its resolution at {}",
            rfc3339_ms(ends_ms)
        ),
        timeout,
        list,
        n,
        |rrs| {
            let rr = find(rrs, resource).ok_or(format!("no {resource}"))?;
            let received = rr["spec"]["resolution"]["receivedAt"]
                .as_str()
                .and_then(parse_ms);
            if rrs.len() == n && resolved_at_ms(rr) == Some(ends_ms) && received.is_some() {
                Ok(rr.clone())
            } else {
                Err(format!(
                    "{} resources, {resource} resolution {}",
                    rrs.len(),
                    rr["spec"]["resolution"]
                ))
            }
        },
        diag,
    )
}

/// Whether the new firing at `instance` is absorbed into `resource`
/// (`firings` firing instances, open again) and nothing else was created.
pub fn absorbed_into(
    rrs: &[Value],
    resource: &str,
    instance: i64,
    firings: u64,
) -> Result<Value, String> {
    let rr = find(rrs, resource).ok_or(format!("no {resource}"))?;
    if instance_ms(rr) == Some(instance) && firing_count(rr) == Some(firings) && !is_resolved(rr) {
        Ok(rr.clone())
    } else {
        Err(format!(
            "{resource} should count the firing at {} as firing {firings}, open",
            rfc3339_ms(instance)
        ))
    }
}

// ---------------------------------------------------------------------------
// The controller on the directory sink
// ---------------------------------------------------------------------------

/// Sets `status` on the directory sink's resource `resource`
/// (`namespace/name`) as a controller would: the file is read, its
/// `status` replaced, and the result written to a temporary file in the
/// same directory that is renamed over it.
pub fn dir_set_status(sink_dir: &Path, resource: &str, status: Value) {
    let (ns, name) = resource
        .split_once('/')
        .unwrap_or_else(|| panic!("{resource:?} is not namespace/name"));
    let path = sink_dir.join(ns).join(format!("{name}.json"));
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut rr: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    rr["status"] = status;
    let tmp = path.with_file_name(format!(".controller-{}-{name}", std::process::id()));
    let mut text = serde_json::to_vec_pretty(&rr).expect("json");
    text.push(b'\n');
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, &path).unwrap_or_else(|e| {
        panic!(
            "cannot rename {} over {}: {e}",
            tmp.display(),
            path.display()
        )
    });
}

// ---------------------------------------------------------------------------
// The controller on the kube sink
// ---------------------------------------------------------------------------

/// The remediation controller against a real API server: [`CONTROLLER_USER`],
/// whose RBAC allows `patch` on `remediationrequests/status` and nothing else.
pub struct Controller {
    http: ureq::Agent,
    url: String,
    admin_token: String,
}

impl Controller {
    /// Grants [`CONTROLLER_USER`] its one permission (idempotent) and
    /// returns a client acting as that user.
    pub fn install(k: &ApiServer) -> Controller {
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": CONTROLLER_USER},
            "rules": [{
                "apiGroups": ["signalgate.io"],
                "resources": ["remediationrequests/status"],
                "verbs": ["patch"]
            }]
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROLLER_USER},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": CONTROLLER_USER
            },
            "subjects": [{
                "apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                "name": CONTROLLER_USER
            }]
        });
        for (path, body) in [
            ("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                binding,
            ),
        ] {
            let (status, text) = k.request(Identity::Admin, "POST", path, Some(&body));
            assert!(
                status == 201 || status == 409,
                "POST {path}: HTTP {status}: {text}"
            );
        }
        let ca = std::fs::read(k.ca_path()).expect("read the API server's CA");
        Controller {
            http: crate::k8s::http_agent(&ca),
            url: k.url(),
            admin_token: k.admin_token().to_string(),
        }
    }

    /// A JSON merge patch as the controller to `path` (under the
    /// resource's URL): `""` for the resource, `"/status"` for its status.
    fn patch(&self, ns: &str, name: &str, path: &str, patch: &Value) -> (u16, String) {
        let url = format!(
            "{}/apis/signalgate.io/v1alpha1/namespaces/{ns}/remediationrequests/{name}{path}",
            self.url
        );
        let body = serde_json::to_vec(patch).expect("json");
        let mut r = self
            .http
            .patch(&url)
            .header("Authorization", &format!("Bearer {}", self.admin_token))
            .header("Impersonate-User", CONTROLLER_USER)
            .header("Content-Type", "application/merge-patch+json")
            .send(&body[..])
            .unwrap_or_else(|e| panic!("PATCH {url}: {e}"));
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    }

    /// Sets `status` of resource `resource` (`namespace/name`) through the
    /// status subresource; panics unless the API server answers 200.
    /// Returns the resource as the API server then holds it.
    pub fn set_status(&self, resource: &str, status: Value) -> Value {
        let (ns, name) = resource
            .split_once('/')
            .unwrap_or_else(|| panic!("{resource:?} is not namespace/name"));
        let (code, text) = self.patch(ns, name, "/status", &json!({ "status": status }));
        assert_eq!(
            code, 200,
            "the controller's status patch of {resource}: {text}"
        );
        serde_json::from_str(&text).expect("the patched resource is JSON")
    }

    /// The status code of a spec patch as the controller (its RBAC
    /// forbids it: 403).
    pub fn try_patch_spec(&self, resource: &str) -> u16 {
        let (ns, name) = resource
            .split_once('/')
            .unwrap_or_else(|| panic!("{resource:?} is not namespace/name"));
        let patch = json!({"spec": {"severity": "info"}});
        self.patch(ns, name, "", &patch).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_milliseconds() {
        let ms = 1_795_726_635_123;
        assert_eq!(rfc3339_ms(ms), "2026-11-26T20:57:15.123Z");
        assert_eq!(parse_ms(&rfc3339_ms(ms)), Some(ms));
        assert_eq!(parse_ms("2026-11-26T20:57:15.123456789Z"), Some(ms));
        assert_eq!(parse_ms("2026-11-26T20:57:15Z"), Some(ms - 123));
    }

    #[test]
    fn events_carry_their_series() {
        let e = core_event(
            "ns",
            "p",
            "BackOff",
            1_795_726_635_123,
            3,
            1_795_726_640_000,
        );
        assert_eq!(e["firstTimestamp"], "2026-11-26T20:57:15Z");
        assert_eq!(e["count"], 3);
        let s = series_event("ns", "d", "Fail", 1_795_726_635_123, 1, 1_795_726_635_123);
        assert_eq!(s["eventTime"], "2026-11-26T20:57:15.123000Z");
        assert!(s.get("series").is_none());
        let s = series_event("ns", "d", "Fail", 1_795_726_635_123, 2, 1_795_726_640_000);
        assert_eq!(s["series"]["count"], 2);
    }
}
