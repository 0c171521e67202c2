//! The sidecar binary over HTTP: every behaviour here runs against the
//! in-memory store and against a private Redis, with the directory sink.

use std::time::Duration;

use serde_json::{json, Value};
use signalgate_tests::payloads::{alert, pod_event, resolved, webhook};
use signalgate_tests::sidecar::{fresh_source, StoreBackend};

signalgate_tests::on_every_store!(
    first_alert_creates_a_complete_resource,
    repeats_are_duplicates_counted_in_the_same_resource,
    every_alert_of_a_batch_is_processed,
    resolved_alerts_create_nothing,
    kubernetes_events_are_deduplicated_across_count_increments,
    storm_of_distinct_alerts_becomes_one_storm_resource,
    invalid_input_is_refused_and_changes_nothing,
    sigterm_flushes_pending_counts_and_exits_zero,
    concurrent_identical_requests_create_exactly_one_resource,
);

fn spec(r: &Value) -> &Value {
    &r["spec"]
}

fn first_alert_creates_a_complete_resource(b: &StoreBackend) {
    let s = b.start(&[]);
    let a = s.post_alerts_from(
        &webhook(vec![alert("KubePodCrashLooping", "shop", "cart-1")]),
        "test",
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let body = a.json();
    let sig = &body["signals"][0];
    assert_eq!(sig["outcome"], "created");
    assert_eq!(sig["fingerprint"].as_str().map(str::len), Some(64));
    let resource = sig["resource"].as_str().unwrap().to_string();
    assert!(resource.starts_with("shop/rr-"), "{resource}");

    let all = s.resources();
    assert_eq!(all.len(), 1);
    let rr = &all[0];
    assert_eq!(rr["apiVersion"], "signalgate.io/v1alpha1");
    assert_eq!(rr["kind"], "RemediationRequest");
    assert_eq!(
        format!(
            "{}/{}",
            rr["metadata"]["namespace"].as_str().unwrap(),
            rr["metadata"]["name"].as_str().unwrap()
        ),
        resource
    );
    let sp = spec(rr);
    assert_eq!(sp["signalFingerprint"], sig["fingerprint"]);
    assert_eq!(sp["signalName"], "KubePodCrashLooping");
    assert_eq!(sp["signalType"], "prometheus");
    assert_eq!(sp["severity"], "critical");
    assert_eq!(
        sp["targetResource"],
        json!({"kind": "Pod", "name": "cart-1", "namespace": "shop"})
    );
    assert_eq!(sp["source"], "test");
    assert_eq!(sp["firingTime"], "2026-11-26T20:57:15.123Z");
    assert_eq!(sp["signalLabels"]["pod"], "cart-1");
    assert_eq!(
        sp["signalAnnotations"]["summary"],
        "KubePodCrashLooping on shop/cart-1"
    );
    assert_eq!(sp["deduplication"]["occurrenceCount"], 1);
    assert!(sp.get("storm").is_none());
    let labels = &rr["metadata"]["labels"];
    assert_eq!(
        labels["signalgate.io/fingerprint"].as_str().map(str::len),
        Some(63)
    );
    assert_eq!(labels["signalgate.io/signal-type"], "prometheus");
    assert_eq!(labels["signalgate.io/severity"], "critical");
    assert_eq!(labels["signalgate.io/storm"], "false");
    assert_eq!(
        s.metric("signalgate_signals_total{outcome=\"created\",type=\"prometheus\"}"),
        1.0
    );
}

fn repeats_are_duplicates_counted_in_the_same_resource(b: &StoreBackend) {
    let s = b.start(&[]);
    let hook = webhook(vec![alert("HighLatency", "shop", "api-0")]);
    let first = s.post_alerts(&hook);
    assert_eq!(first.status, 201, "{}", first.body);
    for _ in 0..4 {
        let again = s.post_alerts(&hook);
        assert_eq!(again.status, 202, "{}", again.body);
        assert_eq!(again.json()["signals"][0]["outcome"], "duplicate");
        assert_eq!(
            again.json()["signals"][0]["resource"],
            first.json()["signals"][0]["resource"]
        );
    }
    let all = s.wait_resources("occurrenceCount 5", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 5
    });
    let d = &all[0]["spec"]["deduplication"];
    assert!(d["lastSeen"].as_str() >= d["firstSeen"].as_str());
    assert_eq!(
        s.metric("signalgate_signals_total{outcome=\"duplicate\",type=\"prometheus\"}"),
        4.0
    );
}

fn every_alert_of_a_batch_is_processed(b: &StoreBackend) {
    let s = b.start(&[]);
    let a = s.post_alerts(&webhook(vec![
        alert("A", "ns1", "p1"),
        alert("B", "ns1", "p2"),
        alert("A", "ns2", "p1"),
        alert("A", "ns1", "p1"),
    ]));
    assert_eq!(a.status, 201, "{}", a.body);
    let outcomes: Vec<Value> = a.json()["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![
            json!("created"),
            json!("created"),
            json!("created"),
            json!("duplicate")
        ]
    );
    // The alert listed twice is one delivery: counted once, as the next
    // delivery of it shows (2, where counting both copies made 3).
    let count = |x: &Value| x["spec"]["deduplication"]["occurrenceCount"].as_u64();
    s.wait_resources("3 resources, each counted once", |r| {
        r.len() == 3 && r.iter().all(|x| count(x) == Some(1))
    });
    let again = s.post_alerts(&webhook(vec![alert("A", "ns1", "p1")]));
    assert_eq!(again.status, 202, "{}", again.body);
    let all = s.wait_resources("the repeated alert counted twice in all", |r| {
        r.len() == 3 && r.iter().filter(|x| count(x) == Some(2)).count() == 1
    });
    let namespaces: Vec<&str> = all
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["ns1", "ns1", "ns2"]);
}

fn resolved_alerts_create_nothing(b: &StoreBackend) {
    let s = b.start(&[]);
    let a = s.post_alerts(&webhook(vec![resolved("A", "shop", "p1")]));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["signals"][0]["outcome"], "resolved_unknown");
    assert!(s.resources().is_empty());
    assert_eq!(
        s.metric("signalgate_signals_total{outcome=\"resolved_unknown\",type=\"prometheus\"}"),
        1.0
    );
    // Mixed with a firing one: only that one creates.
    let a = s.post_alerts(&webhook(vec![
        resolved("A", "shop", "p1"),
        alert("B", "shop", "p2"),
    ]));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(s.resources().len(), 1);
}

fn kubernetes_events_are_deduplicated_across_count_increments(b: &StoreBackend) {
    let s = b.start(&[]);
    let first = s.post_event(&pod_event("shop", "cart-1", "BackOff", 1));
    assert_eq!(first.status, 201, "{}", first.body);
    for count in 2..=4 {
        let again = s.post_event(&pod_event("shop", "cart-1", "BackOff", count));
        assert_eq!(again.status, 202, "{}", again.body);
    }
    let all = s.wait_resources("one event resource counted 4 times", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 4
    });
    let sp = spec(&all[0]);
    assert_eq!(sp["signalType"], "kubernetes-event");
    assert_eq!(sp["signalName"], "BackOff");
    assert_eq!(sp["severity"], "warning");
    assert_eq!(sp["targetResource"]["name"], "cart-1");
}

fn storm_of_distinct_alerts_becomes_one_storm_resource(b: &StoreBackend) {
    let s = b.start(&[("SIGNALGATE_STORM_THRESHOLD", "3")]);
    let alerts: Vec<Value> = (0..15)
        .map(|i| alert("PodNotReady", "batch", &format!("job-{i}")))
        .collect();
    let a = s.post_alerts(&webhook(alerts));
    assert_eq!(a.status, 201, "{}", a.body);
    let body = a.json();
    let count = |o: &str| {
        body["signals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["outcome"] == o)
            .count()
    };
    assert_eq!(
        (
            count("created"),
            count("storm_started"),
            count("storm_aggregated")
        ),
        (3, 1, 11)
    );
    let all = s.wait_resources("3 resources and a storm of 12", |r| {
        r.len() == 4
            && r.iter().any(|x| {
                x["spec"]["storm"]["alertCount"] == 12
                    && x["spec"]["storm"]["affectedResources"]
                        .as_array()
                        .map(Vec::len)
                        == Some(12)
            })
    });
    let storm = all
        .iter()
        .find(|x| x["metadata"]["labels"]["signalgate.io/storm"] == "true")
        .unwrap();
    assert_eq!(storm["spec"]["signalName"], "SignalStorm");
    assert_eq!(storm["spec"]["targetResource"]["kind"], "Namespace");
    let mut affected: Vec<String> = storm["spec"]["storm"]["affectedResources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    affected.sort();
    let mut expected: Vec<String> = (3..15).map(|i| format!("Pod/job-{i}")).collect();
    expected.sort();
    assert_eq!(affected, expected);
    assert_eq!(s.metric("signalgate_storms_total"), 1.0);
}

fn invalid_input_is_refused_and_changes_nothing(b: &StoreBackend) {
    let s = b.start(&[]);
    let mut bad = webhook(vec![alert("A", "shop", "p1")]);
    bad["alerts"][0]["status"] = json!("pending");
    let a = s.post_alerts(&bad);
    assert_eq!(a.status, 400);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.json()["field"], "/alerts/0/status");

    let a = s.post("/api/v1/signals/prometheus", b"{not json", "t");
    assert_eq!(a.status, 400);
    assert_eq!(
        a.json()["type"],
        "https://signalgate.io/problems/invalid-json"
    );

    let a = s.post_event(&json!({"reason": "X", "type": "Warning"}));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], "/involvedObject");

    // The namespace becomes a directory (or an API path segment): one alert
    // with a namespace that is not a namespace name refuses the whole webhook.
    let escaping = webhook(vec![
        alert("A", "shop", "p1"),
        alert("B", "../escaped", "p2"),
    ]);
    let a = s.post_alerts(&escaping);
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], "/alerts/1/labels/namespace");
    let mut event = pod_event("shop", "cart-1", "BackOff", 1);
    event["involvedObject"]["namespace"] = json!("a b");
    let a = s.post_event(&event);
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], "/involvedObject/namespace");

    let a = s.post("/api/v1/signals/nope", b"{}", "t");
    assert_eq!(a.status, 404);
    let a = signalgate_tests::client::get(&format!("http://{}/api/v1/signals/prometheus", s.api))
        .unwrap();
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));
    let url = format!("http://{}/api/v1/signals/prometheus", s.api);
    let a = signalgate_tests::client::post_json(&url, b"{}", &[("content-type", "text/plain")])
        .unwrap();
    assert_eq!(a.status, 415);
    // Refused as soon as Content-Length says so, before the body is sent.
    assert_eq!(status_of_declared_length(s.api, 2 * 1024 * 1024), 413);

    assert!(s.resources().is_empty());
    assert_eq!(s.metric("signalgate_errors_total{kind=\"invalid\"}"), 5.0);
    // Nothing was recorded: the valid alert of the refused webhook is new.
    let a = s.post_alerts(&webhook(vec![alert("A", "shop", "p1")]));
    assert_eq!(a.status, 201);
}

/// Sends only the headers of a POST declaring `length` bytes; returns the status.
fn status_of_declared_length(addr: std::net::SocketAddr, length: usize) -> u16 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

fn sigterm_flushes_pending_counts_and_exits_zero(b: &StoreBackend) {
    // A flush interval far longer than the test: only the shutdown flush can write the counts.
    let mut s = b.start(&[("SIGNALGATE_FLUSH_INTERVAL", "1h")]);
    let hook = webhook(vec![alert("DiskFull", "ops", "db-0")]);
    assert_eq!(s.post_alerts(&hook).status, 201);
    for _ in 0..6 {
        assert_eq!(s.post_alerts(&hook).status, 202);
    }
    let status = s
        .terminate(Duration::from_secs(15))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    let all = s.resources();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["spec"]["deduplication"]["occurrenceCount"], 7);
}

fn concurrent_identical_requests_create_exactly_one_resource(b: &StoreBackend) {
    let s = b.start(&[]);
    let hook = webhook(vec![alert("NodeDown", "infra", "p")]);
    let body = serde_json::to_vec(&hook).unwrap();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|_| {
                scope.spawn(|| {
                    s.post("/api/v1/signals/prometheus", &body, &fresh_source())
                        .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&c| c == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&c| c == 202).count(),
        39,
        "{statuses:?}"
    );
    let all = s.wait_resources("one resource counted 40 times", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 40
    });
    assert_eq!(all.len(), 1);
}
