//! The edge's rate limit in real Envoy, with each build of the filter (a
//! recording upstream, requests over real sockets from 127.0.0.1, and
//! 127.0.0.2 as a second source): per source, one limit across workers, the
//! over-limit status, refill, and memory bounded whatever the number of
//! sources.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use signalgate_tests::edge::{problem, second_source, statuses, valid, Edge, PROM, WAIT};
use signalgate_tests::edge_client::{Request, Response};
use signalgate_tests::edge_suite;
use signalgate_tests::envoy::{Envoy, Options};
use signalgate_tests::upstream::Upstream;

edge_suite!(
    thirty_quick_requests_at_20_per_minute_pass_20_and_429_the_rest_while_another_source_is_unaffected,
    the_limit_is_one_limit_across_two_workers_and_many_connections,
    over_limit_status_503_with_retry_after,
    tokens_come_back_after_retry_after,
    memory_stays_bounded_with_many_distinct_sources,
);

fn thirty_quick_requests_at_20_per_minute_pass_20_and_429_the_rest_while_another_source_is_unaffected(
    edge: Edge,
) {
    let up = Upstream::start();
    let envoy = edge.start(r#"{"requests_per_minute": 20}"#, up.port());
    let other = {
        let mut c = envoy.client_from(second_source());
        std::thread::spawn(move || (0..5).map(|_| c.send(&valid())).collect::<Vec<_>>())
    };
    let started = Instant::now();
    let mut c = envoy.client();
    let responses: Vec<Response> = (0..30).map(|_| c.send(&valid())).collect();
    let elapsed = started.elapsed();
    let others = other.join().expect("second source");

    // One token comes back every 3 s: the 30 requests take far less.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let ok: Vec<&Response> = responses.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok.len(), 20, "{:?}", statuses(&responses));
    assert_eq!(limited.len(), 10, "{:?}", statuses(&responses));
    // The first 20 pass, then every one is refused.
    assert!(responses[..20].iter().all(|r| r.status == 200));
    for r in &limited {
        let p = problem(r, 429);
        assert_eq!(p["type"], "https://signalgate.io/problems/rate-limited");
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no whole-second Retry-After in {r:?}"));
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-source\";q=20;w=60")
        );
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-source\";r=0;t={retry}").as_str())
        );
    }
    // Accepted answers carry the remaining quota.
    assert_eq!(ok[0].header("ratelimit"), Some("\"per-source\";r=19;t=3"));
    assert_eq!(
        ok[19].header("ratelimit-policy"),
        Some("\"per-source\";q=20;w=60")
    );

    assert_eq!(statuses(&others), [200; 5], "second source was limited");
    let got = up.wait_for_count(25, WAIT);
    let from = |s: &str| {
        got.iter()
            .filter(|r| r.header("x-signalgate-source") == Some(s))
            .count()
    };
    assert_eq!(from("127.0.0.1"), 20);
    assert_eq!(from("127.0.0.2"), 5);
    envoy.wait_outcome("accepted", 25);
    envoy.wait_outcome("rate_limited", 10);
    assert_eq!(up.count(), 25);
}

fn the_limit_is_one_limit_across_two_workers_and_many_connections(edge: Edge) {
    const BURST: u64 = 40;
    const THREADS: usize = 8;
    const PER_THREAD: usize = 20;
    let up = Upstream::start();
    // 1 a minute refills nothing during the test: exactly the burst passes.
    let envoy = Envoy::start_with(
        edge.options(r#"{"requests_per_minute": 1, "burst": 40}"#, up.port())
            .concurrency(2),
    );
    let accepted = Arc::new(AtomicU32::new(0));
    let limited = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            // Two connections per thread, used in turn.
            let mut clients = [envoy.client(), envoy.client()];
            let (accepted, limited) = (Arc::clone(&accepted), Arc::clone(&limited));
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let r = clients[i % 2].send(&valid());
                    match r.status {
                        200 => accepted.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        s => panic!("unexpected {s}: {}", r.text()),
                    };
                }
                clients.iter().map(|c| c.connections).sum::<u32>()
            })
        })
        .collect();
    let connections: u32 = threads.into_iter().map(|t| t.join().expect("client")).sum();
    assert!(connections >= 2 * THREADS as u32);
    let total = (THREADS * PER_THREAD) as u32;
    assert_eq!(accepted.load(Ordering::SeqCst) as u64, BURST);
    assert_eq!(limited.load(Ordering::SeqCst), total - BURST as u32);
    envoy.wait_outcome("accepted", BURST);
    envoy.wait_outcome("rate_limited", u64::from(total) - BURST);
    assert_eq!(
        up.wait_for_count(BURST as usize, WAIT).len(),
        BURST as usize
    );

    // Both workers really served requests.
    let per_worker = envoy.admin_get("/stats?filter=listener\\..*worker_.\\.downstream_cx_total");
    let workers_used = per_worker
        .lines()
        .filter(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .is_some_and(|v| v > 0)
        })
        .count();
    assert_eq!(workers_used, 2, "{per_worker}");
}

fn over_limit_status_503_with_retry_after(edge: Edge) {
    let up = Upstream::start();
    let envoy = edge.start(
        r#"{"requests_per_minute": 1, "over_limit_status": 503}"#,
        up.port(),
    );
    let mut c = envoy.client();
    assert_eq!(c.send(&valid()).status, 200);
    let r = c.send(&valid());
    let p = problem(&r, 503);
    assert_eq!(p["type"], "https://signalgate.io/problems/rate-limited");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-source\";q=1;w=60")
    );
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"per-source\";r=0;t={retry}").as_str())
    );
    envoy.wait_outcome("rate_limited", 1);
    assert_eq!(up.wait_for_count(1, WAIT).len(), 1);
}

fn tokens_come_back_after_retry_after(edge: Edge) {
    let up = Upstream::start();
    let envoy = edge.start(r#"{"requests_per_minute": 60, "burst": 1}"#, up.port());
    let mut c = envoy.client();
    assert_eq!(c.send(&valid()).status, 200);
    let r = c.send(&valid());
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    // Wait what Retry-After says (1 s at 60/min), then one request passes.
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(c.send(&valid()).status, 200);
    assert_eq!(c.send(&valid()).status, 429);
}

/// Envoy's `/memory` `allocated` bytes.
fn allocated(envoy: &Envoy) -> u64 {
    let v: Value = serde_json::from_str(&envoy.admin_get("/memory")).expect("/memory JSON");
    v["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["allocated"].as_u64())
        .expect("allocated")
}

/// Sends one request counted against source `x-team: <prefix><i>` for each
/// `i` in `range`, over 4 connections.
fn distinct_sources(envoy: &Envoy, prefix: &str, range: std::ops::Range<u32>) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut c = envoy.client();
            let prefix = prefix.to_string();
            let range = range.clone();
            std::thread::spawn(move || {
                for i in range.filter(|i| i % 4 == t) {
                    // Counted, then refused 415 (no body): cheap, and nothing
                    // reaches the upstream.
                    let r = c.send(
                        &Request::post_json(PROM, "")
                            .without("content-type")
                            .header("x-team", &format!("{prefix}{i}")),
                    );
                    assert_eq!(r.status, 415, "{}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

fn memory_stays_bounded_with_many_distinct_sources(edge: Edge) {
    const N: u32 = 20_000;
    let up = Upstream::start();
    let envoy = Envoy::start_with(Options {
        // Debug logs would log nothing here but cost time.
        debug_logs: false,
        ..edge.options(r#"{"source": "header:x-team"}"#, up.port())
    });
    // The table (every shared-data key of the wasm filter, every slot of the
    // native module's store) exists before the first request, so
    // the first N sources (more than the 16 384 tracked at once) settle
    // whatever Envoy allocates for connections and stats ...
    distinct_sources(&envoy, "warm-", 0..N);
    let before = allocated(&envoy);
    // ... and N more distinct sources do not grow it.
    distinct_sources(&envoy, "more-", 0..N);
    let after = allocated(&envoy);
    envoy.wait_outcome("unsupported_media_type", u64::from(2 * N));
    let growth = after.saturating_sub(before);
    eprintln!("allocated: {before} -> {after} bytes after {N} more distinct sources");
    assert!(
        growth < 1024 * 1024,
        "Envoy grew by {growth} bytes for {N} new sources ({before} -> {after})"
    );
    // An early source, forgotten since, is let through again: its slot's
    // ways hold buckets used a moment ago, so it is charged to the slot's
    // shared overflow bucket, from which each of the slot's other sources
    // (about 10 on average) took at most one token.
    let r = envoy.client().send(&valid().header("x-team", "warm-0"));
    assert_eq!(r.status, 200);
    let left: u32 = r
        .header("ratelimit")
        .and_then(|v| v.split(";r=").nth(1))
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.parse().ok())
        .expect("RateLimit r=");
    assert!((60..=99).contains(&left), "{:?}", r.header("ratelimit"));
    assert_eq!(up.count(), 1);
}
