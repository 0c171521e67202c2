//! The sidecar writing RemediationRequests to a real kube-apiserver, as the
//! service account the RBAC in `deploy/` binds, and nothing more.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use signalgate_tests::k8s::{ApiServer, Identity};
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::sidecar::Sidecar;
use signalgate_tests::workspace;

const FALLBACK: &str = "signalgate-system";

/// CRD, the sidecar's RBAC and its namespace, as an operator would apply them.
fn prepare(k: &ApiServer) {
    k.apply_file(&workspace::root().join("deploy/crds"));
    k.create_namespace(FALLBACK);
    k.apply_file(&workspace::root().join("deploy/base/rbac.yaml"));
}

/// One API server shared by the tests that don't stop it; each uses its own namespaces.
fn shared() -> &'static ApiServer {
    static K8S: OnceLock<ApiServer> = OnceLock::new();
    K8S.get_or_init(|| {
        let k = ApiServer::start();
        prepare(&k);
        k
    })
}

fn private() -> ApiServer {
    let k = ApiServer::start();
    prepare(&k);
    k
}

/// A sidecar with the kube sink, authenticating as the sidecar's service account.
fn sidecar(k: &ApiServer, name: &str, extra: &[(&str, &str)]) -> Sidecar {
    let kubeconfig = k.kubeconfig(Identity::Sidecar).display().to_string();
    let mut env = vec![
        ("SIGNALGATE_SINK", "kube"),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("SIGNALGATE_FALLBACK_NAMESPACE", FALLBACK),
    ];
    env.extend_from_slice(extra);
    Sidecar::start_named(name, &env)
}

/// The RemediationRequests in `ns`, sorted by name (read as the admin).
fn rrs(k: &ApiServer, ns: &str) -> Vec<Value> {
    let out = k.kubectl_ok(&["get", "remediationrequests", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("kubectl json");
    let mut items = list["items"].as_array().cloned().unwrap_or_default();
    items.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    items
}

fn wait_rrs(k: &ApiServer, ns: &str, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(what, Duration::from_secs(30), || {
        let items = rrs(k, ns);
        cond(&items).then_some(items)
    })
}

fn count(r: &Value) -> u64 {
    r["spec"]["deduplication"]["occurrenceCount"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn an_alert_becomes_a_resource_with_every_field_from_the_payload() {
    let k = shared();
    k.create_namespace("kube-fields");
    let s = sidecar(k, "sidecar", &[]);
    let mut a = alert("KubePodCrashLooping", "kube-fields", "cart-1");
    a["labels"]["container"] = json!("cart");
    a["annotations"]["runbook_url"] = json!("https://runbooks/crashloop");
    let answer = s.post_alerts(&webhook(vec![a.clone()]));
    assert_eq!(answer.status, 201, "{}\n{}", answer.body, s.log_tail(20));
    let sig = answer.json()["signals"][0].clone();

    let items = wait_rrs(k, "kube-fields", "the resource", |r| r.len() == 1);
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
    let k = shared();
    k.create_namespace("kube-concurrent");
    let s = sidecar(k, "sidecar", &[("SIGNALGATE_FLUSH_INTERVAL", "200ms")]);
    let body =
        serde_json::to_vec(&webhook(vec![alert("NodeDown", "kube-concurrent", "p")])).unwrap();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..100)
            .map(|_| scope.spawn(|| s.post("/api/v1/signals/prometheus", &body, "t").status))
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
    let items = wait_rrs(k, "kube-concurrent", "one resource counting 100", |r| {
        r.len() == 1 && count(&r[0]) == 100
    });
    assert_eq!(items.len(), 1);
}

#[test]
fn a_storm_makes_three_resources_and_one_storm_resource_of_twelve() {
    let k = shared();
    k.create_namespace("kube-storm");
    let s = sidecar(k, "sidecar", &[("SIGNALGATE_STORM_THRESHOLD", "3")]);
    let alerts: Vec<Value> = (0..15)
        .map(|i| alert("PodNotReady", "kube-storm", &format!("job-{i}")))
        .collect();
    let a = s.post_alerts(&webhook(alerts));
    assert_eq!(a.status, 201, "{}", a.body);
    let items = wait_rrs(k, "kube-storm", "3 + 1 storm listing 12", |r| {
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
    let k = shared();
    k.create_namespace("kube-storm2");
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("SIGNALGATE_STORM_THRESHOLD", "3"),
        ("SIGNALGATE_REDIS_URL", url.as_str()),
    ];
    let a = sidecar(k, "sidecar-a", &env);
    let b = sidecar(k, "sidecar-b", &env);
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
                scope.spawn(move || side.post("/api/v1/signals/prometheus", body, "t").status)
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|&c| c == 201 || c == 202),
        "{statuses:?}"
    );
    let items = wait_rrs(k, "kube-storm2", "3 + 1 storm of 27", |r| {
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
    wait_rrs(k, FALLBACK, "the relocated resource", |r| {
        r.iter().any(|x| {
            x["metadata"]["labels"]["signalgate.io/original-namespace"] == ns
                && x["spec"]["signalName"] == name
        })
    })
}

#[test]
fn a_namespace_that_does_not_exist_sends_the_resource_to_the_fallback() {
    let k = shared();
    let s = sidecar(k, "sidecar", &[]);
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
    wait_rrs(k, FALLBACK, "the relocated resource counted twice", |r| {
        r.iter()
            .any(|x| x["spec"]["signalName"] == "Orphan" && count(x) == 2)
    });
}

/// Alerts that wait while another request creates their resource in the
/// fallback namespace are answered where it is.
#[test]
fn concurrent_alerts_for_a_namespace_that_does_not_exist_are_all_answered_where_it_is() {
    let k = shared();
    let ns = "no-such-namespace-concurrent";
    let s = sidecar(k, "sidecar", &[]);
    let body = serde_json::to_vec(&webhook(vec![alert("Crowded", ns, "p")])).unwrap();
    let answers: Vec<Value> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| s.post("/api/v1/signals/prometheus", &body, "t")))
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
    let k = shared();
    let ns = "no-such-storm-namespace";
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("SIGNALGATE_REDIS_URL", url.as_str()),
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
    ];
    let s = sidecar(k, "sidecar", &env);
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
    wait_rrs(
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
    let k = shared();
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
    let s = sidecar(k, "sidecar", &[]);
    created_in_fallback(k, &s, "Leaving", "leaving");
}

/// The request that held the claim wrote the resource to the fallback
/// namespace (its own did not exist) and died before it committed; the
/// namespace is created before the sender's retry retakes the claim.
#[test]
fn a_retaken_claim_finds_the_resource_its_first_holder_moved_to_the_fallback() {
    let k = shared();
    let redis = RedisServer::start();
    let url = redis.url();
    let s = sidecar(k, "sidecar", &[("SIGNALGATE_REDIS_URL", &url)]);
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
    wait_rrs(k, FALLBACK, "the moved resource counted three times", |r| {
        r.iter()
            .any(|x| x["metadata"]["name"] == name.as_str() && count(x) == 3)
    });
    assert_eq!(rrs(k, ns), Vec::<Value>::new(), "no second resource");
}

#[test]
fn api_server_down_answers_503_and_the_retry_creates_exactly_one() {
    let mut k = private();
    k.create_namespace("outage");
    let redis = RedisServer::start();
    let url = redis.url();
    let s = sidecar(
        &k,
        "sidecar",
        &[
            ("SIGNALGATE_REDIS_URL", &url),
            ("SIGNALGATE_REQUEST_DEADLINE", "2s"),
            ("SIGNALGATE_CLAIM_LEASE", "3s"),
        ],
    );
    let hook = webhook(vec![alert("ApiOutage", "outage", "p")]);
    k.stop();
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.header("retry-after").is_some());
    k.restart();
    // The sender's retry (Alertmanager retries 5xx) creates it, once.
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 201, "{}\n{}", a.body, s.log_tail(20));
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 202, "{}", a.body);
    let items = wait_rrs(&k, "outage", "exactly one resource", |r| {
        r.len() == 1 && count(&r[0]) >= 2
    });
    assert_eq!(items.len(), 1);
}

#[test]
fn sidecar_killed_between_claim_and_create_then_the_retry_creates_exactly_one() {
    let mut k = private();
    k.create_namespace("killed");
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("SIGNALGATE_REDIS_URL", url.as_str()),
        ("SIGNALGATE_REQUEST_DEADLINE", "20s"),
        ("SIGNALGATE_CLAIM_LEASE", "3s"),
    ];
    let mut s = sidecar(&k, "sidecar", &env);
    let hook = webhook(vec![alert("Killed", "killed", "p")]);
    let body = serde_json::to_vec(&hook).unwrap();
    // With the API server down the create keeps retrying: the claim is made, the resource is not.
    k.stop();
    std::thread::scope(|scope| {
        let api = s.api;
        let sent = scope.spawn(move || {
            signalgate_tests::client::post_json(
                &format!("http://{api}/api/v1/signals/prometheus"),
                &body,
                &[],
            )
        });
        wait_for(
            "the sidecar to be retrying the create",
            Duration::from_secs(15),
            || s.log().contains("retrying").then_some(()),
        );
        s.kill();
        assert!(
            sent.join().unwrap().is_err(),
            "the killed sidecar cannot have answered"
        );
    });
    k.restart();
    s.restart();
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 201, "{}\n{}", a.body, s.log_tail(20));
    let items = wait_rrs(&k, "killed", "exactly one resource", |r| r.len() == 1);
    assert_eq!(items.len(), 1);
    assert_eq!(s.post_alerts(&hook).status, 202);
}

#[test]
fn a_namespace_the_sidecar_may_not_write_answers_5xx_and_logs_why() {
    let k = private();
    k.create_namespace("allowed");
    k.create_namespace("forbidden");
    // Narrow the shipped ClusterRole to one namespace with a RoleBinding.
    k.kubectl_ok(&["delete", "clusterrolebinding", "signalgate-sidecar"]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        "allowed",
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        FALLBACK,
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
    let s = sidecar(&k, "sidecar", &[]);
    assert_eq!(
        s.post_alerts(&webhook(vec![alert("Ok", "allowed", "p")]))
            .status,
        201
    );
    let a = s.post_alerts(&webhook(vec![alert("No", "forbidden", "p")]));
    assert!(a.status >= 500, "{} {}", a.status, a.body);
    assert!(a.header("retry-after").is_some());
    let log = s.log();
    assert!(
        log.contains("sink refused the write") && log.contains("forbidden"),
        "{}",
        s.log_tail(20)
    );
    assert!(rrs(&k, "forbidden").is_empty());
}

#[test]
fn the_shipped_rbac_grants_only_what_the_sidecar_uses() {
    let k = shared();
    let can = |verb: &str, resource: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let out = k.kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            "default",
            &format!("--subresource={subresource}"),
            "--as=system:serviceaccount:signalgate-system:signalgate-sidecar",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for verb in ["get", "create", "patch", "list"] {
        assert!(
            can(verb, "remediationrequests.signalgate.io"),
            "{verb} must be allowed"
        );
    }
    for (verb, resource) in [
        ("delete", "remediationrequests.signalgate.io"),
        ("update", "remediationrequests.signalgate.io"),
        ("patch", "remediationrequests.signalgate.io/status"),
        ("get", "secrets"),
        ("list", "pods"),
        ("create", "events"),
    ] {
        assert!(
            !can(verb, resource),
            "{verb} {resource} must not be allowed"
        );
    }
}

#[test]
fn directory_and_kube_sinks_write_the_same_object() {
    let k = shared();
    k.create_namespace("same-object");
    let kube = sidecar(k, "sidecar-kube", &[]);
    let dir = Sidecar::start_named("sidecar-dir", &[]);
    let hook = webhook(vec![alert("Same", "same-object", "p")]);
    assert_eq!(kube.post_alerts(&hook).status, 201);
    assert_eq!(dir.post_alerts(&hook).status, 201);
    let from_kube = wait_rrs(k, "same-object", "the resource", |r| r.len() == 1).remove(0);
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

#[test]
fn a_10000_signal_storm_keeps_api_writes_bounded() {
    let k = shared();
    k.create_namespace("kube-bigstorm");
    let s = sidecar(k, "sidecar", &[("SIGNALGATE_FLUSH_INTERVAL", "1s")]);
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
                    let a = s.post("/api/v1/signals/prometheus", body, "t");
                    assert!(a.status == 201 || a.status == 202, "{}", a.body);
                }
            });
        }
    });
    let sent = started.elapsed();
    let items = wait_rrs(
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

/// `LIST`s of RemediationRequests the API server has answered so far.
fn lists_served(k: &ApiServer) -> f64 {
    let (status, metrics) = k.get(Identity::Admin, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"remediationrequests\"")
                && l.contains("verb=\"LIST\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
    let k = private();
    k.create_namespace("relist");
    prepare(&k);
    let mut s = sidecar(
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
    wait_rrs(&k, "relist", "60 resources", |r| r.len() == 60);
    wait_rrs(&k, FALLBACK, "60 resources", |r| {
        r.iter()
            .filter(|x| x["spec"]["signalName"] == "Relist")
            .count()
            == 60
    });
    // The in-memory store forgets everything; the group comes again.
    s.restart();
    let before = lists_served(&k);
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
    assert_eq!(lists_served(&k) - before, 8.0);
    assert_eq!(rrs(&k, "relist").len(), 60);
    let lookups: Vec<String> = k
        .remediation_request_lists()
        .into_iter()
        .filter(|uri| uri.contains("labelSelector="))
        .collect();
    // The first sending's (the namespaces were new to the store) and these 8.
    assert!(lookups.len() >= 8, "{lookups:#?}");
    (s, lookups)
}

#[test]
fn a_storm_running_when_the_store_lost_its_data_is_found_and_goes_on() {
    let k = shared();
    // Alerts of a namespace that does not exist: the storm resource sits in
    // the fallback namespace, found there by its original namespace.
    let mut s = sidecar(
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
    wait_rrs(k, FALLBACK, "the storm counting three alerts", |r| {
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
    let items = wait_rrs(k, FALLBACK, "the storm counting six alerts", |r| {
        ours(r)
            .iter()
            .any(|x| x["spec"]["storm"]["alertCount"] == 6)
    });
    assert_eq!(ours(&items).len(), 3, "two own resources and one storm");
}
