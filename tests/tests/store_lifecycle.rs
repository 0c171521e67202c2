//! Store behaviour, incidents over their whole life: an incident is its
//! fingerprint and its firing instance (an alert's `startsAt`). The same
//! instance stays a duplicate past the dedup window (for the incident TTL),
//! a resolution is recorded once and closes it, a new instance asks the sink
//! first (`Review`) and is a new resource unless the resource it finds is
//! absorbed, storm members' resolutions are counted, and every key still
//! expires. Each case runs against every backend (see
//! `signalgate_tests::store_suite`).

use std::time::{Duration, Instant};

use signalgate_sidecar::store::{Claim, Outcome, Owner, Resolution, Write, Written};
use signalgate_tests::behaviour;
use signalgate_tests::lifecycle::now_ms;
use signalgate_tests::store_suite::{
    assert_own, assert_storm, claim, found_in_sink, fp_key, namespace, settings, unchecked,
    with_owner, Backend, Fixture,
};

behaviour!(
    same_instance_is_a_duplicate_after_the_dedup_window,
    a_signal_without_instance_keeps_the_dedup_window,
    a_resolution_is_recorded_once_and_closes_the_incident,
    a_new_instance_asks_the_sink_then_is_a_new_resource,
    a_resolution_of_an_unknown_incident_changes_nothing,
    an_unknown_firing_in_a_warm_namespace_asks_the_sink,
    a_firing_that_began_before_the_store_remembers_its_namespace_is_looked_up,
    an_absorbed_firing_counts_in_the_resource_found,
    an_adopted_incident_keeps_its_firings_and_resolution,
    storm_members_resolutions_are_counted,
    a_resolved_member_firing_again_uncounted_still_reopens_its_storm,
    incident_records_expire_after_their_ttl,
);

/// When the alert of these cases started firing, and a later firing.
const FIRST: i64 = 1_700_000_000_000;
const SECOND: i64 = FIRST + 3_600_000;

fn firing(c: &Claim, instance_ms: i64) -> Claim {
    Claim {
        instance_ms,
        resolved_ms: None,
        ..c.clone()
    }
}

fn resolved(c: &Claim, instance_ms: i64, resolved_ms: i64) -> Claim {
    Claim {
        instance_ms,
        resolved_ms: Some(resolved_ms),
        ..c.clone()
    }
}

/// Creates and commits `c`'s resource; returns its name.
async fn created(f: &Fixture, c: &Claim) -> String {
    let d = f.one(c).await;
    assert_own(&d, c, Outcome::Created, Write::Create);
    f.commit(&d.key).await;
    d.snapshot.resource
}

/// Decides something in `ns` and waits until the store's memory of it spans
/// a dedup window of `window` (new fingerprints are then reviewed, not looked up).
async fn warm(f: &Fixture, ns: &str, window: Duration) {
    f.one(&claim(ns, "warm-up")).await;
    tokio::time::sleep(window + Duration::from_millis(50)).await;
}

async fn same_instance_is_a_duplicate_after_the_dedup_window(b: Backend) {
    let window = Duration::from_millis(300);
    let f = b.store(settings().dedup_ttl(window)).await;
    let ns = namespace("sameinst");
    let a = firing(&claim(&ns, "a"), FIRST);
    let name = created(&f, &a).await;
    for n in 2..=3 {
        tokio::time::sleep(window * 2).await;
        let d = f.one(&a).await;
        assert_eq!(
            (d.outcome, d.write),
            (Outcome::Duplicate, Write::Update),
            "{d:?}"
        );
        assert_eq!(d.snapshot.resource, name);
        assert_eq!(d.snapshot.occurrence_count, n);
        assert_eq!((d.snapshot.instance_ms, d.snapshot.firings), (FIRST, 1));
    }
}

async fn a_signal_without_instance_keeps_the_dedup_window(b: Backend) {
    let window = Duration::from_millis(300);
    let f = b.store(settings().dedup_ttl(window)).await;
    let ns = namespace("noinst");
    let a = claim(&ns, "a");
    let name = created(&f, &a).await;
    tokio::time::sleep(window * 2).await;
    let d = f.one(&a).await;
    assert_own(&d, &a, Outcome::Created, Write::Create);
    assert_ne!(
        d.snapshot.resource, name,
        "the window passed: a new resource"
    );
}

async fn a_resolution_is_recorded_once_and_closes_the_incident(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("resolve");
    let a = firing(&claim(&ns, "a"), FIRST);
    let name = created(&f, &a).await;
    let before = now_ms();
    let d = f.one(&resolved(&a, FIRST, FIRST + 60_000)).await;
    assert_eq!(
        (d.outcome, d.write),
        (Outcome::Resolved, Write::Update),
        "{d:?}"
    );
    assert_eq!(d.key, fp_key(&a));
    assert_eq!(d.snapshot.resource, name);
    assert_eq!(
        d.snapshot.occurrence_count, 1,
        "a resolution is not an occurrence"
    );
    let Some(Resolution {
        resolved_ms,
        received_ms,
    }) = d.snapshot.resolution
    else {
        panic!("no resolution: {d:?}");
    };
    assert_eq!(resolved_ms, FIRST + 60_000);
    assert!(received_ms >= before - 1_000, "{received_ms} < {before}");
    // The coalesced write reads it from the store.
    let held = f.snapshot(&d.key).await.expect("snapshot");
    assert_eq!(held.resolution, d.snapshot.resolution);
    // A repeated resolution keeps the first.
    let again = f.one(&resolved(&a, FIRST, FIRST + 90_000)).await;
    assert_eq!(
        (again.outcome, again.write),
        (Outcome::Resolved, Write::Skip)
    );
    let held = f.snapshot(&d.key).await.expect("snapshot");
    assert_eq!(held.resolution, d.snapshot.resolution);
    // A late re-send of the resolved firing still counts in its resource.
    let late = f.one(&a).await;
    assert_eq!(
        (late.outcome, late.write),
        (Outcome::Duplicate, Write::Update)
    );
    assert_eq!(late.snapshot.resource, name);
}

async fn a_new_instance_asks_the_sink_then_is_a_new_resource(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("newinst");
    let a = firing(&claim(&ns, "a"), FIRST);
    let name = created(&f, &a).await;
    f.one(&resolved(&a, FIRST, FIRST + 60_000)).await;
    // (A resource's name carries the millisecond of its claim: let one pass.)
    tokio::time::sleep(Duration::from_millis(2)).await;
    let next = firing(&unchecked(&a), SECOND);
    let d = f.one(&next).await;
    assert_eq!(d.write, Write::Review, "{d:?}");
    assert_eq!(d.key, fp_key(&a));
    // Nothing was recorded: the first incident is still what the store holds.
    let held = f.snapshot(&d.key).await.expect("snapshot");
    assert_eq!(
        (held.resource.as_str(), held.instance_ms),
        (name.as_str(), FIRST)
    );
    // The sink holds nothing that absorbs it: decided again as new.
    let d = f.one(&firing(&a, SECOND)).await;
    assert_own(&d, &a, Outcome::Created, Write::Create);
    assert_ne!(d.snapshot.resource, name);
    assert_eq!((d.snapshot.instance_ms, d.snapshot.firings), (SECOND, 1));
    assert_eq!(d.snapshot.resolution, None);
    f.commit(&d.key).await;
    // Its repeats are its duplicates; the old firing's resolution is unknown now.
    let again = f.one(&next).await;
    assert_eq!(
        (again.outcome, again.write),
        (Outcome::Duplicate, Write::Update)
    );
    assert_eq!(again.snapshot.resource, d.snapshot.resource);
    let old = f.one(&resolved(&a, FIRST, FIRST + 60_000)).await;
    assert_eq!(
        (old.outcome, old.write),
        (Outcome::ResolvedUnknown, Write::Skip)
    );
}

async fn a_resolution_of_an_unknown_incident_changes_nothing(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("resunknown");
    let a = claim(&ns, "a");
    let d = f.one(&resolved(&a, FIRST, FIRST + 1)).await;
    assert_eq!(
        (d.outcome, d.write),
        (Outcome::ResolvedUnknown, Write::Skip),
        "{d:?}"
    );
    assert_eq!(f.snapshot(&fp_key(&a)).await, None);
    // And it does not hold up the incident's first firing.
    let d = f.one(&firing(&a, FIRST)).await;
    assert_own(&d, &a, Outcome::Created, Write::Create);
}

async fn an_unknown_firing_in_a_warm_namespace_asks_the_sink(b: Backend) {
    let window = Duration::from_millis(300);
    let f = b.store(settings().dedup_ttl(window)).await;
    let ns = namespace("review");
    warm(&f, &ns, window).await;
    // A firing that began while the store remembered the namespace.
    let a = firing(&unchecked(&claim(&ns, "a")), now_ms());
    let d = f.one(&a).await;
    assert_eq!(
        (d.outcome, d.write),
        (Outcome::Created, Write::Review),
        "{d:?}"
    );
    assert_eq!(f.snapshot(&fp_key(&a)).await, None, "nothing recorded");
    // Without an instance, a new fingerprint in a warm namespace is created at once.
    let plain = unchecked(&claim(&ns, "plain"));
    assert_own(
        &f.one(&plain).await,
        &plain,
        Outcome::Created,
        Write::Create,
    );
}

/// Issue 19, finding 1: the store lost an incident's record (Redis
/// restarted empty) and has remembered the namespace for a dedup window
/// since; the incident is then re-sent. Its firing began before the store's
/// memory did: it is looked up (its resource, or the storm it is a member
/// of, may be in the sink), not reviewed or joined to a running storm.
async fn a_firing_that_began_before_the_store_remembers_its_namespace_is_looked_up(b: Backend) {
    let window = Duration::from_millis(300);
    let f = b
        .store(settings().dedup_ttl(window).storm_threshold(2))
        .await;
    let ns = namespace("lost");
    let began = now_ms() - 60_000;
    warm(&f, &ns, window).await;
    let lost = unchecked(&firing(&claim(&ns, "lost"), began));
    assert_eq!(f.one(&lost).await.write, Write::Lookup);
    // Also while a storm runs: it would otherwise join it.
    for i in 0..3 {
        let member = firing(&claim(&ns, &format!("new-{i}")), now_ms());
        f.one(&member).await;
    }
    let d = f.one(&lost).await;
    assert_eq!(
        (d.outcome, d.write),
        (Outcome::Created, Write::Lookup),
        "{d:?}"
    );
    // A firing that began since is not.
    let new = unchecked(&firing(&claim(&ns, "new-3"), now_ms()));
    let d = f.one(&new).await;
    assert_eq!(d.outcome, Outcome::StormAggregated, "{d:?}");
}

async fn an_absorbed_firing_counts_in_the_resource_found(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("absorb");
    let a = firing(&claim(&ns, "a"), FIRST);
    let name = created(&f, &a).await;
    f.one(&a).await;
    f.one(&resolved(&a, FIRST, FIRST + 60_000)).await;
    let next = firing(&unchecked(&a), SECOND);
    assert_eq!(f.one(&next).await.write, Write::Review);
    // The sink shows the resource (its controller still at work): the store's
    // counters of it are the fresher, the sink's view may lag.
    let mut seen = found_in_sink(&a, 1);
    seen.resource = name.clone();
    seen.instance_ms = FIRST;
    let adopted = f
        .store
        .adopt(&next, &seen, true)
        .await
        .expect("adopt")
        .expect("not a storm member");
    assert_eq!(adopted.write, Write::Update);
    let s = &adopted.snapshot;
    assert_eq!(s.resource, name);
    assert_eq!(
        s.occurrence_count, 3,
        "two firings of the first, one of the second"
    );
    assert_eq!((s.instance_ms, s.firings, s.resolution), (SECOND, 2, None));
    // The new firing's repeats are duplicates of that resource.
    let d = f.one(&next).await;
    assert_eq!((d.outcome, d.write), (Outcome::Duplicate, Write::Update));
    assert_eq!(
        (d.snapshot.resource.as_str(), d.snapshot.occurrence_count),
        (name.as_str(), 4)
    );
    assert_eq!(f.snapshot(&fp_key(&a)).await.expect("held").firings, 2);
}

async fn an_adopted_incident_keeps_its_firings_and_resolution(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("adoptlife");
    // The store lost this incident; the sink has its resource: two firings,
    // resolved.
    let a = firing(&unchecked(&claim(&ns, "a")), SECOND);
    assert_eq!(f.one(&a).await.write, Write::Lookup);
    let mut seen = found_in_sink(&a, 5);
    seen.instance_ms = SECOND;
    seen.firings = 2;
    seen.resolution = Some(Resolution {
        resolved_ms: SECOND + 10,
        received_ms: SECOND + 20,
    });
    let adopted = f
        .store
        .adopt(&a, &seen, false)
        .await
        .expect("adopt")
        .expect("not a storm member");
    assert_eq!(adopted.write, Write::Update);
    let s = &adopted.snapshot;
    assert_eq!(
        (s.resource.as_str(), s.occurrence_count),
        (seen.resource.as_str(), 6)
    );
    assert_eq!((s.instance_ms, s.firings), (SECOND, 2));
    assert_eq!(s.resolution, seen.resolution);
    // A second adoption of the same firing (another request) counts in what
    // the store holds.
    let again = f
        .store
        .adopt(&a, &seen, false)
        .await
        .expect("adopt")
        .expect("own");
    assert_eq!(again.snapshot.occurrence_count, 7);
}

/// A member's firing that does not count (its request's own, resent after a
/// lost reply) still reopens its resolved storm, in the store's storm record
/// too (on Redis this was only in the script's memory, never written).
async fn a_resolved_member_firing_again_uncounted_still_reopens_its_storm(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("stormreopen");
    let [a, m1] = ["a", "m1"].map(|s| firing(&claim(&ns, s), FIRST));
    created(&f, &a).await;
    let owner = Owner::next();
    let started = f
        .decide(&with_owner(std::slice::from_ref(&m1), owner))
        .await;
    let started = &started[0];
    assert_storm(started, Outcome::StormStarted, Write::Create);
    f.commit(&started.key).await;
    let d = f.one(&resolved(&m1, FIRST, FIRST + 10)).await;
    assert!(d.snapshot.resolution.is_some(), "its only member resolved");

    // The same request's firing again: not counted, but the storm reopens.
    let again = f
        .decide(&with_owner(std::slice::from_ref(&m1), owner))
        .await;
    assert_eq!(again[0].snapshot.resolution, None);
    let held = f.snapshot(&started.key).await.expect("storm snapshot");
    assert_eq!(held.resolution, None, "reopened in the store");
    assert_eq!(held.storm.expect("storm").resolved_count, 0);
    assert_eq!(held.occurrence_count, 1, "not counted again");
}

async fn storm_members_resolutions_are_counted(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("stormres");
    let [a, m1, m2] = ["a", "m1", "m2"].map(|s| firing(&claim(&ns, s), FIRST));
    created(&f, &a).await;
    let started = f.one(&m1).await;
    let name = assert_storm(&started, Outcome::StormStarted, Write::Create);
    f.commit(&started.key).await;
    assert_storm(&f.one(&m2).await, Outcome::StormAggregated, Write::Update);

    let d = f.one(&resolved(&m1, FIRST, FIRST + 10)).await;
    assert_eq!(assert_storm(&d, Outcome::Resolved, Write::Update), name);
    let storm = d.snapshot.storm.as_ref().expect("storm");
    assert_eq!((storm.alert_count, storm.resolved_count), (2, 1));
    assert_eq!(d.snapshot.resolution, None, "one member still fires");
    let again = f.one(&resolved(&m1, FIRST, FIRST + 10)).await;
    assert_eq!(
        (again.outcome, again.write),
        (Outcome::Resolved, Write::Skip)
    );
    assert_eq!(again.key, started.key, "a member's resolve is the storm's");

    let d = f.one(&resolved(&m2, FIRST, FIRST + 20)).await;
    assert_eq!(assert_storm(&d, Outcome::Resolved, Write::Update), name);
    assert_eq!(d.snapshot.storm.as_ref().expect("storm").resolved_count, 2);
    let resolution = d.snapshot.resolution.expect("every member resolved");
    assert_eq!(resolution.resolved_ms, FIRST + 20);
    let held = f.snapshot(&d.key).await.expect("storm snapshot");
    assert_eq!(held.resolution, Some(resolution));

    // A member firing again reopens the storm.
    let d = f.one(&m1).await;
    assert_eq!(assert_storm(&d, Outcome::Duplicate, Write::Update), name);
    assert_eq!(d.snapshot.storm.as_ref().expect("storm").resolved_count, 1);
    assert_eq!(d.snapshot.resolution, None);
}

async fn incident_records_expire_after_their_ttl(b: Backend) {
    let dedup = Duration::from_millis(400);
    let incident = Duration::from_millis(1_500);
    let f = b
        .store(
            settings()
                .dedup_ttl(dedup)
                .incident_ttl(incident)
                .claim_lease(Duration::from_millis(300)),
        )
        .await;
    let ns = namespace("incttl");
    let open = firing(&claim(&ns, "open"), FIRST);
    let closed = firing(&claim(&ns, "closed"), FIRST);
    created(&f, &open).await;
    created(&f, &closed).await;
    f.one(&resolved(&closed, FIRST, FIRST + 1)).await;
    // Its resolution written (until then the index of unwritten changes
    // keeps the record; store_unwritten.rs).
    let held = f.snapshot(&fp_key(&closed)).await.expect("resolved record");
    f.store
        .written(&[(fp_key(&closed), Some(Written::of(&held)))])
        .await
        .expect("written");
    if b != Backend::Memory {
        let ttl = |fp: &str| {
            let key = format!("sg:{{{ns}}}:f:{fp}");
            f.keys(&ns)
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, t)| t)
        };
        let open_ttl = ttl(&open.fingerprint).expect("open record");
        assert!(
            open_ttl > 1_000 && open_ttl <= 1_500,
            "open incident: {open_ttl}"
        );
        let closed_ttl = ttl(&closed.fingerprint).expect("resolved record");
        assert!(
            closed_ttl > 0 && closed_ttl <= 400,
            "resolved: {closed_ttl}"
        );
    }
    // The resolved incident is forgotten after the dedup window, the open
    // one only after the incident TTL.
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.snapshot(&fp_key(&closed)).await.is_some() {
        assert!(
            Instant::now() < deadline,
            "the resolved record never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        f.snapshot(&fp_key(&open)).await.is_some(),
        "open incident forgotten early"
    );
    while f.snapshot(&fp_key(&open)).await.is_some() {
        assert!(Instant::now() < deadline, "the open record never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
