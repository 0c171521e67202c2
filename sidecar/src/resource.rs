//! The `RemediationRequest` custom resource (`signalgate.io/v1alpha1`) and
//! how one is built from a signal and the store's counters. Both sinks (the
//! directory and Kubernetes) write exactly these objects.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use signalgate_model::rfc3339::format_unix_millis;
use signalgate_model::signal::hex;
use signalgate_model::signal::Target;
use signalgate_model::{Signal, SignalType};

use crate::store::Snapshot;

pub const LABEL_FINGERPRINT: &str = "signalgate.io/fingerprint";
pub const LABEL_SIGNAL_TYPE: &str = "signalgate.io/signal-type";
pub const LABEL_SEVERITY: &str = "signalgate.io/severity";
pub const LABEL_STORM: &str = "signalgate.io/storm";
pub const LABEL_ORIGINAL_NAMESPACE: &str = "signalgate.io/original-namespace";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Signal labels and annotations copied into the spec are bounded: at most
/// this many entries, each value cut to [`MAX_VALUE_BYTES`].
pub const MAX_ENTRIES: usize = 64;
pub const MAX_VALUE_BYTES: usize = 1024;

/// A request for remediation of one incident (or one storm of incidents).
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "signalgate.io",
    version = "v1alpha1",
    kind = "RemediationRequest",
    plural = "remediationrequests",
    shortname = "rr",
    namespaced,
    status = "RemediationRequestStatus",
    printcolumn = r#"{"name":"Signal","type":"string","jsonPath":".spec.signalName"}"#,
    printcolumn = r#"{"name":"Severity","type":"string","jsonPath":".spec.severity"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.targetResource.name"}"#,
    printcolumn = r#"{"name":"Count","type":"integer","jsonPath":".spec.deduplication.occurrenceCount"}"#,
    printcolumn = r#"{"name":"Storm","type":"integer","jsonPath":".spec.storm.alertCount"}"#,
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".spec.deduplication.lastSeen"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestSpec {
    /// SHA-256 hex of the signal (type, namespace, target kind and name, signal name). Immutable.
    pub signal_fingerprint: String,
    pub signal_name: String,
    /// `prometheus` or `kubernetes-event`.
    pub signal_type: String,
    pub severity: String,
    pub target_resource: TargetResource,
    /// Who sent the signal (edge source or tenant).
    pub source: String,
    /// When the signal started firing (RFC 3339).
    pub firing_time: String,
    /// When signalgate first received it (RFC 3339).
    pub received_time: String,
    #[serde(default)]
    pub signal_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub signal_annotations: BTreeMap<String, String>,
    pub deduplication: Deduplication,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storm: Option<Storm>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetResource {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deduplication {
    pub first_seen: String,
    pub last_seen: String,
    pub occurrence_count: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storm {
    /// Distinct signals aggregated into this storm.
    pub alert_count: u64,
    /// De-duplicated `Kind/name` of the resources the storm's signals are about (capped).
    #[serde(default)]
    pub affected_resources: Vec<String>,
    /// Storm members whose affected resource is not in the (full) list, counted once per member signal.
    #[serde(default)]
    pub affected_resources_overflow: u64,
    pub started_at: String,
    /// Until when the storm takes new signals: each new signal moves it on
    /// by the storm window, up to the storm's maximum duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
}

/// Written by the remediation controller, never by signalgate.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The counters the sink keeps up to date after creation (coalesced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub deduplication: Deduplication,
    pub storm: Option<Storm>,
}

impl Progress {
    pub fn from_snapshot(s: &Snapshot) -> Progress {
        Progress {
            deduplication: Deduplication {
                first_seen: format_unix_millis(s.first_seen_ms),
                last_seen: format_unix_millis(s.last_seen_ms),
                occurrence_count: s.occurrence_count,
            },
            storm: s.storm.as_ref().map(|st| Storm {
                alert_count: st.alert_count,
                affected_resources: st.affected.clone(),
                affected_resources_overflow: st.affected_overflow,
                started_at: format_unix_millis(st.started_ms),
                ends_at: (st.ends_ms > 0).then(|| format_unix_millis(st.ends_ms)),
            }),
        }
    }

    /// Applies these counters to a spec.
    pub fn apply(&self, spec: &mut RemediationRequestSpec) {
        spec.deduplication = self.deduplication.clone();
        if self.storm.is_some() {
            spec.storm = self.storm.clone();
        }
    }
}

/// The CRD manifest (what `deploy/crds/` holds), as YAML.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = RemediationRequest::crd();
    let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
    format!("# Generated by `signalgate-sidecar --print-crd` (make crd); do not edit.\n{yaml}")
}

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

/// The resource for a signal's own incident.
pub fn for_signal(
    signal: &Signal,
    fingerprint: &str,
    snapshot: &Snapshot,
    received_ms: i64,
) -> RemediationRequest {
    let progress = Progress::from_snapshot(snapshot);
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
    };
    object(
        &signal.namespace,
        &snapshot.resource,
        labels(fingerprint, signal.signal_type, &signal.severity, false),
        spec,
    )
}

/// The ONE resource of a storm, started by `signal`.
pub fn for_storm(
    signal: &Signal,
    affected: &str,
    snapshot: &Snapshot,
    received_ms: i64,
) -> RemediationRequest {
    let mut progress = Progress::from_snapshot(snapshot);
    let started_ms = snapshot
        .storm
        .as_ref()
        .map_or(snapshot.first_seen_ms, |s| s.started_ms);
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
    };
    object(
        &signal.namespace,
        &snapshot.resource,
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

    #[test]
    fn deploy_crds_holds_the_crd_of_these_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/crds/remediationrequests.signalgate.io.yaml"
        );
        let shipped = std::fs::read_to_string(path).unwrap();
        assert!(
            shipped == crd_yaml(),
            "deploy/crds/ drifted from the Rust types: run `make crd` and commit the result"
        );
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
