//! Store behaviour, dedup: a first sighting creates, repeats count in its
//! resource within the dedup window (refreshed by each), concurrent and
//! in-batch repeats are counted in order, and every key expires. Each case
//! runs against every backend (see `signalgate_tests::store_suite`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use signalgate_sidecar::store::{
    Claim, ClaimKey, ClaimState, Decision, Outcome, Owner, Write, WARM_MARKER_TTL,
};
use signalgate_tests::behaviour;
use signalgate_tests::store_suite::{
    assert_own, assert_storm, claim, count, fp_key, namespace, settings, short_window, Backend,
};

behaviour!(
    created_then_duplicate,
    ttl_refreshed_on_every_duplicate,
    concurrent_identical_claims_create_once,
    one_batch_mixes_every_outcome,
    repeats_within_one_decide_count_in_order,
    every_key_expires,
);

async fn created_then_duplicate(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("dup");
    let a = claim(&ns, "a");
    let first = f.one(&a).await;
    assert_own(&first, &a, Outcome::Created, Write::Create);
    assert_eq!(first.snapshot.occurrence_count, 1);
    assert_eq!(first.snapshot.first_seen_ms, first.snapshot.last_seen_ms);
    f.commit(&first.key).await;

    let again = f.one(&a).await;
    assert_own(&again, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(again.snapshot.resource, first.snapshot.resource);
    assert_eq!(again.snapshot.occurrence_count, 2);
    assert_eq!(again.snapshot.first_seen_ms, first.snapshot.first_seen_ms);
    assert!(again.snapshot.last_seen_ms >= first.snapshot.last_seen_ms);

    let other = claim(&ns, "b");
    let b2 = f.one(&other).await;
    assert_own(&b2, &other, Outcome::Created, Write::Create);
    assert_ne!(b2.snapshot.resource, first.snapshot.resource);

    let snap = f.snapshot(&first.key).await.expect("snapshot");
    assert_eq!(snap.occurrence_count, 2);
    assert_eq!(snap.resource, first.snapshot.resource);
    let gone = fp_key(&claim(&ns, "never-seen"));
    assert_eq!(f.snapshot(&gone).await, None);
    assert_eq!(f.poll(&gone).await, ClaimState::Gone);
}

async fn ttl_refreshed_on_every_duplicate(b: Backend) {
    let ttl = Duration::from_millis(800);
    let f = b.store(short_window(ttl)).await;
    let ns = namespace("ttl");
    let a = claim(&ns, "a");
    let first = f.one(&a).await;
    assert_own(&first, &a, Outcome::Created, Write::Create);
    f.commit(&first.key).await;

    // Repeats every 200 ms keep it alive for three times the TTL.
    let started = Instant::now();
    let mut n = 1;
    while started.elapsed() < ttl * 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let d = f.one(&a).await;
        n += 1;
        assert_own(&d, &a, Outcome::Duplicate, Write::Update);
        assert_eq!(d.snapshot.resource, first.snapshot.resource);
        assert_eq!(d.snapshot.occurrence_count, n);
    }
    assert!(n >= 10, "only {n} repeats");

    // Silence longer than the TTL: a new resource with a new name.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let fresh = f.one(&a).await;
    assert_own(&fresh, &a, Outcome::Created, Write::Create);
    assert_eq!(fresh.snapshot.occurrence_count, 1);
    assert_ne!(fresh.snapshot.resource, first.snapshot.resource);
}

async fn concurrent_identical_claims_create_once(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("same100");
    let a = claim(&ns, "a");
    let ds = f.concurrently(vec![a.clone(); 100]).await;
    let creates: Vec<&Decision> = ds.iter().filter(|d| d.write == Write::Create).collect();
    assert_eq!(creates.len(), 1, "{ds:?}");
    assert_eq!(creates[0].outcome, Outcome::Created);
    assert_eq!(count(&ds, Outcome::Created), 1);
    assert_eq!(count(&ds, Outcome::Duplicate), 99);
    assert!(ds
        .iter()
        .filter(|d| d.outcome == Outcome::Duplicate)
        .all(|d| d.write == Write::Await));
    let names: BTreeSet<&str> = ds.iter().map(|d| d.snapshot.resource.as_str()).collect();
    assert_eq!(names.len(), 1);
    let counts: BTreeSet<u64> = ds.iter().map(|d| d.snapshot.occurrence_count).collect();
    assert_eq!(counts, (1..=100).collect());
    let snap = f.snapshot(&fp_key(&a)).await.expect("snapshot");
    assert_eq!(snap.occurrence_count, 100);
}

async fn one_batch_mixes_every_outcome(b: Backend) {
    let f = b.store(settings().storm_threshold(3)).await;
    let ns = namespace("mixed");
    let other = namespace("mixedother");
    let c = |s: &str| claim(&ns, s);
    let known = f.one(&c("known")).await;
    f.commit(&known.key).await;

    // The requests batched into this call: the one of tokens `first`, and
    // another that repeats two of its signals.
    let (first, second) = (Owner::next(), Owner::next());
    let by = |owner: Owner, c: Claim| Claim { owner, ..c };
    let batch = [
        by(first, c("known")),         // duplicate of a committed resource
        by(first, c("q")),             // created
        by(first, c("r")),             // created (3rd in the window with "known")
        by(first, c("s")),             // starts a storm
        by(first, c("t")),             // aggregated
        by(second, c("q")),            // duplicate of a claim pending in this very batch
        by(second, c("t")),            // duplicate of a storm member
        by(first, claim(&other, "q")), // another namespace: its own window
    ];
    let ds = f.decide(&batch).await;
    assert_own(&ds[0], &c("known"), Outcome::Duplicate, Write::Update);
    assert_eq!(ds[0].snapshot.resource, known.snapshot.resource);
    assert_own(&ds[1], &c("q"), Outcome::Created, Write::Create);
    assert_own(&ds[2], &c("r"), Outcome::Created, Write::Create);
    let storm = assert_storm(&ds[3], Outcome::StormStarted, Write::Create);
    // The storm's claim is this request's own: its to create (once).
    assert_eq!(
        assert_storm(&ds[4], Outcome::StormAggregated, Write::Create),
        storm
    );
    assert_own(&ds[5], &c("q"), Outcome::Duplicate, Write::Await);
    assert_eq!(ds[5].snapshot.resource, ds[1].snapshot.resource);
    assert_eq!(ds[5].snapshot.occurrence_count, 2);
    assert_eq!(
        assert_storm(&ds[6], Outcome::Duplicate, Write::Await),
        storm
    );
    assert_eq!(ds[6].snapshot.occurrence_count, 3);
    assert_own(&ds[7], &batch[7], Outcome::Created, Write::Create);
}

/// A fingerprint repeated within one decide (Redis: one script call, which
/// writes a repeated record once, at the end) is counted signal by signal,
/// exactly as separate decides would count it, and every repeat keeps the
/// record alive for the full window.
async fn repeats_within_one_decide_count_in_order(b: Backend) {
    let ttl = Duration::from_millis(800);
    let f = b.store(short_window(ttl)).await;
    let ns = namespace("repeat");
    let (a, c) = (claim(&ns, "a"), claim(&ns, "c"));
    // (Each claim a request of its own, as concurrent requests batched
    // into one call; a request's own repeats count once: store_claims.rs.)
    let ds = f
        .decide(&[a.clone(), a.clone(), c.clone(), a.clone(), c.clone()])
        .await;
    assert_own(&ds[0], &a, Outcome::Created, Write::Create);
    assert_own(&ds[1], &a, Outcome::Duplicate, Write::Await);
    assert_own(&ds[2], &c, Outcome::Created, Write::Create);
    assert_own(&ds[3], &a, Outcome::Duplicate, Write::Await);
    assert_own(&ds[4], &c, Outcome::Duplicate, Write::Await);
    let counts: Vec<u64> = ds.iter().map(|d| d.snapshot.occurrence_count).collect();
    assert_eq!(counts, [1, 2, 1, 3, 2]);
    for (d, first) in [(&ds[1], &ds[0]), (&ds[3], &ds[0]), (&ds[4], &ds[2])] {
        assert_eq!(d.snapshot.resource, first.snapshot.resource);
        assert_eq!(d.snapshot.first_seen_ms, first.snapshot.first_seen_ms);
    }
    f.commit(&ds[0].key).await;
    f.commit(&ds[2].key).await;
    assert_eq!(f.snapshot(&ds[0].key).await.expect("a").occurrence_count, 3);

    // Known records repeated: counted on from what the store held, and kept
    // alive by repeats every 200 ms for three times the TTL.
    let started = Instant::now();
    let mut n = 3;
    while started.elapsed() < ttl * 3 {
        let ds = f.decide(&[a.clone(), c.clone(), a.clone()]).await;
        for d in &ds {
            assert_eq!(d.outcome, Outcome::Duplicate, "{d:?}");
            assert_eq!(d.write, Write::Update, "{d:?}");
        }
        assert_eq!(ds[0].snapshot.occurrence_count, n + 1);
        assert_eq!(ds[2].snapshot.occurrence_count, n + 2);
        assert_eq!(ds[2].snapshot.resource, ds[0].snapshot.resource);
        assert_eq!(ds[2].snapshot.last_seen_ms, ds[0].snapshot.last_seen_ms);
        n += 2;
        let held = f.snapshot(&ds[0].key).await.expect("still known");
        assert_eq!(held.occurrence_count, n);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(n >= 13, "only {n} sightings");
}

async fn every_key_expires(b: Backend) {
    let f = b
        .store(
            settings()
                .dedup_ttl(Duration::from_millis(600))
                .incident_ttl(Duration::from_millis(600))
                .storm_threshold(2)
                .storm_window(Duration::from_millis(500))
                .storm_max_duration(Duration::from_millis(800))
                .claim_lease(Duration::from_millis(300))
                .storm_max_affected(4),
        )
        .await;
    let ns = namespace("expire");
    let claims: Vec<Claim> = (0..10).map(|i| claim(&ns, &format!("k{i}"))).collect();
    let ds = f.decide(&claims).await;
    assert_eq!(count(&ds, Outcome::StormAggregated), 7);
    let done: Vec<(ClaimKey, Option<String>)> = ds.iter().map(|d| (d.key.clone(), None)).collect();
    for (key, _) in &done {
        f.commit(key).await;
    }
    let live = f.keys(&ns);
    assert!(!live.is_empty());
    // Every key has a TTL.
    assert!(live.iter().all(|(_, ttl)| *ttl > 0), "{live:?}");
    if b != Backend::Memory {
        // 10 fingerprints + window + storms + affected + expiry index + warm
        // marker and its origin + the index of unwritten changes.
        assert_eq!(live.len(), 17, "{live:?}");
        assert_eq!(f.window_size(&ns), Some(2));
    }
    // The warm marker and its origin live for WARM_MARKER_TTL (two small
    // keys a namespace).
    let marker = format!("sg:{{{ns}}}:m");
    let origin = format!("sg:{{{ns}}}:o");
    for (_, ttl) in live.iter().filter(|(k, _)| *k == marker || *k == origin) {
        assert!(
            *ttl > 600_000 && *ttl <= WARM_MARKER_TTL.as_millis() as i64,
            "{ttl}"
        );
    }
    // Nothing else outlives the longest window (storm end, dedup, lease).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let live: Vec<_> = f
            .keys(&ns)
            .into_iter()
            .filter(|(k, _)| *k != marker && *k != origin)
            .collect();
        if live.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {live:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
