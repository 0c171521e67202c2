//! The sidecar writing RemediationRequests to a real kube-apiserver, as the
//! service account the RBAC in `deploy/` binds: every field of the payload,
//! concurrent duplicates, storms, and the same object as the directory sink.

use serde_json::{json, Value};
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{count, kube_sidecar, shared_api_server, wait_list};
use signalgate_tests::sidecar::{fresh_source, Sidecar};

#[test]
fn an_alert_becomes_a_resource_with_every_field_from_the_payload() {
    let k = shared_api_server();
    k.create_namespace("kube-fields");
    let s = kube_sidecar(k, "sidecar", &[]);
    let mut a = alert("KubePodCrashLooping", "kube-fields", "cart-1");
    a["labels"]["container"] = json!("cart");
    a["annotations"]["runbook_url"] = json!("https://runbooks/crashloop");
    let answer = s.post_alerts_from(&webhook(vec![a.clone()]), "test");
    assert_eq!(answer.status, 201, "{}\n{}", answer.body, s.log_tail(20));
    let sig = answer.json()["signals"][0].clone();

    let items = wait_list(k, "kube-fields", "the resource", |r| r.len() == 1);
    let rr = &items[0];
    assert_eq!(
        format!("kube-fields/{}", rr["metadata"]["name"].as_str().unwrap()),
        sig["resource"].as_str().unwrap()
    );
    let spec = &rr["spec"];
    assert_eq!(spec["signalFingerprint"], sig["fingerprint"]);
    assert_eq!(spec["signalName"], a["labels"]["alertname"]);
    assert_eq!(spec["signalType"], "prometheus");
    assert_eq!(spec["severity"], a["labels"]["severity"]);
    assert_eq!(
        spec["targetResource"],
        json!({"kind": "Pod", "name": "cart-1", "namespace": "kube-fields"})
    );
    assert_eq!(spec["firingTime"], a["startsAt"]);
    assert_eq!(spec["source"], "test");
    assert_eq!(spec["signalLabels"], a["labels"]);
    assert_eq!(spec["signalAnnotations"], a["annotations"]);
    assert_eq!(spec["deduplication"]["occurrenceCount"], 1);
    assert!(spec["receivedTime"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let labels = &rr["metadata"]["labels"];
    assert_eq!(labels["signalgate.io/signal-type"], "prometheus");
    assert_eq!(labels["signalgate.io/severity"], "critical");
    assert_eq!(labels["signalgate.io/storm"], "false");
    assert_eq!(
        labels["signalgate.io/fingerprint"].as_str(),
        sig["fingerprint"].as_str().map(|f| &f[..63])
    );
    assert!(
        rr.get("status")
            .is_none_or(|s| s.is_null() || s == &json!({})),
        "the sidecar never writes status"
    );
    // Selectable with kubectl by label.
    let out = k.kubectl_ok(&[
        "get",
        "rr",
        "-n",
        "kube-fields",
        "-l",
        "signalgate.io/severity=critical",
        "-o",
        "name",
    ]);
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn a_hundred_concurrent_identical_alerts_make_one_resource_counting_100() {
    let k = shared_api_server();
    k.create_namespace("kube-concurrent");
    let s = kube_sidecar(k, "sidecar", &[("SIGNALGATE_FLUSH_INTERVAL", "200ms")]);
    let body =
        serde_json::to_vec(&webhook(vec![alert("NodeDown", "kube-concurrent", "p")])).unwrap();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..100)
            .map(|_| {
                scope.spawn(|| {
                    s.post("/api/v1/signals/prometheus", &body, &fresh_source())
                        .status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&c| c == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&c| c == 202).count(),
        99,
        "{statuses:?}"
    );
    let items = wait_list(k, "kube-concurrent", "one resource counting 100", |r| {
        r.len() == 1 && count(&r[0]) == 100
    });
    assert_eq!(items.len(), 1);
}

#[test]
fn a_storm_makes_three_resources_and_one_storm_resource_of_twelve() {
    let k = shared_api_server();
    k.create_namespace("kube-storm");
    let s = kube_sidecar(k, "sidecar", &[("SIGNALGATE_STORM_THRESHOLD", "3")]);
    let alerts: Vec<Value> = (0..15)
        .map(|i| alert("PodNotReady", "kube-storm", &format!("job-{i}")))
        .collect();
    let a = s.post_alerts(&webhook(alerts));
    assert_eq!(a.status, 201, "{}", a.body);
    let items = wait_list(k, "kube-storm", "3 + 1 storm listing 12", |r| {
        r.len() == 4
            && r.iter().any(|x| {
                x["spec"]["storm"]["affectedResources"]
                    .as_array()
                    .map(Vec::len)
                    == Some(12)
            })
    });
    let storms: Vec<&Value> = items
        .iter()
        .filter(|x| x["metadata"]["labels"]["signalgate.io/storm"] == "true")
        .collect();
    assert_eq!(storms.len(), 1);
    assert_eq!(storms[0]["spec"]["storm"]["alertCount"], 12);
}

#[test]
fn a_storm_across_two_sidecars_is_one_storm_resource() {
    let k = shared_api_server();
    k.create_namespace("kube-storm2");
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("SIGNALGATE_STORM_THRESHOLD", "3"),
        ("SIGNALGATE_REDIS_URL", url.as_str()),
    ];
    let a = kube_sidecar(k, "sidecar-a", &env);
    let b = kube_sidecar(k, "sidecar-b", &env);
    let bodies: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            serde_json::to_vec(&webhook(vec![alert(
                "PodNotReady",
                "kube-storm2",
                &format!("w-{i}"),
            )]))
            .unwrap()
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let side = if i % 2 == 0 { &a } else { &b };
                scope.spawn(move || {
                    side.post("/api/v1/signals/prometheus", body, &fresh_source())
                        .status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|&c| c == 201 || c == 202),
        "{statuses:?}"
    );
    let items = wait_list(k, "kube-storm2", "3 + 1 storm of 27", |r| {
        r.len() == 4 && r.iter().any(|x| x["spec"]["storm"]["alertCount"] == 27)
    });
    let storm = items
        .iter()
        .find(|x| x["metadata"]["labels"]["signalgate.io/storm"] == "true")
        .unwrap();
    assert_eq!(
        storm["spec"]["storm"]["affectedResources"]
            .as_array()
            .map(Vec::len),
        Some(27)
    );
}

#[test]
fn directory_and_kube_sinks_write_the_same_object() {
    let k = shared_api_server();
    k.create_namespace("same-object");
    let kube = kube_sidecar(k, "sidecar-kube", &[]);
    let dir = Sidecar::start_named("sidecar-dir", &[]);
    let hook = webhook(vec![alert("Same", "same-object", "p")]);
    assert_eq!(kube.post_alerts_from(&hook, "test").status, 201);
    assert_eq!(dir.post_alerts_from(&hook, "test").status, 201);
    let from_kube = wait_list(k, "same-object", "the resource", |r| r.len() == 1).remove(0);
    let from_dir = dir.resources().remove(0);
    let normalise = |mut v: Value| {
        v["spec"].as_object_mut().unwrap().remove("receivedTime");
        for f in ["firstSeen", "lastSeen"] {
            v["spec"]["deduplication"]
                .as_object_mut()
                .unwrap()
                .remove(f);
        }
        json!({"apiVersion": v["apiVersion"], "kind": v["kind"], "labels": v["metadata"]["labels"],
               "namespace": v["metadata"]["namespace"], "spec": v["spec"]})
    };
    assert_eq!(normalise(from_kube), normalise(from_dir));
}
