//! The resources built for fixed signals and counters, compared with the
//! objects committed in `tests/fixtures/resources.yaml`: the building moved
//! into the `signalgate-resource` crate (so that the payload checker runs it
//! in the browser) and must keep writing exactly these objects.
//! `SIGNALGATE_BLESS=1` rewrites the fixture.

use signalgate_model::signal::{self, Context};
use signalgate_model::{alertmanager, kube_event, Signal};
use signalgate_sidecar::resource;
use signalgate_sidecar::store::{Snapshot, StormSnapshot};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/resources.yaml");
const RECEIVED_MS: i64 = 1_764_190_640_000;

fn signals() -> Vec<Signal> {
    let ctx = Context {
        source: "alertmanager-eu",
        fallback_namespace: "signalgate-unassigned",
    };
    let webhook = br#"{
      "version": "4", "status": "firing", "receiver": "signalgate",
      "groupKey": "{}:{alertname=\"KubePodCrashLooping\"}",
      "commonLabels": {"alertname": "KubePodCrashLooping", "severity": "critical"},
      "commonAnnotations": {"runbook": "https://runbooks.example/crashloop"},
      "alerts": [
        {"status": "firing", "startsAt": "2026-11-26T20:57:15.123Z",
         "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop", "pod": "cart-1",
                    "severity": "P1 / high"},
         "annotations": {"summary": "cart-1 restarts"}},
        {"status": "firing", "startsAt": "2026-11-26T20:57:00Z",
         "labels": {"alertname": "NodeDown", "node": "worker-3"}},
        {"status": "resolved", "startsAt": "2026-11-26T20:00:00Z",
         "labels": {"alertname": "HighLatency", "namespace": "shop", "service": "checkout",
                    "long": "LONGVALUE"}}
      ]
    }"#;
    let long = "é".repeat(600);
    let webhook = String::from_utf8_lossy(webhook).replace("LONGVALUE", &long);
    let w = alertmanager::parse(webhook.as_bytes(), 100).unwrap();
    let mut out = signal::from_alertmanager(&w, &ctx);
    let event = br#"{
      "apiVersion": "v1", "kind": "Event",
      "metadata": {"name": "db-0.17a", "namespace": "data"},
      "involvedObject": {"kind": "Pod", "name": "db-0", "namespace": "data"},
      "reason": "BackOff", "message": "Back-off restarting failed container",
      "type": "Warning", "count": 4,
      "firstTimestamp": "2026-11-26T20:50:00Z", "lastTimestamp": "2026-11-26T20:57:00Z"
    }"#;
    let e = kube_event::parse(event).unwrap();
    out.push(signal::from_kube_event(&e, &ctx));
    out
}

fn own_snapshot() -> Snapshot {
    Snapshot {
        resource: "rr-0123456789abcdef-m1x2y3".into(),
        first_seen_ms: 1_764_190_635_123,
        last_seen_ms: RECEIVED_MS,
        occurrence_count: 3,
        firings: 1,
        ..Snapshot::default()
    }
}

fn storm_snapshot(started_ms: Option<i64>) -> Snapshot {
    Snapshot {
        resource: "storm-0123456789ab-m1x2y3".into(),
        first_seen_ms: 1_764_190_600_000,
        last_seen_ms: RECEIVED_MS,
        occurrence_count: 12,
        storm: started_ms.map(|started_ms| StormSnapshot {
            alert_count: 11,
            affected: Vec::new(),
            affected_overflow: 2,
            started_ms,
            ends_ms: 1_764_190_935_123,
            ..StormSnapshot::default()
        }),
        ..Snapshot::default()
    }
}

fn rendered() -> String {
    let mut docs = Vec::new();
    for s in signals() {
        let fingerprint = s.identity().fingerprint();
        docs.push(resource::for_signal(
            &s,
            &fingerprint,
            &own_snapshot(),
            RECEIVED_MS,
        ));
        let affected = signalgate_resource::builder::affected_name(&s.target);
        for started in [Some(1_764_190_635_123), None] {
            docs.push(resource::for_storm(
                &s,
                &affected,
                &storm_snapshot(started),
                RECEIVED_MS,
            ));
        }
    }
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect()
}

#[test]
fn resources_are_the_committed_ones() {
    let now = rendered();
    if std::env::var_os("SIGNALGATE_BLESS").is_some() {
        std::fs::write(FIXTURE, &now).unwrap();
    }
    let committed = std::fs::read_to_string(FIXTURE).unwrap();
    assert!(
        committed == now,
        "the resources built differ from {FIXTURE}; diff it with:\n{now}"
    );
}
