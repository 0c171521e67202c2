//! The coalescer in process: counts written once per flush whatever the
//! signal rate, failed writes kept for the next flush, and a final flush
//! when it stops.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

#[tokio::test]
async fn a_failed_write_is_retried_on_the_next_flush() {
    let sink = Arc::new(FakeSink::default());
    let p = pipeline(store_with_lease(LEASE), sink.clone(), DEADLINE);
    let body = alert("firing", "KubePodCrashLooping", "shop", "cart-1");
    send(&p, &body).await.expect("created");
    send(&p, &body).await.expect("duplicate");

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
