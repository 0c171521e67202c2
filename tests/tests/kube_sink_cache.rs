//! The kube sink's own view of its RemediationRequests (a LIST, then a
//! WATCH) on a real kube-apiserver, as the sidecar's service account: it
//! sees what other clients write (the remediation controller's status
//! included), answers cached lookups without an API call, and recovers
//! after the API server restarts. In process, through the sink's own API.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use signalgate_resource::{Deduplication, Progress, RemediationRequest, Resolution, Storm};
use signalgate_sidecar::sink::kube::KubeSink;
use signalgate_sidecar::sink::{Found, Read, Sink};
use signalgate_tests::k8s::{ApiServer, Identity};
use signalgate_tests::remediation::{
    create_as_admin, foreign_resource, private_api_server, requests_served, settled,
    shared_api_server, sidecar_sink, FALLBACK,
};

const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

fn path(namespace: &str, name: &str) -> String {
    format!("/apis/signalgate.io/v1alpha1/namespaces/{namespace}/remediationrequests/{name}")
}

/// Asks the sink (cached) for `fingerprint` of `namespace` until `cond`
/// holds of the answer; returns it.
fn poll_cached(
    rt: &tokio::runtime::Runtime,
    sink: &KubeSink,
    namespace: &str,
    fingerprint: &str,
    what: &str,
    cond: impl Fn(&Option<Found>) -> bool,
) -> Option<Found> {
    let fps = [fingerprint.to_string()];
    signalgate_tests::process::wait_for(what, Duration::from_secs(60), || {
        let found = block(rt, sink.find_latest(namespace, &fps, Read::Cached))
            .unwrap()
            .remove(0);
        cond(&found).then_some(found)
    })
}

fn block<T>(rt: &tokio::runtime::Runtime, f: impl Future<Output = T>) -> T {
    rt.block_on(f)
}

fn ms(t: &str) -> i64 {
    let t = signalgate_model::rfc3339::parse(t).unwrap();
    t.unix_seconds * 1000 + i64::from(t.nanos / 1_000_000)
}

#[test]
fn the_cache_sees_what_others_write_and_answers_without_an_api_call() {
    // A private API server: its request counts are this test's alone.
    let k = private_api_server();
    k.create_namespace("cache-a");
    let (rt, sink) = sidecar_sink(&k);
    assert!(block(&rt, sink.cache().wait_synced(SYNC_TIMEOUT)));
    let before = settled(|| requests_served(&k, &["LIST", "GET"], None));

    // Created by another client: seen, with every field a lookup needs.
    create_as_admin(
        &k,
        &foreign_resource("cache-a", "rr-a-1", "fa", "2026-12-01T10:00:01Z"),
    );
    let found = poll_cached(&rt, &sink, "cache-a", "fa", "the resource", Option::is_some).unwrap();
    assert_eq!(found.location.to_string(), "cache-a/rr-a-1");
    assert_eq!(found.occurrence_count, 5);
    assert_eq!(found.instance_ms, ms("2026-12-01T10:30:00Z"));
    assert_eq!(found.firings, 2);
    assert_eq!((found.phase.as_deref(), found.completed_ms), (None, None));

    // The controller's status, through the status subresource.
    let status =
        json!({"status": {"phase": "Completed", "completionTime": "2026-12-01T12:00:00Z"}});
    let url = format!("{}/status", path("cache-a", "rr-a-1"));
    let (code, body) = k.request(Identity::Admin, "PATCH", &url, Some(&status));
    assert_eq!(code, 200, "{body}");
    let found = poll_cached(&rt, &sink, "cache-a", "fa", "the status", |f| {
        f.as_ref().is_some_and(|f| f.phase.is_some())
    })
    .unwrap();
    assert_eq!(found.phase.as_deref(), Some("Completed"));
    assert_eq!(found.completed_ms, Some(ms("2026-12-01T12:00:00Z")));

    // A later resource of the incident, moved to the fallback namespace,
    // is the latest; another namespace's is not this one's.
    let mut moved = foreign_resource(FALLBACK, "rr-a-2", "fa", "2026-12-01T13:00:00Z");
    moved["metadata"]["labels"]["signalgate.io/original-namespace"] = json!("cache-a");
    create_as_admin(&k, &moved);
    create_as_admin(
        &k,
        &foreign_resource(FALLBACK, "rr-a-3", "fa", "2026-12-01T14:00:00Z"),
    );
    let found = poll_cached(&rt, &sink, "cache-a", "fa", "the moved resource", |f| {
        f.as_ref().is_some_and(|f| f.location.name == "rr-a-2")
    })
    .unwrap();
    assert_eq!(found.location.namespace, FALLBACK);
    assert_eq!(found.phase, None);

    // Deleted: gone from the view, the earlier one is the latest again.
    let (code, body) = k.request(Identity::Admin, "DELETE", &path(FALLBACK, "rr-a-2"), None);
    assert_eq!(code, 200, "{body}");
    poll_cached(&rt, &sink, "cache-a", "fa", "the deletion", |f| {
        f.as_ref().is_some_and(|f| f.location.name == "rr-a-1")
    });

    // All of it without one GET or LIST.
    let fps = ["fa".to_string(), "nothing".to_string()];
    let cached = block(&rt, sink.find_latest("cache-a", &fps, Read::Cached)).unwrap();
    assert_eq!(requests_served(&k, &["LIST", "GET"], None) - before, 0.0);
    // A consistent read LISTs (the namespace and the fallback one), and agrees.
    let consistent = block(&rt, sink.find_latest("cache-a", &fps, Read::Consistent)).unwrap();
    assert_eq!(cached, consistent);
    assert_eq!(cached[1], None);
    assert_eq!(
        settled(|| requests_served(&k, &["LIST", "GET"], None)) - before,
        2.0
    );
}

#[test]
fn the_cache_recovers_after_the_api_server_restarts() {
    let mut k = private_api_server();
    k.create_namespace("cache-b");
    let (rt, sink) = sidecar_sink(&k);
    assert!(block(&rt, sink.cache().wait_synced(SYNC_TIMEOUT)));
    create_as_admin(
        &k,
        &foreign_resource("cache-b", "rr-b-1", "fb", "2026-12-01T10:00:01Z"),
    );
    poll_cached(
        &rt,
        &sink,
        "cache-b",
        "fb",
        "the first resource",
        Option::is_some,
    );

    // The watch is cut; while the API server is down the view still answers.
    k.stop();
    let fps = ["fb".to_string()];
    let down = block(&rt, sink.find_latest("cache-b", &fps, Read::Cached)).unwrap();
    assert_eq!(
        down[0].as_ref().map(|f| f.location.name.as_str()),
        Some("rr-b-1")
    );
    k.restart();

    let status = json!({"status": {"phase": "Running"}});
    let url = format!("{}/status", path("cache-b", "rr-b-1"));
    let (code, body) = k.request(Identity::Admin, "PATCH", &url, Some(&status));
    assert_eq!(code, 200, "{body}");
    create_as_admin(
        &k,
        &foreign_resource("cache-b", "rr-b-2", "fb2", "2026-12-01T10:00:02Z"),
    );
    poll_cached(
        &rt,
        &sink,
        "cache-b",
        "fb2",
        "a resource created after the restart",
        Option::is_some,
    );
    let found = poll_cached(
        &rt,
        &sink,
        "cache-b",
        "fb",
        "the status set after the restart",
        |f| f.as_ref().is_some_and(|f| f.phase.is_some()),
    );
    assert_eq!(found.and_then(|f| f.phase).as_deref(), Some("Running"));
}

#[test]
fn an_update_writes_the_resolution_and_firings_and_a_later_one_clears_them() {
    let k = shared_api_server();
    k.create_namespace("cache-c");
    let (runtime, sink) = sidecar_sink(k);
    let rt = &runtime;
    let mut storm = foreign_resource("cache-c", "rr-c-1", "fc", "2026-12-01T10:00:01Z");
    storm["spec"]["storm"] = json!({"alertCount": 3, "startedAt": "2026-12-01T10:00:00Z"});
    let rr: RemediationRequest = serde_json::from_value(storm).unwrap();
    block(rt, sink.create(&rr, false)).unwrap();

    let resolution = Resolution {
        resolved_at: "2026-12-01T11:00:00Z".into(),
        received_at: "2026-12-01T11:00:02Z".into(),
    };
    let mut progress = Progress {
        deduplication: Deduplication {
            first_seen: "2026-12-01T10:00:01Z".into(),
            last_seen: "2026-12-01T11:00:02Z".into(),
            occurrence_count: 9,
            firing_count: 3,
            last_firing_time: Some("2026-12-01T10:50:00Z".into()),
        },
        storm: Some(Storm {
            alert_count: 4,
            affected_resources: vec!["Pod/p".into()],
            affected_resources_overflow: 0,
            started_at: "2026-12-01T10:00:00Z".into(),
            ends_at: None,
            resolved_count: 4,
            previous: Some("storm-before".into()),
        }),
        resolution: Some(resolution.clone()),
    };
    block(rt, sink.update("cache-c", "rr-c-1", &progress)).unwrap();
    let spec = get(k, "cache-c", "rr-c-1")["spec"].clone();
    assert_eq!(
        spec["resolution"],
        json!({"resolvedAt": "2026-12-01T11:00:00Z", "receivedAt": "2026-12-01T11:00:02Z"})
    );
    let d = &spec["deduplication"];
    assert_eq!(
        (d["firingCount"].as_u64(), d["occurrenceCount"].as_u64()),
        (Some(3), Some(9))
    );
    assert_eq!(d["lastFiringTime"], "2026-12-01T10:50:00Z");
    assert_eq!(spec["storm"]["resolvedCount"], 4);
    assert_eq!(spec["storm"]["previous"], "storm-before");
    // The cache reads them back.
    let found = poll_cached(rt, &sink, "cache-c", "fc", "the resolution", |f| {
        f.as_ref().is_some_and(|f| f.resolution.is_some())
    })
    .unwrap();
    assert_eq!(found.instance_ms, ms("2026-12-01T10:50:00Z"));
    assert_eq!(found.firings, 3);
    let r = found.resolution.unwrap();
    assert_eq!(
        (r.resolved_ms, r.received_ms),
        (ms("2026-12-01T11:00:00Z"), ms("2026-12-01T11:00:02Z"))
    );

    // Open again: the resolution is removed (as the lastFiringTime a
    // progress without one leaves). Reopening counts a sighting: counters
    // that did not move would be older than the resolution, not written.
    progress.deduplication.occurrence_count += 1;
    progress.resolution = None;
    progress.deduplication.last_firing_time = None;
    block(rt, sink.update("cache-c", "rr-c-1", &progress)).unwrap();
    let spec = get(k, "cache-c", "rr-c-1")["spec"].clone();
    assert!(spec.get("resolution").is_none(), "{spec}");
    assert!(
        spec["deduplication"].get("lastFiringTime").is_none(),
        "{spec}"
    );
    assert_eq!(spec["deduplication"]["firingCount"], 3);
    let found = poll_cached(rt, &sink, "cache-c", "fc", "the resolution cleared", |f| {
        f.as_ref().is_some_and(|f| f.resolution.is_none())
    })
    .unwrap();
    assert_eq!(
        found.instance_ms,
        ms("2026-12-01T10:00:00Z"),
        "firingTime again"
    );
}

/// The resource `namespace/name`, read as the admin.
fn get(k: &ApiServer, namespace: &str, name: &str) -> Value {
    let (status, body) = k.get(Identity::Admin, &path(namespace, name));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}
