//! The body: cut at the size limit as it streams in, then validated for
//! its signal type, each rule naming its field.

use serde_json::{json, Value};

use super::*;

#[test]
fn streamed_bodies_are_cut_at_the_limit() {
    let cfg = config(r#"{"max_body_bytes": 1000}"#);
    assert_eq!(on_body(&cfg, 500, false), BodyAction::Wait);
    assert_eq!(on_body(&cfg, 1000, true), BodyAction::Validate);
    assert_eq!(on_body(&cfg, 0, true), BodyAction::Validate);
    let r = match on_body(&cfg, 1001, false) {
        BodyAction::Refuse(r) => Some(r),
        _ => None,
    };
    assert_eq!(r.as_ref().map(|r| r.status), Some(413));
    assert_eq!(
        r.map(|r| problem(&r)["type"].clone()),
        Some(json!("https://signalgate.io/problems/payload-too-large"))
    );
}

fn webhook() -> Value {
    json!({
        "version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "Down", "severity": "critical"},
            "annotations": {},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z"
        }]
    })
}

fn event() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "x.1", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "name": "cart-1", "namespace": "shop"},
        "reason": "BackOff", "message": "restarting", "type": "Warning"
    })
}

fn invalid_field(t: SignalType, v: &Value) -> Option<String> {
    let cfg = config(r#"{"max_alerts_per_request": 2}"#);
    let body = serde_json::to_vec(v).expect("a JSON fixture");
    validate_body(&cfg, t, &body).map(|r| {
        assert_eq!(r.status, 400);
        assert_eq!(r.outcome, Outcome::Invalid);
        problem(&r)["field"]
            .as_str()
            .unwrap_or("<none>")
            .to_string()
    })
}

#[test]
fn valid_payloads_pass() {
    assert_eq!(invalid_field(SignalType::Prometheus, &webhook()), None);
    assert_eq!(invalid_field(SignalType::KubernetesEvent, &event()), None);
    let mut v1 = event();
    v1["regarding"] = v1["involvedObject"].take();
    assert_eq!(invalid_field(SignalType::KubernetesEvent, &v1), None);
}

/// A change that breaks one rule of a valid payload.
type Change = Box<dyn Fn(&mut Value)>;

#[test]
fn each_alertmanager_rule_names_its_field() {
    let p = SignalType::Prometheus;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|v| v["version"] = json!("3")), "/version"),
        (Box::new(|v| v["alerts"] = json!([])), "/alerts"),
        (
            Box::new(|v| {
                let a = v["alerts"][0].clone();
                v["alerts"] = json!([a.clone(), a.clone(), a]);
            }),
            "/alerts",
        ),
        (
            Box::new(|v| v["alerts"][0]["status"] = json!("pending")),
            "/alerts/0/status",
        ),
        (
            Box::new(|v| v["alerts"][0]["labels"]["alertname"] = json!("")),
            "/alerts/0/labels/alertname",
        ),
        (
            Box::new(|v| v["alerts"][0]["labels"]["bad-name"] = json!("x")),
            "/alerts/0/labels/bad-name",
        ),
        (
            Box::new(|v| v["alerts"][0]["labels"]["n"] = json!(1)),
            "/alerts/0/labels/n",
        ),
        (
            Box::new(|v| v["alerts"][0]["startsAt"] = json!("yesterday")),
            "/alerts/0/startsAt",
        ),
    ];
    for (change, field) in cases {
        let mut v = webhook();
        change(&mut v);
        assert_eq!(invalid_field(p, &v).as_deref(), Some(field));
    }
}

#[test]
fn each_event_rule_names_its_field() {
    let k = SignalType::KubernetesEvent;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|v| {
                v.as_object_mut().map(|o| o.remove("involvedObject"));
            }),
            "/involvedObject",
        ),
        (
            Box::new(|v| v["involvedObject"]["kind"] = json!("")),
            "/involvedObject/kind",
        ),
        (
            Box::new(|v| {
                v["involvedObject"]
                    .as_object_mut()
                    .map(|o| o.remove("name"));
            }),
            "/involvedObject/name",
        ),
        (Box::new(|v| v["reason"] = json!(" ")), "/reason"),
        (Box::new(|v| v["type"] = json!("Error")), "/type"),
    ];
    for (change, field) in cases {
        let mut v = event();
        change(&mut v);
        assert_eq!(invalid_field(k, &v).as_deref(), Some(field));
    }
}

#[test]
fn not_json_is_400_without_a_field() {
    let cfg = Config::default();
    for body in [&b"not json"[..], b"", b"{\"version\":"] {
        let r = validate_body(&cfg, SignalType::Prometheus, body);
        assert_eq!(r.as_ref().map(|r| r.status), Some(400));
        let p = r.as_ref().map(problem).unwrap_or_default();
        assert_eq!(p["type"], "https://signalgate.io/problems/invalid-json");
        assert!(p.get("field").is_none());
    }
}
