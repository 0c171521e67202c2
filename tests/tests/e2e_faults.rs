//! End to end (see `signalgate_tests::e2e`): faults mid-stream while
//! Alertmanager keeps sending: Redis restarted empty (scenario 3), the
//! sidecar killed and Envoy restarted (4), the API server unavailable (5).
//! Every alert ends with exactly one resource.

use std::time::{Duration, Instant};

use serde_json::Value;
use signalgate_tests::alertmanager::{Alertmanager, Receiver};
use signalgate_tests::e2e::edge::Edge;
use signalgate_tests::e2e::expect::{alerts, incidents, one_each, Incident};
use signalgate_tests::e2e::report::report;
use signalgate_tests::e2e::wait::{
    check, diag, eventually, sidecar_503s, wait_failed_requests, wait_more_notifications, Wait,
};
use signalgate_tests::e2e::{sidecar, ALERTS_PATH, OPEN, SETTLE};
use signalgate_tests::k8s::ApiServer;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{private_api_server, shared_api_server, try_list};
use signalgate_tests::sidecar::Sidecar;

/// How long a fault lasts at least ("longer than a few seconds").
const OUTAGE: Duration = Duration::from_secs(5);

/// Keeps a fault in place until `OUTAGE` has passed since `since` (the
/// scenario's outage length is a parameter, not a wait for a condition).
fn hold_outage(since: Instant) {
    while since.elapsed() < OUTAGE {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pushes `alerts` while `component` is down (since `down`): waits until
/// Alertmanager's webhook requests fail, keeps the fault in place for
/// `OUTAGE`, and checks the sidecar answered 503 meanwhile (how many times).
fn push_during_outage(
    am: &Alertmanager,
    s: &Sidecar,
    alerts: &[Value],
    failed_before: f64,
    down: Instant,
    component: &str,
    d: impl Fn() -> String,
) -> f64 {
    am.push(alerts);
    wait_failed_requests(
        am,
        failed_before,
        2.0,
        &format!("webhook requests to fail while {component} is down"),
    );
    hold_outage(down);
    let refused = sidecar_503s(s);
    assert!(
        refused > 0.0,
        "the sidecar never answered 503 while {component} was down\n{}",
        d()
    );
    refused
}

/// After the fault: every alert has its resource, and it stays exactly one
/// while Alertmanager re-sends every group twice more.
fn settle_exactly_once(
    k: &ApiServer,
    am: &Alertmanager,
    expected: &[Incident],
    groups: usize,
    hint: &str,
    d: impl Fn() -> String,
) -> Vec<Value> {
    check(
        eventually("one resource per alert after the fault", SETTLE, || {
            one_each(k, expected)
        }),
        || format!("{hint}\n{}", d()),
    );
    wait_more_notifications(am, (2 * groups) as f64);
    check(
        one_each(k, expected).map_err(|w| match w {
            Wait::Retry(e) | Wait::Fail(e) => {
                format!("after Alertmanager re-sent every group twice more: {e}")
            }
        }),
        || format!("{hint}\n{}", d()),
    )
}

#[test]
fn s3_redis_restarted_empty_mid_stream_every_alert_once() {
    let started = Instant::now();
    let k = shared_api_server();
    let ns = ["e2e-redis-before", "e2e-redis-during", "e2e-redis-after"];
    for n in ns {
        k.create_namespace(n);
    }
    let mut redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));
    let d = || diag(&[&s], Some(&am), Some(&edge));

    let before = alerts("E2eRedisOutage", ns[0], "api", 4);
    am.push(&before);
    check(
        eventually(
            "the resources of the alerts sent before the outage",
            SETTLE,
            || one_each(k, &incidents(&before)),
        ),
        d,
    );

    let failed = am.notifications().requests_failed;
    redis.stop();
    let down = Instant::now();
    let during = alerts("E2eRedisOutage", ns[1], "api", 4);
    let refused = push_during_outage(&am, &s, &during, failed, down, "Redis", d);
    redis.start_again();
    let outage = down.elapsed();
    let after = alerts("E2eRedisOutage", ns[2], "api", 4);
    am.push(&after);

    let sent: Vec<Value> = [before, during, after].concat();
    let expected = incidents(&sent);
    let hint = "Redis came back EMPTY: an alert that Alertmanager re-sends after the restart \
                is new to the store, gets a new claim with a new first-seen time and so a new \
                resource name (rr-<fingerprint>-<first seen>) beside the one created before \
                the outage";
    let items = settle_exactly_once(k, &am, &expected, ns.len(), hint, d);
    let n = am.notifications();
    report(
        "3 redis restarted empty",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (Redis down {:.1}s; sidecar answered 503 {refused} times; Alertmanager: {} failed \
             requests, {} failed notifications)",
            outage.as_secs_f64(),
            n.requests_failed,
            n.failed
        ),
    );
}

#[test]
fn s4_sidecar_killed_and_envoy_restarted_mid_stream_every_alert_once() {
    let started = Instant::now();
    let k = shared_api_server();
    let ns = [
        "e2e-kill-before",
        "e2e-kill-sidecar",
        "e2e-kill-envoy",
        "e2e-kill-after",
    ];
    for n in ns {
        k.create_namespace(n);
    }
    let redis = RedisServer::start();
    let mut s = sidecar(k, "sidecar", &redis.url(), &[]);
    let mut edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));

    let before = alerts("E2eKill", ns[0], "db", 4);
    am.push(&before);
    check(
        eventually("the resources of the first alerts", SETTLE, || {
            one_each(k, &incidents(&before))
        }),
        || diag(&[&s], Some(&am), Some(&edge)),
    );

    // SIGKILL the sidecar as soon as the next batch has claims in Redis, so
    // the kill is likely to fall between claim and create (or commit).
    let failed = am.notifications().requests_failed;
    let second = alerts("E2eKill", ns[1], "db", 4);
    am.push(&second);
    let pattern = format!("sg:{{{}}}:f:*", ns[1]);
    check(
        eventually("the second batch's first claim in Redis", SETTLE, || {
            if redis.cli(&["KEYS", &pattern]).trim().is_empty() {
                Err(Wait::Retry("no claim yet".into()))
            } else {
                Ok(())
            }
        }),
        || diag(&[&s], Some(&am), Some(&edge)),
    );
    s.kill();
    let claims: Vec<String> = redis
        .cli(&["KEYS", &pattern])
        .lines()
        .map(str::to_string)
        .collect();
    let pending = claims
        .iter()
        .filter(|key| redis.cli(&["HGET", key, "p"]).trim() == "1")
        .count();
    let landed = try_list(k, ns[1]).map_or(0, |r| r.len());
    let down = Instant::now();
    wait_failed_requests(
        &am,
        failed,
        2.0,
        "webhook requests to fail while the sidecar is dead",
    );
    hold_outage(down);
    s.restart();
    let sidecar_down = down.elapsed();
    let mut sent: Vec<Value> = [before, second].concat();
    check(
        eventually("every resource after the sidecar restarted", SETTLE, || {
            one_each(k, &incidents(&sent))
        }),
        || diag(&[&s], Some(&am), Some(&edge)),
    );

    // Envoy goes away (connection refused) while new alerts come in.
    let failed = am.notifications().requests_failed;
    edge.stop();
    let down = Instant::now();
    let third = alerts("E2eKill", ns[2], "db", 4);
    am.push(&third);
    wait_failed_requests(
        &am,
        failed,
        2.0,
        "webhook requests to fail while Envoy is down",
    );
    hold_outage(down);
    edge.start_again();
    let envoy_down = down.elapsed();
    let fourth = alerts("E2eKill", ns[3], "db", 4);
    am.push(&fourth);
    sent.extend(third);
    sent.extend(fourth);

    let expected = incidents(&sent);
    let hint = "the sidecar was killed (SIGKILL) with claims pending, and Envoy restarted";
    let items = settle_exactly_once(k, &am, &expected, ns.len(), hint, || {
        diag(&[&s], Some(&am), Some(&edge))
    });
    let n = am.notifications();
    report(
        "4 sidecar SIGKILL + Envoy restart",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (SIGKILL with {} claims of the batch made, {pending} pending, {landed} of 4 \
             resources written; sidecar down {:.1}s, \
             Envoy down {:.1}s; Alertmanager: {} failed requests, {} failed notifications)",
            claims.len(),
            sidecar_down.as_secs_f64(),
            envoy_down.as_secs_f64(),
            n.requests_failed,
            n.failed
        ),
    );
}

#[test]
fn s5_api_server_unavailable_mid_stream_every_resource_once() {
    let started = Instant::now();
    // Private: this scenario stops it.
    let mut k = private_api_server();
    let ns = ["e2e-api-before", "e2e-api-during", "e2e-api-after"];
    for n in ns {
        k.create_namespace(n);
    }
    let redis = RedisServer::start();
    let s = sidecar(&k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));

    let before = alerts("E2eApiOutage", ns[0], "queue", 4);
    am.push(&before);
    check(
        eventually(
            "the resources of the alerts sent before the outage",
            SETTLE,
            || one_each(&k, &incidents(&before)),
        ),
        || diag(&[&s], Some(&am), Some(&edge)),
    );

    let failed = am.notifications().requests_failed;
    k.stop();
    let down = Instant::now();
    let during = alerts("E2eApiOutage", ns[1], "queue", 4);
    let refused = push_during_outage(&am, &s, &during, failed, down, "the API server", || {
        diag(&[&s], Some(&am), Some(&edge))
    });
    k.restart();
    let outage = down.elapsed();
    let after = alerts("E2eApiOutage", ns[2], "queue", 4);
    am.push(&after);

    let sent: Vec<Value> = [before, during, after].concat();
    let expected = incidents(&sent);
    let hint = "the API server was down: creates failed, claims were released, 503s answered";
    let items = settle_exactly_once(&k, &am, &expected, ns.len(), hint, || {
        diag(&[&s], Some(&am), Some(&edge))
    });
    let n = am.notifications();
    report(
        "5 API server unavailable",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (API server down {:.1}s; sidecar answered 503 {refused} times; Alertmanager: {} \
             failed requests, {} failed notifications)",
            outage.as_secs_f64(),
            n.requests_failed,
            n.failed
        ),
    );
}
