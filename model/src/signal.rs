//! The normalised signal the sidecar works on, built from either payload.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::alert_labels::LabelView;
use crate::alertmanager::{Alert, Webhook};
use crate::kube_event::KubeEvent;
use crate::labels::Labels;
use crate::namespace::NamespaceFrom;
use crate::rfc3339;
use crate::text::Text;

/// Which payload a signal came from; also the last segment of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignalType {
    Prometheus,
    KubernetesEvent,
}

/// Common prefix of the ingestion paths.
pub const PATH_PREFIX: &str = "/api/v1/signals/";

impl SignalType {
    pub const ALL: [SignalType; 2] = [SignalType::Prometheus, SignalType::KubernetesEvent];

    /// `prometheus` or `kubernetes-event`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Prometheus => "prometheus",
            SignalType::KubernetesEvent => "kubernetes-event",
        }
    }

    /// The ingestion path: `/api/v1/signals/<type>`.
    pub fn path(self) -> &'static str {
        match self {
            SignalType::Prometheus => "/api/v1/signals/prometheus",
            SignalType::KubernetesEvent => "/api/v1/signals/kubernetes-event",
        }
    }

    /// The signal type served at `path` (query string ignored).
    pub fn from_path(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path);
        Self::ALL.into_iter().find(|t| t.path() == path)
    }
}

/// Alert status; events are always `Firing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// The resource a signal is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub kind: String,
    pub name: String,
    /// `None` for cluster-scoped targets (nodes, alerts without a namespace).
    pub namespace: Option<String>,
}

/// One normalised signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub signal_type: SignalType,
    /// The alertname, or the event's reason.
    pub name: String,
    /// The `severity` label; events: Warning → `warning`, Normal → `info`.
    pub severity: String,
    /// The namespace the signal belongs to (the fallback when none was given).
    pub namespace: String,
    pub namespace_from: NamespaceFrom,
    pub target: Target,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; `None` when the payload gave no time (the sidecar uses the receive time).
    pub firing_time: Option<String>,
    pub status: Status,
    /// Who sent it (`x-signalgate-source`, set by the edge).
    pub source: String,
    /// The event's message, or the alert's `summary`/`description` annotation.
    pub message: Option<String>,
    /// The firing instance (see [`Identity::instance_ms`]).
    #[serde(default)]
    pub instance_ms: i64,
    /// A resolved alert's `endsAt` (see [`Identity::resolved_ms`]).
    #[serde(default)]
    pub resolved_ms: Option<i64>,
}

/// What identifies a signal: everything the store and the claim protocol
/// need (its fingerprint, namespace, target and status). An alert's is read
/// straight from its label sets, without copying them: most signals are
/// duplicates, and only a signal whose resource is written needs the whole
/// [`Signal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub signal_type: SignalType,
    pub name: String,
    pub namespace: String,
    pub namespace_from: NamespaceFrom,
    pub target: Target,
    pub status: Status,
    /// Which firing of the incident this is, in ms since the Unix epoch: an
    /// alert's `startsAt` (Alertmanager keeps it while the alert fires and
    /// gives the next firing a new one), an event's series start
    /// ([`KubeEvent::first_seen`]). 0 when unknown: the incident is then the
    /// dedup window.
    pub instance_ms: i64,
    /// When a resolved alert ended (its `endsAt`, if it has one): `Some`
    /// exactly for resolved signals (0 inside when it gave no time).
    pub resolved_ms: Option<i64>,
}

impl Identity {
    /// SHA-256 hex over signal type, namespace, target kind, target name and
    /// signal name: repeats of one incident share it whatever their
    /// timestamps, label order or annotations.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            self.signal_type,
            &self.namespace,
            &self.target.kind,
            &self.target.name,
            &self.name,
        )
    }
}

/// What the adapters need besides the payload.
#[derive(Debug, Clone)]
pub struct Context<'c> {
    pub source: &'c str,
    pub fallback_namespace: &'c str,
}

/// Severity of an alert with no `severity` label.
pub const UNKNOWN_SEVERITY: &str = "unknown";

/// Kind of the target of an alert that names no workload: the alert itself.
pub const ALERT_KIND: &str = "Alert";

/// Label names that identify an alert's target, in order of preference, with
/// the Kubernetes kind each names and whether that kind is namespaced.
const TARGET_LABELS: [(&str, &str, bool); 6] = [
    ("pod", "Pod", true),
    ("deployment", "Deployment", true),
    ("statefulset", "StatefulSet", true),
    ("daemonset", "DaemonSet", true),
    ("node", "Node", false),
    ("service", "Service", true),
];

impl Signal {
    /// Its identity (a copy of those fields).
    pub fn identity(&self) -> Identity {
        Identity {
            signal_type: self.signal_type,
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            namespace_from: self.namespace_from,
            target: self.target.clone(),
            status: self.status,
            instance_ms: self.instance_ms,
            resolved_ms: self.resolved_ms,
        }
    }
}

/// See [`Identity::fingerprint`]. Each part is length-prefixed, so no two
/// different tuples hash the same input.
pub fn fingerprint(
    signal_type: SignalType,
    namespace: &str,
    target_kind: &str,
    target_name: &str,
    name: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        signal_type.as_str(),
        namespace,
        target_kind,
        target_name,
        name,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn owned(labels: Option<&Labels<'_>>) -> BTreeMap<String, String> {
    labels
        .map(|l| {
            l.iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// One signal per alert of the webhook, `commonLabels` (and
/// `commonAnnotations`) merged under each alert's own.
pub fn from_alertmanager(w: &Webhook<'_>, ctx: &Context<'_>) -> Vec<Signal> {
    alerts(w)
        .iter()
        .map(|a| {
            from_alert(
                a,
                w.common_labels.as_ref(),
                w.common_annotations.as_ref(),
                ctx,
            )
        })
        .collect()
}

/// The identity of every alert of the webhook, in order: what
/// [`from_alertmanager`] would give, without copying label sets.
pub fn alert_identities(w: &Webhook<'_>, ctx: &Context<'_>) -> Vec<Identity> {
    alerts(w)
        .iter()
        .map(|a| {
            alert_identity(
                &LabelView::new(a.labels.as_ref(), w.common_labels.as_ref()),
                a,
                ctx,
            )
        })
        .collect()
}

/// The signal of alert `i` of the webhook (`None` past the last one).
pub fn alert_signal(w: &Webhook<'_>, i: usize, ctx: &Context<'_>) -> Option<Signal> {
    let a = alerts(w).get(i)?;
    Some(from_alert(
        a,
        w.common_labels.as_ref(),
        w.common_annotations.as_ref(),
        ctx,
    ))
}

fn alerts<'w, 'a>(w: &'w Webhook<'a>) -> &'w [Alert<'a>] {
    w.alerts.as_deref().unwrap_or_default()
}

/// The alert's own pairs over the common ones. Alertmanager's common labels
/// are usually also each alert's own, so the alert's are copied first and a
/// common pair only when its name is not there yet (one copy per name; the
/// common set read backwards so that its last repeat wins, as in a map).
fn merged(own: Option<&Labels<'_>>, common: Option<&Labels<'_>>) -> BTreeMap<String, String> {
    let mut map = owned(own);
    for (k, v) in common.iter().flat_map(|c| c.iter().rev()) {
        if !map.contains_key(k.as_str()) {
            map.insert(k.as_str().to_owned(), v.as_str().to_owned());
        }
    }
    map
}

fn alert_identity(labels: &LabelView<'_, '_>, a: &Alert<'_>, ctx: &Context<'_>) -> Identity {
    let name = labels.get("alertname").unwrap_or_default().to_owned();
    let (namespace, namespace_from) = match labels.namespace() {
        Some(ns) => (ns.value.to_owned(), ns.from),
        None => (ctx.fallback_namespace.to_owned(), NamespaceFrom::Fallback),
    };
    let target = TARGET_LABELS
        .iter()
        .find_map(|(label_name, kind, namespaced)| {
            labels.get(label_name).map(|n| Target {
                kind: (*kind).to_owned(),
                name: n.to_owned(),
                namespace: namespaced.then(|| namespace.clone()),
            })
        })
        .unwrap_or_else(|| Target {
            kind: ALERT_KIND.to_owned(),
            name: name.clone(),
            namespace: Some(namespace.clone()),
        });
    let status = match a.status.as_deref() {
        Some("resolved") => Status::Resolved,
        _ => Status::Firing,
    };
    let millis = |t: Option<&Text<'_>>| t.and_then(|t| rfc3339::unix_millis(t.as_str()));
    Identity {
        signal_type: SignalType::Prometheus,
        name,
        namespace,
        namespace_from,
        target,
        status,
        instance_ms: millis(a.starts_at.as_ref()).unwrap_or(0),
        resolved_ms: (status == Status::Resolved).then(|| millis(a.ends_at.as_ref()).unwrap_or(0)),
    }
}

fn from_alert(
    a: &Alert<'_>,
    common_labels: Option<&Labels<'_>>,
    common_annotations: Option<&Labels<'_>>,
    ctx: &Context<'_>,
) -> Signal {
    let view = LabelView::new(a.labels.as_ref(), common_labels);
    let id = alert_identity(&view, a, ctx);
    let annotations = merged(a.annotations.as_ref(), common_annotations);
    let message = annotations
        .get("summary")
        .or_else(|| annotations.get("description"))
        .or_else(|| annotations.get("message"))
        .cloned();
    Signal {
        signal_type: id.signal_type,
        severity: view.get("severity").unwrap_or(UNKNOWN_SEVERITY).to_owned(),
        name: id.name,
        namespace: id.namespace,
        namespace_from: id.namespace_from,
        target: id.target,
        labels: merged(a.labels.as_ref(), common_labels),
        annotations,
        firing_time: a.starts_at.as_ref().map(|t| t.as_str().to_owned()),
        status: id.status,
        source: ctx.source.to_string(),
        message,
        instance_ms: id.instance_ms,
        resolved_ms: id.resolved_ms,
    }
}

fn non_empty(v: Option<&str>) -> Option<String> {
    v.filter(|v| !v.is_empty()).map(str::to_string)
}

/// The signal of one event.
pub fn from_kube_event(e: &KubeEvent<'_>, ctx: &Context<'_>) -> Signal {
    let object = e.object().map(|(_, o)| o);
    let object_ns = e.namespace().map(|(_, ns)| ns.to_string());
    let (namespace, namespace_from) = match object_ns.clone() {
        Some(ns) => (ns, NamespaceFrom::Object),
        None => (ctx.fallback_namespace.to_string(), NamespaceFrom::Fallback),
    };
    let severity = match e.event_type.as_deref() {
        Some("Warning") => "warning",
        _ => "info",
    };
    let mut labels = owned(object.and_then(|o| o.labels.as_ref()));
    if let Some(cluster) = e.cluster_name.as_deref().filter(|c| !c.is_empty()) {
        labels.insert("cluster".to_string(), cluster.to_string());
    }
    let annotations = owned(object.and_then(|o| o.annotations.as_ref()));
    Signal {
        signal_type: SignalType::KubernetesEvent,
        name: e.reason.as_deref().unwrap_or_default().to_string(),
        severity: severity.to_string(),
        namespace,
        namespace_from,
        target: Target {
            kind: non_empty(object.and_then(|o| o.kind.as_deref())).unwrap_or_default(),
            name: non_empty(object.and_then(|o| o.name.as_deref())).unwrap_or_default(),
            namespace: object_ns,
        },
        labels,
        annotations,
        firing_time: e.last_seen().map(str::to_string),
        status: Status::Firing,
        source: ctx.source.to_string(),
        message: e.text().map(str::to_string),
        instance_ms: e.first_seen().and_then(rfc3339::unix_millis).unwrap_or(0),
        resolved_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{alertmanager, kube_event};
    use serde_json::{json, Value};

    const CTX: Context<'static> = Context {
        source: "127.0.0.1",
        fallback_namespace: "signalgate-system",
    };

    fn alerts(v: Value) -> Vec<Signal> {
        let body = serde_json::to_vec(&v).unwrap();
        let w = alertmanager::parse(&body, 1000).unwrap();
        from_alertmanager(&w, &CTX)
    }

    fn alert(labels: Value) -> Value {
        json!({"status": "firing", "labels": labels, "annotations": {"summary": "s"}, "startsAt": "2026-11-26T20:57:15Z"})
    }

    fn webhook(list: Vec<Value>, common: Value) -> Value {
        json!({"version": "4", "status": "firing", "alerts": list, "commonLabels": common})
    }

    #[test]
    fn identities_read_in_place_match_the_full_signals() {
        let body = br#"{"version": "4", "status": "firing",
            "alerts": [
              {"status": "firing", "labels": {"alertname": "A", "pod": "p1"}, "startsAt": "2026-11-26T20:57:15Z"},
              {"status": "resolved", "labels": {"alertname": "B", "namespace": "", "exported_namespace": "exp", "node": "n1"}, "startsAt": "2026-11-26T20:57:15Z"},
              {"status": "firing", "labels": {"alertname": "C", "pod": "", "deployment": "d", "pod": "p2"}, "startsAt": "2026-11-26T20:57:15Z"},
              {"status": "firing", "labels": {"alertname": "D", "namespace": "own", "service": ""}, "startsAt": "2026-11-26T20:57:15Z"},
              {"status": "firing", "labels": {"alertname": "E"}, "startsAt": "2026-11-26T20:57:15Z"}
            ],
            "commonLabels": {"namespace": "shop", "service": "svc", "namespace": "shop2"}}"#;
        let w = alertmanager::parse(body, 1000).unwrap();
        let full: Vec<Identity> = from_alertmanager(&w, &CTX)
            .iter()
            .map(Signal::identity)
            .collect();
        assert_eq!(alert_identities(&w, &CTX), full);
        // The cases the lookups must get right, spelled out.
        let ns: Vec<&str> = full.iter().map(|i| i.namespace.as_str()).collect();
        assert_eq!(ns, ["shop2", "exp", "shop2", "own", "shop2"]);
        let targets: Vec<(&str, &str)> = full
            .iter()
            .map(|i| (i.target.kind.as_str(), i.target.name.as_str()))
            .collect();
        assert_eq!(
            targets,
            [
                ("Pod", "p1"),
                ("Node", "n1"),
                ("Pod", "p2"),
                ("Alert", "D"),
                ("Service", "svc")
            ]
        );
        assert_eq!(full[1].status, Status::Resolved);
        assert!(alert_signal(&w, 5, &CTX).is_none());
        assert_eq!(
            alert_signal(&w, 2, &CTX).map(|s| s.identity().fingerprint()),
            Some(full[2].fingerprint())
        );
    }

    #[test]
    fn every_alert_of_the_batch_becomes_a_signal() {
        let s = alerts(webhook(
            vec![
                alert(json!({"alertname": "A", "pod": "p1"})),
                alert(json!({"alertname": "B", "pod": "p2"})),
                alert(json!({"alertname": "C", "pod": "p3"})),
            ],
            json!({"namespace": "shop"}),
        ));
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert!(s.iter().all(|s| s.namespace == "shop"));
    }

    #[test]
    fn own_labels_win_over_common_labels() {
        let s = alerts(webhook(
            vec![alert(
                json!({"alertname": "A", "namespace": "own", "pod": "p"}),
            )],
            json!({"namespace": "common", "team": "x"}),
        ));
        assert_eq!(s[0].namespace, "own");
        assert_eq!(s[0].labels.get("team").map(String::as_str), Some("x"));
    }

    #[test]
    fn a_name_repeated_in_common_labels_keeps_its_last_value() {
        let body = br#"{"version": "4", "status": "firing",
            "alerts": [{"status": "firing", "labels": {"alertname": "A", "team": "own"},
                "startsAt": "2026-11-26T20:57:15Z"}],
            "commonLabels": {"tier": "1", "team": "c", "tier": "2"}}"#;
        let w = alertmanager::parse(body, 1000).unwrap();
        let s = from_alertmanager(&w, &CTX);
        let labels: Vec<(&str, &str)> = s[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("alertname", "A"), ("team", "own"), ("tier", "2")]);
    }

    #[test]
    fn namespace_falls_back_from_label_to_exported_to_configured() {
        let s = alerts(webhook(
            vec![
                alert(json!({"alertname": "A", "exported_namespace": "exp"})),
                alert(json!({"alertname": "A"})),
            ],
            json!({}),
        ));
        assert_eq!(
            (s[0].namespace.as_str(), s[0].namespace_from),
            ("exp", NamespaceFrom::ExportedLabel)
        );
        assert_eq!(
            (s[1].namespace.as_str(), s[1].namespace_from),
            ("signalgate-system", NamespaceFrom::Fallback)
        );
    }

    #[test]
    fn target_is_the_first_present_workload_label() {
        let s = alerts(webhook(
            vec![
                alert(
                    json!({"alertname": "A", "namespace": "n", "service": "svc", "deployment": "d"}),
                ),
                alert(json!({"alertname": "A", "namespace": "n", "node": "node-1"})),
                alert(json!({"alertname": "KubeQuotaExceeded", "namespace": "n"})),
            ],
            json!({}),
        ));
        assert_eq!(
            (s[0].target.kind.as_str(), s[0].target.name.as_str()),
            ("Deployment", "d")
        );
        assert_eq!(
            s[1].target,
            Target {
                kind: "Node".into(),
                name: "node-1".into(),
                namespace: None
            }
        );
        assert_eq!(s[2].target.kind, ALERT_KIND);
        assert_eq!(s[2].target.name, "KubeQuotaExceeded");
    }

    #[test]
    fn severity_status_and_firing_time_come_from_the_alert() {
        let mut resolved = alert(json!({"alertname": "A", "severity": "critical"}));
        resolved["status"] = json!("resolved");
        let s = alerts(webhook(
            vec![resolved, alert(json!({"alertname": "B"}))],
            json!({}),
        ));
        assert_eq!(s[0].severity, "critical");
        assert_eq!(s[0].status, Status::Resolved);
        assert_eq!(s[0].firing_time.as_deref(), Some("2026-11-26T20:57:15Z"));
        assert_eq!(s[1].severity, UNKNOWN_SEVERITY);
        assert_eq!(s[1].message.as_deref(), Some("s"));
    }

    #[test]
    fn fingerprint_ignores_time_label_order_and_annotations() {
        let a = alerts(webhook(
            vec![alert(
                json!({"alertname": "A", "namespace": "n", "pod": "p", "x": "1", "severity": "warning"}),
            )],
            json!({}),
        ));
        let mut other =
            alert(json!({"severity": "critical", "pod": "p", "namespace": "n", "alertname": "A"}));
        other["startsAt"] = json!("2026-11-27T00:00:00Z");
        other["annotations"] = json!({"summary": "different"});
        let b = alerts(webhook(vec![other], json!({})));
        assert_eq!(a[0].identity().fingerprint(), b[0].identity().fingerprint());
        assert_eq!(a[0].identity().fingerprint().len(), 64);
    }

    #[test]
    fn fingerprint_separates_each_part() {
        let base = fingerprint(SignalType::Prometheus, "n", "Pod", "p", "A");
        assert_ne!(
            base,
            fingerprint(SignalType::KubernetesEvent, "n", "Pod", "p", "A")
        );
        assert_ne!(
            base,
            fingerprint(SignalType::Prometheus, "m", "Pod", "p", "A")
        );
        assert_ne!(
            base,
            fingerprint(SignalType::Prometheus, "n", "Node", "p", "A")
        );
        assert_ne!(
            base,
            fingerprint(SignalType::Prometheus, "n", "Pod", "q", "A")
        );
        assert_ne!(
            base,
            fingerprint(SignalType::Prometheus, "n", "Pod", "p", "B")
        );
        // Moving a character between parts changes the fingerprint.
        assert_ne!(
            fingerprint(SignalType::Prometheus, "ab", "c", "p", "A"),
            fingerprint(SignalType::Prometheus, "a", "bc", "p", "A")
        );
    }

    #[test]
    fn the_firing_instance_is_starts_at_and_a_resolution_ends_at() {
        let mut resolved = alert(json!({"alertname": "A"}));
        resolved["status"] = json!("resolved");
        resolved["endsAt"] = json!("2026-11-26T21:00:00.250Z");
        let w = webhook(vec![resolved, alert(json!({"alertname": "B"}))], json!({}));
        let body = serde_json::to_vec(&w).unwrap();
        let parsed = alertmanager::parse(&body, 10).unwrap();
        let ids = alert_identities(&parsed, &CTX);
        let starts = rfc3339::unix_millis("2026-11-26T20:57:15Z").unwrap();
        assert_eq!(ids[0].instance_ms, starts);
        assert_eq!(
            ids[0].resolved_ms,
            rfc3339::unix_millis("2026-11-26T21:00:00.250Z")
        );
        assert_eq!((ids[1].instance_ms, ids[1].resolved_ms), (starts, None));
        // The whole signal agrees with the identity read without copying.
        let whole = alert_signal(&parsed, 0, &CTX).unwrap();
        assert_eq!(whole.identity(), ids[0]);
    }

    #[test]
    fn an_event_series_keeps_its_first_timestamp_as_instance() {
        let event = |count: u32, last: &str| {
            let v = json!({
                "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "cart-1"},
                "reason": "BackOff", "type": "Warning", "count": count,
                "firstTimestamp": "2026-11-26T20:00:00Z", "lastTimestamp": last
            });
            let body = serde_json::to_vec(&v).unwrap();
            from_kube_event(&kube_event::parse(&body).unwrap(), &CTX)
        };
        let first = event(2, "2026-11-26T20:05:00Z");
        let later = event(40, "2026-11-26T23:00:00Z");
        assert_eq!(
            first.instance_ms,
            rfc3339::unix_millis("2026-11-26T20:00:00Z").unwrap()
        );
        assert_eq!(first.instance_ms, later.instance_ms);
        assert_eq!(first.resolved_ms, None);
    }

    #[test]
    fn a_kubernetes_event_becomes_one_signal() {
        let v = json!({
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "cart-1", "labels": {"app": "cart"}},
            "reason": "BackOff", "message": "Back-off", "type": "Warning", "count": 3,
            "lastTimestamp": "2026-11-26T20:57:00Z", "clusterName": "prod"
        });
        let body = serde_json::to_vec(&v).unwrap();
        let e = kube_event::parse(&body).unwrap();
        let s = from_kube_event(&e, &CTX);
        assert_eq!(s.signal_type, SignalType::KubernetesEvent);
        assert_eq!(
            (s.name.as_str(), s.severity.as_str(), s.namespace.as_str()),
            ("BackOff", "warning", "shop")
        );
        assert_eq!(
            s.target,
            Target {
                kind: "Pod".into(),
                name: "cart-1".into(),
                namespace: Some("shop".into())
            }
        );
        assert_eq!(s.labels.get("cluster").map(String::as_str), Some("prod"));
        assert_eq!(s.firing_time.as_deref(), Some("2026-11-26T20:57:00Z"));
        assert_eq!(s.message.as_deref(), Some("Back-off"));
    }

    #[test]
    fn event_count_does_not_change_the_fingerprint() {
        let mk = |count: i64| {
            let v = json!({
                "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "cart-1"},
                "reason": "BackOff", "message": "Back-off", "type": "Warning", "count": count
            });
            let body = serde_json::to_vec(&v).unwrap();
            from_kube_event(&kube_event::parse(&body).unwrap(), &CTX)
                .identity()
                .fingerprint()
        };
        assert_eq!(mk(1), mk(42));
    }

    #[test]
    fn cluster_scoped_event_uses_the_fallback_namespace() {
        let v = json!({"involvedObject": {"kind": "Node", "name": "node-1"}, "reason": "NodeNotReady", "type": "Normal"});
        let body = serde_json::to_vec(&v).unwrap();
        let s = from_kube_event(&kube_event::parse(&body).unwrap(), &CTX);
        assert_eq!(s.namespace, "signalgate-system");
        assert_eq!(s.namespace_from, NamespaceFrom::Fallback);
        assert_eq!(s.severity, "info");
        assert_eq!(s.target.namespace, None);
    }

    #[test]
    fn paths_map_to_signal_types() {
        assert_eq!(
            SignalType::from_path("/api/v1/signals/prometheus"),
            Some(SignalType::Prometheus)
        );
        assert_eq!(
            SignalType::from_path("/api/v1/signals/kubernetes-event?x=1"),
            Some(SignalType::KubernetesEvent)
        );
        assert_eq!(SignalType::from_path("/api/v1/signals/other"), None);
        assert!(SignalType::Prometheus.path().starts_with(PATH_PREFIX));
    }
}
