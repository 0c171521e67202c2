//! Issue 19, finding 7: one request must not cost the API server work in
//! proportion to the namespaces it names. 200 alerts, each in a namespace
//! that does not exist: the request may look up and create in at most
//! `SIGNALGATE_MAX_NEW_NAMESPACES_PER_REQUEST` (16) namespaces the store or
//! the sink does not know; the rest of it is answered 503 with
//! `Retry-After`, and the sender's retries go on from there until every
//! alert has its one resource (in the fallback namespace).

use std::time::{Duration, Instant};

use serde_json::Value;
use signalgate_tests::k8s::ApiServer;
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::remediation::{
    kube_sidecar, list, lookups, private_api_server, requests_served, settled, FALLBACK,
};
use signalgate_tests::sidecar::Sidecar;

/// Alerts in the request, each in a namespace of its own that does not exist.
const N: usize = 200;
/// The default budget of new namespaces per request.
const BUDGET: usize = 16;
/// API calls one request may cost the API server, whatever N: per new
/// namespace, a cold lookup (the namespace and the fallback namespace: two
/// LISTs), a storm lookup (two more) and a create (a POST refused for the
/// missing namespace, and one in the fallback namespace).
const CALLS_PER_REQUEST: f64 = (6 * BUDGET) as f64;

/// The lookups (label-selector LISTs, from the API server's audit log) and
/// creates (POSTs) of RemediationRequests the API server has served, once
/// both counts have settled (it counts a request a moment after answering
/// it). Not counted: the coalesced updates of counters (a GET and a PATCH
/// per resource at most once per flush interval, whatever the requests).
fn calls(k: &ApiServer) -> (f64, f64) {
    settled(|| (lookups(k).len() as f64, requests_served(k, &["POST"], None)))
}

/// The LISTs and POSTs `send` costs the API server.
fn counted<T>(k: &ApiServer, send: impl FnOnce() -> T) -> (T, f64, f64) {
    let (lists, posts) = calls(k);
    let sent = send();
    let (l, p) = calls(k);
    (sent, l - lists, p - posts)
}

/// Resources in the fallback namespace moved there from `prefix`-namespaces.
fn moved_from(k: &ApiServer, prefix: &str) -> Vec<Value> {
    list(k, FALLBACK)
        .into_iter()
        .filter(|x| {
            x["metadata"]["labels"]["signalgate.io/original-namespace"]
                .as_str()
                .is_some_and(|ns| ns.starts_with(prefix))
        })
        .collect()
}

/// A sidecar on `k` whose cache of its resources has synced: the LISTs
/// counted after this are the requests'.
fn synced_sidecar(k: &ApiServer, extra: &[(&str, &str)]) -> Sidecar {
    let s = kube_sidecar(k, "sidecar", extra);
    wait_for("the sink's cache to sync", Duration::from_secs(30), || {
        s.log().contains("kube sink cache synced").then_some(())
    });
    s
}

/// One alert `name` in each of N namespaces `<prefix>-<i>`.
fn spread(name: &str, prefix: &str) -> Value {
    webhook(
        (0..N)
            .map(|i| alert(name, &format!("{prefix}-{i}"), "p"))
            .collect(),
    )
}

/// Sends `hook` as its sender would: again after every 503 (at once, with
/// no Retry-After wait: the test measures calls, not time), each attempt
/// within the per-request bound if `bounded`, until it is accepted.
/// Returns the attempts.
fn send_until_accepted(k: &ApiServer, s: &Sidecar, hook: &Value, bounded: bool) -> usize {
    for attempt in 1..=N {
        let (a, lists, posts) = counted(k, || s.post_alerts(hook));
        eprintln!(
            "attempt {attempt}: HTTP {}, {lists} LISTs, {posts} POSTs",
            a.status
        );
        assert!(
            !bounded || lists + posts <= CALLS_PER_REQUEST,
            "attempt {attempt}: {lists} LISTs + {posts} POSTs"
        );
        match a.status {
            201 | 202 => {
                let signals = a.json()["signals"].as_array().cloned().unwrap_or_default();
                assert_eq!(signals.len(), N, "{}", a.body);
                return attempt;
            }
            503 => assert!(a.header("retry-after").is_some(), "{:?}", a.headers),
            other => panic!("attempt {attempt}: HTTP {other}: {}", a.body),
        }
    }
    panic!("not accepted after {N} attempts");
}

#[test]
fn one_request_about_200_namespaces_that_do_not_exist_costs_a_bounded_number_of_api_calls() {
    let k = private_api_server();
    let s = synced_sidecar(&k, &[]);
    let hook = spread("Scattered", "gone");

    let ((a, took), lists, posts) = counted(&k, || {
        let started = Instant::now();
        let a = s.post_alerts(&hook);
        (a, started.elapsed())
    });
    let moved = moved_from(&k, "gone-").len();
    eprintln!(
        "one request of {N} alerts in {N} namespaces that do not exist: HTTP {}, \
         {lists} LISTs, {posts} POSTs, {moved} resources in the fallback namespace, in {took:?}",
        a.status
    );
    assert!(
        lists + posts <= CALLS_PER_REQUEST,
        "{lists} LISTs + {posts} POSTs for one request (bound {CALLS_PER_REQUEST}); \
         {moved} resources in the fallback namespace; HTTP {}",
        a.status
    );
    assert!(
        moved <= BUDGET,
        "{moved} resources in the fallback namespace"
    );
    // What it could not do is left to the sender's retry, not dropped.
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.header("retry-after"), Some("1"), "{:?}", a.headers);
    assert!(
        a.body.contains("SIGNALGATE_MAX_NEW_NAMESPACES_PER_REQUEST"),
        "{}",
        a.body
    );

    // The sender's retries go on where it stopped: one resource per alert
    // in the end, none twice.
    let attempts = send_until_accepted(&k, &s, &hook, true);
    assert!(attempts <= N.div_ceil(BUDGET), "{attempts} attempts");
    let moved = moved_from(&k, "gone-");
    assert_eq!(moved.len(), N, "one resource per incident");
    // Sent once more: duplicates of those, without an API call.
    let (a, lists, posts) = counted(&k, || s.post_alerts(&hook));
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!((lists, posts), (0.0, 0.0));
    assert_eq!(moved_from(&k, "gone-").len(), N);
}

/// Once the store knows the namespaces (they are warm: no lookup), new
/// incidents in them are created from the sink's cached view: the creates
/// are bounded by the same budget, for namespaces the sink does not know
/// to exist.
#[test]
fn new_incidents_in_200_known_namespaces_that_do_not_exist_are_created_a_bounded_number_per_request(
) {
    let k = private_api_server();
    let s = synced_sidecar(&k, &[("SIGNALGATE_DEDUP_TTL", "1s")]);
    send_until_accepted(&k, &s, &spread("First", "warm"), false);
    assert_eq!(moved_from(&k, "warm-").len(), N);
    // The store has known these namespaces for a dedup window: warm.
    std::thread::sleep(Duration::from_millis(1500));

    let hook = spread("Second", "warm");
    let (a, lists, posts) = counted(&k, || s.post_alerts(&hook));
    let moved = moved_from(&k, "warm-").len() - N;
    eprintln!(
        "one request of {N} new incidents in {N} warm namespaces that do not exist: HTTP {}, \
         {lists} LISTs, {posts} POSTs, {moved} resources in the fallback namespace",
        a.status
    );
    assert!(
        lists + posts <= CALLS_PER_REQUEST,
        "{lists} LISTs + {posts} POSTs for one request; HTTP {}",
        a.status
    );
    assert!(moved <= BUDGET, "{moved} more resources");
    assert_eq!(a.status, 503, "{}", a.body);
    send_until_accepted(&k, &s, &hook, true);
    assert_eq!(moved_from(&k, "warm-").len(), 2 * N);
}
