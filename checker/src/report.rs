//! The report on one payload: the edge's verdict and, for a valid payload,
//! each signal with its identity, fingerprint and the resource a new
//! incident would create.

use serde_json::{json, Value};
use signalgate_model::problem::Problem;
use signalgate_model::rfc3339::format_unix_millis;
use signalgate_model::signal::{self, Context};
use signalgate_model::{alertmanager, kube_event, Invalid, Signal, SignalType};
use signalgate_resource::naming::fingerprint_resource;
use signalgate_resource::{builder, Deduplication, Progress};

/// What the page lets the user set: what the edge and the sidecar would know
/// besides the body.
pub struct Settings<'s> {
    /// The sender, as the edge names it (`x-signalgate-source`).
    pub source: &'s str,
    /// The sidecar's `FALLBACK_NAMESPACE`.
    pub fallback_namespace: &'s str,
    /// The filter's `max_alerts_per_request`.
    pub max_alerts: usize,
    /// The receive time, milliseconds since the Unix epoch.
    pub now_ms: i64,
}

/// `{"shape", "problem", "signals": [...]}`: `problem` is the problem+json
/// the edge answers (null when it forwards the payload); each signal has its
/// `alert` index (null for an event), `identity`, `fingerprint`, `resource`
/// name and `yaml`.
pub fn check(body: &[u8], shape: &str, settings: &Settings<'_>) -> Value {
    let signal_type = match shape {
        "prometheus" => SignalType::Prometheus,
        "kubernetes-event" => SignalType::KubernetesEvent,
        _ => guess(body),
    };
    let ctx = Context {
        source: settings.source,
        fallback_namespace: settings.fallback_namespace,
    };
    let parsed: Result<Vec<(Option<usize>, Signal)>, Invalid> = match signal_type {
        SignalType::Prometheus => alertmanager::parse(body, settings.max_alerts).map(|w| {
            signal::from_alertmanager(&w, &ctx)
                .into_iter()
                .enumerate()
                .map(|(i, s)| (Some(i), s))
                .collect()
        }),
        SignalType::KubernetesEvent => {
            kube_event::parse(body).map(|e| vec![(None, signal::from_kube_event(&e, &ctx))])
        }
    };
    match parsed {
        Ok(signals) => json!({
            "shape": signal_type.as_str(),
            "problem": Value::Null,
            "signals": signals
                .iter()
                .map(|(alert, s)| describe(*alert, s, settings.now_ms))
                .collect::<Vec<_>>(),
        }),
        Err(invalid) => {
            let problem = Problem::from(&invalid).to_json();
            json!({
                "shape": signal_type.as_str(),
                "problem": serde_json::from_str::<Value>(&problem).unwrap_or(Value::Null),
                "signals": [],
            })
        }
    }
}

/// Which of the two shapes `body` looks like: an event names the object it
/// is about; anything else is taken for a webhook (and refused as one).
fn guess(body: &[u8]) -> SignalType {
    let is_event = serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        v.get("involvedObject").is_some()
            || v.get("regarding").is_some()
            || v.get("kind").and_then(Value::as_str) == Some("Event")
    });
    if is_event {
        SignalType::KubernetesEvent
    } else {
        SignalType::Prometheus
    }
}

/// One signal: its identity and the resource a new incident creates (one
/// occurrence, first seen now, named as the store names it).
fn describe(alert: Option<usize>, s: &Signal, now_ms: i64) -> Value {
    let fingerprint = s.identity().fingerprint();
    let name = fingerprint_resource(&fingerprint, now_ms);
    let now = format_unix_millis(now_ms);
    let progress = Progress {
        deduplication: Deduplication {
            first_seen: now.clone(),
            last_seen: now,
            occurrence_count: 1,
            firing_count: 1,
            last_firing_time: None,
        },
        storm: None,
        resolution: None,
    };
    let resource = builder::for_signal(s, &fingerprint, &name, progress, now_ms);
    let yaml = serde_yaml::to_string(&resource).unwrap_or_else(|e| format!("# {e}\n"));
    json!({
        "alert": alert,
        "identity": {
            "type": s.signal_type.as_str(),
            "namespace": s.namespace,
            "target": s.target,
            "name": s.name,
            "status": s.status,
        },
        "fingerprint": fingerprint,
        "resource": name,
        "yaml": yaml,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings<'static> = Settings {
        source: "checker",
        fallback_namespace: "default",
        max_alerts: 1000,
        now_ms: 1_764_190_640_000,
    };

    #[test]
    fn a_valid_webhook_gets_each_alert_described() {
        let body = br#"{"version":"4","status":"firing","alerts":[
            {"status":"firing","startsAt":"2026-11-26T20:57:15Z",
             "labels":{"alertname":"KubePodCrashLooping","namespace":"shop","pod":"cart-1"}}]}"#;
        let r = check(body, "auto", &SETTINGS);
        assert_eq!(r["shape"], "prometheus");
        assert!(r["problem"].is_null());
        let s = &r["signals"][0];
        assert_eq!(s["identity"]["target"]["name"], "cart-1");
        let fp = signal::fingerprint(
            SignalType::Prometheus,
            "shop",
            "Pod",
            "cart-1",
            "KubePodCrashLooping",
        );
        assert_eq!(s["fingerprint"], fp.as_str());
        assert_eq!(
            s["resource"],
            fingerprint_resource(&fp, SETTINGS.now_ms).as_str()
        );
        assert!(s["yaml"].as_str().unwrap().contains("occurrenceCount: 1"));
    }

    #[test]
    fn an_invalid_webhook_gets_the_edge_problem() {
        let body =
            br#"{"version":"4","status":"firing","alerts":[{"status":"firing","labels":{}}]}"#;
        let r = check(body, "prometheus", &SETTINGS);
        assert_eq!(r["problem"]["status"], 400);
        assert!(r["problem"]["field"]
            .as_str()
            .unwrap()
            .starts_with("/alerts/0"));
        assert_eq!(r["signals"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn an_event_is_recognised() {
        let body =
            br#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"e","namespace":"data"},
            "involvedObject":{"kind":"Pod","name":"db-0","namespace":"data"},
            "reason":"BackOff","type":"Warning","lastTimestamp":"2026-11-26T20:57:00Z"}"#;
        let r = check(body, "auto", &SETTINGS);
        assert_eq!(r["shape"], "kubernetes-event");
        assert!(r["problem"].is_null(), "{r}");
        assert_eq!(r["signals"][0]["identity"]["name"], "BackOff");
    }
}
