//! End to end (see `signalgate_tests::e2e`): the filter's rate limit with an
//! Alertmanager sender (scenario 6): 503 is retried and everything is
//! delivered; 429 drops a group until its next group interval.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_tests::alertmanager::{Alertmanager, Receiver};
use signalgate_tests::e2e::edge::Edge;
use signalgate_tests::e2e::expect::{alerts, incidents, one_each};
use signalgate_tests::e2e::report::report;
use signalgate_tests::e2e::wait::{check, diag, eventually, Wait};
use signalgate_tests::e2e::{sidecar, ALERTS_PATH, SETTLE};
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{list, shared_api_server};
use signalgate_tests::sidecar::Sidecar;

/// Burst 3, then 2 requests per second; 8 groups of one alert each notify at
/// once. Succeeded groups are not re-sent (repeat interval 1 h), failed ones
/// at their next group interval (4 s).
fn rate_limited_chain(
    ns: &str,
    status: u16,
) -> (RedisServer, Sidecar, Edge, Alertmanager, Vec<Value>) {
    let k = shared_api_server();
    k.create_namespace(ns);
    let redis = RedisServer::start();
    let s = sidecar(
        k,
        "sidecar",
        &redis.url(),
        &[("SIGNALGATE_STORM_THRESHOLD", "100")],
    );
    let limit = json!({"requests_per_minute": 120, "burst": 3, "over_limit_status": status});
    let edge = Edge::start(&limit.to_string(), &[s.api.port()]);
    let am = Alertmanager::start(
        &Receiver::new(&edge.url(ALERTS_PATH))
            .group_by(&["..."])
            .group_interval(Duration::from_secs(4))
            .repeat_interval(Duration::from_secs(3600)),
    );
    let burst = alerts("E2eBurst", ns, "svc", 8);
    (redis, s, edge, am, burst)
}

#[test]
fn s6a_rate_limited_with_503_alertmanager_retries_and_delivers_everything() {
    let started = Instant::now();
    let k = shared_api_server();
    let ns = "e2e-ratelimit-503";
    let (_redis, s, edge, am, burst) = rate_limited_chain(ns, 503);
    let pushed = Instant::now();
    am.push(&burst);
    let expected = incidents(&burst);
    let d = || diag(&[&s], Some(&am), Some(&edge));
    let items = check(
        eventually("every alert of the burst delivered", SETTLE, || {
            one_each(k, &expected)
        }),
        d,
    );
    let elapsed = pushed.elapsed();
    let n = am.notifications();
    let limited = edge.stat("signalgate_rate_limited");
    assert!(
        limited >= 1,
        "8 simultaneous notifications should exceed a burst of 3\n{}",
        d()
    );
    assert_eq!(
        n.requests_failed, limited as f64,
        "every failed webhook request should be a 503 from the rate limit: {n:?}"
    );
    assert_eq!(
        n.failed, 0.0,
        "with 503 every notification succeeds within Alertmanager's own retries: {n:?}"
    );
    assert_eq!(
        n.total, 8.0,
        "one notification per group, none repeated: {n:?}"
    );
    report(
        "6a rate limit, over_limit_status 503",
        burst.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " ({limited} requests refused with 503 and retried by Alertmanager; \
             {} notifications, 0 failed; all delivered {:.1}s after the push)",
            n.total,
            elapsed.as_secs_f64()
        ),
    );
}

#[test]
fn s6b_rate_limited_with_429_alertmanager_drops_until_the_next_group_interval() {
    let started = Instant::now();
    let k = shared_api_server();
    let ns = "e2e-ratelimit-429";
    let (_redis, s, edge, am, burst) = rate_limited_chain(ns, 429);
    am.push(&burst);
    let expected = incidents(&burst);
    let d = || diag(&[&s], Some(&am), Some(&edge));

    // The first flush of all 8 groups: some refused with 429, and each of
    // those is a failed notification at once: Alertmanager does not retry.
    let first = check(
        eventually(
            "the first webhook request of each of the 8 groups to complete",
            Duration::from_secs(30),
            || {
                let n = am.notifications();
                if n.requests >= 8.0 && n.failed == n.requests_failed {
                    Ok(n)
                } else {
                    Err(Wait::Retry(format!("{n:?}")))
                }
            },
        ),
        d,
    );
    let at_first = Instant::now();
    let present = list(k, ns);
    let limited = edge.stat("signalgate_rate_limited");
    assert!(
        first.failed >= 1.0,
        "8 simultaneous notifications should exceed a burst of 3: {first:?}\n{}",
        d()
    );
    assert_eq!(
        first.requests, 8.0,
        "a 429 must not be retried within the flush: {first:?}"
    );
    assert_eq!(
        first.failed, limited as f64,
        "every failed notification is a 429 of the filter: {first:?}"
    );
    assert_eq!(
        present.len() as f64 + first.failed,
        8.0,
        "right after the first flush, the refused alerts have no resource ({} present, \
         {} refused)",
        present.len(),
        first.failed
    );

    // At later group intervals the refused groups are sent again (tokens
    // have come back) and finally everything is there.
    let items = check(
        eventually(
            "the refused alerts to arrive at a later group interval",
            SETTLE,
            || one_each(k, &expected),
        ),
        d,
    );
    let late = at_first.elapsed();
    let n = am.notifications();
    assert!(
        n.total > 8.0,
        "the refused groups must have been notified again: {n:?}"
    );
    report(
        "6b rate limit, over_limit_status 429",
        burst.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (first flush: {} of 8 notifications refused with 429, failed without retry, \
             {} resources present; the rest arrived {:.1}s later at later group intervals; \
             in all {} notifications, {} failed)",
            first.failed,
            present.len(),
            late.as_secs_f64(),
            n.total,
            n.failed
        ),
    );
}
