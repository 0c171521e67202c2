//! Store behaviour, claims and leases: waiters await the owner's commit, an
//! expired or released lease is taken over by exactly one caller, with the
//! same resource. Each case runs against every backend (see
//! `signalgate_tests::store_suite`).

use std::time::Duration;

use signalgate_sidecar::store::{ClaimState, Outcome, Write};
use signalgate_tests::behaviour;
use signalgate_tests::store_suite::{
    a_claim_made, assert_own, claim, namespace, settings, Backend,
};

behaviour!(
    await_until_committed,
    expired_lease_is_owned_by_exactly_one_poller,
    release_lets_the_next_decide_create_at_once,
    killed_owner_is_replaced_with_the_same_resource,
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
            tokio::spawn(async move { store.poll(&key).await })
        })
        .collect();
    let mut states = Vec::new();
    for p in polls {
        states.push(p.await.expect("task").expect("poll"));
    }
    let owned = states.iter().filter(|s| **s == ClaimState::Owned).count();
    let pending = states.iter().filter(|s| **s == ClaimState::Pending).count();
    assert_eq!((owned, pending), (1, 9), "{states:?}");
    f.commit(&waiter.key).await;
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
