//! The sidecar binary over HTTP: every behaviour runs against the in-memory
//! store and against a private Redis, with the directory sink.

use std::time::Duration;

use serde_json::{json, Value};
use signalgate_tests::payloads::{alert, pod_event, resolved, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::sidecar::Sidecar;

/// The store a test runs against.
enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    fn redis() -> Backend {
        Backend::Redis(RedisServer::start())
    }

    fn start(&self, extra: &[(&str, &str)]) -> Sidecar {
        let url;
        let mut env: Vec<(&str, &str)> = extra.to_vec();
        if let Backend::Redis(r) = self {
            url = r.url();
            env.push(("SIGNALGATE_REDIS_URL", &url));
        }
        Sidecar::start(&env)
    }
}

/// Generates one test per store for each behaviour function.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(&super::Backend::Memory) } )*
        }
        mod redis {
            $( #[test] fn $name() { super::$name(&super::Backend::redis()) } )*
        }
    };
}

on_every_store!(
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

fn first_alert_creates_a_complete_resource(b: &Backend) {
    let s = b.start(&[]);
    let a = s.post_alerts(&webhook(vec![alert(
        "KubePodCrashLooping",
        "shop",
        "cart-1",
    )]));
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

fn repeats_are_duplicates_counted_in_the_same_resource(b: &Backend) {
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

fn every_alert_of_a_batch_is_processed(b: &Backend) {
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
    let all = s.wait_resources("3 resources, one counted twice", |r| {
        r.len() == 3
            && r.iter()
                .any(|x| x["spec"]["deduplication"]["occurrenceCount"] == 2)
    });
    let namespaces: Vec<&str> = all
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(namespaces, ["ns1", "ns1", "ns2"]);
}

fn resolved_alerts_create_nothing(b: &Backend) {
    let s = b.start(&[]);
    let a = s.post_alerts(&webhook(vec![resolved("A", "shop", "p1")]));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["signals"][0]["outcome"], "resolved");
    assert!(s.resources().is_empty());
    assert_eq!(
        s.metric("signalgate_signals_total{outcome=\"resolved\",type=\"prometheus\"}"),
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

fn kubernetes_events_are_deduplicated_across_count_increments(b: &Backend) {
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

fn storm_of_distinct_alerts_becomes_one_storm_resource(b: &Backend) {
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

fn invalid_input_is_refused_and_changes_nothing(b: &Backend) {
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

fn sigterm_flushes_pending_counts_and_exits_zero(b: &Backend) {
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

fn concurrent_identical_requests_create_exactly_one_resource(b: &Backend) {
    let s = b.start(&[]);
    let hook = webhook(vec![alert("NodeDown", "infra", "p")]);
    let body = serde_json::to_vec(&hook).unwrap();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..40)
            .map(|_| scope.spawn(|| s.post("/api/v1/signals/prometheus", &body, "t").status))
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

#[test]
fn redis_outage_answers_503_with_retry_after_then_recovers() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let s = Sidecar::start(&[
        ("SIGNALGATE_REDIS_URL", &url),
        ("SIGNALGATE_REDIS_TIMEOUT", "300ms"),
    ]);
    assert_eq!(
        s.post_alerts(&webhook(vec![alert("A", "shop", "p1")]))
            .status,
        201
    );
    redis.stop();
    let a = s.post_alerts(&webhook(vec![alert("B", "shop", "p2")]));
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a
        .header("retry-after")
        .is_some_and(|v| v.parse::<u64>().is_ok()));
    assert_eq!(s.admin_get("/readyz").status, 503);
    redis.start_again();
    wait_for(
        "readiness back after Redis restarts",
        Duration::from_secs(15),
        || (s.admin_get("/readyz").status == 200).then_some(()),
    );
    let a = s.post_alerts(&webhook(vec![alert("B", "shop", "p2")]));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(s.resources().len(), 2);
}

#[test]
fn two_sidecars_on_one_redis_create_each_incident_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = Sidecar::start_named("sidecar-a", &[("SIGNALGATE_REDIS_URL", &url)]);
    let dir = format!("dir:{}", a.sink_dir.display());
    let b = Sidecar::start_named(
        "sidecar-b",
        &[("SIGNALGATE_REDIS_URL", &url), ("SIGNALGATE_SINK", &dir)],
    );
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            serde_json::to_vec(&webhook(vec![alert("Race", "shop", &format!("p{i}"))])).unwrap()
        })
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..60)
            .map(|n| {
                let side = if n % 2 == 0 { &a } else { &b };
                let body = &bodies[n % 5];
                scope.spawn(move || side.post("/api/v1/signals/prometheus", body, "t").status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&c| c == 201).count(),
        5,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|&c| c == 201 || c == 202),
        "{statuses:?}"
    );
    let all = a.wait_resources("5 resources counted 12 times each", |r| {
        r.len() == 5
            && r.iter()
                .all(|x| x["spec"]["deduplication"]["occurrenceCount"] == 12)
    });
    assert_eq!(all.len(), 5);
}

#[test]
fn redis_restored_from_an_older_snapshot_does_not_make_a_second_resource() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    // A window long enough for Redis to restart and the sidecar to reconnect
    // while the incident below is still live.
    let s = Sidecar::start(&[
        ("SIGNALGATE_REDIS_URL", &url),
        ("SIGNALGATE_DEDUP_TTL", "6s"),
    ]);
    let first = s.post_alerts(&webhook(vec![alert("Old", "shop", "p1")]));
    assert_eq!(first.status, 201, "{}", first.body);
    // The store has known `shop` for a whole dedup window (time must pass).
    std::thread::sleep(Duration::from_millis(6200));
    // A snapshot, then an incident the snapshot does not hold.
    redis.cli(&["SAVE"]);
    let hook = webhook(vec![alert("New", "shop", "p2")]);
    let created = s.post_alerts(&hook);
    assert_eq!(created.status, 201, "{}", created.body);
    let name = created.json()["signals"][0]["resource"].clone();
    // Redis comes back from that snapshot (as after a crash without AOF, or
    // a failover to a replica that lagged): `shop` is remembered, p2 is not.
    redis.start_again();
    assert_eq!(
        redis.cli(&["EXISTS", "sg:{shop}:m"]).trim(),
        "1",
        "the snapshot was loaded"
    );
    let again = wait_for("the sidecar back on Redis", Duration::from_secs(15), || {
        let a = s.post_alerts(&hook);
        (a.status != 503).then_some(a)
    });
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(
        again.json()["signals"][0]["outcome"],
        "duplicate",
        "{}",
        again.body
    );
    assert_eq!(
        again.json()["signals"][0]["resource"],
        name,
        "{}",
        again.body
    );
    let news: Vec<Value> = s
        .resources()
        .into_iter()
        .filter(|r| r["spec"]["signalName"] == "New")
        .collect();
    assert_eq!(news.len(), 1, "{news:#?}");
}

#[test]
fn a_redis_that_refuses_info_is_used_with_a_warning() {
    let redis = RedisServer::start_with(&["--rename-command", "INFO", ""]);
    let url = redis.url();
    let s = Sidecar::start(&[("SIGNALGATE_REDIS_URL", &url)]);
    let a = s.post_alerts(&webhook(vec![alert("NoInfo", "shop", "p1")]));
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(s.log().contains("Redis refuses INFO"), "{}", s.log_tail(20));
}

#[test]
fn redis_restarted_empty_does_not_make_a_second_resource() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let s = Sidecar::start(&[("SIGNALGATE_REDIS_URL", &url)]);
    let hook = webhook(vec![alert("Flushed", "shop", "p1")]);
    let first = s.post_alerts(&hook);
    assert_eq!(first.status, 201, "{}", first.body);
    s.wait_resources("the resource", |r| r.len() == 1);
    // As after a failover to a fresh replica: the same address, no data.
    redis.stop();
    redis.start_again();
    wait_for("readiness back", Duration::from_secs(15), || {
        (s.admin_get("/readyz").status == 200).then_some(())
    });
    let again = s.post_alerts(&hook);
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.json()["signals"][0]["outcome"], "duplicate");
    assert_eq!(
        again.json()["signals"][0]["resource"],
        first.json()["signals"][0]["resource"]
    );
    // The adopted claim is in Redis again: the next repeat is a plain duplicate.
    assert_eq!(s.post_alerts(&hook).status, 202);
    let all = s.wait_resources("one resource counting 3", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 3
    });
    assert_eq!(all.len(), 1);
}

#[test]
fn a_restart_on_the_memory_store_keeps_counting_in_the_same_file() {
    let mut s = Sidecar::start(&[]);
    let hook = webhook(vec![alert("Restarted", "shop", "p1")]);
    let first = s.post_alerts(&hook);
    assert_eq!(first.status, 201, "{}", first.body);
    s.restart();
    // Re-sent by several senders at once: one request adopts the file, the
    // others wait for it (or come after); all name the file that exists.
    let body = serde_json::to_vec(&hook).unwrap();
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| s.post("/api/v1/signals/prometheus", &body, "t")))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for again in &answers {
        assert_eq!(again.status, 202, "{}", again.body);
        assert_eq!(again.json()["signals"][0]["outcome"], "duplicate");
        assert_eq!(
            again.json()["signals"][0]["resource"],
            first.json()["signals"][0]["resource"],
            "{}",
            again.body
        );
    }
    let all = s.wait_resources("one file counting 13", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 13
    });
    assert_eq!(all.len(), 1);
}

#[test]
fn live_incidents_re_sent_after_a_restart_are_adopted_not_taken_for_a_storm() {
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
        ("SIGNALGATE_STORM_WINDOW", "200ms"),
    ]);
    // Three incidents, each created on its own (more than a window apart).
    let pods = ["p1", "p2", "p3"];
    let mut names = Vec::new();
    for pod in pods {
        let a = s.post_alerts(&webhook(vec![alert("Live", "shop", pod)]));
        assert_eq!(a.status, 201, "{}", a.body);
        names.push(a.json()["signals"][0]["resource"].clone());
        std::thread::sleep(Duration::from_millis(250));
    }
    // The store forgets everything; Alertmanager re-sends the group.
    s.restart();
    let all = webhook(pods.iter().map(|p| alert("Live", "shop", p)).collect());
    let a = s.post_alerts(&all);
    assert_eq!(a.status, 202, "{}", a.body);
    for (signal, name) in a.json()["signals"].as_array().unwrap().iter().zip(&names) {
        assert_eq!(signal["outcome"], "duplicate", "{}", a.body);
        assert_eq!(&signal["resource"], name, "{}", a.body);
    }
    let rrs = s.wait_resources("the three resources, counting 2 each", |r| {
        r.len() == 3
            && r.iter()
                .all(|x| x["spec"]["deduplication"]["occurrenceCount"] == 2)
    });
    assert!(rrs
        .iter()
        .all(|x| x["metadata"]["labels"]["signalgate.io/storm"] == "false"));
}

#[test]
fn a_storm_running_when_the_store_lost_its_data_goes_on_in_the_same_resource() {
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
        ("SIGNALGATE_STORM_WINDOW", "2m"),
    ]);
    let alerts = |pods: std::ops::Range<u32>| {
        webhook(
            pods.map(|i| alert("Storm", "shop", &format!("p{i}")))
                .collect(),
        )
    };
    // Two resources of their own, then a storm of three.
    let a = s.post_alerts(&alerts(0..5));
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        a.json()["signals"][2]["outcome"],
        "storm_started",
        "{}",
        a.body
    );
    let storm = a.json()["signals"][2]["resource"].clone();
    s.wait_resources("two resources and a storm of three", |r| {
        r.len() == 3 && r.iter().any(|x| x["spec"]["storm"]["alertCount"] == 3)
    });
    // The store forgets everything while the storm runs; new alerts come.
    s.restart();
    let a = s.post_alerts(&alerts(5..8));
    assert_eq!(a.status, 202, "{}", a.body);
    for signal in a.json()["signals"].as_array().unwrap() {
        assert_eq!(signal["outcome"], "storm_aggregated", "{}", a.body);
        assert_eq!(signal["resource"], storm, "{}", a.body);
    }
    let all = s.wait_resources("the storm counting six alerts", |r| {
        r.iter().any(|x| x["spec"]["storm"]["alertCount"] == 6)
    });
    assert_eq!(all.len(), 3);
}

#[test]
fn a_failed_lookup_gives_back_the_claims_the_request_took() {
    use signalgate_model::signal::fingerprint;
    use signalgate_model::SignalType;
    let s = Sidecar::start(&[("SIGNALGATE_DEDUP_TTL", "300ms")]);
    // `warm` is known to the store for a whole dedup window (time must pass).
    let first = s.post_alerts(&webhook(vec![alert("First", "warm", "p0")]));
    assert_eq!(first.status, 201, "{}", first.body);
    std::thread::sleep(Duration::from_millis(400));
    // `cold` is new to the store, and looking in the sink for its alert
    // fails: the link the lookup reads is a directory.
    let fp = fingerprint(SignalType::Prometheus, "cold", "Pod", "p1", "Broken");
    let link = s.sink_dir.join("cold").join(".by-fingerprint").join(fp);
    std::fs::create_dir_all(&link).unwrap();
    let both = webhook(vec![
        alert("New", "warm", "p2"),
        alert("Broken", "cold", "p1"),
    ]);
    let a = s.post_alerts(&both);
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.header("retry-after").is_some());
    std::fs::remove_dir(&link).unwrap();
    // The retry creates both at once: the claim the failed request took for
    // warm/p2 was given back (kept, its 15 s lease would make the retry
    // wait past its 5 s deadline).
    let a = s.post_alerts(&both);
    assert_eq!(a.status, 201, "{}", a.body);
    // (warm/p2 was counted by the failed request: its retry is a duplicate
    // that takes the claim over and creates the resource.)
    let answer = a.json();
    let outcomes: Vec<&str> = answer["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["duplicate", "created"]);
    let names: Vec<String> = s
        .resources()
        .iter()
        .map(|r| r["spec"]["signalName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(["First", "New", "Broken"]
        .iter()
        .all(|n| names.iter().any(|x| x == n)));
}

#[test]
fn a_resource_deleted_from_the_sink_is_made_again_on_the_next_sighting() {
    let s = Sidecar::start(&[("SIGNALGATE_FLUSH_INTERVAL", "100ms")]);
    let hook = webhook(vec![alert("StillFiring", "shop", "p1")]);
    let first = s.post_alerts(&hook);
    assert_eq!(first.status, 201, "{}", first.body);
    // Whoever acted on it deletes it; the alert keeps firing.
    for path in std::fs::read_dir(s.sink_dir.join("shop")).unwrap() {
        let path = path.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            std::fs::remove_file(path).unwrap();
        }
    }
    // The next flush finds it gone and the store forgets the incident: a
    // later sighting creates a new resource (not a duplicate of nothing).
    let again = wait_for("a new resource", Duration::from_secs(10), || {
        let a = s.post_alerts(&hook);
        (a.status == 201).then_some(a)
    });
    assert_eq!(again.json()["signals"][0]["outcome"], "created");
    assert_ne!(
        again.json()["signals"][0]["resource"],
        first.json()["signals"][0]["resource"]
    );
    assert_eq!(s.resources().len(), 1);
}

#[test]
fn counts_catch_up_after_a_request_whose_other_create_failed() {
    let s = Sidecar::start(&[
        ("SIGNALGATE_FLUSH_INTERVAL", "100ms"),
        ("SIGNALGATE_DEDUP_TTL", "300ms"),
    ]);
    // Both namespaces known to the store for a window (time must pass), so
    // nothing is looked up and the creates are what fails.
    for ns in ["shop", "blocked"] {
        let a = s.post_alerts(&webhook(vec![alert("Warm", ns, "p0")]));
        assert_eq!(a.status, 201, "{}", a.body);
    }
    std::thread::sleep(Duration::from_millis(400));
    // `blocked` cannot hold resources any more: its directory is a file.
    std::fs::remove_dir_all(s.sink_dir.join("blocked")).unwrap();
    std::fs::write(s.sink_dir.join("blocked"), b"").unwrap();
    let both = webhook(vec![
        alert("Fine", "shop", "p1"),
        alert("Stuck", "blocked", "p2"),
    ]);
    let a = s.post_alerts(&both);
    assert_eq!(a.status, 503, "{}", a.body);
    std::fs::remove_file(s.sink_dir.join("blocked")).unwrap();
    // The sender's retry: shop/p1's resource was made by the failed request.
    let a = s.post_alerts(&both);
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.json()["signals"][0]["outcome"], "duplicate", "{}", a.body);
    // Both of its sightings end up in it.
    s.wait_resources("shop/p1 counting 2, blocked/p2 created", |r| {
        r.iter().any(|x| {
            x["spec"]["signalName"] == "Fine" && x["spec"]["deduplication"]["occurrenceCount"] == 2
        }) && r.iter().any(|x| x["spec"]["signalName"] == "Stuck")
    });
}

#[test]
fn on_sigterm_it_keeps_serving_unready_for_the_shutdown_delay_then_exits() {
    let mut s = Sidecar::start(&[("SIGNALGATE_SHUTDOWN_DELAY", "3s")]);
    s.sigterm();
    wait_for("readiness false", Duration::from_secs(5), || {
        (s.admin_get("/readyz").status == 503).then_some(())
    });
    // Envoy may still be sending: served as usual.
    let a = s.post_alerts(&webhook(vec![alert("Late", "shop", "p1")]));
    assert_eq!(a.status, 201, "{}", a.body);
    let status = s
        .terminate(Duration::from_secs(15))
        .expect("exits after the delay");
    assert!(status.success(), "exit status {status}");
    assert_eq!(s.resources().len(), 1);
}

#[test]
fn a_final_flush_stuck_on_the_sink_does_not_keep_it_from_exiting() {
    // Only the shutdown flush writes counts; it gets SHUTDOWN_GRACE.
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_FLUSH_INTERVAL", "1h"),
        ("SIGNALGATE_SHUTDOWN_GRACE", "1s"),
    ]);
    let hook = webhook(vec![alert("Hung", "shop", "p1")]);
    assert_eq!(s.post_alerts(&hook).status, 201);
    // The resource file becomes a FIFO nobody writes: reading it (the
    // directory sink's update) blocks for ever, like a hung volume.
    let file = s.resources_paths().pop().expect("one resource file");
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(s.post_alerts(&hook).status, 202);

    let status = s
        .terminate(Duration::from_secs(15))
        .expect("exits although its final flush hangs");
    assert!(status.success(), "exit status {status}");
    let log = s.log();
    assert!(log.contains("the final flush did not finish"), "{log}");
}

#[test]
fn requests_over_max_in_flight_are_answered_503_before_their_body_is_read() {
    use std::io::{Read, Write};
    let s = Sidecar::start(&[("SIGNALGATE_MAX_IN_FLIGHT", "2")]);
    let in_flight = || s.metric("signalgate_requests_in_flight");

    // Two requests whose bodies stop halfway hold both places.
    let mut held: Vec<(std::net::TcpStream, Vec<u8>)> = ["p1", "p2"]
        .iter()
        .map(|pod| {
            let body = serde_json::to_vec(&webhook(vec![alert("Held", "shop", pod)])).unwrap();
            let mut conn = std::net::TcpStream::connect(s.api).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(
                conn,
                "POST /api/v1/signals/prometheus HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            let half = body.len() / 2;
            conn.write_all(&body[..half]).unwrap();
            (conn, body[half..].to_vec())
        })
        .collect();
    wait_for("two requests in flight", Duration::from_secs(10), || {
        (in_flight() == 2.0).then_some(())
    });

    let a = s.post_alerts(&webhook(vec![alert("Turned", "shop", "p3")]));
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.header("retry-after"), Some("1"));
    assert_eq!(
        a.json()["type"],
        "https://signalgate.io/problems/overloaded"
    );
    assert_eq!(
        s.metric("signalgate_errors_total{kind=\"overloaded\"}"),
        1.0
    );

    // The held requests complete normally once their bodies arrive.
    for (conn, rest) in &mut held {
        conn.write_all(rest).unwrap();
        let mut head = [0u8; 12];
        conn.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 201");
    }
    wait_for("no request in flight", Duration::from_secs(10), || {
        (in_flight() == 0.0).then_some(())
    });
    // Nothing of the refused request was recorded; sent again, it is.
    assert_eq!(s.resources().len(), 2);
    let a = s.post_alerts(&webhook(vec![alert("Turned", "shop", "p3")]));
    assert_eq!(a.status, 201, "{}", a.body);
}
