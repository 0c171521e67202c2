//! What the kube sink costs the API server: writes stay bounded in a
//! 10 000-signal storm, and lookups after the store lost its data cost two
//! LISTs per 50 alerts and read the watch cache only where that is safe.

use std::time::Duration;

use serde_json::Value;
use signalgate_tests::k8s::ApiServer;
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::remediation::{
    kube_sidecar, list, lookups, private_api_server, shared_api_server, wait_list, FALLBACK,
};
use signalgate_tests::sidecar::{fresh_source, Sidecar};

#[test]
fn a_10000_signal_storm_keeps_api_writes_bounded() {
    let k = shared_api_server();
    k.create_namespace("kube-bigstorm");
    let s = kube_sidecar(k, "sidecar", &[("SIGNALGATE_FLUSH_INTERVAL", "1s")]);
    let started = std::time::Instant::now();
    let bodies: Vec<Vec<u8>> = (0..100)
        .map(|r| {
            let alerts = (0..100)
                .map(|i| alert("PodNotReady", "kube-bigstorm", &format!("pod-{r}-{i}")))
                .collect();
            serde_json::to_vec(&webhook(alerts)).unwrap()
        })
        .collect();
    std::thread::scope(|scope| {
        for chunk in bodies.chunks(25) {
            let s = &s;
            scope.spawn(move || {
                for body in chunk {
                    let a = s.post("/api/v1/signals/prometheus", body, &fresh_source());
                    assert!(a.status == 201 || a.status == 202, "{}", a.body);
                }
            });
        }
    });
    let sent = started.elapsed();
    let items = wait_list(
        k,
        "kube-bigstorm",
        "10 resources and a storm of 9990",
        |r| r.len() == 11 && r.iter().any(|x| x["spec"]["storm"]["alertCount"] == 9990),
    );
    let elapsed = started.elapsed();
    let storm = items
        .iter()
        .find(|x| x["spec"]["storm"].is_object())
        .unwrap();
    assert_eq!(
        storm["spec"]["storm"]["affectedResources"]
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    assert_eq!(storm["spec"]["storm"]["affectedResourcesOverflow"], 9890);
    let creates = s.metric("signalgate_resources_written_total{op=\"create\",result=\"ok\"}");
    let updates = s.metric("signalgate_resources_written_total{op=\"update\",result=\"ok\"}");
    assert_eq!(creates, 11.0);
    // At most one write per resource per flush interval: the storm resource
    // once per second while signals arrive, plus a last write.
    let flushes = elapsed.as_secs_f64().ceil() + 1.0;
    assert!(updates <= flushes + 1.0, "{updates} updates in {elapsed:?}");
    eprintln!(
        "10 000-signal storm: sent in {sent:?} ({:.0} signals/s); {creates} creates + {updates} updates \
         in {elapsed:?} = {:.1} API writes/s",
        10_000.0 / sent.as_secs_f64(),
        (creates + updates) / elapsed.as_secs_f64()
    );
}

#[test]
fn a_group_re_sent_after_the_store_lost_its_data_costs_two_lists_per_50_alerts() {
    // This API server (1.20) reads consistent LISTs from etcd: by default
    // the lookups read its watch cache, and the sidecar says so.
    let (s, lookups) = a_group_re_sent_after_the_store_lost_its_data("auto", |_| {});
    let log = s.log();
    assert!(
        log.contains("kube lookups read the API server's watch cache: before Kubernetes 1.31")
            && log.contains("v1.20"),
        "{log}"
    );
    assert!(
        lookups.iter().all(|uri| uri.contains("resourceVersion=0")),
        "{lookups:#?}"
    );
}

#[test]
fn a_group_re_sent_after_the_store_lost_its_data_is_found_by_consistent_lookups() {
    let (s, lookups) = a_group_re_sent_after_the_store_lost_its_data("consistent", |_| {});
    assert!(!s.log().contains("watch cache"), "{}", s.log());
    assert!(
        !lookups.iter().any(|uri| uri.contains("resourceVersion")),
        "{lookups:#?}"
    );
}

#[test]
fn lookups_read_the_cache_when_the_api_server_version_may_not_be_read() {
    let (s, lookups) = a_group_re_sent_after_the_store_lost_its_data("auto", |k| {
        // Both default bindings grant /version.
        k.kubectl_ok(&[
            "delete",
            "clusterrolebinding",
            "system:public-info-viewer",
            "system:discovery",
        ]);
    });
    assert!(s.log().contains("its version is unknown"), "{}", s.log());
    assert!(
        lookups.iter().all(|uri| uri.contains("resourceVersion=0")),
        "{lookups:#?}"
    );
}

/// 120 alerts over two namespaces, created; the in-memory store forgets
/// them; sent again, each is found and adopted (a duplicate), with
/// `SIGNALGATE_KUBE_LOOKUP_READS=reads` on an API server `prepare` has
/// changed. Returns the sidecar and the URIs of the lookups' LISTs.
fn a_group_re_sent_after_the_store_lost_its_data(
    reads: &str,
    prepare: impl Fn(&ApiServer),
) -> (Sidecar, Vec<String>) {
    // A private API server: its LIST count is this test's alone.
    let k = private_api_server();
    k.create_namespace("relist");
    prepare(&k);
    let mut s = kube_sidecar(
        &k,
        "sidecar",
        &[
            ("SIGNALGATE_STORM_THRESHOLD", "1000"),
            ("SIGNALGATE_KUBE_LOOKUP_READS", reads),
        ],
    );
    // 60 alerts of an existing namespace and 60 of a missing one (their
    // resources go to the fallback namespace).
    let alerts: Vec<Value> = (0..120)
        .map(|i| {
            let ns = if i < 60 { "relist" } else { "relist-gone" };
            alert("Relist", ns, &format!("p{i}"))
        })
        .collect();
    let hook = webhook(alerts);
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 201, "{}", a.body);
    wait_list(&k, "relist", "60 resources", |r| r.len() == 60);
    wait_list(&k, FALLBACK, "60 resources", |r| {
        r.iter()
            .filter(|x| x["spec"]["signalName"] == "Relist")
            .count()
            == 60
    });
    // The in-memory store forgets everything; the group comes again.
    s.restart();
    // Once the restarted sink's cache has LISTed its resources, as before
    // a pod is ready.
    wait_for(
        "the restarted sink's cache to sync",
        Duration::from_secs(30),
        || (s.log().matches("kube sink cache synced").count() == 2).then_some(()),
    );
    // Lookups counted in the API server's audit log (its request metric may
    // count the restarted sidecar's own LISTs a moment after the sidecar saw
    // their answers).
    let before = lookups(&k).len();
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 202, "{}", a.body);
    let signals = a.json()["signals"].as_array().cloned().unwrap_or_default();
    assert!(
        signals.len() == 120 && signals.iter().all(|x| x["outcome"] == "duplicate"),
        "{}",
        a.body
    );
    // Per namespace: 50 + 10 fingerprints, each LIST in the namespace and in
    // the fallback namespace.
    let logged = wait_for(
        "the lookups in the audit log",
        Duration::from_secs(10),
        || {
            let all = lookups(&k);
            (all.len() >= before + 8).then_some(all)
        },
    );
    assert_eq!(logged.len() - before, 8, "{:#?}", &logged[before..]);
    assert_eq!(list(&k, "relist").len(), 60);
    // The first sending's (the namespaces were new to the store) and these 8.
    assert!(before >= 8, "{logged:#?}");
    (s, logged)
}

#[test]
fn a_storm_running_when_the_store_lost_its_data_is_found_and_goes_on() {
    let k = shared_api_server();
    // Alerts of a namespace that does not exist: the storm resource sits in
    // the fallback namespace, found there by its original namespace.
    let mut s = kube_sidecar(
        k,
        "sidecar",
        &[
            ("SIGNALGATE_STORM_THRESHOLD", "2"),
            ("SIGNALGATE_STORM_WINDOW", "2m"),
        ],
    );
    let alerts = |pods: std::ops::Range<u32>| {
        webhook(
            pods.map(|i| alert("KubeStorm", "kube-storm-gone", &format!("p{i}")))
                .collect(),
        )
    };
    let a = s.post_alerts(&alerts(0..5));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.json()["signals"][2]["outcome"],
        "storm_started",
        "{}",
        a.body
    );
    let storm = a.json()["signals"][2]["resource"].clone();
    let in_fallback = storm
        .as_str()
        .is_some_and(|r| r.starts_with(&format!("{FALLBACK}/")));
    assert!(in_fallback, "{storm}");
    let ours = |r: &[Value]| -> Vec<Value> {
        r.iter()
            .filter(|x| {
                x["metadata"]["labels"]["signalgate.io/original-namespace"] == "kube-storm-gone"
            })
            .cloned()
            .collect()
    };
    wait_list(k, FALLBACK, "the storm counting three alerts", |r| {
        ours(r)
            .iter()
            .any(|x| x["spec"]["storm"]["alertCount"] == 3)
    });
    s.restart();
    let a = s.post_alerts(&alerts(5..8));
    assert_eq!(a.status, 202, "{}", a.body);
    for signal in a.json()["signals"].as_array().unwrap() {
        assert_eq!(signal["outcome"], "storm_aggregated", "{}", a.body);
        assert_eq!(signal["resource"], storm, "{}", a.body);
    }
    let items = wait_list(k, FALLBACK, "the storm counting six alerts", |r| {
        ours(r)
            .iter()
            .any(|x| x["spec"]["storm"]["alertCount"] == 6)
    });
    assert_eq!(ours(&items).len(), 3, "two own resources and one storm");
}
