//! Signal payloads for tests: Alertmanager webhooks and Kubernetes Events.

use serde_json::{json, Value};

/// One firing alert about `pod` in `namespace`.
pub fn alert(name: &str, namespace: &str, pod: &str) -> Value {
    json!({
        "status": "firing",
        "labels": {"alertname": name, "namespace": namespace, "pod": pod, "severity": "critical"},
        "annotations": {"summary": format!("{name} on {namespace}/{pod}")},
        "startsAt": "2026-11-26T20:57:15.123Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": "0123456789abcdef"
    })
}

/// The same alert, resolved.
pub fn resolved(name: &str, namespace: &str, pod: &str) -> Value {
    let mut a = alert(name, namespace, pod);
    a["status"] = json!("resolved");
    a["endsAt"] = json!("2026-11-26T21:07:15Z");
    a
}

/// An Alertmanager version 4 webhook carrying `alerts`.
pub fn webhook(alerts: Vec<Value>) -> Value {
    json!({
        "version": "4",
        "receiver": "signalgate",
        "status": "firing",
        "groupKey": "{}:{alertname=\"test\"}",
        "truncatedAlerts": 0,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts
    })
}

/// `hook` as Alertmanager's `n`th notification of the same alerts: their
/// annotations carry the rule's latest value (a `{{ $value }}` template), so
/// the body is new and a delivery of its own. The same body from the same
/// source again is a retry of one delivery, counted once.
pub fn notification(hook: &Value, n: u64) -> Value {
    let mut hook = hook.clone();
    if let Some(alerts) = hook["alerts"].as_array_mut() {
        for a in alerts {
            a["annotations"]["value"] = json!(n.to_string());
        }
    }
    hook
}

/// A core/v1 Warning event about a pod, seen `count` times.
pub fn pod_event(namespace: &str, pod: &str, reason: &str, count: u64) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{pod}.{reason}"), "namespace": namespace},
        "involvedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "v1"},
        "reason": reason,
        "message": format!("{reason} for {pod}"),
        "type": "Warning",
        "count": count,
        "firstTimestamp": "2026-11-26T20:00:00Z",
        "lastTimestamp": "2026-11-26T20:57:00Z",
        "source": {"component": "kubelet", "host": "node-1"}
    })
}
