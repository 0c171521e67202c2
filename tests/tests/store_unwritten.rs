//! Store behaviour, the index of unwritten changes: every step that changes
//! a resource's counters puts it there, in the same step; a sidecar that
//! wrote it takes it out, unless it was counted since; whatever stays there
//! longer than asked is found by any sidecar ([`Store::unwritten`]). That is
//! how a count acknowledged by a sidecar killed before its next flush still
//! reaches its resource. Each case runs against every backend (see
//! `signalgate_tests::store_suite`).

use std::time::Duration;

use signalgate_sidecar::store::{Claim, ClaimKey, Outcome, Owner, Snapshot, Write, Written};
use signalgate_tests::behaviour;
use signalgate_tests::store_suite::{
    assert_storm, claim, fp_key, namespace, settings, with_owner, Backend, Fixture,
};

behaviour!(
    a_counted_duplicate_stays_unwritten_until_written,
    a_change_after_the_snapshot_written_stays_unwritten,
    only_changes_older_than_asked_are_found,
    storm_members_and_resolutions_put_their_resource_there,
    a_count_taken_back_is_a_change_too,
    a_resource_gone_from_the_store_leaves_the_index,
    a_record_in_the_index_outlives_its_ttl_until_it_is_written,
);

/// What [`Store::unwritten`] finds of namespace `ns`, changed more than
/// `older_than` ago. A Redis store looks at a bounded part of its
/// namespaces a call: a few calls cover every namespace of this test binary.
async fn unwritten_in(f: &Fixture, ns: &str, older_than: Duration) -> Vec<ClaimKey> {
    let mut found = Vec::new();
    for _ in 0..4 {
        for key in f.store.unwritten(older_than).await.expect("unwritten") {
            if key.namespace() == ns && !found.contains(&key) {
                found.push(key);
            }
        }
    }
    found.sort();
    found
}

/// A store whose records live `ttl` after their last change.
async fn short_lived(b: Backend, ttl: Duration) -> Fixture {
    b.store(
        settings()
            .dedup_ttl(ttl)
            .incident_ttl(ttl)
            .claim_lease(Duration::from_millis(300)),
    )
    .await
}

/// `key`'s counters, which must be live.
async fn now(f: &Fixture, key: &ClaimKey) -> Snapshot {
    f.snapshot(key).await.expect("a live resource")
}

/// Whether `key` is in the index.
async fn indexed(f: &Fixture, key: &ClaimKey) -> bool {
    now(f, key).await.unwritten
}

/// Reports `key` written with the counters of `snapshot` (`None`: found gone).
async fn written(f: &Fixture, key: &ClaimKey, snapshot: Option<&Snapshot>) {
    f.store
        .written(&[(key.clone(), snapshot.map(Written::of))])
        .await
        .expect("written");
}

/// `c`'s resource made and committed: its creator writes it, so it is not
/// in the index.
async fn made(f: &Fixture, c: &Claim) -> ClaimKey {
    let d = f.one(c).await;
    assert_eq!((d.outcome, d.write), (Outcome::Created, Write::Create));
    f.commit(&d.key).await;
    assert!(
        !indexed(f, &d.key).await,
        "a creation is its creator's to write"
    );
    d.key
}

async fn a_counted_duplicate_stays_unwritten_until_written(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("unwritten");
    let key = made(&f, &claim(&ns, "a")).await;
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, vec![]);

    let d = f.one(&claim(&ns, "a")).await;
    assert_eq!((d.outcome, d.write), (Outcome::Duplicate, Write::Update));
    let snap = now(&f, &key).await;
    assert!(snap.unwritten, "a count is an unwritten change");
    assert_eq!(
        unwritten_in(&f, &ns, Duration::ZERO).await,
        vec![key.clone()]
    );
    written(&f, &key, Some(&snap)).await;
    assert!(!indexed(&f, &key).await);
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, vec![]);
    // The next count puts it back.
    f.one(&claim(&ns, "a")).await;
    assert!(indexed(&f, &key).await);
}

async fn a_change_after_the_snapshot_written_stays_unwritten(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("unwritten-later");
    let key = made(&f, &claim(&ns, "a")).await;
    f.one(&claim(&ns, "a")).await;
    let first = now(&f, &key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        unwritten_in(&f, &ns, Duration::from_millis(200)).await,
        vec![key.clone()]
    );
    // Counted again after that snapshot, before the write is reported: it
    // stays, as if put there now (a live sidecar is writing it).
    f.one(&claim(&ns, "a")).await;
    written(&f, &key, Some(&first)).await;
    let later = now(&f, &key).await;
    assert!(later.unwritten, "counted since the snapshot written");
    assert_eq!(later.occurrence_count, first.occurrence_count + 1);
    assert_eq!(
        unwritten_in(&f, &ns, Duration::from_millis(200)).await,
        vec![]
    );
    assert_eq!(
        unwritten_in(&f, &ns, Duration::ZERO).await,
        vec![key.clone()]
    );
    written(&f, &key, Some(&later)).await;
    assert!(!indexed(&f, &key).await);
}

async fn only_changes_older_than_asked_are_found(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("unwritten-age");
    let key = made(&f, &claim(&ns, "a")).await;
    f.one(&claim(&ns, "a")).await;
    assert_eq!(unwritten_in(&f, &ns, Duration::from_secs(60)).await, vec![]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        unwritten_in(&f, &ns, Duration::from_millis(200)).await,
        vec![key]
    );
}

async fn storm_members_and_resolutions_put_their_resource_there(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("unwritten-storm");
    let own = made(&f, &claim(&ns, "a")).await;
    // The second new fingerprint starts a storm; made and reported written.
    let started = f.one(&claim(&ns, "b")).await;
    assert_storm(&started, Outcome::StormStarted, Write::Create);
    f.commit(&started.key).await;
    let snap = now(&f, &started.key).await;
    written(&f, &started.key, Some(&snap)).await;
    assert!(!indexed(&f, &started.key).await);

    let joined = f.one(&claim(&ns, "c")).await;
    assert_storm(&joined, Outcome::StormAggregated, Write::Update);
    assert!(indexed(&f, &started.key).await, "a new member");
    let resolved = Claim {
        resolved_ms: Some(5_000),
        ..claim(&ns, "a")
    };
    let d = f.one(&resolved).await;
    assert_eq!(d.outcome, Outcome::Resolved);
    assert!(indexed(&f, &own).await, "a resolution");
    let mut both = vec![own, started.key];
    both.sort();
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, both);
}

async fn a_count_taken_back_is_a_change_too(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("unwritten-uncount");
    let a = claim(&ns, "a");
    let key = made(&f, &a).await;
    let owner = Owner::next();
    let d = f.decide(&with_owner(std::slice::from_ref(&a), owner)).await;
    assert_eq!(d[0].snapshot.occurrence_count, 2);
    let snap = now(&f, &key).await;
    written(&f, &key, Some(&snap)).await;
    assert!(!indexed(&f, &key).await);
    f.store
        .uncount(owner, &[(ns.clone(), a.fingerprint.clone())])
        .await
        .expect("uncount");
    let snap = f.snapshot(&key).await.expect("live");
    assert_eq!(snap.occurrence_count, 1);
    assert!(snap.unwritten, "the count taken back is unwritten");
}

async fn a_record_in_the_index_outlives_its_ttl_until_it_is_written(b: Backend) {
    let ttl = Duration::from_millis(500);
    let f = b
        .store(
            settings()
                .dedup_ttl(ttl)
                .incident_ttl(Duration::from_secs(30))
                .claim_lease(Duration::from_millis(300)),
        )
        .await;
    let ns = namespace("unwritten-keep");
    // Signals without a firing instance: their records live a dedup window.
    let (a, other) = (claim(&ns, "a"), claim(&ns, "b"));
    let key = made(&f, &a).await;
    let other_key = made(&f, &other).await;
    f.one(&a).await;
    // Past the dedup window: the record not counted since is gone; the one
    // whose count waits for a write is not.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert!(f.snapshot(&other_key).await.is_none(), "expired");
    let kept = f.snapshot(&key).await.expect("kept until written");
    assert!(kept.unwritten, "still to be written");
    assert_eq!(kept.occurrence_count, 2);
    // Written: its own TTL again, from its last sighting (long past).
    written(&f, &key, Some(&kept)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.snapshot(&key).await.is_some() {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_resource_gone_from_the_store_leaves_the_index(b: Backend) {
    let ttl = Duration::from_millis(400);
    let f = short_lived(b, ttl).await;
    let ns = namespace("unwritten-gone");
    let a = claim(&ns, "a");
    let key = made(&f, &a).await;
    f.one(&a).await;
    assert!(indexed(&f, &key).await);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(f.snapshot(&key).await.is_none(), "expired");
    // The flush that found it gone says so; it is not found again.
    written(&f, &key, None).await;
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, vec![]);
    assert_eq!(fp_key(&a), key);
}
