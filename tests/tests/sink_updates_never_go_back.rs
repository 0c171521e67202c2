//! A sink never writes a resource backwards (issue 19, finding 2): a
//! coalesced update carrying counters older than the resource holds — a
//! stopping replica's final flush, read from the store before another
//! replica's write landed — leaves the resource as it is. On both sinks,
//! in process through the sinks' own API: the directory sink on a temporary
//! directory, the kube sink as the sidecar's service account on a real
//! kube-apiserver.

use std::future::Future;

use serde_json::{json, Value};
use signalgate_resource::{Deduplication, Progress, RemediationRequest, Resolution, Storm};
use signalgate_sidecar::sink::dir::DirSink;
use signalgate_sidecar::sink::Sink;
use signalgate_tests::k8s::{ApiServer, Identity};
use signalgate_tests::process::temp_dir;
use signalgate_tests::remediation::{
    foreign_resource, private_api_server, requests_served, settled, shared_api_server, sidecar_sink,
};

const FIRST: &str = "2026-12-01T10:00:01Z";
const STORM: &str = "rr-storm";
const INCIDENT: &str = "rr-incident";

fn block<T>(rt: &tokio::runtime::Runtime, f: impl Future<Output = T>) -> T {
    rt.block_on(f)
}

/// At 2026-12-01 12:`minute`.
fn at(minute: u32) -> String {
    format!("2026-12-01T12:{minute:02}:00Z")
}

/// An incident's counters: `count` sightings, the last at `minute`, over
/// `firings` firings; resolved at `resolved` (a minute) if given.
fn incident(count: u64, minute: u32, firings: u64, resolved: Option<u32>) -> Progress {
    Progress {
        deduplication: Deduplication {
            first_seen: FIRST.into(),
            last_seen: at(minute),
            occurrence_count: count,
            firing_count: firings,
            last_firing_time: Some(at(minute.saturating_sub(1))),
        },
        storm: None,
        resolution: resolved.map(|m| Resolution {
            resolved_at: at(m),
            received_at: at(m),
        }),
    }
}

/// A storm's counters: `count` signals of `alerts` members, the last at
/// `minute`, taking new ones until `ends` (a minute), `resolved` members
/// resolved.
fn storm(count: u64, minute: u32, alerts: u64, ends: u32, resolved: u64) -> Progress {
    Progress {
        storm: Some(Storm {
            alert_count: alerts,
            affected_resources: (0..alerts).map(|i| format!("Pod/p-{i}")).collect(),
            affected_resources_overflow: 0,
            started_at: "2026-12-01T10:00:00Z".into(),
            ends_at: Some(at(ends)),
            resolved_count: resolved,
            previous: None,
        }),
        deduplication: Deduplication {
            last_firing_time: None,
            firing_count: 1,
            ..incident(count, minute, 1, None).deduplication
        },
        resolution: None,
    }
}

/// The storm resource and the incident's, as created (5 sightings).
fn resources(namespace: &str) -> [Value; 2] {
    let mut s = foreign_resource(namespace, STORM, "fs", FIRST);
    s["spec"]["storm"] = json!({
        "alertCount": 3, "startedAt": "2026-12-01T10:00:00Z", "endsAt": "2026-12-01T10:05:00Z"
    });
    [s, foreign_resource(namespace, INCIDENT, "fi", FIRST)]
}

/// Two replicas' flushes of each resource arriving out of order, on `sink`
/// (its resources created in `namespace`); `read` reads a resource back.
fn check_never_backwards(
    rt: &tokio::runtime::Runtime,
    sink: &dyn Sink,
    namespace: &str,
    read: &dyn Fn(&str) -> Value,
) {
    for rr in resources(namespace) {
        let rr: RemediationRequest = serde_json::from_value(rr).unwrap();
        block(rt, sink.create(&rr, false)).unwrap();
    }
    let update = |name: &str, p: Progress| block(rt, sink.update(namespace, name, &p)).unwrap();

    // Replica B writes 11 sightings of 5 members; then replica A's final
    // flush, read from the store before, lands with 10 of 4.
    update(STORM, storm(11, 11, 5, 21, 3));
    update(STORM, storm(10, 10, 4, 20, 2));
    let spec = read(STORM)["spec"].clone();
    let d = &spec["deduplication"];
    assert_eq!(
        (d["occurrenceCount"].as_u64(), d["lastSeen"].as_str()),
        (Some(11), Some(at(11).as_str())),
        "an older count or lastSeen was written over a newer one: {spec}"
    );
    let s = &spec["storm"];
    assert_eq!(
        (s["alertCount"].as_u64(), s["endsAt"].as_str()),
        (Some(5), Some(at(21).as_str())),
        "the storm went backwards: {spec}"
    );
    assert_eq!(s["resolvedCount"], 3, "{spec}");
    assert_eq!(s["affectedResources"].as_array().map(Vec::len), Some(5));

    // Ordered by the counters, not field by field: a resolved member firing
    // again is one more sighting and one resolved member less.
    update(STORM, storm(12, 12, 5, 22, 2));
    let spec = read(STORM)["spec"].clone();
    assert_eq!(spec["deduplication"]["occurrenceCount"], 12, "{spec}");
    assert_eq!(spec["storm"]["resolvedCount"], 2, "{spec}");

    // Resolved after its 7th sighting; a flush read before the resolution
    // (open, 7 sightings) lands late: still resolved.
    update(INCIDENT, incident(7, 7, 2, Some(8)));
    update(INCIDENT, incident(7, 7, 2, None));
    let spec = read(INCIDENT)["spec"].clone();
    assert_eq!(
        spec["resolution"]["resolvedAt"],
        at(8),
        "a late flush reopened a resolved incident: {spec}"
    );
    // A new firing reopens it (one more sighting, one more firing): the
    // resolution goes; the late resolved flush does not bring it back.
    update(INCIDENT, incident(8, 9, 3, None));
    update(INCIDENT, incident(7, 7, 2, Some(8)));
    let spec = read(INCIDENT)["spec"].clone();
    assert!(spec.get("resolution").is_none(), "{spec}");
    let d = &spec["deduplication"];
    assert_eq!(
        (d["occurrenceCount"].as_u64(), d["firingCount"].as_u64()),
        (Some(8), Some(3)),
        "{spec}"
    );
}

#[test]
fn the_directory_sink_never_writes_a_resource_backwards() {
    let dir = temp_dir("never-back");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = DirSink::new(dir.path()).unwrap();
    let read = |name: &str| {
        let bytes = std::fs::read(sink.path_of("never-back-dir", name)).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    check_never_backwards(&rt, &sink, "never-back-dir", &read);
}

fn path(namespace: &str, name: &str) -> String {
    format!("/apis/signalgate.io/v1alpha1/namespaces/{namespace}/remediationrequests/{name}")
}

fn get(k: &ApiServer, namespace: &str, name: &str) -> Value {
    let (status, body) = k.get(Identity::Admin, &path(namespace, name));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_kube_sink_never_writes_a_resource_backwards() {
    let k = shared_api_server();
    k.create_namespace("never-back-kube");
    let (rt, sink) = sidecar_sink(k);
    let read = |name: &str| get(k, "never-back-kube", name);
    check_never_backwards(&rt, &sink, "never-back-kube", &read);
}

#[test]
fn the_kube_sink_rereads_a_resource_another_replica_wrote_meanwhile() {
    // A private API server: its request counts are this test's alone.
    let k = private_api_server();
    let ns = "never-back-race";
    k.create_namespace(ns);
    let (rt, sink) = sidecar_sink(&k);
    let rr: RemediationRequest =
        serde_json::from_value(foreign_resource(ns, INCIDENT, "fr", FIRST)).unwrap();
    block(&rt, sink.create(&rr, false)).unwrap();
    let update = |p: Progress| block(&rt, sink.update(ns, INCIDENT, &p)).unwrap();
    update(incident(6, 6, 2, None));

    // Another replica writes 20 sightings: what this sink last wrote (and
    // saw) of the resource is out of date.
    let other = json!({"spec": {"deduplication": {"occurrenceCount": 20, "lastSeen": at(20)}}});
    let (code, body) = k.request(Identity::Admin, "PATCH", &path(ns, INCIDENT), Some(&other));
    assert_eq!(code, 200, "{body}");
    let conflicts = || requests_served(&k, &["PATCH"], Some("409"));
    let before = settled(conflicts);
    update(incident(7, 7, 2, None));
    // Its PATCH, bound to the version it wrote, was refused; it read the
    // resource again and left it.
    assert_eq!(settled(conflicts) - before, 1.0);
    let spec = get(&k, ns, INCIDENT)["spec"].clone();
    let d = &spec["deduplication"];
    assert_eq!(
        (d["occurrenceCount"].as_u64(), d["lastSeen"].as_str()),
        (Some(20), Some(at(20).as_str())),
        "an older count was written over another replica's: {spec}"
    );

    // Newer counters are written; and while nobody else writes the
    // resource, an update costs one PATCH and no read.
    update(incident(21, 21, 2, None));
    let calls = || {
        (
            requests_served(&k, &["PATCH"], None),
            requests_served(&k, &["GET"], None),
        )
    };
    let before = settled(calls);
    update(incident(22, 22, 2, None));
    let after = settled(calls);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1.0, 0.0),
        "(PATCHes, GETs) of one update"
    );
    assert_eq!(
        get(&k, ns, INCIDENT)["spec"]["deduplication"]["occurrenceCount"],
        22
    );
}
