//! Store behaviour, lookups and adoption: while a namespace is cold new
//! fingerprints are looked up in the sink, and what is found there (a
//! signal's resource, a running storm, the ended storm a firing was a member
//! of) is adopted; a resource deleted from
//! the sink is forgotten; where a resource went is remembered. Each case
//! runs against every backend (see `signalgate_tests::store_suite`).

use std::time::{Duration, Instant};

use signalgate_sidecar::clock::now_ms;
use signalgate_sidecar::store::{
    Claim, ClaimKey, ClaimState, Decision, Outcome, Snapshot, StormSnapshot, Write,
};
use signalgate_tests::behaviour;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::store_suite::{
    a_claim_made, assert_own, assert_storm, claim, claim_on, found_in_sink, namespace, settings,
    unchecked, Backend,
};

behaviour!(
    adopting_an_existing_resource_keeps_its_name_and_count,
    new_fingerprints_are_looked_up_while_the_namespace_is_cold,
    a_resource_deleted_from_the_sink_is_forgotten,
    a_running_storm_found_in_the_sink_is_adopted,
    where_a_resource_went_is_remembered_with_it,
    an_adoption_finding_a_claim_made_meanwhile_settles_it_as_a_duplicate_would,
    a_member_of_an_ended_storm_found_in_the_sink_counts_in_it_again,
);

async fn adopting_an_existing_resource_keeps_its_name_and_count(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("adopt");
    let a = claim(&ns, "a");
    // The store does not know the namespace: look in the sink first.
    let lookup = f.one(&unchecked(&a)).await;
    assert_eq!(lookup.write, Write::Lookup, "{lookup:?}");
    assert_eq!(f.snapshot(&lookup.key).await, None, "nothing recorded");
    // The sink has the incident's resource: adopt it.
    let existing = found_in_sink(&a, 5);
    let name = existing.resource.clone();
    let adopted = f
        .store
        .adopt(&a, &existing, false)
        .await
        .expect("adopt")
        .expect("a fingerprint claim");
    assert_eq!(adopted.write, Write::Update);
    let adopted = adopted.snapshot;
    assert_eq!(adopted.resource, name);
    assert_eq!(adopted.first_seen_ms, 1_000);
    assert_eq!(adopted.occurrence_count, 6);
    // Adopted means committed: repeats are plain duplicates of that resource.
    let again = f.one(&unchecked(&a)).await;
    assert_own(&again, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(again.snapshot.resource, name);
    assert_eq!(again.snapshot.occurrence_count, 7);
    assert_eq!(
        f.poll(&lookup.key).await,
        ClaimState::Committed { moved_to: None }
    );
    // A second request that found it too: counted in what the store holds.
    let twice = f
        .store
        .adopt(&a, &existing, false)
        .await
        .expect("adopt")
        .expect("a fingerprint claim");
    assert_eq!(twice.write, Write::Update);
    assert_eq!(twice.snapshot.resource, name);
    assert_eq!(twice.snapshot.occurrence_count, 8);
}

async fn new_fingerprints_are_looked_up_while_the_namespace_is_cold(b: Backend) {
    let ttl = Duration::from_millis(600);
    let f = b
        .store(
            settings()
                .dedup_ttl(ttl)
                .storm_threshold(1)
                .storm_window(ttl),
        )
        .await;
    let ns = namespace("cold");
    let (a, c, d) = (claim(&ns, "a"), claim(&ns, "c"), claim(&ns, "d"));
    // Nothing known of the namespace: every new fingerprint is looked up,
    // and lookups count nowhere, so re-sent live incidents never look like
    // a storm (the threshold here is 1).
    let ds = f
        .decide(&[unchecked(&a), unchecked(&c), unchecked(&d)])
        .await;
    for d in &ds {
        assert_eq!(d.write, Write::Lookup, "{d:?}");
    }
    let other = f
        .one(&unchecked(&claim(&namespace("cold-other"), "a")))
        .await;
    assert_eq!(
        other.write,
        Write::Lookup,
        "each namespace has its own memory"
    );
    f.store
        .adopt(&a, &found_in_sink(&a, 1), false)
        .await
        .expect("adopt a");
    f.store
        .adopt(&c, &found_in_sink(&c, 1), false)
        .await
        .expect("adopt c");
    // d has no resource: decided as absent, it is the window's first new one.
    let created = f.one(&d).await;
    assert_own(&created, &d, Outcome::Created, Write::Create);
    f.commit(&created.key).await;
    let started = Instant::now();
    // Known fingerprints are never looked up.
    let known = f.one(&unchecked(&a)).await;
    assert_own(&known, &a, Outcome::Duplicate, Write::Update);
    // Keep it busy for a whole window: then it knows every live incident.
    while started.elapsed() < ttl + Duration::from_millis(100) {
        f.one(&unchecked(&a)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = claim(&ns, "e");
    assert_own(
        &f.one(&unchecked(&e)).await,
        &e,
        Outcome::Created,
        Write::Create,
    );
    // Quiet for longer than a window: the store still knows it (its memory
    // is intact), so no lookup.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let g = claim(&ns, "g");
    let quiet = f.one(&unchecked(&g)).await;
    assert_eq!(quiet.write, Write::Create, "{quiet:?}");
}

async fn a_resource_deleted_from_the_sink_is_forgotten(b: Backend) {
    let f = b.store(settings().storm_threshold(2)).await;
    let ns = namespace("forget");
    let forget = |key: ClaimKey, name: String| {
        let store = f.store.clone();
        async move { store.forget(&key, &name).await.expect("forget") }
    };
    let a = claim(&ns, "a");
    let first = f.one(&a).await;
    // Pending: someone is creating it, nothing to forget.
    assert!(!forget(first.key.clone(), first.snapshot.resource.clone()).await);
    f.commit(&first.key).await;
    // Another resource's name: left alone.
    assert!(!forget(first.key.clone(), "rr-other".into()).await);
    assert_own(&f.one(&a).await, &a, Outcome::Duplicate, Write::Update);
    assert!(forget(first.key.clone(), first.snapshot.resource.clone()).await);
    assert_eq!(f.snapshot(&first.key).await, None);
    // The next sighting is a new incident, with a claim to create.
    let again = f.one(&a).await;
    assert_own(&again, &a, Outcome::Created, Write::Create);
    assert_eq!(again.snapshot.occurrence_count, 1);

    // A storm resource deleted: its members are new signals again.
    let ds = f.decide(&[claim(&ns, "b"), claim(&ns, "c")]).await;
    let storm = assert_storm(&ds[1], Outcome::StormStarted, Write::Create);
    f.commit(&ds[1].key).await;
    assert_eq!(f.one(&claim(&ns, "c")).await.outcome, Outcome::Duplicate);
    assert!(forget(ds[1].key.clone(), storm.clone()).await);
    assert_eq!(f.snapshot(&ds[1].key).await, None);
    let member = f.one(&claim(&ns, "c")).await;
    assert_ne!(member.outcome, Outcome::Duplicate, "{member:?}");
}

async fn a_running_storm_found_in_the_sink_is_adopted(b: Backend) {
    let window = Duration::from_millis(300);
    let f = b
        .store(settings().storm_threshold(2).storm_window(window))
        .await;
    let now = now_ms();
    let found = |name: &str, started_ms: i64, ends_ms: i64| Snapshot {
        resource: name.to_string(),
        first_seen_ms: started_ms,
        last_seen_ms: now - 100,
        occurrence_count: 50,
        storm: Some(StormSnapshot {
            alert_count: 40,
            affected: vec!["Pod/a".into(), "Pod/b".into()],
            affected_overflow: 3,
            started_ms,
            ends_ms,
            ..StormSnapshot::default()
        }),
        ..Snapshot::default()
    };
    let adopt = |ns: &str, existing: Snapshot| {
        let store = f.store.clone();
        let ns = ns.to_string();
        async move { store.adopt_storm(&ns, &existing).await.expect("adopt") }
    };

    // A storm past its end is not adopted, however recently it was seen
    // (its members' repeats do not extend it).
    let ns = namespace("adopt-storm");
    let ended = found("storm-0123456789ab-old", now - 120_000, now - 1_000);
    assert!(!adopt(&ns, ended).await);
    // A running one is; new signals then join it, counted on from its counters.
    let name = "storm-0123456789ab-run";
    let running = found(name, now - 10_000, now + 60_000);
    assert!(adopt(&ns, running.clone()).await);
    let ds = f
        .decide(&[claim_on(&ns, "x", "Pod/b"), claim_on(&ns, "y", "Pod/c")])
        .await;
    for d in &ds {
        assert_eq!(
            (d.outcome, d.write),
            (Outcome::StormAggregated, Write::Update),
            "{d:?}"
        );
        assert_eq!(d.snapshot.resource, name);
    }
    let snap = f.snapshot(&ds[1].key).await.expect("storm snapshot");
    assert_eq!(snap.occurrence_count, 52);
    assert_eq!(snap.first_seen_ms, now - 10_000);
    let storm = snap.storm.expect("storm counters");
    assert_eq!(storm.alert_count, 42);
    assert_eq!(storm.affected, vec!["Pod/a", "Pod/b", "Pod/c"]);
    assert_eq!(storm.affected_overflow, 3);
    assert_eq!(storm.ends_ms, now + 60_000);
    // While it runs, another storm resource found in the sink is not
    // adopted; the same one again is merged (nothing moves back).
    let other = found("storm-0123456789ab-two", now - 5_000, now + 60_000);
    assert!(!adopt(&ns, other).await);
    assert!(adopt(&ns, running).await);
    let again = f.snapshot(&ds[1].key).await.expect("storm snapshot");
    assert_eq!(again.occurrence_count, 52);
    assert_eq!(again.storm.map(|s| s.alert_count), Some(42));

    // A storm the store holds in an older state (restored from a snapshot:
    // ended for the store, running in the sink) is merged, not refused.
    let ns = namespace("adopt-stale");
    let ds = f
        .decide(&[claim(&ns, "a"), claim(&ns, "b"), claim(&ns, "c")])
        .await;
    let stale = assert_storm(&ds[2], Outcome::StormStarted, Write::Create);
    f.commit(&ds[2].key).await;
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    let now = now_ms();
    let mut newer = found(&stale, now - 5_000, now + 60_000);
    newer.last_seen_ms = now;
    assert!(adopt(&ns, newer).await);
    let d = f.one(&claim_on(&ns, "d", "Pod/d")).await;
    assert_eq!(
        (d.outcome, d.write),
        (Outcome::StormAggregated, Write::Update),
        "{d:?}"
    );
    assert_eq!(d.snapshot.resource, stale);
    assert_eq!(d.snapshot.storm.map(|s| s.alert_count), Some(41));
    // Merged, not overwritten: the store's start and its affected value
    // (Pod/c, of the member that started it) are kept.
    let snap = f.snapshot(&d.key).await.expect("storm snapshot");
    assert_eq!(snap.first_seen_ms, ds[2].snapshot.first_seen_ms);
    assert_eq!(
        snap.storm.map(|s| s.affected),
        Some(vec![
            "Pod/a".into(),
            "Pod/b".into(),
            "Pod/c".into(),
            "Pod/d".into()
        ])
    );
}

/// A resource written outside its namespace (the sink's fallback namespace)
/// is remembered there: every later decision and snapshot names the place,
/// whether the store learnt it from a commit or from an adoption.
async fn where_a_resource_went_is_remembered_with_it(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("moved");
    let c = |s: &str| claim(&ns, s);
    let moved = |d: &Decision| d.snapshot.moved_to.clone();
    let here = Some("elsewhere".to_string());

    // Its own resource, committed where it went.
    let a = f.one(&c("a")).await;
    assert_own(&a, &c("a"), Outcome::Created, Write::Create);
    assert_eq!(moved(&a), None);
    let waiter = f.one(&c("a")).await;
    assert_eq!((waiter.write, moved(&waiter)), (Write::Await, None));
    f.commit_moved(&a.key, here.as_deref()).await;
    assert_eq!(
        f.poll(&waiter.key).await,
        ClaimState::Committed {
            moved_to: here.clone()
        },
        "a waiter learns where it went"
    );
    if b == Backend::Standalone {
        // What a sidecar of the previous version sharing the store reads:
        // the bare name, and a claim that is not pending.
        let key = format!("sg:{{{ns}}}:f:{}", c("a").fingerprint);
        let server = RedisServer::shared();
        assert_eq!(server.cli(&["HGET", &key, "r"]).trim(), a.snapshot.resource);
        assert_eq!(server.cli(&["HGET", &key, "p"]).trim(), "@elsewhere");
    }
    let ds = f.decide(&[c("a"), c("a")]).await;
    assert!(ds.iter().all(|d| moved(d) == here), "{ds:?}");
    let snap = f.snapshot(&a.key).await.expect("held");
    assert_eq!(snap.moved_to, here);
    let forgot = f
        .store
        .forget(&a.key, &snap.resource)
        .await
        .expect("forget");
    assert!(forgot, "deleted from where it went: forgotten by its name");

    // A storm resource likewise: its members' decisions name the place.
    let ds = f.decide(&[c("b"), c("c")]).await;
    assert_storm(&ds[0], Outcome::StormStarted, Write::Create);
    f.commit_moved(&ds[0].key, here.as_deref()).await;
    assert_eq!(
        f.poll(&ds[1].key).await,
        ClaimState::Committed {
            moved_to: here.clone()
        }
    );
    let d = f.one(&c("d")).await;
    assert_storm(&d, Outcome::StormAggregated, Write::Update);
    assert_eq!(moved(&d), here);
    assert_eq!(f.snapshot(&d.key).await.expect("held").moved_to, here);
    // A storm committed in its own namespace names none.
    let other = namespace("moved");
    let ds = f.decide(&[claim(&other, "a"), claim(&other, "b")]).await;
    f.commit(&ds[1].key).await;
    assert_eq!(moved(&f.one(&claim(&other, "c")).await), None);

    // Adopted from the sink where it is.
    let cold = namespace("moved");
    let e = claim(&cold, "e");
    let existing = Snapshot {
        moved_to: here.clone(),
        ..found_in_sink(&e, 2)
    };
    let adopted = f.store.adopt(&e, &existing, false).await.expect("adopt");
    assert_eq!(adopted.and_then(|a| a.snapshot.moved_to), here);
    assert_eq!(moved(&f.one(&e).await), here);
    let now = now_ms();
    let storm = Snapshot {
        resource: "storm-0123456789ab-moved".to_string(),
        first_seen_ms: now - 1_000,
        last_seen_ms: now - 100,
        occurrence_count: 9,
        storm: Some(StormSnapshot {
            alert_count: 9,
            affected: Vec::new(),
            affected_overflow: 0,
            started_ms: now - 1_000,
            ends_ms: now + 60_000,
            ..StormSnapshot::default()
        }),
        moved_to: here.clone(),
        ..Snapshot::default()
    };
    let key = ClaimKey::Storm {
        namespace: cold.clone(),
        name: storm.resource.clone(),
    };
    let adopted = f.store.adopt_storm(&cold, &storm).await.expect("adopt");
    assert!(adopted);
    let joined = f.one(&claim(&cold, "f")).await;
    assert_eq!(
        (joined.outcome, joined.write, &joined.key),
        (Outcome::StormAggregated, Write::Update, &key)
    );
    assert_eq!(moved(&joined), here);
}

/// Another request claimed the incident between a lookup and its adoption:
/// the store's claim wins, and the adopting signal settles it as a
/// duplicate of it would (wait for it while its lease runs, then take it
/// over), rather than count in a resource that may never be made.
async fn an_adoption_finding_a_claim_made_meanwhile_settles_it_as_a_duplicate_would(b: Backend) {
    let lease = Duration::from_millis(400);
    let (f, a, owner) = a_claim_made(b, lease, "adoptclaimed").await;
    let found = found_in_sink(&a, 5);
    let adopt = || {
        let store = f.store.clone();
        let (a, found) = (a.clone(), found.clone());
        async move {
            store
                .adopt(&a, &found, false)
                .await
                .expect("adopt")
                .expect("its own resource")
        }
    };
    let waits = adopt().await;
    assert_eq!(waits.write, Write::Await);
    assert_eq!(waits.snapshot.resource, owner.snapshot.resource);
    assert_eq!(waits.snapshot.occurrence_count, 2);
    assert_eq!(f.poll(&owner.key).await, ClaimState::Pending);

    // The owner never commits: after its lease, the adoption takes the claim.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let takes = adopt().await;
    assert_eq!(takes.write, Write::Create);
    assert_eq!(takes.snapshot.occurrence_count, 3);
    assert_eq!(
        f.poll(&owner.key).await,
        ClaimState::Pending,
        "its lease now"
    );
    // The adopting request holds the claim now: its commit is the one.
    f.store
        .commit(a.owner, &[(owner.key.clone(), None)])
        .await
        .expect("commit");
    let after = adopt().await;
    assert_eq!(after.write, Write::Update);
    assert_eq!(after.snapshot.resource, owner.snapshot.resource);
    assert_eq!(after.snapshot.occurrence_count, 4);
}

/// Issue 19, finding 1: the store lost a namespace whose storm had ended
/// while its members kept firing. A member's firing, found in no resource
/// of its own, joins that storm again (counted in it, its member count
/// unchanged) instead of being created anew; the storm does not run again.
async fn a_member_of_an_ended_storm_found_in_the_sink_counts_in_it_again(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("endedstorm");
    let now = now_ms();
    let storm = Snapshot {
        resource: "storm-0123456789ab-ended".to_string(),
        first_seen_ms: now - 600_000,
        last_seen_ms: now - 2_000,
        occurrence_count: 40,
        storm: Some(StormSnapshot {
            alert_count: 12,
            affected: vec!["Pod/p1".into()],
            affected_overflow: 0,
            started_ms: now - 600_000,
            ends_ms: now - 240_000,
            ..StormSnapshot::default()
        }),
        ..Snapshot::default()
    };
    let key = ClaimKey::Storm {
        namespace: ns.clone(),
        name: storm.resource.clone(),
    };
    let m = claim_on(&ns, "member", "Pod/p1");
    assert_eq!(f.one(&unchecked(&m)).await.write, Write::Lookup);
    let joined = f
        .store
        .adopt_member(&m, &storm)
        .await
        .expect("adopt")
        .expect("a fingerprint the store did not know");
    assert_eq!(
        (joined.outcome, joined.write, &joined.key),
        (Outcome::Duplicate, Write::Update, &key)
    );
    assert_eq!(joined.snapshot.occurrence_count, 41);
    let counters = joined.snapshot.storm.clone().expect("storm counters");
    assert_eq!(counters.alert_count, 12, "a member again, not a new one");
    assert_eq!(counters.ends_ms, now - 240_000, "still ended");
    // Known now: adopting it again is refused, and its repeats count there.
    assert_eq!(f.store.adopt_member(&m, &storm).await.expect("adopt"), None);
    let again = f.one(&m).await;
    assert_eq!((again.outcome, &again.key), (Outcome::Duplicate, &key));
    assert_eq!(again.snapshot.occurrence_count, 42);
    // A new fingerprint does not join the ended storm.
    let n = Claim {
        absent: true,
        ..claim(&ns, "new")
    };
    let new = f.one(&n).await;
    assert_own(&new, &n, Outcome::Created, Write::Create);

    // A storm the store made itself lost no members: a fingerprint it does
    // not know was not one of them, whatever the lookup thinks.
    let own = namespace("ownstorm");
    f.one(&claim(&own, "first")).await;
    let started = f.one(&claim(&own, "starter")).await;
    let made = assert_storm(&started, Outcome::StormStarted, Write::Create);
    let found = Snapshot {
        resource: made,
        ..storm.clone()
    };
    let stranger = claim(&own, "stranger");
    assert_eq!(
        f.store
            .adopt_member(&stranger, &found)
            .await
            .expect("adopt"),
        None
    );
}
