//! Redis store only, round trips and routing: two stores racing, one
//! pipeline of script calls per decide, concurrent decides batched into
//! shared script calls, cluster batches routed by slot. The cases that read
//! server-wide counters start their own servers.

use std::collections::HashMap;
use std::sync::Arc;

use signalgate_sidecar::store::redis::RedisStore;
use signalgate_sidecar::store::{Claim, ClaimKey, Decision, Outcome, Owner, Store, Write};
use signalgate_tests::redis::{parse_info, RedisCluster, RedisServer};
use signalgate_tests::store_suite::{
    assert_own, claim, count, fp_key, namespace, redis_store, settings,
};

/// Two stores (two connections, like two sidecar processes) race.
async fn two_stores_race(url: &str) {
    let one = Arc::new(redis_store(url, settings()).await);
    let two = Arc::new(redis_store(url, settings()).await);
    let ns = namespace("race");
    let claims: Vec<Claim> = (0..100).map(|i| claim(&ns, &format!("r{i}"))).collect();
    let mut tasks = Vec::new();
    for c in &claims {
        for store in [&one, &two] {
            let store = store.clone();
            let c = c.clone();
            tasks.push(tokio::spawn(async move { store.decide(&[c]).await }));
        }
    }
    let mut by_fp: HashMap<String, Vec<Decision>> = HashMap::new();
    for t in tasks {
        let d = t.await.expect("task").expect("decide").remove(0);
        let ClaimKey::Fingerprint { fingerprint, .. } = &d.key else {
            panic!("{d:?}");
        };
        by_fp.entry(fingerprint.clone()).or_default().push(d);
    }
    assert_eq!(by_fp.len(), 100);
    for ds in by_fp.values() {
        assert_eq!(ds.iter().filter(|d| d.write == Write::Create).count(), 1);
        assert_eq!(count(ds, Outcome::Created), 1);
        assert_eq!(count(ds, Outcome::Duplicate), 1);
    }

    // The same signal, 50 times from each store.
    let same = claim(&ns, "same");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let c = same.clone();
            tokio::spawn(async move { store.decide(&[c]).await })
        })
        .collect();
    let mut ds = Vec::new();
    for t in tasks {
        ds.push(t.await.expect("task").expect("decide").remove(0));
    }
    assert_eq!(ds.iter().filter(|d| d.write == Write::Create).count(), 1);
    assert_eq!(count(&ds, Outcome::Duplicate), 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_race_on_standalone() {
    two_stores_race(&RedisServer::shared().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_race_on_cluster() {
    two_stores_race(&RedisCluster::shared().url()).await;
}

fn cmdstat_calls(info: &str, command: &str) -> u64 {
    parse_info(info)
        .into_iter()
        .find(|(k, _)| k == &format!("cmdstat_{command}"))
        .and_then(|(_, v)| {
            v.split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// A private Redis and a store on it that has connected and loaded the
/// decide script, so the commands a test counts are its own.
async fn private_warm_store() -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = redis_store(&server.url(), settings()).await;
    store
        .decide(&[claim(&namespace("warm"), "w")])
        .await
        .expect("warm-up");
    (server, store)
}

/// One `decide` = one EVALSHA per namespace (at most 64 signals a call),
/// nothing else, in one pipeline; replies come back in claim order. The
/// first decide of a store in a namespace stamps it first (one more call,
/// again every few minutes; see the Redis store's index of unwritten changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_decide_is_one_pipeline_of_script_calls() {
    let (server, store) = private_warm_store().await;
    // 100 claims of one namespace (two calls: 64 + 36) interleaved with 30
    // of another (one call), both stamped before.
    let (ns, other) = (namespace("trip"), namespace("trip-other"));
    store
        .decide(&[claim(&ns, "stamp"), claim(&other, "stamp")])
        .await
        .expect("decide");
    let claims: Vec<Claim> = (0..130)
        .map(|i| {
            if i % 13 < 10 {
                claim(&ns, &format!("t{i}"))
            } else {
                claim(&other, &format!("t{i}"))
            }
        })
        .collect();

    // Socket reads and writes on the server: one INFO call costs some of
    // its own, measured first without a decide in between.
    let measure = |server: &RedisServer| {
        let info = parse_info(&server.cli(&["INFO", "stats"]));
        let field = |name: &str| -> i64 {
            info.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or_else(|| panic!("INFO stats has no {name}"))
        };
        (
            field("total_reads_processed"),
            field("total_writes_processed"),
        )
    };
    let (r0, w0) = measure(&server);
    let (r1, w1) = measure(&server);
    let (noise_r, noise_w) = (r1 - r0, w1 - w0);
    let before = server.cli(&["INFO", "commandstats"]);
    let (r2, w2) = measure(&server);
    let ds = store.decide(&claims).await.expect("decide");
    let (r3, w3) = measure(&server);
    let after = server.cli(&["INFO", "commandstats"]);
    assert_eq!(count(&ds, Outcome::Created), 130);
    // The resource name comes from the script: it proves the reply matched.
    for (d, c) in ds.iter().zip(&claims) {
        assert_own(d, c, Outcome::Created, Write::Create);
    }
    let calls = cmdstat_calls(&after, "evalsha") - cmdstat_calls(&before, "evalsha");
    assert_eq!(calls, 3, "EVALSHA calls");
    // Unpipelined calls would need a read and a write each on the server.
    let reads = (r3 - r2) - noise_r;
    let writes = (w3 - w2) - noise_w;
    eprintln!("decide of 130 claims: {reads} socket reads, {writes} writes on the server");
    assert!(reads <= 4, "{reads} reads: not one pipeline");
    assert!(writes <= 4, "{writes} writes: not one pipeline");

    // Every command a client sends for another 50 (script-internal ones
    // show `lua` as their client in MONITOR).
    let ns = namespace("trip2");
    let claims: Vec<Claim> = (0..50).map(|i| claim(&ns, &format!("t{i}"))).collect();
    let monitor = server.monitor();
    server.cli(&["ECHO", "trip-start"]);
    let ds = store.decide(&claims).await.expect("decide");
    server.cli(&["ECHO", "trip-end"]);
    assert_eq!(count(&ds, Outcome::Created), 50);
    let again = store.decide(&claims).await.expect("decide");
    assert!(again.iter().all(|d| d.outcome == Outcome::Duplicate));
    let lines = monitor.wait_for_line("trip-end");
    let start = lines
        .iter()
        .position(|l| l.contains("trip-start"))
        .expect("start marker");
    let sent: Vec<&String> = lines[start + 1..lines.len() - 1]
        .iter()
        .filter(|l| !l.contains(" lua]"))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert!(sent.iter().all(|l| l.contains("\"EVALSHA\"")), "{sent:#?}");
    assert!(sent[0].contains("\"register\""), "{sent:#?}");
}

/// A fingerprint repeated in a call (concurrent requests, senders repeating
/// their alerts) is sent once, not with every signal: each argument costs
/// Redis an allocation and its script a string. Each signal still gets its
/// own decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_repeated_in_a_call_is_sent_once() {
    let (server, store) = private_warm_store().await;
    let ns = namespace("repeat");
    let (a, b) = (claim(&ns, "a"), claim(&ns, "b"));
    // Five requests' signals in one call: a, b, a, b, a.
    let claims: Vec<Claim> = [&a, &b, &a, &b, &a]
        .iter()
        .enumerate()
        .map(|(i, c)| Claim {
            owner: Owner(100 + i as u64),
            ..(*c).clone()
        })
        .collect();
    let monitor = server.monitor();
    let ds = store.decide(&claims).await.expect("decide");
    server.cli(&["ECHO", "repeat-end"]);
    let outcomes: Vec<(Outcome, u64)> = ds
        .iter()
        .map(|d| (d.outcome, d.snapshot.occurrence_count))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Outcome::Created, 1),
            (Outcome::Created, 1),
            (Outcome::Duplicate, 2),
            (Outcome::Duplicate, 2),
            (Outcome::Duplicate, 3),
        ]
    );
    let lines = monitor.wait_for_line("repeat-end");
    let call: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"EVALSHA\"") && l.contains(&a.fingerprint))
        .collect();
    assert_eq!(call.len(), 1, "{lines:#?}");
    for c in [&a, &b] {
        assert_eq!(call[0].matches(&c.fingerprint).count(), 1, "{}", call[0]);
        assert_eq!(
            call[0].matches(&format!("\"{}\"", c.affected)).count(),
            1,
            "{}",
            call[0]
        );
    }
}

/// Concurrent decides share script calls (the store batches them): 100
/// requests (one claim each, every tenth with a second one) cost a handful of
/// EVALSHA, and each still gets its own decision: one creator per
/// fingerprint, every sighting counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decides_share_script_calls() {
    let (server, store) = private_warm_store().await;
    let ns = namespace("share");
    let (a, other) = (claim(&ns, "a"), claim(&namespace("share-other"), "b"));
    let before = server.cli(&["INFO", "commandstats"]);
    let requests: Vec<Vec<Claim>> = (0..100)
        .map(|i| {
            if i % 10 == 9 {
                vec![other.clone(), a.clone()]
            } else {
                vec![a.clone()]
            }
        })
        .collect();
    let answers =
        futures::future::join_all(requests.iter().map(|claims| store.decide(claims))).await;
    let after = server.cli(&["INFO", "commandstats"]);
    let mut creates = 0;
    let mut counts_of_a = std::collections::BTreeSet::new();
    for (claims, answer) in requests.iter().zip(answers) {
        let ds = answer.expect("decide");
        assert_eq!(ds.len(), claims.len());
        for (d, c) in ds.iter().zip(claims) {
            assert_eq!(d.key, fp_key(c), "{d:?}");
            creates += usize::from(d.write == Write::Create);
            if *c == a {
                counts_of_a.insert(d.snapshot.occurrence_count);
            }
        }
    }
    assert_eq!(creates, 2, "one creator per fingerprint");
    assert_eq!(
        counts_of_a,
        (1..=100).collect(),
        "each sighting counted once"
    );
    let snap = store
        .snapshot(&[fp_key(&a)])
        .await
        .expect("snapshot")
        .pop()
        .flatten()
        .expect("a is known");
    assert_eq!(snap.occurrence_count, 100);
    let calls = cmdstat_calls(&after, "evalsha") - cmdstat_calls(&before, "evalsha");
    eprintln!("100 concurrent decides: {calls} EVALSHA");
    // Typically 6 or 7; a loaded machine splits the batches further, and
    // unbatched would be 100 or more.
    assert!(
        (2..=20).contains(&calls),
        "{calls} EVALSHA for 100 requests"
    );
}

/// On a cluster, a batch spanning namespaces on several masters goes to
/// each master (one pipeline per slot), one script call per namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_are_routed_by_slot() {
    let cluster = RedisCluster::start(3);
    let store = redis_store(&cluster.url(), settings()).await;
    assert!(store.is_cluster());
    let ports = cluster.ports();
    // Three namespaces on three different masters.
    let mut namespaces: Vec<(String, u16)> = Vec::new();
    let mut i = 0;
    while namespaces.len() < 3 {
        let ns = namespace(&format!("route{i}"));
        i += 1;
        let port = cluster.master_port_for_key(&format!("sg:{{{ns}}}:w"));
        if namespaces.iter().all(|(_, p)| *p != port) {
            namespaces.push((ns, port));
        }
        assert!(i < 500);
    }
    let mut claims = Vec::new();
    for n in 0..10 {
        for (ns, _) in &namespaces {
            claims.push(claim(ns, &format!("c{n}")));
        }
    }
    let stats = |i: usize| cmdstat_calls(&cluster.cli(i, &["INFO", "commandstats"]), "evalsha");
    // Load the script everywhere first, so the counts below are exact.
    store
        .decide(
            &namespaces
                .iter()
                .map(|(ns, _)| claim(ns, "warm"))
                .collect::<Vec<_>>(),
        )
        .await
        .expect("warm-up");
    let before: Vec<u64> = (0..ports.len()).map(stats).collect();
    let ds = store.decide(&claims).await.expect("decide");
    let after: Vec<u64> = (0..ports.len()).map(stats).collect();
    assert_eq!(count(&ds, Outcome::Created), 30);
    for (d, c) in ds.iter().zip(&claims) {
        assert_eq!(d.key, fp_key(c), "replies are in claim order");
    }
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(
            after[i] - before[i],
            1,
            "EVALSHA on the master at port {port}"
        );
    }
    let again = store.decide(&claims).await.expect("decide");
    assert!(again.iter().all(|d| d.outcome == Outcome::Duplicate));
}
