//! The pipeline in process: the memory store and a sink that fails on
//! demand. The claim protocol's recovery paths: a failed create gives its
//! claim back, a waiter takes over a claim whose creator vanished, and a
//! namespace the store does not know finds and adopts the resource already
//! in the sink.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use signalgate_sidecar::failure::Failure;
use signalgate_sidecar::sink::SinkError;
use signalgate_sidecar::store::{Claim, ClaimKey, Owner, Store, Write};
use support::{alert, only, pipeline, send, store_with_lease, FakeSink};

/// Longer than any of these tests: a claim that is not given back is still
/// held when the retry comes.
const LONG_LEASE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_failed_create_gives_its_claim_back_so_the_retry_creates_at_once() {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(
        store_with_lease(LONG_LEASE),
        sink.clone(),
        Duration::from_secs(2),
    );
    let body = alert("firing", "KubePodCrashLooping", "shop", "cart-1");

    sink.fail_creates.store(1, Ordering::SeqCst);
    let failed = send(&p, &body).await;
    assert!(
        matches!(failed, Err(Failure::Sink(SinkError::Unavailable(_)))),
        "{failed:?}"
    );
    assert_eq!(sink.count(), 0);

    // Had the claim stayed held, the retry would wait on it (lease: a
    // minute) until its deadline and fail.
    let started = Instant::now();
    let retried = send(&p, &body).await.expect("the retry is served");
    assert_eq!(retried.status, 201, "{retried:?}");
    let (_, resource) = only(&retried);
    assert_eq!(sink.names(), vec![resource.expect("a resource")]);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(sink.create_calls.load(Ordering::SeqCst), 2);

    // And the incident is settled: a repeat is a duplicate of that resource.
    let again = send(&p, &body).await.expect("a repeat is served");
    assert_eq!((again.status, only(&again).0), (202, "duplicate"));
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn a_waiter_takes_over_the_claim_of_a_creator_that_vanished() {
    let lease = Duration::from_millis(300);
    let store = store_with_lease(lease);
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(store.clone(), sink.clone(), Duration::from_secs(5));

    // The signal's fingerprint: a resolved signal of an incident nobody
    // knows is answered with it and leaves the store alone.
    let resolved = send(&p, &alert("resolved", "NodeDown", "shop", "cart-1"))
        .await
        .expect("resolved");
    assert_eq!(only(&resolved).0, "resolved_unknown");
    let fingerprint = resolved.signals[0].fingerprint.clone();

    // Another sidecar claims the incident (this firing of it: the alert's
    // startsAt) and dies before creating it.
    let resolved_instance =
        signalgate_model::rfc3339::unix_millis("2026-11-26T20:57:15.123Z").expect("a time");
    let started = Instant::now();
    let claim = Claim {
        owner: Owner::next(),
        namespace: "shop".into(),
        fingerprint,
        affected: "Pod/cart-1".into(),
        instance_ms: resolved_instance,
        resolved_ms: None,
        absent: true,
        ..Claim::default()
    };
    let taken = store.decide(&[claim]).await.expect("decide");
    assert_eq!(taken[0].write, Write::Create, "{taken:?}");

    let answer = send(&p, &alert("firing", "NodeDown", "shop", "cart-1"))
        .await
        .expect("the waiter is served");
    // It waited for the lease (the store's clock counts whole
    // milliseconds), then created the resource itself.
    let waited = started.elapsed();
    assert!(waited >= lease - Duration::from_millis(2), "{waited:?}");
    assert_eq!(answer.status, 201, "{answer:?}");
    let (_, resource) = only(&answer);
    assert_eq!(sink.names(), vec![resource.expect("a resource")]);
    assert_eq!(
        taken[0].snapshot.resource,
        sink.names()[0].trim_start_matches("shop/"),
        "the name the vanished creator claimed"
    );
}

#[tokio::test]
async fn a_namespace_the_store_lost_adopts_the_resource_in_the_sink() {
    let sink = Arc::new(FakeSink::default());
    let body = alert("firing", "KubePodCrashLooping", "shop", "cart-1");
    let first = pipeline(
        store_with_lease(LONG_LEASE),
        sink.clone(),
        Duration::from_secs(2),
    );
    let created = send(&first, &body).await.expect("created");
    assert_eq!(only(&created).0, "created");
    let resource = only(&created).1;

    // A new store (Redis restarted empty): the namespace is cold, so the
    // sink is asked before anything is created.
    let store = store_with_lease(LONG_LEASE);
    let second = pipeline(store.clone(), sink.clone(), Duration::from_secs(2));
    let answer = send(&second, &body).await.expect("served");
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(only(&answer), ("duplicate", resource.clone()));
    assert_eq!(sink.count(), 1, "{:?}", sink.names());
    assert_eq!(sink.create_calls.load(Ordering::SeqCst), 1);

    // The store now holds it: its counters go on from the resource's.
    second.coalescer.flush().await;
    let updates = sink.updates();
    let (ns, name, progress) = updates.last().expect("an update");
    assert_eq!(Some(format!("{ns}/{name}")), resource);
    assert_eq!(progress.deduplication.occurrence_count, 2);
}

#[tokio::test]
async fn a_cold_namespace_with_nothing_in_the_sink_creates() {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(
        store_with_lease(LONG_LEASE),
        sink.clone(),
        Duration::from_secs(2),
    );
    let answer = send(
        &p,
        &alert("firing", "KubePodCrashLooping", "shop", "cart-1"),
    )
    .await
    .expect("served");
    assert_eq!((answer.status, only(&answer).0), (201, "created"));
    assert_eq!(sink.count(), 1);
}

#[tokio::test]
async fn resources_created_before_another_create_failed_stay_committed() {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(
        store_with_lease(LONG_LEASE),
        sink.clone(),
        Duration::from_secs(2),
    );
    // One request of two new alerts; the first create the sink sees fails.
    let mut body: serde_json::Value =
        serde_json::from_slice(&alert("firing", "Stuck", "blocked", "p2")).unwrap();
    let fine: serde_json::Value =
        serde_json::from_slice(&alert("firing", "Fine", "shop", "p1")).unwrap();
    let second = fine["alerts"][0].clone();
    body["alerts"].as_array_mut().unwrap().push(second);
    let body = serde_json::to_vec(&body).unwrap();

    sink.fail_creates.store(1, Ordering::SeqCst);
    let failed = send(&p, &body).await;
    assert!(matches!(failed, Err(Failure::Sink(_))), "{failed:?}");
    assert_eq!(sink.count(), 1, "the other resource was created");

    // The retry: both are duplicates (the failed request counted them); the
    // failed claim was given back and is created at once, the created one
    // was committed (no second create).
    let retried = send(&p, &body).await.expect("the retry is served");
    assert_eq!(retried.status, 201, "{retried:?}");
    let outcomes: Vec<&str> = retried.signals.iter().map(|s| s.outcome.as_str()).collect();
    assert_eq!(outcomes, ["duplicate", "duplicate"]);
    assert_eq!(sink.count(), 2);
    assert_eq!(sink.create_calls.load(Ordering::SeqCst), 3);
}

/// One webhook carrying the alerts of webhooks `a` and `b`.
fn both(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut hook: serde_json::Value = serde_json::from_slice(a).unwrap();
    let other: serde_json::Value = serde_json::from_slice(b).unwrap();
    let alerts = hook["alerts"].as_array_mut().unwrap();
    alerts.extend(other["alerts"].as_array().unwrap().iter().cloned());
    serde_json::to_vec(&hook).unwrap()
}

/// Issue 19, finding 5: a delivery the sender retries after a 5xx is
/// counted once, not once per attempt (each failed attempt's counts are
/// taken back).
#[tokio::test]
async fn a_delivery_retried_after_failures_is_counted_once() {
    let store = store_with_lease(LONG_LEASE);
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(store.clone(), sink.clone(), Duration::from_secs(2));
    let known = alert("firing", "KubePodCrashLooping", "shop", "cart-1");
    let first = send(&p, &known).await.expect("created");
    assert_eq!(first.status, 201, "{first:?}");
    let key = |answer: &signalgate_sidecar::pipeline::Accepted, i: usize| ClaimKey::Fingerprint {
        namespace: "shop".into(),
        fingerprint: answer.signals[i].fingerprint.clone(),
    };
    let known_key = key(&first, 0);

    // One delivery: the known alert and a new one whose create fails twice.
    let delivery = both(&known, &alert("firing", "NodeDown", "shop", "cart-2"));
    sink.fail_creates.store(2, Ordering::SeqCst);
    for attempt in 1..=2 {
        let failed = send(&p, &delivery).await;
        assert!(failed.is_err(), "attempt {attempt}: {failed:?}");
    }
    let served = send(&p, &delivery)
        .await
        .expect("the third attempt is served");
    assert_eq!(served.status, 201, "{served:?}");

    let counts = store
        .snapshot(&[known_key, key(&served, 1)])
        .await
        .expect("snapshot");
    let counts: Vec<u64> = counts
        .iter()
        .map(|s| s.as_ref().expect("known").occurrence_count)
        .collect();
    // The known alert: its first delivery and this one; the new: this one.
    assert_eq!(counts, [2, 1]);
}
