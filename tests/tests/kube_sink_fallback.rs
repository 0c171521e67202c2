//! The kube sink sends a resource whose namespace does not exist (or is
//! being deleted) to the fallback namespace, and answers where it is.

use std::time::Duration;

use serde_json::Value;
use signalgate_tests::k8s::ApiServer;
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{
    count, kube_sidecar, list, shared_api_server, wait_list, FALLBACK,
};
use signalgate_tests::sidecar::{fresh_source, Sidecar};

/// Posts alert `name` about namespace `ns`, expects it created in the
/// fallback namespace labelled with `ns`, and returns the fallback's resources.
fn created_in_fallback(k: &ApiServer, s: &Sidecar, name: &str, ns: &str) -> Vec<Value> {
    let a = s.post_alerts(&webhook(vec![alert(name, ns, "p")]));
    assert_eq!(a.status, 201, "{}\n{}", a.body, s.log_tail(20));
    let resource = a.json()["signals"][0]["resource"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(resource.starts_with(&format!("{FALLBACK}/")), "{resource}");
    wait_list(k, FALLBACK, "the relocated resource", |r| {
        r.iter().any(|x| {
            x["metadata"]["labels"]["signalgate.io/original-namespace"] == ns
                && x["spec"]["signalName"] == name
        })
    })
}

#[test]
fn a_namespace_that_does_not_exist_sends_the_resource_to_the_fallback() {
    let k = shared_api_server();
    let s = kube_sidecar(k, "sidecar", &[]);
    let items = created_in_fallback(k, &s, "Orphan", "no-such-namespace");
    let rr = items
        .iter()
        .find(|x| x["spec"]["signalName"] == "Orphan")
        .unwrap();
    assert_eq!(
        rr["spec"]["targetResource"]["namespace"],
        "no-such-namespace"
    );
    // Its counters follow it there, and the answer names where it is.
    let a = s.post_alerts(&webhook(vec![alert("Orphan", "no-such-namespace", "p")]));
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(
        a.json()["signals"][0]["resource"],
        format!("{FALLBACK}/{}", rr["metadata"]["name"].as_str().unwrap()),
        "{}",
        a.body
    );
    wait_list(k, FALLBACK, "the relocated resource counted twice", |r| {
        r.iter()
            .any(|x| x["spec"]["signalName"] == "Orphan" && count(x) == 2)
    });
}

/// Alerts that wait while another request creates their resource in the
/// fallback namespace are answered where it is.
#[test]
fn concurrent_alerts_for_a_namespace_that_does_not_exist_are_all_answered_where_it_is() {
    let k = shared_api_server();
    let ns = "no-such-namespace-concurrent";
    let s = kube_sidecar(k, "sidecar", &[]);
    let body = serde_json::to_vec(&webhook(vec![alert("Crowded", ns, "p")])).unwrap();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| s.post("/api/v1/signals/prometheus", &body, &fresh_source())))
            .collect();
        hs.into_iter()
            .map(|h| {
                let a = h.join().unwrap();
                assert!(a.status == 201 || a.status == 202, "{}", a.body);
                a.json()["signals"][0]["resource"].clone()
            })
            .collect()
    });
    assert!(
        s.metric("signalgate_store_duration_seconds_count{op=\"poll\"}") > 0.0,
        "some waited on the claim"
    );
    let first = answers[0].as_str().unwrap();
    assert!(first.starts_with(&format!("{FALLBACK}/rr-")), "{first}");
    assert!(answers.iter().all(|a| a == first), "{answers:?}");
}

/// A storm of a namespace that does not exist goes to the fallback namespace
/// as a whole, and every later answer names it there.
#[test]
fn a_storm_in_a_namespace_that_does_not_exist_is_answered_where_it_is() {
    let k = shared_api_server();
    let ns = "no-such-storm-namespace";
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("SIGNALGATE_REDIS_URL", url.as_str()),
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
    ];
    let s = kube_sidecar(k, "sidecar", &env);
    let post = |job: &str| {
        let a = s.post_alerts(&webhook(vec![alert("Stormy", ns, job)]));
        assert!(a.status == 201 || a.status == 202, "{}", a.body);
        let signal = a.json()["signals"][0].clone();
        (
            signal["outcome"].as_str().unwrap().to_string(),
            signal["resource"].as_str().unwrap().to_string(),
        )
    };
    for job in ["a", "b"] {
        assert!(post(job).1.starts_with(&format!("{FALLBACK}/rr-")));
    }
    let (outcome, storm) = post("c");
    assert_eq!(outcome, "storm_started");
    assert!(storm.starts_with(&format!("{FALLBACK}/storm-")), "{storm}");
    for job in ["d", "e", "c"] {
        assert_eq!(post(job).1, storm, "alert {job}");
    }
    let name = storm.rsplit('/').next().unwrap();
    wait_list(
        k,
        FALLBACK,
        "the storm counted in the fallback namespace",
        |r| {
            r.iter().any(|x| {
                x["metadata"]["name"] == name
                    && x["spec"]["storm"]["alertCount"] == 3
                    && count(x) == 4
            })
        },
    );
}

#[test]
fn a_namespace_being_deleted_sends_the_resource_to_the_fallback() {
    let k = shared_api_server();
    k.create_namespace("leaving");
    // Without a namespace controller here, a deleted namespace stays
    // Terminating: the API server refuses new objects in it.
    k.kubectl_ok(&["delete", "namespace", "leaving", "--wait=false"]);
    wait_for("namespace Terminating", Duration::from_secs(30), || {
        let phase = k.kubectl_ok(&[
            "get",
            "namespace",
            "leaving",
            "-o",
            "jsonpath={.status.phase}",
        ]);
        (phase.trim() == "Terminating").then_some(())
    });
    let s = kube_sidecar(k, "sidecar", &[]);
    created_in_fallback(k, &s, "Leaving", "leaving");
}

/// The request that held the claim wrote the resource to the fallback
/// namespace (its own did not exist) and died before it committed; the
/// namespace is created before the sender's retry retakes the claim.
#[test]
fn a_retaken_claim_finds_the_resource_its_first_holder_moved_to_the_fallback() {
    let k = shared_api_server();
    let redis = RedisServer::start();
    let url = redis.url();
    let s = kube_sidecar(k, "sidecar", &[("SIGNALGATE_REDIS_URL", &url)]);
    let ns = "arrives-later";
    let moved = created_in_fallback(k, &s, "Early", ns);
    let moved: Vec<&Value> = moved
        .iter()
        .filter(|x| x["spec"]["signalName"] == "Early")
        .collect();
    assert_eq!(moved.len(), 1);
    let name = moved[0]["metadata"]["name"].as_str().unwrap().to_string();

    // Undo the commit, as if the holder had died first, its lease run out.
    let keys = redis.cli(&["--scan", "--pattern", &format!("sg:{{{ns}}}:f:*")]);
    let key = keys.trim();
    assert!(
        !key.is_empty() && !key.contains('\n'),
        "one claim: {keys:?}"
    );
    let committed_there = format!("@{FALLBACK}");
    assert_eq!(redis.cli(&["HGET", key, "p"]).trim(), committed_there);
    assert_eq!(redis.cli(&["HSET", key, "p", "1", "u", "0"]).trim(), "0");
    k.create_namespace(ns);

    let a = s.post_alerts(&webhook(vec![alert("Early", ns, "p")]));
    assert!(
        a.status == 201 || a.status == 202,
        "{}\n{}",
        a.body,
        s.log_tail(20)
    );
    assert_eq!(
        a.json()["signals"][0]["resource"],
        format!("{FALLBACK}/{name}"),
        "{}",
        a.body
    );
    // Committed now, where it is: the next sighting is a plain duplicate.
    assert_eq!(redis.cli(&["HGET", key, "p"]).trim(), committed_there);
    let a = s.post_alerts(&webhook(vec![alert("Early", ns, "p")]));
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(
        a.json()["signals"][0]["resource"],
        format!("{FALLBACK}/{name}")
    );
    wait_list(k, FALLBACK, "the moved resource counted three times", |r| {
        r.iter()
            .any(|x| x["metadata"]["name"] == name.as_str() && count(x) == 3)
    });
    assert_eq!(list(k, ns), Vec::<Value>::new(), "no second resource");
}
