//! The store's counters as the resource's: the `RemediationRequest` type and
//! how one is built live in the `signalgate-resource` crate (the payload
//! checker builds them in the browser too); this module feeds it a
//! [`Snapshot`].

use signalgate_model::rfc3339::format_unix_millis;
use signalgate_model::signal::Signal;
use signalgate_resource::{
    builder, Deduplication, Progress, RemediationRequest, Resolution, Storm,
};

use crate::store::Snapshot;

/// The counters a snapshot holds, as the resource writes them.
pub fn progress(s: &Snapshot) -> Progress {
    Progress {
        deduplication: Deduplication {
            first_seen: format_unix_millis(s.first_seen_ms),
            last_seen: format_unix_millis(s.last_seen_ms),
            occurrence_count: s.occurrence_count,
            firing_count: s.firings.max(1),
            last_firing_time: (s.instance_ms > 0).then(|| format_unix_millis(s.instance_ms)),
        },
        storm: s.storm.as_ref().map(|st| Storm {
            alert_count: st.alert_count,
            affected_resources: st.affected.clone(),
            affected_resources_overflow: st.affected_overflow,
            started_at: format_unix_millis(st.started_ms),
            ends_at: (st.ends_ms > 0).then(|| format_unix_millis(st.ends_ms)),
            resolved_count: st.resolved_count,
            previous: st.previous.clone(),
        }),
        resolution: s.resolution.map(|r| Resolution {
            resolved_at: format_unix_millis(r.resolved_ms),
            received_at: format_unix_millis(r.received_ms),
        }),
    }
}

/// The resource for a signal's own incident, as `snapshot` counts it.
pub fn for_signal(
    signal: &Signal,
    fingerprint: &str,
    snapshot: &Snapshot,
    received_ms: i64,
) -> RemediationRequest {
    builder::for_signal(
        signal,
        fingerprint,
        &snapshot.resource,
        progress(snapshot),
        received_ms,
    )
}

/// The ONE resource of a storm started by `signal`, as `snapshot` counts it.
pub fn for_storm(
    signal: &Signal,
    affected: &str,
    snapshot: &Snapshot,
    received_ms: i64,
) -> RemediationRequest {
    let started_ms = snapshot
        .storm
        .as_ref()
        .map_or(snapshot.first_seen_ms, |s| s.started_ms);
    builder::for_storm(
        signal,
        affected,
        &snapshot.resource,
        progress(snapshot),
        started_ms,
        received_ms,
    )
}
