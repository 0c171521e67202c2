//! An incident's whole life through the sidecar binary (directory sink),
//! on the in-memory store and on a private Redis: the same firing however
//! late, its resolution recorded, a new firing a new resource, the
//! remediation controller's `status.phase` respected, storms that outlast
//! their maximum duration continued. Driven by direct POSTs, so each step
//! is exact; `lifecycle_alertmanager.rs` runs the same life with a real
//! Alertmanager.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::sidecar::{Sidecar, StoreBackend};

signalgate_tests::on_every_store!(
    the_same_firing_after_the_window_is_a_duplicate,
    a_resolution_is_recorded_and_the_next_firing_is_a_new_resource,
    a_resource_being_remediated_absorbs_new_firings,
    a_storm_that_outlasts_its_maximum_continues_at_once,
);

/// Alert `name` on `shop/<pod>` firing since `starts_at`.
fn firing(name: &str, pod: &str, starts_at: &str) -> Value {
    let mut a = alert(name, "shop", pod);
    a["startsAt"] = json!(starts_at);
    a
}

/// The same alert, resolved at `ends_at`.
fn resolved(name: &str, pod: &str, starts_at: &str, ends_at: &str) -> Value {
    let mut a = firing(name, pod, starts_at);
    a["status"] = json!("resolved");
    a["endsAt"] = json!(ends_at);
    a
}

/// Posts one alert; its status, outcome and resource.
fn post(s: &Sidecar, a: Value) -> (u16, String, String) {
    let answer = s.post_alerts(&webhook(vec![a]));
    let body = answer.json();
    let signal = &body["signals"][0];
    (
        answer.status,
        signal["outcome"].as_str().unwrap_or_default().to_string(),
        signal["resource"].as_str().unwrap_or_default().to_string(),
    )
}

/// The resource `namespace/name` as the directory sink holds it.
fn resource_path(s: &Sidecar, resource: &str) -> PathBuf {
    let (ns, name) = resource.split_once('/').expect("namespace/name");
    s.sink_dir.join(ns).join(format!("{name}.json"))
}

fn read(s: &Sidecar, resource: &str) -> Value {
    let path = resource_path(s, resource);
    serde_json::from_slice(&std::fs::read(&path).expect("resource file")).expect("JSON")
}

/// Plays the remediation controller: writes `status` into the resource
/// (atomically, as the sink itself does).
fn set_status(s: &Sidecar, resource: &str, status: Value) {
    let path = resource_path(s, resource);
    let mut rr = read(s, resource);
    rr["status"] = status;
    let tmp = path.with_extension("controller-tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&rr).expect("JSON")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

/// RFC 3339 for now plus `ahead` (negative: in the past), in ms.
fn at(ahead_ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    signalgate_model::rfc3339::format_unix_millis(now + ahead_ms)
}

fn the_same_firing_after_the_window_is_a_duplicate(b: &StoreBackend) {
    let s = b.start(&[("SIGNALGATE_DEDUP_TTL", "300ms")]);
    let (status, outcome, first) = post(&s, firing("DiskFull", "db-0", "2026-12-06T01:00:00Z"));
    assert_eq!((status, outcome.as_str()), (201, "created"));
    // Silence longer than the dedup window (time must pass): Alertmanager's
    // next re-send of the same firing, hours later in production.
    std::thread::sleep(Duration::from_millis(700));
    let (status, outcome, again) = post(&s, firing("DiskFull", "db-0", "2026-12-06T01:00:00Z"));
    assert_eq!((status, outcome.as_str()), (202, "duplicate"));
    assert_eq!(again, first);
    let all = s.wait_resources("one resource counting 2", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 2
    });
    assert_eq!(all[0]["spec"]["deduplication"]["firingCount"], 1);
}

fn a_resolution_is_recorded_and_the_next_firing_is_a_new_resource(b: &StoreBackend) {
    let s = b.start(&[]);
    let t1 = "2026-12-06T01:00:00Z";
    let (_, outcome, first) = post(&s, firing("DiskFull", "db-0", t1));
    assert_eq!(outcome, "created");

    let ends = "2026-12-06T01:30:00.500Z";
    let (status, outcome, at_resource) = post(&s, resolved("DiskFull", "db-0", t1, ends));
    assert_eq!((status, outcome.as_str()), (202, "resolved"));
    assert_eq!(at_resource, first);
    s.wait_resources("the resolution recorded", |r| {
        r.len() == 1 && r[0]["spec"]["resolution"]["resolvedAt"] == ends
    });
    // A repeat of the resolution keeps the first one.
    let later = "2026-12-06T01:45:00Z";
    let (_, outcome, _) = post(&s, resolved("DiskFull", "db-0", t1, later));
    assert_eq!(outcome, "resolved");

    // Nobody knows this incident: nothing changes, and the answer says so.
    let (status, outcome, resource) =
        post(&s, resolved("Unknown", "web-1", t1, "2026-12-06T01:31:00Z"));
    assert_eq!(
        (status, outcome.as_str(), resource.as_str()),
        (200, "resolved_unknown", "")
    );

    // It fires again: a new firing, a new resource.
    let (status, outcome, second) = post(&s, firing("DiskFull", "db-0", "2026-12-06T02:00:00Z"));
    assert_eq!((status, outcome.as_str()), (201, "created"));
    assert_ne!(second, first);
    let all = s.wait_resources("two resources", |r| r.len() == 2);
    let old = all
        .iter()
        .find(|r| format!("shop/{}", r["metadata"]["name"].as_str().unwrap_or("")) == first)
        .expect("the first resource");
    assert_eq!(old["spec"]["resolution"]["resolvedAt"], ends);
    assert!(read(&s, &second)["spec"].get("resolution").is_none());
}

fn a_resource_being_remediated_absorbs_new_firings(b: &StoreBackend) {
    let s = b.start(&[("SIGNALGATE_REOPEN_COOLDOWN", "1s")]);
    let t1 = "2026-12-06T01:00:00Z";
    let (_, _, rr) = post(&s, firing("DiskFull", "db-0", t1));
    s.wait_resources("the resource written", |r| r.len() == 1);
    set_status(&s, &rr, json!({"phase": "Running"}));

    // Resolved, then firing again while the controller works on it.
    let (_, outcome, _) = post(&s, resolved("DiskFull", "db-0", t1, "2026-12-06T01:10:00Z"));
    assert_eq!(outcome, "resolved");
    s.wait_resources("the resolution recorded", |r| {
        r[0]["spec"].get("resolution").is_some()
    });
    let t2 = "2026-12-06T01:20:00Z";
    let (status, outcome, into) = post(&s, firing("DiskFull", "db-0", t2));
    assert_eq!(
        (status, outcome.as_str(), into.as_str()),
        (202, "absorbed", rr.as_str())
    );
    let all = s.wait_resources("the new firing counted in it", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["firingCount"] == 2
    });
    let spec = &all[0]["spec"];
    assert!(spec.get("resolution").is_none(), "{spec}");
    assert_eq!(spec["deduplication"]["occurrenceCount"], 2);
    // (written as signalgate writes every time: with milliseconds)
    assert_eq!(
        spec["deduplication"]["lastFiringTime"],
        "2026-12-06T01:20:00.000Z"
    );
    assert_eq!(
        all[0]["status"]["phase"], "Running",
        "the status is the controller's"
    );
    // Its re-sends are duplicates of it.
    let (_, outcome, _) = post(&s, firing("DiskFull", "db-0", t2));
    assert_eq!(outcome, "duplicate");

    // Done a moment ago: within the cooldown a new firing is still absorbed.
    set_status(
        &s,
        &rr,
        json!({"phase": "Completed", "completionTime": at(0)}),
    );
    let (_, outcome, _) = post(&s, firing("DiskFull", "db-0", "2026-12-06T01:30:00Z"));
    assert_eq!(outcome, "absorbed");
    // After the cooldown (time must pass), the next firing is a new resource.
    std::thread::sleep(Duration::from_millis(1_100));
    let (status, outcome, next) = post(&s, firing("DiskFull", "db-0", "2026-12-06T01:40:00Z"));
    assert_eq!((status, outcome.as_str()), (201, "created"));
    assert_ne!(next, rr);
    s.wait_resources("two resources", |r| r.len() == 2);
}

fn a_storm_that_outlasts_its_maximum_continues_at_once(b: &StoreBackend) {
    let s = b.start(&[
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
        ("SIGNALGATE_STORM_WINDOW", "1s"),
        ("SIGNALGATE_STORM_MAX_DURATION", "1s"),
    ]);
    // New alerts every 150 ms for about 2.5 maximum durations: the storm
    // never calms down.
    let mut outcomes = Vec::new();
    for i in 0..17 {
        let (status, outcome, resource) =
            post(&s, firing("Down", &format!("p{i}"), "2026-12-06T01:00:00Z"));
        assert!(status == 201 || status == 202, "{status} {outcome}");
        outcomes.push((outcome, resource));
        std::thread::sleep(Duration::from_millis(150));
    }
    let created = outcomes.iter().filter(|(o, _)| o == "created").count();
    assert_eq!(
        created, 2,
        "only the threshold before the first storm: {outcomes:?}"
    );
    let started: Vec<&str> = outcomes
        .iter()
        .filter(|(o, _)| o == "storm_started")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(started.len() >= 2, "{outcomes:?}");
    let all = s.wait_resources("the storms written", |r| r.len() == 2 + started.len());
    for pair in started.windows(2) {
        let later = read(&s, pair[1]);
        let previous = pair[0].split_once('/').map(|(_, n)| n);
        assert_eq!(
            later["spec"]["storm"]["previous"].as_str(),
            previous,
            "{later}"
        );
    }
    assert!(
        all.iter()
            .filter(|r| r["spec"].get("storm").is_some())
            .count()
            == started.len()
    );
}
