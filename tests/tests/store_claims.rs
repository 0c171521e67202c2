//! Store behaviour, claims and leases: waiters await the owner's commit, an
//! expired or released lease is taken over by exactly one caller, with the
//! same resource; a claim is its owner's (the request's token): commit and
//! release by a request whose lease was taken over change nothing, and a
//! decide run twice by one request (a resent call) still owns its claim;
//! every attempt of one delivery counts once.
//! Each case runs against every backend (see `signalgate_tests::store_suite`).

use std::time::Duration;

use signalgate_sidecar::store::{Claim, ClaimKey, ClaimState, Delivery, Outcome, Owner, Write};
use signalgate_tests::behaviour;
use signalgate_tests::store_suite::{
    a_claim_made, assert_own, claim, namespace, settings, Backend, Fixture,
};

behaviour!(
    await_until_committed,
    expired_lease_is_owned_by_exactly_one_poller,
    release_lets_the_next_decide_create_at_once,
    killed_owner_is_replaced_with_the_same_resource,
    a_commit_by_a_request_whose_lease_was_taken_over_changes_nothing,
    a_release_by_a_request_whose_lease_was_taken_over_changes_nothing,
    a_decide_resent_by_its_request_still_owns_the_claim,
    a_failed_requests_counts_are_taken_back_once_and_only_its_own,
    attempts_of_one_delivery_count_once_and_none_takes_back_what_another_relied_on,
    two_deliveries_failing_side_by_side_each_take_back_their_own_count,
);

async fn await_until_committed(b: Backend) {
    let f = b.store(settings()).await;
    let ns = namespace("await");
    let a = claim(&ns, "a");
    let owner = f.one(&a).await;
    assert_own(&owner, &a, Outcome::Created, Write::Create);
    let waiter = f.one(&a).await;
    assert_own(&waiter, &a, Outcome::Duplicate, Write::Await);
    assert_eq!(f.poll(&waiter.key).await, ClaimState::Pending);
    f.commit(&owner.key).await;
    assert_eq!(
        f.poll(&waiter.key).await,
        ClaimState::Committed { moved_to: None }
    );
    f.commit(&owner.key).await; // idempotent
    let later = f.one(&a).await;
    assert_own(&later, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(later.snapshot.occurrence_count, 3);
}

async fn expired_lease_is_owned_by_exactly_one_poller(b: Backend) {
    let lease = Duration::from_millis(400);
    let (f, a, owner) = a_claim_made(b, lease, "lease").await;
    let waiter = f.one(&a).await;
    assert_eq!(waiter.write, Write::Await);
    assert_eq!(f.poll(&waiter.key).await, ClaimState::Pending);

    // The owner never commits; after its lease, ten pollers race.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let polls: Vec<_> = (0..10)
        .map(|_| {
            let store = f.store.clone();
            let key = waiter.key.clone();
            let owner = Owner::next();
            (
                owner,
                tokio::spawn(async move { store.poll(owner, &key).await }),
            )
        })
        .collect();
    let mut states = Vec::new();
    let mut winner = None;
    for (owner, p) in polls {
        let state = p.await.expect("task").expect("poll");
        if state == ClaimState::Owned {
            winner = Some(owner);
        }
        states.push(state);
    }
    let owned = states.iter().filter(|s| **s == ClaimState::Owned).count();
    let pending = states.iter().filter(|s| **s == ClaimState::Pending).count();
    assert_eq!((owned, pending), (1, 9), "{states:?}");
    let winner = winner.expect("one poller owns the claim");
    f.store
        .commit(winner, &[(waiter.key.clone(), None)])
        .await
        .expect("commit");
    assert_eq!(
        f.poll(&waiter.key).await,
        ClaimState::Committed { moved_to: None }
    );
    let snap = f.snapshot(&waiter.key).await.expect("snapshot");
    assert_eq!(snap.resource, owner.snapshot.resource);
}

async fn release_lets_the_next_decide_create_at_once(b: Backend) {
    let f = b.store(settings()).await; // a 15 s lease
    let ns = namespace("release");
    let a = claim(&ns, "a");
    let owner = f.one(&a).await;
    assert_own(&owner, &a, Outcome::Created, Write::Create);
    assert!(!owner.retakes_claim());
    assert_eq!(f.one(&a).await.write, Write::Await);
    f.release(&owner.key).await;
    let retry = f.one(&a).await;
    assert_own(&retry, &a, Outcome::Duplicate, Write::Create);
    assert!(retry.retakes_claim(), "the owner may have written it");
    assert_eq!(retry.snapshot.resource, owner.snapshot.resource);
    // The retry holds a fresh lease: the others wait again.
    assert_eq!(f.one(&a).await.write, Write::Await);
    assert_eq!(f.poll(&owner.key).await, ClaimState::Pending);
    // A released claim can also be taken by a poller.
    f.release(&retry.key).await;
    assert_eq!(f.poll(&owner.key).await, ClaimState::Owned);
}

async fn killed_owner_is_replaced_with_the_same_resource(b: Backend) {
    let lease = Duration::from_millis(500);
    // The owner is "killed" between claim and create: it never commits.
    let (f, a, owner) = a_claim_made(b, lease, "killed").await;
    let during = f.one(&a).await;
    assert_own(&during, &a, Outcome::Duplicate, Write::Await);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let retry = f.one(&a).await;
    assert_own(&retry, &a, Outcome::Duplicate, Write::Create);
    assert_eq!(retry.snapshot.resource, owner.snapshot.resource);
    f.commit(&retry.key).await;
    let after = f.one(&a).await;
    assert_own(&after, &a, Outcome::Duplicate, Write::Update);
    assert_eq!(after.snapshot.occurrence_count, 4);
}

/// A claim `a` of a fresh namespace, made by request `first`, whose lease
/// ran out and was taken over by request `second` (a poller).
async fn a_claim_taken_over(
    b: Backend,
    case: &str,
) -> (signalgate_tests::store_suite::Fixture, Claim, Owner, Owner) {
    let lease = Duration::from_millis(300);
    let f = b.store(settings().claim_lease(lease)).await;
    let first = Owner::next();
    let a = Claim {
        owner: first,
        ..claim(&namespace(case), "a")
    };
    let made = f.one(&a).await;
    assert_own(&made, &a, Outcome::Created, Write::Create);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let second = Owner::next();
    let taken = f.store.poll(second, &made.key).await.expect("poll");
    assert_eq!(taken, ClaimState::Owned);
    (f, a, first, second)
}

async fn a_commit_by_a_request_whose_lease_was_taken_over_changes_nothing(b: Backend) {
    let (f, a, first, second) = a_claim_taken_over(b, "late-commit").await;
    let key = f.one(&a).await.key;
    // The first request's create finished late, into another namespace.
    f.store
        .commit(first, &[(key.clone(), Some("fallback".into()))])
        .await
        .expect("commit");
    // Still the second request's claim: others wait for it ...
    assert_eq!(f.poll(&key).await, ClaimState::Pending);
    // ... and its commit is the one that counts, with its own namespace.
    f.store
        .commit(second, &[(key.clone(), None)])
        .await
        .expect("commit");
    assert_eq!(f.poll(&key).await, ClaimState::Committed { moved_to: None });
}

async fn a_release_by_a_request_whose_lease_was_taken_over_changes_nothing(b: Backend) {
    let (f, a, first, _second) = a_claim_taken_over(b, "late-release").await;
    let key = f.one(&a).await.key;
    // The first request gives up late: the second's lease stays.
    f.store
        .release(first, std::slice::from_ref(&key))
        .await
        .expect("release");
    assert_eq!(f.one(&a).await.write, Write::Await);
    assert_eq!(f.poll(&key).await, ClaimState::Pending);
}

async fn a_decide_resent_by_its_request_still_owns_the_claim(b: Backend) {
    let f = b.store(settings()).await; // a 15 s lease
    let a = Claim {
        owner: Owner::next(),
        ..claim(&namespace("resent"), "a")
    };
    let made = f.one(&a).await;
    assert_own(&made, &a, Outcome::Created, Write::Create);
    // The reply was lost and the call sent again: the request still
    // creates (rather than wait for itself until its deadline) ...
    let again = f.one(&a).await;
    assert_eq!(again.write, Write::Create, "{again:?}");
    assert_eq!(again.snapshot.resource, made.snapshot.resource);
    // ... while any other request waits for it.
    let other = f.one(&claim(&a.namespace, "a")).await;
    assert_eq!(other.write, Write::Await, "{other:?}");
}

async fn a_failed_requests_counts_are_taken_back_once_and_only_its_own(b: Backend) {
    let f = b.store(settings().storm_threshold(1)).await;
    let ns = namespace("uncount");
    let (a, m1, m2) = (claim(&ns, "a"), claim(&ns, "m1"), claim(&ns, "m2"));
    let own = f.one(&a).await;
    f.commit(&own.key).await;
    // m1 starts the namespace's storm (threshold 1, after "a"), m2 joins.
    let storm = f.decide(&[m1.clone(), m2.clone()]).await;
    f.commit(&storm[0].key).await;
    let signals = |cs: &[&Claim]| -> Vec<(String, String)> {
        cs.iter()
            .map(|c| (c.namespace.clone(), c.fingerprint.clone()))
            .collect()
    };

    // A request counts "a" and a storm member again, then fails.
    let failed = Owner::next();
    let by = |c: &Claim| Claim {
        owner: failed,
        ..c.clone()
    };
    let ds = f.decide(&[by(&a), by(&m1)]).await;
    assert_eq!(ds[0].snapshot.occurrence_count, 2);
    assert_eq!(ds[1].snapshot.occurrence_count, 3);
    // Another request's count is not its to take back ...
    f.store
        .uncount(Owner::next(), &signals(&[&a, &m1]))
        .await
        .expect("uncount");
    assert_eq!(f.snapshot(&own.key).await.unwrap().occurrence_count, 2);
    // ... its own are, once.
    for _ in 0..2 {
        f.store
            .uncount(failed, &signals(&[&a, &m1]))
            .await
            .expect("uncount");
    }
    assert_eq!(f.snapshot(&own.key).await.unwrap().occurrence_count, 1);
    assert_eq!(f.snapshot(&storm[0].key).await.unwrap().occurrence_count, 2);
    // The sender's retry counts them again.
    let retried = f.decide(&[a.clone(), m1.clone()]).await;
    assert_eq!(retried[0].snapshot.occurrence_count, 2);
    assert_eq!(retried[1].snapshot.occurrence_count, 3);
    // A resent call of one request (same token) counts once.
    let resent = Owner::next();
    for _ in 0..2 {
        let d = f
            .one(&Claim {
                owner: resent,
                ..a.clone()
            })
            .await;
        assert_eq!(d.snapshot.occurrence_count, 3, "{d:?}");
    }
}

/// An incident of its own (`a`, committed, counted once) and a storm of
/// `m1` and `m2` (committed, counted twice) in a namespace of their own.
struct OwnAndStorm {
    f: Fixture,
    a: Claim,
    m1: Claim,
    own: ClaimKey,
    storm: ClaimKey,
}

impl OwnAndStorm {
    async fn made(b: Backend, name: &str) -> OwnAndStorm {
        let f = b.store(settings().storm_threshold(1)).await;
        let ns = namespace(name);
        let (a, m1, m2) = (claim(&ns, "a"), claim(&ns, "m1"), claim(&ns, "m2"));
        let own = f.one(&a).await.key;
        f.commit(&own).await;
        let storm = f.decide(&[m1.clone(), m2]).await.remove(0).key;
        f.commit(&storm).await;
        OwnAndStorm {
            f,
            a,
            m1,
            own,
            storm,
        }
    }

    /// The counts of the incident of its own and of the storm.
    async fn counts(&self) -> (u64, u64) {
        (
            self.f.snapshot(&self.own).await.unwrap().occurrence_count,
            self.f.snapshot(&self.storm).await.unwrap().occurrence_count,
        )
    }

    /// An attempt of request `owner` in `delivery`: `a` and `m1` again.
    fn attempt(&self, owner: Owner, delivery: Delivery) -> [Claim; 2] {
        [&self.a, &self.m1].map(|c| Claim {
            owner,
            delivery,
            ..c.clone()
        })
    }

    /// What an attempt's failure takes back: `a` and `m1`.
    fn signals(&self) -> [(String, String); 2] {
        [&self.a, &self.m1].map(|c| (c.namespace.clone(), c.fingerprint.clone()))
    }
}

/// Delivery `current`, the window before it `current - 1`.
fn window(current: u64) -> Delivery {
    Delivery {
        current,
        previous: current - 1,
    }
}

async fn attempts_of_one_delivery_count_once_and_none_takes_back_what_another_relied_on(
    b: Backend,
) {
    let s = OwnAndStorm::made(b, "delivery").await;
    let (f, signals) = (&s.f, s.signals());
    let counts = || s.counts();
    let attempt = |owner, delivery| s.attempt(owner, delivery);
    assert_eq!(counts().await, (1, 2));

    // A delivery's first attempt counts; its reply is lost and the sender
    // retries: the second attempt finds the count and is acknowledged.
    let (first, second) = (Owner::next(), Owner::next());
    f.decide(&attempt(first, window(11))).await;
    assert_eq!(counts().await, (2, 3));
    let ds = f.decide(&attempt(second, window(11))).await;
    assert_eq!(ds[0].snapshot.occurrence_count, 2, "{ds:?}");
    assert_eq!(counts().await, (2, 3));
    // The first attempt then fails: the count it made is the second's too.
    f.store.uncount(first, &signals).await.expect("uncount");
    f.store.uncount(second, &signals).await.expect("uncount");
    assert_eq!(counts().await, (2, 3));
    // A retry in the next window still matches; two windows on, it is
    // another delivery.
    f.decide(&attempt(Owner::next(), window(12))).await;
    assert_eq!(counts().await, (2, 3));
    f.decide(&attempt(Owner::next(), window(14))).await;
    assert_eq!(counts().await, (3, 4));

    // A failed attempt alone: its count is taken back, and the retry counts.
    let failed = Owner::next();
    f.decide(&attempt(failed, window(21))).await;
    assert_eq!(counts().await, (4, 5));
    f.store.uncount(failed, &signals).await.expect("uncount");
    assert_eq!(counts().await, (3, 4));
    f.decide(&attempt(Owner::next(), window(21))).await;
    assert_eq!(counts().await, (4, 5));
}

/// Issue 19, finding 5: a highly available sender's twin notifications (two
/// deliveries) count on the same records, then both fail (the sink is
/// down) and are retried, several times over. Each attempt takes back its
/// own count, whichever counted last; before, a record remembered only its
/// last count, so the other twin's stayed and the incident over-counted by
/// one a round.
async fn two_deliveries_failing_side_by_side_each_take_back_their_own_count(b: Backend) {
    let s = OwnAndStorm::made(b, "twins").await;
    let (f, signals) = (&s.f, s.signals());
    let counts = || s.counts();
    let attempt = |delivery| {
        let owner = Owner::next();
        (owner, s.attempt(owner, window(delivery)))
    };
    assert_eq!(counts().await, (1, 2));
    for _round in 0..3 {
        let (first, first_claims) = attempt(31);
        let (twin, twin_claims) = attempt(41);
        f.decide(&first_claims).await;
        f.decide(&twin_claims).await;
        assert_eq!(counts().await, (3, 4));
        f.store.uncount(first, &signals).await.expect("uncount");
        f.store.uncount(twin, &signals).await.expect("uncount");
        assert_eq!(counts().await, (1, 2));
    }
    // The retries that succeed count once each, and a retry of one of them
    // (its reply lost) finds its count.
    f.decide(&attempt(31).1).await;
    f.decide(&attempt(41).1).await;
    assert_eq!(counts().await, (3, 4));
    f.decide(&attempt(31).1).await;
    assert_eq!(counts().await, (3, 4));
    // The bound: a record remembers two counts. A third delivery's count
    // in between leaves the first one's for good.
    let (old, old_claims) = attempt(51);
    f.decide(&old_claims).await;
    f.decide(&attempt(61).1).await;
    f.decide(&attempt(71).1).await;
    assert_eq!(counts().await, (6, 7));
    f.store.uncount(old, &signals).await.expect("uncount");
    assert_eq!(counts().await, (6, 7));
}
