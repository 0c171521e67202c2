//! Redis store only, failures: an outage fails fast and recovers, a paused
//! cluster node holds up only its own requests, restored data or a missing
//! INFO/GETEX is handled, a flushed script cache is reloaded. These start
//! their own servers, since they stop them or change them.

use std::time::{Duration, Instant};

use signalgate_sidecar::store::redis::RedisStore;
use signalgate_sidecar::store::{
    Claim, ClaimKey, ClaimState, Outcome, Owner, Store, StoreError, Write,
};
use signalgate_tests::redis::{RedisCluster, RedisServer};
use signalgate_tests::store_suite::{
    claim, fp_key, namespace, redis_store, settings, short_window, unchecked,
};

/// A store with a short timeout on a private server that this test stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_without_a_new_store() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&server.url(), settings().into(), timeout)
        .await
        .expect("connect");
    let ns = namespace("outage");
    let d = store.decide(&[claim(&ns, "a")]).await.expect("decide");
    assert_eq!(d[0].outcome, Outcome::Created);
    store.ping().await.expect("ping");

    // A server that does not answer: a timeout, within the timeout.
    server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let t = Instant::now();
    let r = store.decide(&[claim(&ns, "paused")]).await;
    let waited = t.elapsed();
    assert!(matches!(r, Err(StoreError::Timeout(_))), "{r:?}");
    assert!(waited < timeout + Duration::from_millis(400), "{waited:?}");
    server.cli(&["CLIENT", "UNPAUSE"]);

    // A server that is gone: an error, quickly.
    server.stop();
    for _ in 0..3 {
        let t = Instant::now();
        let r = store.decide(&[claim(&ns, "b")]).await;
        let waited = t.elapsed();
        assert!(r.is_err(), "{r:?}");
        assert!(waited < timeout + Duration::from_millis(400), "{waited:?}");
        assert!(store.ping().await.is_err());
    }

    // Back (empty, script cache gone): the same store recovers on its own.
    server.start_again();
    let t = Instant::now();
    let d = loop {
        match store.decide(&[claim(&ns, "a")]).await {
            Ok(d) => break d,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(15), "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    eprintln!("recovered {:?} after the restart", t.elapsed());
    assert_eq!(d[0].outcome, Outcome::Created, "Redis came back empty");
    store.ping().await.expect("ping");
}

/// On a cluster requests are not batched together: with one master not
/// answering, a request for a namespace on another master is answered at
/// once, while those with a signal on the silent one fail within the timeout
/// (and all recover when it answers again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_node_holds_up_only_its_own_requests() {
    let cluster = RedisCluster::start(3);
    let timeout = Duration::from_millis(500);
    let store = RedisStore::connect(&cluster.url(), settings().into(), timeout)
        .await
        .expect("connect");
    // Two namespaces whose keys live on different masters.
    let node_of = |ns: &str| cluster.master_port_for_key(&format!("sg:{{{ns}}}:w"));
    let slow = namespace("slow-node");
    let fast = (0..100)
        .map(|i| namespace(&format!("fast-node-{i}")))
        .find(|ns| node_of(ns) != node_of(&slow))
        .expect("a namespace on another master");
    for ns in [&slow, &fast] {
        store.decide(&[claim(ns, "warm")]).await.expect("warm-up");
    }
    let paused = cluster
        .ports()
        .iter()
        .position(|p| *p == node_of(&slow))
        .expect("node");
    cluster.cli(paused, &["CLIENT", "PAUSE", "3000", "ALL"]);

    let on_fast = claim(&fast, "f");
    let only_slow = [claim(&slow, "s")];
    let both = [on_fast.clone(), claim(&slow, "s2")];
    let only_fast = [claim(&fast, "g")];
    let started = Instant::now();
    let (held, mixed, free) = tokio::join!(store.decide(&only_slow), store.decide(&both), async {
        let r = store.decide(&only_fast).await;
        (r, started.elapsed())
    });
    let (free, free_took) = free;
    let free = free.expect("a request on the other master");
    assert_eq!(free[0].outcome, Outcome::Created);
    assert!(free_took < timeout / 2, "held up for {free_took:?}");
    assert!(held.is_err(), "{held:?}");
    assert!(mixed.is_err(), "{mixed:?}");
    assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());

    cluster.cli(paused, &["CLIENT", "UNPAUSE"]);
    let t = Instant::now();
    let back = loop {
        match store.decide(&[claim(&slow, "after")]).await {
            Ok(d) => break d,
            Err(e) => assert!(t.elapsed() < Duration::from_secs(15), "no recovery: {e}"),
        }
    };
    assert_eq!(back[0].outcome, Outcome::Created);
}

/// A namespace the store has known for a dedup window, on `store`.
async fn warm_namespace(store: &RedisStore, case: &str, ttl: Duration) -> String {
    let ns = namespace(case);
    store.decide(&[claim(&ns, "first")]).await.expect("decide");
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let d = store
        .decide(&[unchecked(&claim(&ns, "warm"))])
        .await
        .expect("decide");
    assert_eq!(d[0].write, Write::Create, "warm: {d:?}");
    ns
}

/// Data restored from an older snapshot (or a promoted replica that lagged)
/// brings back the warm marker with the origin of a server, or of data, that
/// is gone: the namespace is cold again, so new fingerprints are looked up in
/// the sink. The origin is checked lazily, within a call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_marker_from_another_origin_makes_the_namespace_cold_again() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(300);
    let store = redis_store(&server.url(), short_window(ttl)).await;
    let origin = |ns: &str| server.cli(&["GET", &format!("sg:{{{ns}}}:o")]);
    let here = format!(
        "{}:{}",
        server.info("server", "run_id").expect("run_id"),
        server
            .info("replication", "master_replid")
            .expect("master_replid")
    );

    // Another server's origin: a duplicate is decided as usual, then the
    // call's first new fingerprint finds the origin foreign, and the
    // namespace is cold for the rest of the call and after.
    let ns = warm_namespace(&store, "restored", ttl).await;
    assert_eq!(origin(&ns).trim(), here);
    server.cli(&[
        "SET",
        &format!("sg:{{{ns}}}:o",),
        "0123abcd:4567ef",
        "PX",
        "600000",
    ]);
    let warm = claim(&ns, "warm");
    let d = store
        .decide(&[
            unchecked(&warm),
            unchecked(&claim(&ns, "after-1")),
            unchecked(&claim(&ns, "after-2")),
        ])
        .await
        .expect("decide");
    assert_eq!(d[0].outcome, Outcome::Duplicate, "{d:?}");
    assert_eq!(
        [d[1].write, d[2].write],
        [Write::Lookup, Write::Lookup],
        "{d:?}"
    );
    assert_eq!(origin(&ns).trim(), here, "the memory began again here");

    // An origin-less marker (written by an older sidecar): the same. A
    // signal the sink was searched for is decided without the check; the
    // next one in the call is checked.
    let ns = warm_namespace(&store, "origin-less", ttl).await;
    server.cli(&["DEL", &format!("sg:{{{ns}}}:o")]);
    let d = store
        .decide(&[claim(&ns, "searched"), unchecked(&claim(&ns, "next"))])
        .await
        .expect("decide");
    assert_eq!(d[0].write, Write::Create, "{d:?}");
    assert_eq!(d[1].write, Write::Lookup, "{d:?}");
    assert_eq!(origin(&ns).trim(), here);
}

/// Where INFO is not allowed (renamed away), markers are not checked
/// against the server: a warm namespace stays warm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_info_a_warm_namespace_decides_as_before() {
    let server = RedisServer::start_with(&["--rename-command", "INFO", ""]);
    let ttl = Duration::from_millis(300);
    let store = redis_store(&server.url(), short_window(ttl)).await;
    store.ping().await.expect("ready without INFO");
    let ns = warm_namespace(&store, "no-info", ttl).await;
    let d = store
        .decide(&[unchecked(&claim(&ns, "next"))])
        .await
        .expect("decide");
    assert_eq!(d[0].write, Write::Create, "{d:?}");
}

/// A Redis without GETEX (as before 6.2; here the command is renamed away)
/// is never ready, and says why; nothing is decided on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_getex_is_refused_with_the_version_it_needs() {
    let server = RedisServer::start_with(&["--rename-command", "GETEX", ""]);
    let store = redis_store(&server.url(), settings()).await;
    let err = store
        .ping()
        .await
        .expect_err("ready on a Redis without GETEX");
    assert!(err.to_string().contains("Redis 6.2 or newer"), "{err}");
    let ns = namespace("old-redis");
    assert!(store.decide(&[claim(&ns, "a")]).await.is_err());
    // (but the namespace's stamp: see the store's index of unwritten changes)
    assert_eq!(
        server.cli(&["--scan", "--pattern", "sg:{*"]).trim(),
        "",
        "nothing decided"
    );

    // The same store code on a current Redis is ready.
    let current = RedisServer::start();
    let store = redis_store(&current.url(), settings()).await;
    store.ping().await.expect("ready");
}

/// A flushed script cache: every call runs exactly once, then on reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noscript_reloads_and_runs_every_call_once() {
    let server = RedisServer::start();
    let store = redis_store(&server.url(), settings()).await;
    let ns = namespace("noscript");
    let claims: Vec<Claim> = (0..20).map(|i| claim(&ns, &format!("n{i}"))).collect();
    for round in 1..=3u64 {
        server.cli(&["SCRIPT", "FLUSH"]);
        let ds = store.decide(&claims).await.expect("decide");
        assert!(
            ds.iter().all(|d| d.snapshot.occurrence_count == round),
            "{ds:?}"
        );
    }
    let keys: Vec<ClaimKey> = claims.iter().map(fp_key).collect();
    server.cli(&["SCRIPT", "FLUSH"]);
    let snaps = store.snapshot(&keys).await.expect("snapshot");
    assert!(snaps
        .iter()
        .all(|s| s.as_ref().map(|s| s.occurrence_count) == Some(3)));
    server.cli(&["SCRIPT", "FLUSH"]);
    let done: Vec<(ClaimKey, Option<String>)> = keys.iter().map(|k| (k.clone(), None)).collect();
    // The claims name no token of their own: the default one holds them.
    store.commit(Owner::default(), &done).await.expect("commit");
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(
        store.poll(Owner::default(), &keys[0]).await.expect("poll"),
        ClaimState::Committed { moved_to: None }
    );
}
