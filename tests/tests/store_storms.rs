//! Store behaviour, storms: past the threshold of new fingerprints a
//! namespace starts ONE storm resource that new signals join until it ends
//! (window, maximum duration), with a capped affected list, and whose claim
//! follows the protocol. Each case runs against every backend (see
//! `signalgate_tests::store_suite`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use signalgate_sidecar::store::{Claim, ClaimKey, ClaimState, Decision, Outcome, Write};
use signalgate_tests::behaviour;
use signalgate_tests::store_suite::{
    assert_own, assert_storm, claim, claim_on, count, namespace, settings, Backend,
};

behaviour!(
    concurrent_distinct_claims_start_one_storm,
    storm_of_ten_thousand_signals,
    storm_ends_and_the_next_storm_is_a_new_resource,
    storm_max_duration_caps_extension,
    namespaces_never_share_a_storm,
    affected_list_is_deduplicated_and_capped,
    storm_claims_follow_the_protocol,
);

async fn concurrent_distinct_claims_start_one_storm(b: Backend) {
    let f = b.store(settings().storm_threshold(3)).await;
    let ns = namespace("storm15");
    let claims: Vec<Claim> = (0..15).map(|i| claim(&ns, &format!("s{i}"))).collect();
    let ds = f.concurrently(claims).await;
    assert_eq!(count(&ds, Outcome::Created), 3, "{ds:?}");
    assert_eq!(count(&ds, Outcome::StormStarted), 1, "{ds:?}");
    assert_eq!(count(&ds, Outcome::StormAggregated), 11, "{ds:?}");
    let started = ds
        .iter()
        .find(|d| d.outcome == Outcome::StormStarted)
        .expect("storm");
    let name = assert_storm(started, Outcome::StormStarted, Write::Create);
    for d in ds.iter().filter(|d| d.outcome == Outcome::StormAggregated) {
        assert_eq!(
            assert_storm(d, Outcome::StormAggregated, Write::Await),
            name
        );
    }
    let snap = f.snapshot(&started.key).await.expect("storm snapshot");
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.alert_count, 12);
    assert_eq!(snap.occurrence_count, 12);
    assert_eq!(storm.affected.len(), 12);
    assert!(storm.affected.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(storm.affected_overflow, 0);
}

async fn storm_of_ten_thousand_signals(b: Backend) {
    let f = b.store(settings().storm_threshold(10)).await;
    let ns = namespace("storm10k");
    let started = Instant::now();
    // 100 concurrent decide calls of 100 distinct signals each.
    let tasks: Vec<_> = (0..100)
        .map(|batch| {
            let store = f.store.clone();
            let claims: Vec<Claim> = (0..100)
                .map(|i| claim(&ns, &format!("p{batch}-{i}")))
                .collect();
            tokio::spawn(async move { store.decide(&claims).await })
        })
        .collect();
    let mut ds = Vec::new();
    for t in tasks {
        ds.extend(t.await.expect("task").expect("decide"));
    }
    let elapsed = started.elapsed();
    eprintln!("{b:?}: 10 000 signals in 100 concurrent batches: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    assert_eq!(count(&ds, Outcome::Created), 10);
    assert_eq!(count(&ds, Outcome::StormStarted), 1);
    assert_eq!(count(&ds, Outcome::StormAggregated), 9_989);
    let storms: BTreeSet<&ClaimKey> = ds
        .iter()
        .filter(|d| d.outcome != Outcome::Created)
        .map(|d| &d.key)
        .collect();
    assert_eq!(storms.len(), 1);
    let key = storms.into_iter().next().expect("storm").clone();
    let snap = f.snapshot(&key).await.expect("storm snapshot");
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.alert_count, 9_990);
    assert_eq!(snap.occurrence_count, 9_990);
    assert_eq!(storm.affected.len(), 100);
    assert_eq!(storm.affected_overflow, 9_890);
    // Every key has a TTL (on Redis: 9 990 members, 10 own, 7 namespace keys).
    let keys = f.keys(&ns);
    assert!(keys.iter().all(|(_, ttl)| *ttl > 0));
    if b != Backend::Memory {
        assert_eq!(keys.len(), 10_007);
        // The window never holds more than the threshold needs.
        assert_eq!(f.window_size(&ns), Some(10));
    }
}

async fn storm_ends_and_the_next_storm_is_a_new_resource(b: Backend) {
    let window = Duration::from_millis(700);
    let f = b
        .store(settings().storm_threshold(2).storm_window(window))
        .await;
    let ns = namespace("stormend");
    let c = |s: &str| claim(&ns, s);
    let ds = f.decide(&[c("a"), c("b"), c("c"), c("d")]).await;
    assert_own(&ds[0], &c("a"), Outcome::Created, Write::Create);
    assert_own(&ds[1], &c("b"), Outcome::Created, Write::Create);
    let first = assert_storm(&ds[2], Outcome::StormStarted, Write::Create);
    assert_eq!(
        assert_storm(&ds[3], Outcome::StormAggregated, Write::Await),
        first
    );
    f.commit(&ds[2].key).await;

    // No new member for a full window: the storm is over, the window empty.
    tokio::time::sleep(window + Duration::from_millis(300)).await;
    let ds2 = f.decide(&[c("e"), c("f"), c("g"), c("h")]).await;
    assert_own(&ds2[0], &c("e"), Outcome::Created, Write::Create);
    assert_own(&ds2[1], &c("f"), Outcome::Created, Write::Create);
    let second = assert_storm(&ds2[2], Outcome::StormStarted, Write::Create);
    assert_ne!(second, first);
    assert_eq!(
        assert_storm(&ds2[3], Outcome::StormAggregated, Write::Await),
        second
    );

    // Members of the first storm still repeat into the first storm's resource.
    let old = f.one(&c("d")).await;
    assert_eq!(assert_storm(&old, Outcome::Duplicate, Write::Update), first);
    assert_eq!(old.snapshot.occurrence_count, 3);
    assert_eq!(old.snapshot.storm.as_ref().map(|s| s.alert_count), Some(2));
    let snap = f.snapshot(&ds2[2].key).await.expect("second storm");
    assert_eq!(snap.storm.map(|s| s.alert_count), Some(2));
}

async fn storm_max_duration_caps_extension(b: Backend) {
    let window = Duration::from_millis(1_000);
    let max = Duration::from_millis(2_000);
    let f = b
        .store(
            settings()
                .storm_threshold(1)
                .storm_window(window)
                .storm_max_duration(max),
        )
        .await;
    let ns = namespace("stormmax");
    let ds = f.decide(&[claim(&ns, "a"), claim(&ns, "b")]).await;
    assert_eq!(ds[0].outcome, Outcome::Created);
    let name = assert_storm(&ds[1], Outcome::StormStarted, Write::Create);
    let started_ms = ds[1].snapshot.storm.as_ref().expect("storm").started_ms;
    let cap = started_ms + max.as_millis() as i64;

    // A new member every 100 ms extends the storm by a full window each
    // time (each comes well within the window of the one before): only the
    // cap ends it.
    let mut last_aggregated = started_ms;
    let mut i = 0;
    let after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        i += 1;
        let d = f.one(&claim(&ns, &format!("m{i}"))).await;
        let at = d.snapshot.last_seen_ms;
        assert!(
            at - last_aggregated < window.as_millis() as i64,
            "a gap of {} ms: the test machine stalled longer than the window",
            at - last_aggregated
        );
        if d.outcome != Outcome::StormAggregated {
            break d;
        }
        assert_eq!(
            assert_storm(&d, Outcome::StormAggregated, Write::Await),
            name
        );
        last_aggregated = at;
        assert!(i < 100, "the storm never ended");
    };
    assert!(last_aggregated < cap, "aggregated after the cap");
    assert!(
        last_aggregated > started_ms + window.as_millis() as i64,
        "never extended"
    );
    // After the cap, while new members still arrive, the storm continues at
    // once as a new storm resource linked to it: nothing is let through.
    let continued = assert_storm(&after, Outcome::StormStarted, Write::Create);
    assert_ne!(continued, name);
    let storm = after.snapshot.storm.as_ref().expect("storm");
    assert_eq!(storm.previous.as_deref(), Some(name.as_str()), "{after:?}");
    assert!(after.snapshot.first_seen_ms >= cap);
    let next = f.one(&claim(&ns, "next")).await;
    assert_eq!(
        assert_storm(&next, Outcome::StormAggregated, Write::Await),
        continued
    );
}

async fn namespaces_never_share_a_storm(b: Backend) {
    let f = b.store(settings().storm_threshold(3)).await;
    let one = namespace("nsone");
    let two = namespace("nstwo");
    let mut claims = Vec::new();
    for i in 0..15 {
        claims.push(claim(&one, &format!("x{i}")));
        claims.push(claim(&two, &format!("x{i}")));
    }
    let ds = f.concurrently(claims.clone()).await;
    let mut storms = BTreeSet::new();
    for ns in [&one, &two] {
        let mine: Vec<Decision> = claims
            .iter()
            .zip(&ds)
            .filter(|(c, _)| &c.namespace == ns)
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(count(&mine, Outcome::Created), 3, "{ns}: {mine:?}");
        assert_eq!(count(&mine, Outcome::StormStarted), 1, "{ns}");
        assert_eq!(count(&mine, Outcome::StormAggregated), 11, "{ns}");
        let keys: BTreeSet<&ClaimKey> = mine
            .iter()
            .filter(|d| d.outcome != Outcome::Created)
            .map(|d| &d.key)
            .collect();
        assert_eq!(keys.len(), 1);
        let key = keys.into_iter().next().expect("storm");
        assert_eq!(key.namespace(), ns.as_str());
        storms.insert(key.clone());
        let snap = f.snapshot(key).await.expect("storm");
        assert_eq!(snap.storm.map(|s| s.alert_count), Some(12));
    }
    assert_eq!(storms.len(), 2);
}

async fn affected_list_is_deduplicated_and_capped(b: Backend) {
    let f = b
        .store(settings().storm_threshold(1).storm_max_affected(3))
        .await;
    let ns = namespace("affected");
    let c = |s: &str, target: &str| claim_on(&ns, s, target);
    let batch = [
        c("a", "Pod/x"), // created on its own
        c("b", "Pod/c"), // starts the storm
        c("c", "Pod/a"), // listed
        c("d", "Pod/c"), // same target: listed once
        c("e", "Pod/b"), // listed (the list is full now)
        c("f", "Pod/d"), // beyond the cap: overflow 1
        c("g", "Pod/a"), // already listed: no overflow
        c("h", "Pod/e"), // overflow 2
        c("i", ""),      // no target: counted, not listed
        c("j", "Pod/d"), // another member beyond the cap: overflow 3
        c("f", "Pod/d"), // a repeat of member f: a duplicate, no overflow
    ];
    let ds = f.decide(&batch).await;
    assert_eq!(ds[0].outcome, Outcome::Created);
    assert_eq!(ds[1].outcome, Outcome::StormStarted);
    assert!(ds[2..10]
        .iter()
        .all(|d| d.outcome == Outcome::StormAggregated));
    assert_eq!(ds[10].outcome, Outcome::Duplicate);
    let overflow: Vec<u64> = ds[1..]
        .iter()
        .map(|d| d.snapshot.storm.as_ref().expect("storm").affected_overflow)
        .collect();
    assert_eq!(overflow, [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]);
    let snap = f.snapshot(&ds[1].key).await.expect("storm");
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.affected, ["Pod/a", "Pod/b", "Pod/c"]);
    assert_eq!(storm.affected_overflow, 3);
    assert_eq!(storm.alert_count, 9);
    assert_eq!(snap.occurrence_count, 10);
}

async fn storm_claims_follow_the_protocol(b: Backend) {
    let lease = Duration::from_millis(400);
    let f = b
        .store(settings().storm_threshold(1).claim_lease(lease))
        .await;
    let ns = namespace("stormclaim");
    let c = |s: &str| claim(&ns, s);
    let ds = f.decide(&[c("a"), c("b"), c("c")]).await;
    let name = assert_storm(&ds[1], Outcome::StormStarted, Write::Create);
    assert!(!ds[1].retakes_claim());
    assert_storm(&ds[2], Outcome::StormAggregated, Write::Await);
    let key = ds[1].key.clone();
    assert_eq!(f.poll(&key).await, ClaimState::Pending);

    // The storm's owner gives up: the next member takes the claim at once.
    f.release(&key).await;
    let d = f.one(&c("d")).await;
    assert_eq!(
        assert_storm(&d, Outcome::StormAggregated, Write::Create),
        name
    );
    assert!(d.retakes_claim(), "the owner may have written it");
    // ... and never commits: after the lease a poller owns it.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert_eq!(f.poll(&key).await, ClaimState::Owned);
    assert_eq!(f.poll(&key).await, ClaimState::Pending);
    f.commit(&key).await;
    assert_eq!(f.poll(&key).await, ClaimState::Committed { moved_to: None });
    let e = f.one(&c("e")).await;
    assert_eq!(
        assert_storm(&e, Outcome::StormAggregated, Write::Update),
        name
    );
    let again = f.one(&c("c")).await;
    assert_eq!(
        assert_storm(&again, Outcome::Duplicate, Write::Update),
        name
    );
    let snap = f.snapshot(&key).await.expect("storm");
    assert_eq!(snap.storm.map(|s| s.alert_count), Some(4));
    assert_eq!(snap.occurrence_count, 5);
    assert_eq!(
        f.poll(&ClaimKey::Storm {
            namespace: ns.clone(),
            name: "storm-000000000000-0".into()
        })
        .await,
        ClaimState::Gone
    );
}
