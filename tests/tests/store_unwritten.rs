//! Store behaviour, the index of unwritten changes: every step that changes
//! a resource's counters records it, in the same step; a sidecar that wrote
//! a snapshot takes it out, unless it changed since; whatever stays there
//! longer than asked is found by any sidecar ([`Store::unwritten`]). That is
//! how a count acknowledged by a sidecar killed before its next flush still
//! reaches its resource. Each case runs against every backend (see
//! `signalgate_tests::store_suite`).

use std::time::Duration;

use signalgate_sidecar::store::{Claim, ClaimKey, Mark, Outcome, Owner, Write};
use signalgate_tests::behaviour;
use signalgate_tests::store_suite::{
    assert_storm, claim, fp_key, namespace, settings, with_owner, Backend, Fixture,
};

behaviour!(
    a_counted_duplicate_stays_unwritten_until_written_with_its_mark,
    a_change_after_the_snapshot_written_stays_unwritten,
    only_changes_older_than_asked_are_found,
    storm_members_and_resolutions_mark_their_resource,
    a_count_taken_back_is_a_change_too,
    a_resource_gone_from_the_store_leaves_the_index,
    a_record_whose_update_the_sink_refused_is_kept_a_dedup_window_longer,
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

/// The mark of `key`'s latest unwritten change.
async fn mark(f: &Fixture, key: &ClaimKey) -> Option<Mark> {
    f.snapshot(key).await.expect("a live resource").unwritten
}

async fn written(f: &Fixture, key: &ClaimKey, mark: Option<Mark>) {
    f.store
        .written(&[(key.clone(), mark)])
        .await
        .expect("written");
}

/// `c`'s resource made and committed, its creation reported written.
async fn made(f: &Fixture, c: &Claim) -> ClaimKey {
    let d = f.one(c).await;
    assert_eq!((d.outcome, d.write), (Outcome::Created, Write::Create));
    f.commit(&d.key).await;
    let m = mark(f, &d.key).await;
    written(f, &d.key, m).await;
    assert_eq!(mark(f, &d.key).await, None);
    d.key
}

async fn a_counted_duplicate_stays_unwritten_until_written_with_its_mark(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("unwritten");
    let key = made(&f, &claim(&ns, "a")).await;
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, vec![]);

    let d = f.one(&claim(&ns, "a")).await;
    assert_eq!((d.outcome, d.write), (Outcome::Duplicate, Write::Update));
    let m = mark(&f, &key).await;
    assert!(m.is_some(), "a count is an unwritten change");
    assert_eq!(
        unwritten_in(&f, &ns, Duration::ZERO).await,
        vec![key.clone()]
    );
    written(&f, &key, m).await;
    assert_eq!(mark(&f, &key).await, None);
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, vec![]);
}

async fn a_change_after_the_snapshot_written_stays_unwritten(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("unwritten-later");
    let key = made(&f, &claim(&ns, "a")).await;
    f.one(&claim(&ns, "a")).await;
    let first = mark(&f, &key).await.expect("marked");
    // Counted again after that snapshot, before the write is reported.
    f.one(&claim(&ns, "a")).await;
    written(&f, &key, Some(first)).await;
    let now = mark(&f, &key).await.expect("still unwritten");
    assert_ne!(now, first);
    assert_eq!(
        unwritten_in(&f, &ns, Duration::ZERO).await,
        vec![key.clone()]
    );
    written(&f, &key, Some(now)).await;
    assert_eq!(mark(&f, &key).await, None);
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

async fn storm_members_and_resolutions_mark_their_resource(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("unwritten-storm");
    let own = made(&f, &claim(&ns, "a")).await;
    // The second new fingerprint starts a storm; made and reported written.
    let started = f.one(&claim(&ns, "b")).await;
    assert_storm(&started, Outcome::StormStarted, Write::Create);
    f.commit(&started.key).await;
    let m = mark(&f, &started.key).await;
    written(&f, &started.key, m).await;
    assert_eq!(mark(&f, &started.key).await, None);

    let joined = f.one(&claim(&ns, "c")).await;
    assert_storm(&joined, Outcome::StormAggregated, Write::Update);
    assert!(mark(&f, &started.key).await.is_some(), "a new member");
    let resolved = Claim {
        resolved_ms: Some(5_000),
        ..claim(&ns, "a")
    };
    let d = f.one(&resolved).await;
    assert_eq!(d.outcome, Outcome::Resolved);
    assert!(mark(&f, &own).await.is_some(), "a resolution");
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
    let m = mark(&f, &key).await;
    written(&f, &key, m).await;
    f.store
        .uncount(owner, &[(ns.clone(), a.fingerprint.clone())])
        .await
        .expect("uncount");
    let snap = f.snapshot(&key).await.expect("live");
    assert_eq!(snap.occurrence_count, 1);
    assert!(
        snap.unwritten.is_some(),
        "the count taken back is unwritten"
    );
}

async fn a_record_whose_update_the_sink_refused_is_kept_a_dedup_window_longer(b: Backend) {
    let ttl = Duration::from_millis(800);
    let f = b
        .store(
            settings()
                .dedup_ttl(ttl)
                .incident_ttl(ttl)
                .claim_lease(Duration::from_millis(300)),
        )
        .await;
    let ns = namespace("unwritten-keep");
    let (a, other) = (claim(&ns, "a"), claim(&ns, "b"));
    let key = made(&f, &a).await;
    let other_key = made(&f, &other).await;
    f.one(&a).await;
    f.one(&other).await;
    tokio::time::sleep(ttl / 2).await;
    f.store
        .keep(std::slice::from_ref(&key))
        .await
        .expect("keep");
    // Past the TTL of the last sighting: only the kept record is there.
    tokio::time::sleep(ttl / 2 + Duration::from_millis(200)).await;
    assert!(f.snapshot(&other_key).await.is_none(), "expired");
    let kept = f.snapshot(&key).await.expect("kept");
    assert!(kept.unwritten.is_some(), "still to be written");
    assert_eq!(kept.occurrence_count, 2);
    // Kept a dedup window from the keep, not for ever.
    tokio::time::sleep(ttl / 2).await;
    assert!(f.snapshot(&key).await.is_none(), "expired in the end");
}

async fn a_resource_gone_from_the_store_leaves_the_index(b: Backend) {
    let ttl = Duration::from_millis(400);
    let f = b
        .store(
            settings()
                .dedup_ttl(ttl)
                .incident_ttl(ttl)
                .claim_lease(Duration::from_millis(300)),
        )
        .await;
    let ns = namespace("unwritten-gone");
    let a = claim(&ns, "a");
    let key = made(&f, &a).await;
    f.one(&a).await;
    assert!(mark(&f, &key).await.is_some());
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(f.snapshot(&key).await.is_none(), "expired");
    // The flush that found it gone says so; it is not found again.
    written(&f, &key, None).await;
    assert_eq!(unwritten_in(&f, &ns, Duration::ZERO).await, vec![]);
    assert_eq!(fp_key(&a), key);
}
