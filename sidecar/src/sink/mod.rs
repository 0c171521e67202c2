//! Where resources are written: a directory (the embedded default) or the
//! Kubernetes API. Both write the same [`RemediationRequest`] objects.

use signalgate_model::rfc3339;

use crate::store::{Resolution, Snapshot, StormSnapshot};
use signalgate_resource::naming::storm_prefix;
use signalgate_resource::{Progress, RemediationRequest};

pub mod dir;
pub mod kube;

/// Where a created resource ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub namespace: String,
    pub name: String,
}

impl Location {
    /// The namespace it moved to, if not `namespace` (whose resource it
    /// is): what the store records as [`Snapshot::moved_to`].
    pub fn moved_to(&self, namespace: &str) -> Option<String> {
        (self.namespace != namespace).then(|| self.namespace.clone())
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub location: Location,
    /// The resource was there already (a retried create): it was left as it
    /// was, so its counters may be older than the store's.
    pub existed: bool,
}

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying later (unreachable, timeout, 429, 5xx): answered 503.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// Refused for good (forbidden, invalid): answered 500, logged as an error.
    #[error("sink refused the write: {0}")]
    Rejected(String),
    /// The resource to update does not exist (deleted since).
    #[error("resource not found: {0}")]
    NotFound(String),
}

/// An incident's resource found in the sink, with its counters and what
/// its remediation controller says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub location: Location,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub occurrence_count: u64,
    /// The latest firing instance counted in it: `spec.deduplication.lastFiringTime`,
    /// else `spec.firingTime` (ms); 0 if unparsable.
    pub instance_ms: i64,
    /// Firing instances counted in it (`spec.deduplication.firingCount`, 1 when absent).
    pub firings: u64,
    /// `spec.resolution`; `None`: open.
    pub resolution: Option<Resolution>,
    /// `status.phase`, as the remediation controller set it.
    pub phase: Option<String>,
    /// `status.completionTime` (ms).
    pub completed_ms: Option<i64>,
}

/// How a lookup reads the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Sees every resource written before it (as far as the sink can):
    /// for a namespace whose store data may be lost.
    Consistent,
    /// The sink's own view, without a call to its backend where it keeps
    /// one (the kube sink's cache of its resources); may miss a write of a
    /// moment ago.
    Cached,
}

/// A storm resource found in the sink, with its counters as the store holds
/// them (`snapshot.storm` always set, with the resource's `endsAt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundStorm {
    pub location: Location,
    pub snapshot: Snapshot,
}

fn unix_millis(t: &str) -> Option<i64> {
    rfc3339::parse(t).map(|t| t.unix_seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// How many of a namespace's storm resources [`recent_storms`] returns.
pub const RECENT_STORMS: usize = 16;

/// Of `candidates`, `namespace`'s storm resources with an end (resources
/// written before `endsAt` existed have none), latest started first, at
/// most [`RECENT_STORMS`]. A namespace runs one storm at a time: the first
/// is the only one that may still run. A storm is `namespace`'s if its name
/// says so (see [`storm_prefix`]).
pub fn recent_storms<'a>(
    candidates: impl IntoIterator<Item = &'a RemediationRequest>,
    namespace: &str,
) -> Vec<FoundStorm> {
    let prefix = storm_prefix(namespace);
    let mut storms: Vec<FoundStorm> = candidates
        .into_iter()
        .filter(|rr| {
            rr.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter_map(|rr| found_storm(rr, namespace))
        .collect();
    storms.sort_by_key(|s| {
        std::cmp::Reverse(
            s.snapshot
                .storm
                .as_ref()
                .map_or(i64::MIN, |st| st.started_ms),
        )
    });
    storms.truncate(RECENT_STORMS);
    storms
}

/// What recovery needs of storm resource `rr` of `namespace`: `None` without
/// an end, a name, a namespace or parsable times.
fn found_storm(rr: &RemediationRequest, namespace: &str) -> Option<FoundStorm> {
    let storm = rr.spec.storm.as_ref()?;
    let d = &rr.spec.deduplication;
    let (first_seen_ms, last_seen_ms) = (unix_millis(&d.first_seen)?, unix_millis(&d.last_seen)?);
    let started_ms = unix_millis(&storm.started_at)?;
    let ends_ms = storm.ends_at.as_deref().and_then(unix_millis)?;
    let name = rr.metadata.name.clone()?;
    let location = Location {
        namespace: rr.metadata.namespace.clone()?,
        name: name.clone(),
    };
    Some(FoundStorm {
        snapshot: Snapshot {
            resource: name,
            first_seen_ms,
            last_seen_ms,
            occurrence_count: d.occurrence_count,
            storm: Some(StormSnapshot {
                alert_count: storm.alert_count,
                affected: storm.affected_resources.clone(),
                affected_overflow: storm.affected_resources_overflow,
                started_ms,
                ends_ms,
                resolved_count: storm.resolved_count,
                previous: storm.previous.clone(),
            }),
            moved_to: location.moved_to(namespace),
            ..Snapshot::default()
        },
        location,
    })
}

/// What a lookup needs of `rr`: `None` if it has no namespace or name, or
/// its first or last seen time is unparsable.
pub fn found(rr: &RemediationRequest) -> Option<Found> {
    let spec = &rr.spec;
    let d = &spec.deduplication;
    let instance_ms = d
        .last_firing_time
        .as_deref()
        .and_then(unix_millis)
        .or_else(|| unix_millis(&spec.firing_time))
        .unwrap_or(0);
    let resolution = spec.resolution.as_ref().map(|r| {
        let (resolved, received) = (unix_millis(&r.resolved_at), unix_millis(&r.received_at));
        Resolution {
            resolved_ms: resolved.or(received).unwrap_or(0),
            received_ms: received.or(resolved).unwrap_or(0),
        }
    });
    let status = rr.status.as_ref();
    Some(Found {
        first_seen_ms: unix_millis(&d.first_seen)?,
        last_seen_ms: unix_millis(&d.last_seen)?,
        occurrence_count: d.occurrence_count,
        instance_ms,
        firings: d.firing_count,
        resolution,
        phase: status.and_then(|s| s.phase.clone()),
        completed_ms: status
            .and_then(|s| s.completion_time.as_deref())
            .and_then(unix_millis),
        location: Location {
            namespace: rr.metadata.namespace.clone()?,
            name: rr.metadata.name.clone()?,
        },
    })
}

/// Of `candidates`, the latest resource (by first seen) of incident
/// `fingerprint`, whatever its age.
pub fn latest<'a>(
    candidates: impl IntoIterator<Item = &'a RemediationRequest>,
    fingerprint: &str,
) -> Option<Found> {
    candidates
        .into_iter()
        .filter(|rr| rr.spec.signal_fingerprint == fingerprint)
        .filter_map(found)
        .max_by_key(|f| (f.first_seen_ms, f.last_seen_ms))
}

#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// For each of `fingerprints`, its LATEST resource (by first seen) in
    /// `namespace` or moved from it to the fallback namespace, whatever its
    /// age: one answer per fingerprint, in order, all of one request's at
    /// once. [`Read::Consistent`]: as a lookup for a namespace the store may
    /// have lost (Redis restarted, a cold namespace). [`Read::Cached`]: the
    /// sink's own view (kube: its cache of RemediationRequests, no API call;
    /// a LIST only while the cache has not synced yet; dir: the files).
    async fn find_latest(
        &self,
        namespace: &str,
        fingerprints: &[String],
        read: Read,
    ) -> Result<Vec<Option<Found>>, SinkError>;
    /// The storm resources of `namespace` (in it, or moved from it to the
    /// fallback namespace), latest started first ([`recent_storms`]):
    /// asked when lookups (`Write::Lookup`) found nothing for some new
    /// signals, so that they join a running storm the store lost rather
    /// than start another, or count again in the storm they were members
    /// of.
    async fn find_recent_storms(&self, namespace: &str) -> Result<Vec<FoundStorm>, SinkError>;
    /// Creates the resource. Idempotent: if a resource of that name already
    /// exists (a retried create), that is success, and it is left as it is.
    /// `retake`: an earlier holder of the claim may have written it (see
    /// [`crate::store::Decision::retakes_claim`]), also where the sink puts
    /// resources its namespace could not take at the time.
    async fn create(&self, rr: &RemediationRequest, retake: bool) -> Result<Created, SinkError>;
    /// Writes the latest counters into an existing resource, never
    /// backwards: counters older than the resource holds
    /// ([`Progress::is_behind`]: a flush that read the store before another
    /// replica's write landed) are not written, and that is success.
    async fn update(
        &self,
        namespace: &str,
        name: &str,
        progress: &Progress,
    ) -> Result<(), SinkError>;
    /// Readiness: writes can succeed.
    async fn ready(&self) -> Result<(), SinkError>;
    /// Whether a lookup with `read` is answered from what the sink holds
    /// itself, without a call to its backend (the kube sink: a cached read
    /// once its cache has synced). The namespaces of lookups that are not
    /// count against a request's budget of new namespaces
    /// ([`crate::recovery`]). Default: every lookup (the directory sink
    /// reads its files).
    fn reads_locally(&self, _read: Read) -> bool {
        true
    }
    /// Whether the sink knows that `namespace` exists, so that a create
    /// there costs one write and lands there. Namespaces of creates it does
    /// not know count against a request's budget of new namespaces.
    /// Default: every namespace (the directory sink makes its directory).
    fn knows_namespace(&self, _namespace: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalgate_resource::Storm;

    fn storm(name: &str, started: &str, last: &str, ends: Option<&str>) -> RemediationRequest {
        let mut rr = incident(name, started, |v| {
            let spec = &mut v["spec"];
            spec["signalName"] = "SignalStorm".into();
            spec["targetResource"] = serde_json::json!({ "kind": "Namespace", "name": "shop" });
            spec["firingTime"] = started.into();
            spec["deduplication"]["lastSeen"] = last.into();
            spec["deduplication"]["occurrenceCount"] = 5.into();
        });
        rr.spec.storm = Some(Storm {
            alert_count: 3,
            affected_resources: vec!["Pod/a".into()],
            affected_resources_overflow: 0,
            started_at: started.into(),
            ends_at: ends.map(Into::into),
            resolved_count: 0,
            previous: None,
        });
        rr
    }

    fn ms(t: &str) -> i64 {
        unix_millis(t).unwrap_or_default()
    }

    /// An incident's resource first seen at `first`, as `edit` changes it.
    fn incident(
        name: &str,
        first: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> RemediationRequest {
        let mut v = serde_json::json!({
            "apiVersion": "signalgate.io/v1alpha1",
            "kind": "RemediationRequest",
            "metadata": { "name": name, "namespace": "shop" },
            "spec": {
                "signalFingerprint": "f", "signalName": "A", "signalType": "prometheus",
                "severity": "warning",
                "targetResource": { "kind": "Pod", "name": "p" },
                "source": "s", "firingTime": "2026-11-27T09:59:00Z", "receivedTime": first,
                "deduplication": { "firstSeen": first, "lastSeen": "2026-11-27T10:05:00Z", "occurrenceCount": 4 }
            }
        });
        edit(&mut v);
        serde_json::from_value(v).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn a_resource_without_the_lifecycle_fields_is_found_as_one_open_firing() {
        let rr = incident("rr-1", "2026-11-27T10:00:00Z", |_| {});
        let f = found(&rr).unwrap_or_else(|| unreachable!());
        assert_eq!(
            f,
            Found {
                location: Location {
                    namespace: "shop".into(),
                    name: "rr-1".into()
                },
                first_seen_ms: ms("2026-11-27T10:00:00Z"),
                last_seen_ms: ms("2026-11-27T10:05:00Z"),
                occurrence_count: 4,
                instance_ms: ms("2026-11-27T09:59:00Z"),
                firings: 1,
                resolution: None,
                phase: None,
                completed_ms: None,
            }
        );
    }

    #[test]
    fn the_lifecycle_fields_are_read() {
        let rr = incident("rr-1", "2026-11-27T10:00:00Z", |v| {
            let d = &mut v["spec"]["deduplication"];
            d["firingCount"] = 3.into();
            d["lastFiringTime"] = "2026-11-27T10:04:00.250Z".into();
            v["spec"]["resolution"] = serde_json::json!({
                "resolvedAt": "2026-11-27T10:06:00Z", "receivedAt": "2026-11-27T10:06:01Z"
            });
            v["status"] = serde_json::json!({
                "phase": "Completed", "completionTime": "2026-11-27T10:07:00Z"
            });
        });
        let f = found(&rr).unwrap_or_else(|| unreachable!());
        assert_eq!(f.instance_ms, ms("2026-11-27T10:04:00.250Z"));
        assert_eq!(f.firings, 3);
        assert_eq!(
            f.resolution,
            Some(Resolution {
                resolved_ms: ms("2026-11-27T10:06:00Z"),
                received_ms: ms("2026-11-27T10:06:01Z"),
            })
        );
        assert_eq!(f.phase.as_deref(), Some("Completed"));
        assert_eq!(f.completed_ms, Some(ms("2026-11-27T10:07:00Z")));
    }

    #[test]
    fn unparsable_times_read_as_unknown_or_hide_the_resource() {
        let odd = incident("rr-1", "2026-11-27T10:00:00Z", |v| {
            v["spec"]["firingTime"] = "soon".into();
            v["status"] = serde_json::json!({ "completionTime": "later" });
        });
        let f = found(&odd).unwrap_or_else(|| unreachable!());
        assert_eq!((f.instance_ms, f.completed_ms), (0, None));
        let unseen = incident("rr-2", "yesterday", |_| {});
        assert_eq!(found(&unseen), None);
    }

    #[test]
    fn the_latest_is_the_one_first_seen_last_however_old() {
        let old = incident("rr-1", "2026-11-27T10:00:00Z", |_| {});
        let new = incident("rr-2", "2026-11-27T10:01:00Z", |v| {
            v["spec"]["deduplication"]["lastSeen"] = "2026-11-27T10:01:00Z".into();
        });
        let other = incident("rr-3", "2026-11-27T10:02:00Z", |v| {
            v["spec"]["signalFingerprint"] = "g".into();
        });
        let all = [old, new, other];
        // rr-1 was seen later, but rr-2 is the latest resource.
        assert_eq!(
            latest(&all, "f").map(|f| f.location.name),
            Some("rr-2".into())
        );
        assert_eq!(latest(&all, "h"), None);
    }

    #[test]
    fn storms_with_an_end_are_found_latest_started_first() {
        let name = |n: &str| format!("{}{n}", storm_prefix("shop"));
        // An older storm whose members kept repeating was seen last; the
        // one started later comes first.
        let old = storm(
            &name("1"),
            "2026-11-27T10:00:00Z",
            "2026-11-27T10:09:00Z",
            Some("2026-11-27T10:05:00Z"),
        );
        let new = storm(
            &name("2"),
            "2026-11-27T10:06:00Z",
            "2026-11-27T10:07:00Z",
            Some("2026-11-27T10:08:00Z"),
        );
        // Another namespace's storm (moved to the fallback namespace), later still.
        let foreign = storm(
            &format!("{}3", storm_prefix("other")),
            "2026-11-27T10:06:30Z",
            "2026-11-27T10:07:00Z",
            Some("2026-11-27T10:09:00Z"),
        );
        // Without an end written down (an older resource): not found.
        let unknown = storm(
            &name("4"),
            "2026-11-27T10:07:00Z",
            "2026-11-27T10:07:00Z",
            None,
        );
        let all = [old, new, foreign, unknown];
        let found: Vec<String> = recent_storms(&all, "shop")
            .into_iter()
            .map(|f| f.location.name)
            .collect();
        assert_eq!(found, [name("2"), name("1")]);
        let ends = recent_storms(&all, "shop")[0]
            .snapshot
            .storm
            .as_ref()
            .map(|s| s.ends_ms);
        assert_eq!(ends, Some(ms("2026-11-27T10:08:00Z")));
    }

    #[test]
    fn at_most_the_latest_few_storms_are_found() {
        let many: Vec<RemediationRequest> = (0..RECENT_STORMS + 4)
            .map(|i| {
                let started = format!("2026-11-27T10:{:02}:00Z", i);
                storm(
                    &format!("{}{i}", storm_prefix("shop")),
                    &started,
                    &started,
                    Some(&started),
                )
            })
            .collect();
        let found = recent_storms(&many, "shop");
        assert_eq!(found.len(), RECENT_STORMS);
        let last = RECENT_STORMS + 3;
        assert_eq!(
            found[0].location.name,
            format!("{}{last}", storm_prefix("shop"))
        );
    }
}
