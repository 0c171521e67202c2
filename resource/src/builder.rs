//! How a resource is built from a signal, the counters of its incident (or
//! storm) and the name the store fixed for it.

use std::collections::BTreeMap;

use signalgate_model::rfc3339::format_unix_millis;
use signalgate_model::signal::hex;
use signalgate_model::signal::Target;
use signalgate_model::{Signal, SignalType};

use crate::{
    Progress, RemediationRequest, RemediationRequestSpec, TargetResource, LABEL_FINGERPRINT,
    LABEL_MANAGED_BY, LABEL_SEVERITY, LABEL_SIGNAL_TYPE, LABEL_STORM, MAX_ENTRIES, MAX_VALUE_BYTES,
};

/// `Kind/name` of a signal's target, as storms list it.
pub fn affected_name(target: &Target) -> String {
    format!("{}/{}", target.kind, target.name)
}

/// The fingerprint of a storm resource: SHA-256 hex of namespace and start.
pub fn storm_fingerprint(namespace: &str, started_ms: i64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"storm\0");
    h.update(namespace.as_bytes());
    h.update(b"\0");
    h.update(started_ms.to_be_bytes());
    hex(&h.finalize())
}

/// The resource `name` for a signal's own incident, with its counters.
pub fn for_signal(
    signal: &Signal,
    fingerprint: &str,
    name: &str,
    progress: Progress,
    received_ms: i64,
) -> RemediationRequest {
    let spec = RemediationRequestSpec {
        signal_fingerprint: fingerprint.to_string(),
        signal_name: signal.name.clone(),
        signal_type: signal.signal_type.as_str().to_string(),
        severity: signal.severity.clone(),
        target_resource: TargetResource {
            kind: signal.target.kind.clone(),
            name: signal.target.name.clone(),
            namespace: signal.target.namespace.clone(),
        },
        source: signal.source.clone(),
        firing_time: firing_time(signal, received_ms),
        received_time: format_unix_millis(received_ms),
        signal_labels: bounded(&signal.labels),
        signal_annotations: bounded(&signal.annotations),
        deduplication: progress.deduplication,
        storm: None,
        resolution: progress.resolution,
    };
    object(
        &signal.namespace,
        name,
        labels(fingerprint, signal.signal_type, &signal.severity, false),
        spec,
    )
}

/// The ONE resource `name` of a storm started at `started_ms` by `signal`,
/// with its counters.
pub fn for_storm(
    signal: &Signal,
    affected: &str,
    name: &str,
    mut progress: Progress,
    started_ms: i64,
    received_ms: i64,
) -> RemediationRequest {
    let fingerprint = storm_fingerprint(&signal.namespace, started_ms);
    let storm = progress.storm.take().map(|mut s| {
        if s.affected_resources.is_empty() {
            s.affected_resources.push(affected.to_string());
        }
        s
    });
    let spec = RemediationRequestSpec {
        signal_fingerprint: fingerprint.clone(),
        signal_name: STORM_SIGNAL_NAME.to_string(),
        signal_type: signal.signal_type.as_str().to_string(),
        severity: signal.severity.clone(),
        target_resource: TargetResource {
            kind: "Namespace".to_string(),
            name: signal.namespace.clone(),
            namespace: None,
        },
        source: signal.source.clone(),
        firing_time: firing_time(signal, received_ms),
        received_time: format_unix_millis(received_ms),
        signal_labels: BTreeMap::new(),
        signal_annotations: BTreeMap::from([(
            "signalgate.io/storm-started-by".to_string(),
            truncate(&signal.name).to_string(),
        )]),
        deduplication: progress.deduplication,
        storm,
        resolution: progress.resolution,
    };
    object(
        &signal.namespace,
        name,
        labels(&fingerprint, signal.signal_type, &signal.severity, true),
        spec,
    )
}

/// `signalName` of storm resources.
pub const STORM_SIGNAL_NAME: &str = "SignalStorm";

fn object(
    namespace: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    spec: RemediationRequestSpec,
) -> RemediationRequest {
    let mut rr = RemediationRequest::new(name, spec);
    rr.metadata.namespace = Some(namespace.to_string());
    rr.metadata.labels = Some(labels);
    rr
}

fn labels(
    fingerprint: &str,
    signal_type: SignalType,
    severity: &str,
    storm: bool,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            LABEL_FINGERPRINT.to_string(),
            fingerprint[..fingerprint.len().min(63)].to_string(),
        ),
        (
            LABEL_SIGNAL_TYPE.to_string(),
            signal_type.as_str().to_string(),
        ),
        (LABEL_SEVERITY.to_string(), label_value(severity)),
        (LABEL_STORM.to_string(), storm.to_string()),
        (LABEL_MANAGED_BY.to_string(), "signalgate".to_string()),
    ])
}

/// A valid Kubernetes label value: at most 63 of `[A-Za-z0-9._-]`, starting
/// and ending alphanumeric (others become `_`/trimmed; empty stays empty).
pub fn label_value(v: &str) -> String {
    let cleaned: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn firing_time(signal: &Signal, received_ms: i64) -> String {
    signal
        .firing_time
        .clone()
        .unwrap_or_else(|| format_unix_millis(received_ms))
}

fn truncate(v: &str) -> &str {
    if v.len() <= MAX_VALUE_BYTES {
        return v;
    }
    let mut end = MAX_VALUE_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

fn bounded(map: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    map.iter()
        .take(MAX_ENTRIES)
        .map(|(k, v)| (truncate(k).to_string(), truncate(v).to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Deduplication, Resolution, Storm};
    use signalgate_model::namespace::NamespaceFrom;
    use signalgate_model::signal::Status;

    fn signal() -> Signal {
        Signal {
            signal_type: SignalType::Prometheus,
            name: "A".into(),
            severity: "critical".into(),
            namespace: "shop".into(),
            namespace_from: NamespaceFrom::Label,
            target: Target {
                kind: "Pod".into(),
                name: "p".into(),
                namespace: Some("shop".into()),
            },
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            firing_time: Some("2026-11-27T10:00:00Z".into()),
            status: Status::Firing,
            source: "s".into(),
            message: None,
            instance_ms: 0,
            resolved_ms: None,
        }
    }

    fn progress(storm: Option<Storm>) -> Progress {
        Progress {
            deduplication: Deduplication {
                first_seen: "2026-11-27T10:00:01Z".into(),
                last_seen: "2026-11-27T12:00:00Z".into(),
                occurrence_count: 9,
                firing_count: 3,
                last_firing_time: Some("2026-11-27T11:50:00Z".into()),
            },
            storm,
            resolution: Some(Resolution {
                resolved_at: "2026-11-27T12:00:00Z".into(),
                received_at: "2026-11-27T12:00:03Z".into(),
            }),
        }
    }

    #[test]
    fn resources_carry_the_firing_and_resolution_fields_of_their_progress() {
        let p = progress(None);
        let rr = for_signal(&signal(), "f", "rr-f", p.clone(), 0);
        assert_eq!(rr.spec.deduplication, p.deduplication);
        assert_eq!(rr.spec.resolution, p.resolution);
        let storm = Storm {
            alert_count: 4,
            affected_resources: vec![],
            affected_resources_overflow: 0,
            started_at: "2026-11-27T10:00:00Z".into(),
            ends_at: None,
            resolved_count: 4,
            previous: Some("storm-x-1".into()),
        };
        let rr = for_storm(&signal(), "Pod/p", "storm-x-2", progress(Some(storm)), 1, 1);
        let s = rr.spec.storm.as_ref().unwrap();
        assert_eq!(
            (s.resolved_count, s.previous.as_deref()),
            (4, Some("storm-x-1"))
        );
        assert_eq!(rr.spec.deduplication.firing_count, 3);
        assert_eq!(rr.spec.resolution, p.resolution);
    }

    #[test]
    fn label_values_are_made_valid() {
        assert_eq!(label_value("critical"), "critical");
        assert_eq!(label_value("P1 / high"), "P1___high");
        assert_eq!(label_value("-x-"), "x");
        assert_eq!(label_value(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let v = "é".repeat(MAX_VALUE_BYTES);
        let t = truncate(&v);
        assert!(t.len() <= MAX_VALUE_BYTES && t.chars().all(|c| c == 'é'));
    }
}
