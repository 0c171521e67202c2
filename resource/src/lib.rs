//! The `RemediationRequest` custom resource (`signalgate.io/v1alpha1`) that
//! signalgate writes: its types here, how one is built from a signal and its
//! counters in [`builder`], how it is named in [`naming`]. Both sinks of the
//! sidecar (the directory and Kubernetes) write exactly these objects, and
//! the payload checker (`checker/`) builds them in the browser with this very
//! code: nothing here does I/O or needs a runtime.
#![forbid(unsafe_code)]

pub mod builder;
pub mod naming;

use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    crates(kube_core = "::kube_core"),
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
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Resolved","type":"date","jsonPath":".spec.resolution.resolvedAt"}"#,
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
    /// Set once the incident resolved (a `resolved` alert); absent while it is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
}

/// When an incident (or, for a storm, its last member) resolved.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolution {
    /// When it stopped firing, as the sender says (`endsAt`; RFC 3339).
    pub resolved_at: String,
    /// When signalgate received the resolve (RFC 3339).
    pub received_at: String,
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
    /// Firing instances counted in this resource: 1 at creation, one more
    /// for each new firing (a new `startsAt`) absorbed into it.
    #[serde(default = "one")]
    pub firing_count: u64,
    /// When the latest firing instance counted here started (RFC 3339);
    /// absent while it is the first (`firingTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_firing_time: Option<String>,
}

fn one() -> u64 {
    1
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
    /// Members whose incident resolved.
    #[serde(default)]
    pub resolved_count: u64,
    /// The storm this one continues (it reached its maximum duration while
    /// its namespace was still storming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// Written by the remediation controller, never by signalgate.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the controller finished (RFC 3339), written with a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// The counters the sink keeps up to date after creation (coalesced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub deduplication: Deduplication,
    pub storm: Option<Storm>,
    /// The incident's resolution; `None`: open (clears an earlier one).
    pub resolution: Option<Resolution>,
}

impl Progress {
    /// Applies these counters to a spec.
    pub fn apply(&self, spec: &mut RemediationRequestSpec) {
        spec.deduplication = self.deduplication.clone();
        if self.storm.is_some() {
            spec.storm = self.storm.clone();
        }
        spec.resolution = self.resolution.clone();
    }

    /// The counters a spec holds (what the last [`Progress::apply`] wrote).
    pub fn of(spec: &RemediationRequestSpec) -> Progress {
        Progress {
            deduplication: spec.deduplication.clone(),
            storm: spec.storm.clone(),
            resolution: spec.resolution.clone(),
        }
    }

    /// Whether these counters are an earlier state of the incident than
    /// `held`, what its resource holds now: written, they would put it back
    /// (a count, `lastSeen` or a storm's `endsAt` going backwards, a
    /// resolution undone or an old one brought back). The sinks skip such a
    /// write: it is a flush that read the store before another replica's
    /// write landed (a stopping replica's last flush, above all).
    ///
    /// The order is the store's: every change it makes to a resource's
    /// counters moves the position `(occurrenceCount, storm resolvedCount,
    /// resolved)` forward. A sighting counts one more occurrence, and only a
    /// sighting moves `lastSeen`, `endsAt`, the firings and the storm's
    /// members; reopening an incident or a storm is a sighting (a new firing,
    /// a new member, a resolved member firing again, which takes one off
    /// `resolvedCount`); a resolution counts no occurrence but resolves one
    /// more storm member or, at the same count, the incident (so at equal
    /// counters, resolved is the later state). Neither the fields one by one
    /// (`resolvedCount` may go down) nor the times (the clocks of whoever
    /// counted) would give that order. Equal positions are the same state of
    /// the store: not behind.
    pub fn is_behind(&self, held: &Progress) -> bool {
        let position = |p: &Progress, resolved_members: u64| {
            (
                p.deduplication.occurrence_count,
                resolved_members,
                p.resolution.is_some(),
            )
        };
        let (ours, theirs) = match (&self.storm, &held.storm) {
            (Some(ours), Some(theirs)) => (ours.resolved_count, theirs.resolved_count),
            // Without a storm, a write leaves the resource's as it is.
            _ => (0, 0),
        };
        position(self, ours) < position(held, theirs)
    }

    /// These counters as written over a resource holding `held`: a storm
    /// keeps every affected resource the resource lists. The store's list
    /// only grows while a storm runs, so this changes nothing while the
    /// store holds the storm; counters that carry no list (a sidecar's
    /// acknowledged ones, written because the store lost its own) or a
    /// shorter one (a store restored from an older snapshot) would
    /// otherwise take members off it, and a lookup after a data loss finds
    /// a storm's members by that list. The union is kept within
    /// `max_affected` (the store's cap; never shorter than either list);
    /// what does not fit is counted in the overflow.
    pub fn over(&self, held: &Progress, max_affected: usize) -> Progress {
        let mut merged = self.clone();
        if let (Some(ours), Some(theirs)) = (merged.storm.as_mut(), held.storm.as_ref()) {
            let fits = max_affected
                .max(ours.affected_resources.len())
                .max(theirs.affected_resources.len());
            let mut all: Vec<String> = ours
                .affected_resources
                .iter()
                .chain(&theirs.affected_resources)
                .cloned()
                .collect();
            all.sort_unstable();
            all.dedup();
            let left_out = all.len().saturating_sub(fits) as u64;
            all.truncate(fits);
            ours.affected_resources = all;
            ours.affected_resources_overflow = ours
                .affected_resources_overflow
                .max(theirs.affected_resources_overflow)
                + left_out;
        }
        merged
    }

    /// Whether applying these counters would change a resource holding `held`.
    pub fn changes(&self, held: &Progress) -> bool {
        self.deduplication != held.deduplication
            || self.resolution != held.resolution
            || self
                .storm
                .as_ref()
                .is_some_and(|s| held.storm.as_ref() != Some(s))
    }
}

/// The CRD manifest (what `deploy/crds/` holds), as YAML.
pub fn crd_yaml() -> String {
    use kube_core::CustomResourceExt;
    let crd = RemediationRequest::crd();
    let yaml = serde_yaml::to_string(&crd).unwrap_or_default();
    format!("# Generated by `signalgate-sidecar --print-crd` (make crd); do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn old_resource() -> serde_json::Value {
        // As written before incidents had a lifecycle: no firing count,
        // resolution, storm resolved count or completion time.
        serde_json::json!({
            "apiVersion": "signalgate.io/v1alpha1",
            "kind": "RemediationRequest",
            "metadata": { "name": "rr-1", "namespace": "shop" },
            "spec": {
                "signalFingerprint": "f", "signalName": "A", "signalType": "prometheus",
                "severity": "warning",
                "targetResource": { "kind": "Pod", "name": "p" },
                "source": "s", "firingTime": "2026-11-27T10:00:00Z",
                "receivedTime": "2026-11-27T10:00:01Z",
                "deduplication": {
                    "firstSeen": "2026-11-27T10:00:01Z", "lastSeen": "2026-11-27T10:00:01Z",
                    "occurrenceCount": 3
                },
                "storm": { "alertCount": 2, "startedAt": "2026-11-27T10:00:00Z" }
            },
            "status": { "phase": "Running" }
        })
    }

    #[test]
    fn resources_written_before_the_lifecycle_fields_read_with_defaults() {
        let rr: RemediationRequest = serde_json::from_value(old_resource()).unwrap();
        assert_eq!(rr.spec.deduplication.firing_count, 1);
        assert_eq!(rr.spec.deduplication.last_firing_time, None);
        assert_eq!(rr.spec.resolution, None);
        let storm = rr.spec.storm.as_ref().unwrap();
        assert_eq!((storm.resolved_count, storm.previous.as_deref()), (0, None));
        let status = rr.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.completion_time, None);
    }

    #[test]
    fn lifecycle_fields_are_written_by_their_names_and_absent_when_unset() {
        let mut rr: RemediationRequest = serde_json::from_value(old_resource()).unwrap();
        let written = serde_json::to_value(&rr).unwrap();
        let spec = &written["spec"];
        assert!(spec.get("resolution").is_none(), "{spec}");
        assert!(spec["deduplication"].get("lastFiringTime").is_none());
        assert!(spec["storm"].get("previous").is_none());
        assert_eq!(spec["deduplication"]["firingCount"], 1);
        assert_eq!(spec["storm"]["resolvedCount"], 0);

        let mut progress = Progress {
            deduplication: rr.spec.deduplication.clone(),
            storm: None,
            resolution: Some(Resolution {
                resolved_at: "2026-11-27T11:00:00Z".into(),
                received_at: "2026-11-27T11:00:02Z".into(),
            }),
        };
        progress.deduplication.firing_count = 2;
        progress.deduplication.last_firing_time = Some("2026-11-27T10:30:00Z".into());
        progress.apply(&mut rr.spec);
        let spec = serde_json::to_value(&rr.spec).unwrap();
        assert_eq!(
            spec["resolution"],
            serde_json::json!({"resolvedAt": "2026-11-27T11:00:00Z", "receivedAt": "2026-11-27T11:00:02Z"})
        );
        assert_eq!(spec["deduplication"]["firingCount"], 2);
        assert_eq!(
            spec["deduplication"]["lastFiringTime"],
            "2026-11-27T10:30:00Z"
        );
        assert_eq!(
            spec["storm"]["alertCount"], 2,
            "a progress without storm keeps it"
        );
        // An open incident again: the resolution is cleared.
        progress.resolution = None;
        progress.apply(&mut rr.spec);
        assert_eq!(rr.spec.resolution, None);
    }

    fn counted(count: u64, firings: u64, resolved: bool, storm: Option<u64>) -> Progress {
        let at = |minute: u64| format!("2026-11-27T10:{minute:02}:00Z");
        Progress {
            deduplication: Deduplication {
                first_seen: at(0),
                // A later count, an earlier clock: times never decide.
                last_seen: at(59 - count),
                occurrence_count: count,
                firing_count: firings,
                last_firing_time: None,
            },
            storm: storm.map(|resolved_count| Storm {
                alert_count: 3,
                affected_resources: vec![],
                affected_resources_overflow: 0,
                started_at: at(0),
                ends_at: Some(at(count)),
                resolved_count,
                previous: None,
            }),
            resolution: resolved.then(|| Resolution {
                resolved_at: at(30),
                received_at: at(30),
            }),
        }
    }

    #[test]
    fn progress_is_ordered_as_the_store_counts() {
        let behind = |ours: Progress, held: Progress| ours.is_behind(&held);
        // Fewer sightings: behind, whatever the clocks say.
        assert!(behind(
            counted(10, 1, false, None),
            counted(11, 1, false, None)
        ));
        assert!(!behind(
            counted(11, 1, false, None),
            counted(10, 1, false, None)
        ));
        // The same state: not behind, and nothing to change.
        let same = counted(10, 1, false, None);
        assert!(!behind(same.clone(), same.clone()));
        assert!(!same.changes(&same));
        // Resolved at the same count: a flush read before the resolution
        // is behind it; a reopening is a sighting (and a firing) more.
        assert!(behind(
            counted(7, 2, false, None),
            counted(7, 2, true, None)
        ));
        assert!(!behind(
            counted(7, 2, true, None),
            counted(7, 2, false, None)
        ));
        assert!(!behind(
            counted(8, 3, false, None),
            counted(7, 2, true, None)
        ));
        assert!(behind(
            counted(7, 2, true, None),
            counted(8, 3, false, None)
        ));
        // A storm: a member resolving counts no sighting; one firing again
        // counts one and takes one off the resolved members.
        assert!(behind(
            counted(9, 1, false, Some(1)),
            counted(9, 1, false, Some(2))
        ));
        assert!(!behind(
            counted(10, 1, false, Some(1)),
            counted(9, 1, false, Some(2))
        ));
        // Without a storm, a progress leaves the resource's storm alone.
        assert!(!behind(
            counted(9, 1, false, None),
            counted(9, 1, false, Some(2))
        ));
        let storm = counted(9, 1, false, Some(2));
        let mut without = storm.clone();
        without.storm = None;
        assert!(!without.changes(&storm));
        assert!(storm.changes(&without));
    }

    #[test]
    fn a_storm_written_over_a_resource_keeps_the_members_it_lists() {
        let listing = |affected: &[&str], overflow: u64| {
            let mut p = counted(9, 1, false, Some(0));
            let storm = p.storm.as_mut().unwrap();
            storm.affected_resources = affected.iter().map(|a| a.to_string()).collect();
            storm.affected_resources_overflow = overflow;
            p
        };
        let affected = |p: Progress| {
            let s = p.storm.unwrap();
            (s.affected_resources, s.affected_resources_overflow)
        };
        let held = listing(&["Pod/a", "Pod/c"], 0);
        // Counters that carry no list keep the resource's.
        assert_eq!(
            affected(listing(&[], 0).over(&held, 100)),
            (vec!["Pod/a".to_string(), "Pod/c".to_string()], 0)
        );
        // The store's longer list, as it grows: unchanged.
        let grown = listing(&["Pod/a", "Pod/b", "Pod/c"], 0);
        assert_eq!(grown.over(&held, 100), grown);
        // Lists that differ: both, within the cap, without overflow.
        assert_eq!(
            affected(listing(&["Pod/b"], 0).over(&held, 100)),
            (
                vec![
                    "Pod/a".to_string(),
                    "Pod/b".to_string(),
                    "Pod/c".to_string()
                ],
                0
            )
        );
        // Two lists at the cap that differ: what does not fit overflows.
        assert_eq!(
            affected(listing(&["Pod/a", "Pod/b"], 1).over(&held, 2)),
            (vec!["Pod/a".to_string(), "Pod/b".to_string()], 2)
        );
        // Not a storm: as it is.
        let plain = counted(9, 1, false, None);
        assert_eq!(plain.over(&held, 100), plain);
    }

    #[test]
    fn the_crd_prints_phase_and_resolution() {
        let crd = crd_yaml();
        assert!(crd.contains("jsonPath: .status.phase"), "{crd}");
        assert!(
            crd.contains("jsonPath: .spec.resolution.resolvedAt"),
            "{crd}"
        );
    }

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
}
