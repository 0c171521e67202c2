//! End to end (see `signalgate_tests::e2e`): Kubernetes Events as
//! kubernetes-event-exporter posts them are deduplicated across count
//! increments (scenario 8).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};
use signalgate_tests::client;
use signalgate_tests::e2e::edge::Edge;
use signalgate_tests::e2e::report::report_as;
use signalgate_tests::e2e::wait::{check, diag, eventually, Wait};
use signalgate_tests::e2e::{sidecar, EVENTS_PATH, OPEN, SETTLE};
use signalgate_tests::process::temp_dir;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{count, shared_api_server, try_list};

/// RFC 3339 with whole seconds (what `metav1.Time` writes).
fn now_secs() -> String {
    let t = signalgate_tests::alertmanager::rfc3339(std::time::SystemTime::now());
    format!("{}Z", &t[..19])
}

/// A Warning event about `pod` as the kubelet writes it (count 1).
fn kubelet_event(ns: &str, name: &str, pod: &str, reason: &str, message: &str) -> Value {
    let now = now_secs();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {
            "kind": "Pod", "namespace": ns, "name": pod, "apiVersion": "v1",
            "uid": "8d3c1f9e-0000-4000-8000-00000000e2e0", "fieldPath": "spec.containers{web}"
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": "kubelet", "host": "node-e2e"},
        "reportingComponent": "kubelet",
        "reportingInstance": "node-e2e"
    })
}

#[test]
fn s8_kubernetes_events_are_deduplicated_across_count_increments() {
    let started = Instant::now();
    let k = shared_api_server();
    let ns = "e2e-events";
    k.create_namespace(ns);
    let redis = RedisServer::start();
    let s = sidecar(k, "sidecar", &redis.url(), &[]);
    let edge = Edge::start(OPEN, &[s.api.port()]);
    let tmp = temp_dir("e2e-events");

    // (event name, pod, reason, message, times the count grows to)
    let events = [
        (
            "web-0.backoff",
            "web-0",
            "BackOff",
            "Back-off restarting failed container web",
            4u64,
        ),
        (
            "web-0.unhealthy",
            "web-0",
            "Unhealthy",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
            2,
        ),
    ];
    let mut posts = Vec::new();
    for (name, pod, reason, message, times) in events {
        let file: PathBuf = tmp.path().join(format!("{name}.json"));
        let event = kubelet_event(ns, name, pod, reason, message);
        std::fs::write(&file, event.to_string()).expect("write event");
        k.kubectl_ok(&["create", "-f", file.to_str().expect("utf-8"), "-o", "name"]);
        for c in 1..=times {
            if c > 1 {
                // The kubelet saw it again: count grows (client-go's event correlation).
                let patch = json!({"count": c, "lastTimestamp": now_secs()}).to_string();
                k.kubectl_ok(&[
                    "patch",
                    "event",
                    name,
                    "-n",
                    ns,
                    "--type=merge",
                    "-p",
                    &patch,
                ]);
            }
            // kubernetes-event-exporter: the event as read from the API,
            // plus clusterName and the involved object's labels, one per request.
            let mut posted: Value = serde_json::from_str(
                &k.kubectl_ok(&["get", "event", name, "-n", ns, "-o", "json"]),
            )
            .expect("kubectl json");
            assert_eq!(posted["count"], c, "{posted}");
            posted["clusterName"] = json!("e2e");
            posted["involvedObject"]["labels"] = json!({"app": "web"});
            let body = serde_json::to_vec(&posted).expect("json");
            let answer = client::post_json(&edge.url(EVENTS_PATH), &body, &[])
                .unwrap_or_else(|e| panic!("POST event: {e}"));
            let want = if c == 1 { 201 } else { 202 };
            assert_eq!(
                answer.status,
                want,
                "{reason} count {c}: {}\n{}",
                answer.body,
                s.log_tail(20)
            );
            posts.push((reason, c, answer.status));
        }
    }

    let expected: BTreeMap<&str, u64> = events.iter().map(|e| (e.2, e.4)).collect();
    let items = check(
        eventually(
            "one resource per event whose occurrenceCount is the number of posts",
            SETTLE,
            || {
                let items = try_list(k, ns)?;
                let got: BTreeMap<String, u64> = items
                    .iter()
                    .map(|r| {
                        (
                            r["spec"]["signalName"].as_str().unwrap_or("").to_string(),
                            count(r),
                        )
                    })
                    .collect();
                let want: BTreeMap<String, u64> =
                    expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                if items.len() > expected.len() {
                    return Err(Wait::Fail(format!("too many resources: {got:?}")));
                }
                if got == want {
                    Ok(items)
                } else {
                    Err(Wait::Retry(format!(
                        "resources by reason with occurrenceCount: {got:?}, expected {want:?}"
                    )))
                }
            },
        ),
        || diag(&[&s], None, Some(&edge)),
    );
    for rr in &items {
        let spec = &rr["spec"];
        assert_eq!(spec["signalType"], "kubernetes-event", "{rr}");
        assert_eq!(spec["severity"], "warning", "{rr}");
        assert_eq!(
            spec["targetResource"],
            json!({"kind": "Pod", "name": "web-0", "namespace": ns}),
            "{rr}"
        );
    }
    report_as(
        "8 kubernetes events",
        "events posted",
        posts.len(),
        expected.len(),
        items.len(),
        started,
        &format!(
            " (posts: {}; occurrenceCount {:?})",
            posts
                .iter()
                .map(|(r, c, st)| format!("{r}#{c}->{st}"))
                .collect::<Vec<_>>()
                .join(" "),
            items
                .iter()
                .map(|r| format!(
                    "{}={}",
                    r["spec"]["signalName"].as_str().unwrap_or("?"),
                    count(r)
                ))
                .collect::<Vec<_>>()
        ),
    );
}
