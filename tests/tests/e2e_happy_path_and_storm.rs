//! End to end (see `signalgate_tests::e2e`): a real Alertmanager's alerts
//! become one resource per incident and repeats only count (scenario 1); a
//! storm in one burst gives `threshold` resources and one storm (scenario 2).

use std::time::{Duration, Instant};

use serde_json::json;
use signalgate_tests::alertmanager::{firing, Alertmanager, Receiver};
use signalgate_tests::e2e::edge::Edge;
use signalgate_tests::e2e::expect::{alerts, incidents, individual, one_each, storm_state};
use signalgate_tests::e2e::report::report;
use signalgate_tests::e2e::wait::{
    check, diag, eventually, firing_signals, sidecar_metric, wait_quiet, Wait,
};
use signalgate_tests::e2e::{sidecar, tenant_config, ALERTS_PATH, OPEN, SETTLE, TENANT, TOKEN};
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{count, is_storm, name_of, shared_api_server};

// ---------------------------------------------------------------------------
// 1. Happy path
// ---------------------------------------------------------------------------

#[test]
fn s1_happy_path_alerts_become_resources_and_repeats_only_count() {
    let started = Instant::now();
    let k = shared_api_server();
    let namespaces = ["e2e-happy-a", "e2e-happy-b", "e2e-happy-c"];
    for ns in namespaces {
        k.create_namespace(ns);
    }
    let redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(&tenant_config(), &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)).bearer_token(TOKEN));

    let mut sent = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        sent.extend(alerts("KubePodCrashLooping", ns, "web", 3 + i));
    }
    // Another alert about a pod that already has one: its own incident.
    sent.push(firing("KubePodOOMKilled", "e2e-happy-a", "web-00"));
    am.push(&sent);
    let expected = incidents(&sent);
    let d = || diag(&[&s], Some(&am), Some(&edge));

    let items = check(
        eventually("one resource per alert", SETTLE, || one_each(k, &expected)),
        d,
    );
    for rr in &items {
        let spec = &rr["spec"];
        assert_eq!(spec["source"], TENANT, "the bearer token's tenant: {rr}");
        assert_eq!(spec["signalType"], "prometheus", "{rr}");
        assert_eq!(spec["severity"], "critical", "{rr}");
        assert_eq!(spec["targetResource"]["kind"], "Pod", "{rr}");
        assert_eq!(
            spec["signalLabels"]["namespace"], rr["metadata"]["namespace"],
            "{rr}"
        );
    }

    // Repeats over several group intervals raise counts and nothing else.
    let items = check(
        eventually("every resource counted at least 3 times", SETTLE, || {
            let items = one_each(k, &expected)?;
            let low: Vec<String> = items
                .iter()
                .filter(|r| count(r) < 3)
                .map(|r| format!("{}={}", name_of(r), count(r)))
                .collect();
            if low.is_empty() {
                Ok(items)
            } else {
                Err(Wait::Retry(format!("counts still below 3: {low:?}")))
            }
        }),
        d,
    );
    assert!(individual(&items).len() == expected.len() && items.iter().all(|r| !is_storm(r)));

    // Exact accounting once Alertmanager is quiet: the counts in the API
    // server add up to the signals the sidecar processed, and every webhook
    // request Alertmanager made went through the filter to the sidecar.
    am.silence_all();
    let n = wait_quiet(&am);
    let (counted, processed) = check(
        eventually(
            "the resources' occurrence counts to add up to the signals processed",
            Duration::from_secs(30),
            || {
                let items = one_each(k, &expected)?;
                let counted: u64 = items.iter().map(count).sum();
                let processed = firing_signals(&s);
                let pending = sidecar_metric(&s, "signalgate_pending_updates", "");
                if counted == processed && pending == 0.0 {
                    Ok((counted, processed))
                } else {
                    Err(Wait::Retry(format!(
                        "sum of occurrenceCount {counted}, signals processed {processed}, \
                         pending updates {pending}"
                    )))
                }
            },
        ),
        || diag(&[&s], None, Some(&edge)),
    );
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    assert_eq!(n.requests_failed, 0.0, "failed webhook requests: {n:?}");
    let accepted = edge.stat("signalgate_accepted");
    let upstream = edge.stat("envoy_cluster_upstream_rq_completed");
    let answered = sidecar_metric(&s, "signalgate_request_duration_seconds_count", "") as u64;
    assert!(
        accepted == upstream && upstream == answered && answered == n.requests as u64,
        "Alertmanager made {} webhook requests; the filter accepted {accepted}, Envoy \
         completed {upstream} upstream, the sidecar answered {answered}",
        n.requests
    );
    report(
        "1 happy path",
        sent.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (sum of occurrenceCount {counted} = signals processed {processed}; \
             {} notifications, {} webhook requests, 0 failed)",
            n.total, n.requests
        ),
    );
}

// ---------------------------------------------------------------------------
// 2. Storm
// ---------------------------------------------------------------------------

#[test]
fn s2_storm_in_one_burst_gives_threshold_resources_and_one_storm() {
    let started = Instant::now();
    let k = shared_api_server();
    let (storm_ns, calm_ns) = ("e2e-storm", "e2e-storm-calm");
    k.create_namespace(storm_ns);
    k.create_namespace(calm_ns);
    let redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)));

    let storm = alerts("PodNotReady", storm_ns, "job", 25);
    let calm = alerts("PodNotReady", calm_ns, "job", 3);
    let pods: Vec<String> = incidents(&storm).into_iter().map(|i| i.pod).collect();
    let calm_expected = incidents(&calm);
    let mut sent = storm.clone();
    sent.extend(calm.iter().cloned());
    am.push(&sent);
    let d = || diag(&[&s], Some(&am), Some(&edge));

    let (singles, storm_rr) = check(
        eventually(
            "10 resources and 1 storm resource listing the other 15 (and 3 calm resources)",
            SETTLE,
            || {
                let state = storm_state(k, storm_ns, &pods, 10)?;
                one_each(k, &calm_expected)?;
                Ok(state)
            },
        ),
        d,
    );
    let spec = &storm_rr["spec"];
    assert_eq!(spec["signalName"], "SignalStorm", "{storm_rr}");
    assert_eq!(
        spec["targetResource"],
        json!({"kind": "Namespace", "name": storm_ns}),
        "{storm_rr}"
    );

    // Repeats of the whole group are duplicates: of each individual
    // resource, and of the storm resource for its members.
    let first = count(&storm_rr);
    let storm_rr = check(
        eventually(
            "two more rounds counted in the storm resource",
            SETTLE,
            || {
                let (_, st) = storm_state(k, storm_ns, &pods, 10)?;
                one_each(k, &calm_expected)?;
                if count(&st) >= first + 2 * 15 {
                    Ok(st)
                } else {
                    Err(Wait::Retry(format!(
                        "storm occurrenceCount {} (was {first})",
                        count(&st)
                    )))
                }
            },
        ),
        d,
    );
    let n = am.notifications();
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    report(
        "2 storm",
        sent.len(),
        10 + 1 + 3,
        singles.len() + 1 + calm_expected.len(),
        started,
        &format!(
            " (storm alertCount {}, {} affected resources, occurrenceCount {} after repeats)",
            storm_rr["spec"]["storm"]["alertCount"],
            storm_rr["spec"]["storm"]["affectedResources"]
                .as_array()
                .map_or(0, Vec::len),
            count(&storm_rr)
        ),
    );
}
