//! The coalescer in process: counts written once per flush whatever the
//! signal rate, failed writes kept for the next flush, and a final flush
//! when it stops; how it keeps the store's index of unwritten changes.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use signalgate_sidecar::pipeline::Pipeline;
use signalgate_sidecar::store::{Claim, ClaimKey, Owner, Store, Write};
use support::{alert, only, pipeline, send, store_with_lease, FakeSink};

const LEASE: Duration = Duration::from_secs(15);
const DEADLINE: Duration = Duration::from_secs(2);

#[tokio::test]
async fn repeats_within_an_interval_are_written_once_with_the_latest_count() {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(store_with_lease(LEASE), sink.clone(), DEADLINE);
    let body = alert("firing", "KubePodCrashLooping", "shop", "cart-1");
    let resource = only(&send(&p, &body).await.expect("created")).1;
    for _ in 0..5 {
        let answer = send(&p, &body).await.expect("duplicate");
        assert_eq!(only(&answer).0, "duplicate");
    }
    assert!(sink.updates().is_empty(), "nothing written before a flush");
    assert_eq!(p.coalescer.pending(), 1);

    p.coalescer.flush().await;
    let updates = sink.updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let (ns, name, progress) = &updates[0];
    assert_eq!(Some(format!("{ns}/{name}")), resource);
    assert_eq!(progress.deduplication.occurrence_count, 6);
    assert_eq!(p.coalescer.pending(), 0);

    // The next flush checks what it wrote against the store: unchanged, so
    // nothing is written again.
    p.coalescer.flush().await;
    assert_eq!(sink.updates().len(), 1);
}

/// A resource created and counted once more (not written yet): the sink,
/// the pipeline, the alert's body and the resource's key.
async fn created_and_repeated() -> (Arc<FakeSink>, Pipeline, Vec<u8>, ClaimKey) {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(store_with_lease(LEASE), sink.clone(), DEADLINE);
    let body = alert("firing", "KubePodCrashLooping", "shop", "cart-1");
    let made = send(&p, &body).await.expect("created");
    send(&p, &body).await.expect("duplicate");
    let key = ClaimKey::Fingerprint {
        namespace: "shop".into(),
        fingerprint: made.signals[0].fingerprint.clone(),
    };
    (sink, p, body, key)
}

/// The counters a sidecar keeps of a resource, written if the store loses
/// its own, are only acknowledged ones: a request that counted a duplicate
/// and then failed (another signal's create failed) took its count back,
/// and a flush after the store lost the record does not write it. Before,
/// it wrote that request's count: one more than acknowledged.
#[tokio::test]
async fn a_failed_requests_count_is_not_written_after_the_store_lost_the_record() {
    let (sink, p, body, key) = created_and_repeated().await;
    p.coalescer.flush().await;
    let updates = sink.updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].2.deduplication.occurrence_count, 2);

    // The duplicate again, with a new incident whose create fails.
    let mut both: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let other = alert("firing", "KubePodCrashLooping", "shop", "cart-2");
    let other: serde_json::Value = serde_json::from_slice(&other).unwrap();
    let alerts = both["alerts"].as_array_mut().unwrap();
    alerts.push(other["alerts"][0].clone());
    sink.fail_creates.store(1, Ordering::SeqCst);
    let failed = send(&p, &serde_json::to_vec(&both).unwrap()).await;
    assert!(failed.is_err(), "{failed:?}");

    // The store loses the record before the next flush.
    let name = updates[0].1.clone();
    assert!(p.store.forget(&key, &name).await.unwrap());
    p.coalescer.flush().await;
    let updates = sink.updates();
    assert_eq!(updates.len(), 1, "nothing more written: {updates:?}");
}

#[tokio::test]
async fn a_failed_write_is_retried_on_the_next_flush() {
    let (sink, p, _, _) = created_and_repeated().await;

    sink.fail_updates.store(1, Ordering::SeqCst);
    p.coalescer.flush().await;
    assert!(sink.updates().is_empty());
    assert_eq!(p.coalescer.pending(), 1, "the failed write stays dirty");

    p.coalescer.flush().await;
    let updates = sink.updates();
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(updates[0].2.deduplication.occurrence_count, 2);
    assert_eq!(p.coalescer.pending(), 0);
}

#[tokio::test]
async fn stopping_flushes_what_is_pending() {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(store_with_lease(LEASE), sink.clone(), DEADLINE);
    let body = alert("firing", "KubePodCrashLooping", "shop", "cart-1");
    send(&p, &body).await.expect("created");
    send(&p, &body).await.expect("duplicate");

    // An interval no test outlives: after the first tick (at once), only
    // stopping flushes.
    let running = tokio::spawn(p.coalescer.clone().run(Duration::from_secs(3600)));
    let first_tick = tokio::time::timeout(Duration::from_secs(5), async {
        while sink.updates().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(first_tick.is_ok(), "the first tick flushes");
    send(&p, &body).await.expect("duplicate");
    send(&p, &body).await.expect("duplicate");
    assert_eq!(p.coalescer.pending(), 1);

    p.coalescer.stop();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run ends after its final flush")
        .expect("run did not panic");
    let updates = sink.updates();
    assert_eq!(updates.len(), 2, "{updates:?}");
    assert_eq!(updates[1].2.deduplication.occurrence_count, 4);
    assert_eq!(p.coalescer.pending(), 0);
}

async fn in_index(store: &dyn Store, key: &ClaimKey) -> bool {
    store
        .snapshot(std::slice::from_ref(key))
        .await
        .expect("snapshot")[0]
        .as_ref()
        .expect("live")
        .unwritten
}

/// An API server answers 403 for a moment after it restarts (its
/// authorizer not synced yet): a refused update is not given up on.
#[tokio::test]
async fn a_refused_update_stays_in_the_index() {
    let (sink, p, _, key) = created_and_repeated().await;
    assert!(in_index(p.store.as_ref(), &key).await);

    sink.reject_updates.store(1, Ordering::SeqCst);
    p.coalescer.flush().await;
    assert!(sink.updates().is_empty());
    assert!(in_index(p.store.as_ref(), &key).await);
    assert_eq!(p.coalescer.pending(), 1);
    p.coalescer.flush().await;
    assert_eq!(sink.updates().len(), 1);
    assert!(!in_index(p.store.as_ref(), &key).await);
}

#[tokio::test]
async fn a_sidecar_whose_writes_find_the_sink_unavailable_takes_on_no_others() {
    let (sink, p, body, _) = created_and_repeated().await;
    sink.fail_updates.store(1, Ordering::SeqCst);
    p.coalescer.flush().await;
    assert!(sink.updates().is_empty());

    p.coalescer.take_unwritten(Duration::ZERO).await;
    assert_eq!(p.metrics.unwritten_taken.get(), 0, "the sink is down");
    // Its next flush writes: it takes on the index again.
    p.coalescer.flush().await;
    assert_eq!(sink.updates().len(), 1);
    send(&p, &body).await.expect("duplicate");
    p.coalescer.take_unwritten(Duration::ZERO).await;
    assert_eq!(p.metrics.unwritten_taken.get(), 1);
}

#[tokio::test]
async fn a_resource_still_being_created_leaves_the_index_unwritten() {
    let sink = Arc::new(FakeSink::default());
    let store = store_with_lease(LEASE);
    let p = pipeline(store.clone(), sink.clone(), DEADLINE);
    let claim = Claim {
        owner: Owner::next(),
        namespace: "shop".into(),
        fingerprint: "ab".repeat(32),
        affected: "Pod/cart-1".into(),
        absent: true,
        ..Claim::default()
    };
    // Its creator holds the claim; a second request counts while it waits.
    let first = store.decide(std::slice::from_ref(&claim)).await.unwrap();
    assert_eq!(first[0].write, Write::Create);
    let waiter = Claim {
        owner: Owner::next(),
        ..claim.clone()
    };
    let second = store.decide(std::slice::from_ref(&waiter)).await.unwrap();
    assert_eq!(second[0].write, Write::Await);
    assert!(in_index(store.as_ref(), &first[0].key).await);

    // Found in the index (its waiter died): not written (the resource does
    // not exist yet; its creator makes it with these counters), and out of
    // the index, so that it does not hold up the lookups that come after.
    p.coalescer.take_unwritten(Duration::ZERO).await;
    p.coalescer.flush().await;
    assert!(sink.updates().is_empty());
    assert!(!in_index(store.as_ref(), &first[0].key).await);
}
