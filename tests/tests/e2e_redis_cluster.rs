//! End to end (see `signalgate_tests::e2e`): two sidecars behind one Envoy
//! cluster on a Redis Cluster make one resource per incident (scenario 7).

use std::time::Instant;

use serde_json::Value;
use signalgate_tests::alertmanager::{Alertmanager, Receiver};
use signalgate_tests::e2e::edge::Edge;
use signalgate_tests::e2e::expect::{alerts, incidents, one_each, storm_state};
use signalgate_tests::e2e::report::report;
use signalgate_tests::e2e::wait::{check, diag, eventually, firing_signals, Wait};
use signalgate_tests::e2e::{sidecar, ALERTS_PATH, OPEN, SETTLE};
use signalgate_tests::redis::RedisCluster;
use signalgate_tests::remediation::{count, shared_api_server};

#[test]
fn s7_two_sidecars_on_a_redis_cluster_make_one_resource_per_incident() {
    let started = Instant::now();
    let k = shared_api_server();
    let (happy, storm_ns) = (["e2e-duo-a", "e2e-duo-b"], "e2e-duo-storm");
    for ns in happy.iter().chain([&storm_ns]) {
        k.create_namespace(ns);
    }
    let cluster = RedisCluster::start(3);
    let s1 = sidecar(k, "sidecar-1", &cluster.url(), &[]);
    let s2 = sidecar(k, "sidecar-2", &cluster.url(), &[]);
    let edge = Edge::start(OPEN, &[s1.api.port(), s2.api.port()]);
    // One group per alert: many concurrent requests, spread over both sidecars.
    let am = Alertmanager::start(&Receiver::new(&edge.url(ALERTS_PATH)).group_by(&["..."]));
    let d = || diag(&[&s1, &s2], Some(&am), Some(&edge));

    let mut calm = alerts("KubeDeploymentReplicasMismatch", happy[0], "web", 3);
    calm.extend(alerts("KubeDeploymentReplicasMismatch", happy[1], "web", 3));
    let storm = alerts("PodNotReady", storm_ns, "job", 25);
    let pods: Vec<String> = incidents(&storm).into_iter().map(|i| i.pod).collect();
    let calm_expected = incidents(&calm);
    let sent: Vec<Value> = [calm.clone(), storm.clone()].concat();
    am.push(&sent);

    let (_, storm_rr) = check(
        eventually(
            "6 resources, and 10 + 1 storm resource in the storm namespace",
            SETTLE,
            || {
                one_each(k, &calm_expected)?;
                storm_state(k, storm_ns, &pods, 10)
            },
        ),
        d,
    );
    let first = count(&storm_rr);
    let storm_rr = check(
        eventually(
            "two more rounds counted in the storm resource",
            SETTLE,
            || {
                one_each(k, &calm_expected)?;
                let (_, st) = storm_state(k, storm_ns, &pods, 10)?;
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
    let (one, two) = (firing_signals(&s1), firing_signals(&s2));
    assert!(
        one > 0 && two > 0,
        "both sidecars should have served signals: {one} and {two}"
    );
    let n = am.notifications();
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    report(
        "7 two sidecars + Redis Cluster",
        sent.len(),
        calm_expected.len() + 10 + 1,
        calm_expected.len() + 10 + 1,
        started,
        &format!(
            " (signals served: sidecar-1 {one}, sidecar-2 {two}; storm alertCount {}, \
             occurrenceCount {})",
            storm_rr["spec"]["storm"]["alertCount"],
            count(&storm_rr)
        ),
    );
}
