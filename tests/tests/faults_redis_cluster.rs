//! The sidecar on a Redis Cluster whose nodes it reaches only through fault
//! proxies (`signalgate_tests::fault_proxy::ProxiedCluster`): a store call's
//! reply lost after Redis executed the script (the connection reset before
//! the answer came back) must not make the sidecar run the script again.
//!
//! A cluster client that resends a request after a dropped connection (the
//! redis crate's cluster client does, with `retries(n)`) runs a script that
//! already ran a second time. A new incident's second `decide.lua` finds the
//! claim its first one took: the claim carries the request's token, so the
//! request still creates it (before, it waited on itself until the deadline,
//! 503, the claim then stuck for its lease). And a record remembers which
//! request counted it last, so the resent call does not count its signal a
//! second time (before, the store showed 3 for 2 deliveries).

use std::time::{Duration, Instant};

use serde_json::Value;
use signalgate_tests::client::Answer;
use signalgate_tests::fault_proxy::ProxiedCluster;
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::sidecar::Sidecar;

/// The request deadline the sidecars run with (the default).
const DEADLINE: Duration = Duration::from_secs(5);

fn sidecar(cluster: &ProxiedCluster) -> Sidecar {
    Sidecar::start(&[
        ("SIGNALGATE_REDIS_URL", &cluster.url()),
        ("SIGNALGATE_REQUEST_DEADLINE", "5s"),
    ])
}

/// The store record of the fingerprint `fp` in namespace `ns`.
fn record_key(ns: &str, fp: &str) -> String {
    format!("sg:{{{ns}}}:f:{fp}")
}

/// One field of a store record, read on its node directly (not proxied).
fn record_field(cluster: &ProxiedCluster, key: &str, field: &str) -> String {
    let node = cluster.node_for_key(key);
    cluster
        .cluster()
        .cli(node, &["HGET", key, field])
        .trim()
        .to_string()
}

/// A `decide.lua` call for namespace `ns` (its first key, the storm window).
fn is_decide(request: &[u8], ns: &str) -> bool {
    contains(request, format!("sg:{{{ns}}}:w").as_bytes())
}

/// A `decide.lua` call of a firing whose sink was searched and holds
/// nothing of it (its signal's state argument `-`): the call that takes a
/// new incident's claim.
fn is_claiming_decide(request: &[u8], ns: &str) -> bool {
    is_decide(request, ns) && contains(request, b"$1\r\n-\r\n")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn signal(answer: &Answer) -> Value {
    answer.json()["signals"][0].clone()
}

fn occurrences(resource: &Value) -> u64 {
    resource["spec"]["deduplication"]["occurrenceCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("no occurrenceCount in {resource}"))
}

/// Posts `hook` and reports what came back and how long it took.
fn post_timed(s: &Sidecar, hook: &Value) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = s.post_alerts(hook);
    (answer, started.elapsed())
}

#[test]
fn a_duplicate_whose_store_reply_was_lost_is_counted_once() {
    let cluster = ProxiedCluster::start(3);
    let s = sidecar(&cluster);
    let ns = "lost-dup";
    let hook = webhook(vec![alert("LostReply", ns, "p1")]);
    let first = s.post_alerts(&hook);
    assert_eq!(first.status, 201, "{}", first.body);
    let fp = signal(&first)["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let key = record_key(ns, &fp);
    assert_eq!(
        record_field(&cluster, &key, "c"),
        "1",
        "the store counted the first"
    );
    s.wait_resources("the resource, counted once", |r| {
        r.len() == 1 && occurrences(&r[0]) == 1
    });

    // The duplicate's decide.lua runs on its node; the answer is lost.
    let proxy = cluster.proxy_for_key(&key);
    let ns_owned = ns.to_string();
    proxy.drop_replies_when(1, move |req| is_decide(req, &ns_owned));
    let (dup, took) = post_timed(&s, &hook);
    assert_eq!(proxy.replies_dropped(), 1, "the fault was injected");
    let stored = record_field(&cluster, &key, "c");
    eprintln!(
        "duplicate after a lost reply: {} in {took:?}: {}; store count {stored}",
        dup.status, dup.body
    );

    // One delivery, acknowledged once: counted once.
    assert_eq!(
        (dup.status, stored.as_str()),
        (202, "2"),
        "the duplicate is answered 202 and counted once in the store \
         (answer {}, in {took:?}); log:\n{}",
        dup.body,
        s.log_tail(30)
    );
    assert_eq!(signal(&dup)["outcome"], "duplicate", "{}", dup.body);
    let r = s.wait_resources("the resource to show the store's count", |r| {
        r.len() == 1 && occurrences(&r[0]).to_string() == stored
    });
    assert_eq!(occurrences(&r[0]), 2, "{}", r[0]);
}

#[test]
fn a_new_incident_whose_claim_reply_was_lost_is_created_once() {
    let cluster = ProxiedCluster::start(3);
    let s = sidecar(&cluster);
    let ns = "lost-claim";
    // The namespace known and the scripts loaded on its node first.
    let warm = s.post_alerts(&webhook(vec![alert("Warm", ns, "p0")]));
    assert_eq!(warm.status, 201, "{}", warm.body);
    let warm_fp = signal(&warm)["fingerprint"].as_str().unwrap().to_string();
    let proxy = cluster.proxy_for_key(&record_key(ns, &warm_fp));

    // The decide.lua call that takes the new incident's claim runs; its
    // answer is lost.
    let ns_owned = ns.to_string();
    proxy.drop_replies_when(1, move |req| is_claiming_decide(req, &ns_owned));
    let hook = webhook(vec![alert("LostClaim", ns, "p1")]);
    let (created, took) = post_timed(&s, &hook);
    assert_eq!(proxy.replies_dropped(), 1, "the fault was injected");
    let node = cluster.node_for_key(&record_key(ns, &warm_fp));
    let warm_key = record_key(ns, &warm_fp);
    let record: Vec<String> = cluster
        .cluster()
        .cli(node, &["KEYS", &record_key(ns, "*")])
        .lines()
        .filter(|k| !k.is_empty() && *k != warm_key)
        .map(|k| {
            let fields = cluster.cluster().cli(node, &["HGETALL", k]);
            let fields: Vec<&str> = fields.lines().collect();
            let pttl = cluster.cluster().cli(node, &["PTTL", k]);
            format!("{k} {fields:?} pttl {}", pttl.trim())
        })
        .collect();
    eprintln!(
        "new incident after a lost claim reply: {} in {took:?}: {}; store: {record:?}; \
         resources: {}",
        created.status,
        created.body,
        s.resources().len()
    );
    assert_eq!(
        created.status,
        201,
        "the new incident is created (answer {}, in {took:?}); log:\n{}",
        created.body,
        s.log_tail(30)
    );
    assert!(took < DEADLINE, "answered before the deadline: {took:?}");
    let fp = signal(&created)["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    let key = record_key(ns, &fp);
    // The resent call found the record its first run made, counted by this
    // request: not counted again. (It answers the signal as a duplicate of
    // the claim it holds, which it creates.)
    assert_eq!(record_field(&cluster, &key, "c"), "1", "counted once");
    assert_eq!(
        record_field(&cluster, &key, "p"),
        "0",
        "the claim committed"
    );
    let r = s.wait_resources("two resources: the warm-up's and this one", |r| {
        r.len() == 2
    });
    // The answer names `<namespace>/<name>`.
    let answered = signal(&created)["resource"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .expect("a resource")
        .to_string();
    let mine: Vec<&Value> = r
        .iter()
        .filter(|x| x["metadata"]["name"] == answered.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{r:?}");
    assert_eq!(occurrences(mine[0]), 1, "{}", mine[0]);

    // INFO answers on a cluster (a map of every node's): not taken for a refusal.
    assert!(
        !s.log().contains("Redis refuses INFO"),
        "{}",
        s.log_tail(20)
    );

    // Its next duplicate is an ordinary one, answered at once.
    let counted = record_field(&cluster, &key, "c")
        .parse::<u64>()
        .expect("a count");
    let (dup, took) = post_timed(&s, &hook);
    assert_eq!(dup.status, 202, "{} in {took:?}", dup.body);
    assert_eq!(record_field(&cluster, &key, "c"), (counted + 1).to_string());
    assert_eq!(proxy.replies_dropped(), 1, "one fault only");
}
