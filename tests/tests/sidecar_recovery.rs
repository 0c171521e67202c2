//! The sidecar after its store lost its data or its sink failed: live
//! incidents and storms are found and go on in their resources, failed
//! requests give back their claims, counts catch up.

use std::time::Duration;

use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::sidecar::{fresh_source, Sidecar};

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
            .map(|_| scope.spawn(|| s.post("/api/v1/signals/prometheus", &body, &fresh_source())))
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

/// Waits until the storm `s` wrote has an end, and it has passed.
fn wait_until_the_storm_ended(s: &Sidecar) {
    let written = s.wait_resources("the storm to have an end", |r| {
        r.iter().any(|x| x["spec"]["storm"]["endsAt"].is_string())
    });
    let ends_at = written
        .iter()
        .find_map(|x| x["spec"]["storm"]["endsAt"].as_str())
        .and_then(signalgate_model::rfc3339::unix_millis)
        .expect("endsAt");
    wait_for("the storm to end", Duration::from_secs(10), || {
        (signalgate_tests::lifecycle::now_ms() > ends_at).then_some(())
    });
}

/// Issue 19, finding 1: a storm ended (no new member for a window) while
/// its members kept firing, their repeats counting in it; then the store
/// lost its data. The group re-sent counts in the storm again, rather than
/// making resources of their own and a second storm for the same incidents.
#[test]
fn members_of_an_ended_storm_re_sent_after_the_store_lost_its_data_count_in_it() {
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
        ("SIGNALGATE_STORM_WINDOW", "1s"),
    ]);
    let group = || {
        webhook(
            (0..5)
                .map(|i| alert("Ended", "shop", &format!("p{i}")))
                .collect(),
        )
    };
    let a = s.post_alerts(&group());
    assert_eq!(a.status, 201, "{}", a.body);
    let resources: Vec<serde_json::Value> = a.json()["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["resource"].clone())
        .collect();
    assert_eq!(
        a.json()["signals"][2]["outcome"],
        "storm_started",
        "{}",
        a.body
    );
    let storm = resources[2].clone();
    // The storm ends (a window after its last member joined) ...
    wait_until_the_storm_ended(&s);
    // ... while its members keep firing: duplicates of it.
    let repeat = s.post_alerts(&group());
    assert_eq!(repeat.status, 202, "{}", repeat.body);
    assert_eq!(
        repeat.json()["signals"][3]["resource"],
        storm,
        "{}",
        repeat.body
    );
    s.wait_resources("the storm counting the repeats", |r| {
        r.iter()
            .any(|x| x["spec"]["deduplication"]["occurrenceCount"] == 6)
    });

    // The store forgets everything; Alertmanager re-sends the group.
    s.restart();
    let again = s.post_alerts(&group());
    assert_eq!(again.status, 202, "{}", again.body);
    for (signal, resource) in again.json()["signals"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&resources)
    {
        assert_eq!(signal["outcome"], "duplicate", "{}", again.body);
        assert_eq!(&signal["resource"], resource, "{}", again.body);
    }
    let all = s.wait_resources("the storm counting its members' sightings", |r| {
        r.iter()
            .any(|x| x["spec"]["deduplication"]["occurrenceCount"] == 9)
    });
    assert_eq!(all.len(), 3, "{all:?}");
    let storms: Vec<_> = all
        .iter()
        .filter(|x| x["spec"]["storm"].is_object())
        .collect();
    assert_eq!(storms.len(), 1);
    assert_eq!(storms[0]["spec"]["storm"]["alertCount"], 3);
}

/// Issue 19, finding 1: after the store lost its data, a storm is known
/// only from the sink, and a namespace may show several. A member re-sent
/// counts in the storm that lists its target, not in whichever storm
/// started last; and a new incident whose firing began before a storm's
/// last sighting is not taken for that storm's member unless the storm
/// lists its target. Before, only the latest storm was looked at: the new
/// group joined the old storm (its alerts' `startsAt` lay before the
/// storm's last sighting), and the old group's members, re-sent after a
/// newer storm started, joined the newer one as new members.
#[test]
fn members_re_sent_after_the_store_lost_its_data_count_in_the_storm_that_lists_them() {
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
        ("SIGNALGATE_STORM_WINDOW", "1s"),
    ]);
    let group = |name: &str, pods: std::ops::Range<usize>| {
        webhook(
            pods.map(|i| alert(name, "shop", &format!("p{i}")))
                .collect(),
        )
    };
    let outcomes = |answer: &signalgate_tests::client::Answer| -> Vec<(String, String)> {
        answer.json()["signals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["outcome"].as_str().unwrap_or("").to_string(),
                    x["resource"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let old = s.post_alerts(&group("Old", 0..5));
    assert_eq!(old.status, 201, "{}", old.body);
    let old_resources: Vec<String> = outcomes(&old).into_iter().map(|(_, r)| r).collect();
    let old_storm = old_resources[2].clone();
    wait_until_the_storm_ended(&s);

    // The store forgets everything. A new group fires (its alerts' startsAt
    // as old as the first group's): new incidents, a storm of their own.
    s.restart();
    let new = s.post_alerts(&group("New", 10..15));
    assert_eq!(new.status, 201, "{}", new.body);
    let new_outcomes = outcomes(&new);
    let kinds: Vec<&str> = new_outcomes.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "created",
            "storm_started",
            "storm_aggregated",
            "storm_aggregated"
        ],
        "{}",
        new.body
    );
    let new_storm = new_outcomes[2].1.clone();
    assert_ne!(new_storm, old_storm);

    // The first group is re-sent: each alert counts where it was counted.
    let again = s.post_alerts(&group("Old", 0..5));
    assert_eq!(again.status, 202, "{}", again.body);
    for ((outcome, resource), before) in outcomes(&again).iter().zip(&old_resources) {
        assert_eq!(
            (outcome.as_str(), resource),
            ("duplicate", before),
            "{}",
            again.body
        );
    }
    let all = s.wait_resources("each storm counting its own members", |r| {
        r.iter()
            .any(|x| x["spec"]["deduplication"]["occurrenceCount"] == 6)
    });
    let storms: Vec<(&str, u64)> = all
        .iter()
        .filter(|x| x["spec"]["storm"].is_object())
        .map(|x| {
            (
                x["metadata"]["name"].as_str().unwrap(),
                x["spec"]["storm"]["alertCount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(storms.len(), 2, "{all:?}");
    assert!(storms.iter().all(|(_, n)| *n == 3), "{storms:?}");
    assert_eq!(all.len(), 6, "{all:?}");
}

/// Issue 19, finding 1: the store lost its data, then remembered the
/// namespace for longer than a dedup window (so new fingerprints are no
/// longer looked up) while a new storm ran. Incidents from before the loss
/// re-sent then count where they were counted: their own resources and
/// their ended storm. Before, every one joined the running storm as a new
/// member.
#[test]
fn incidents_re_sent_once_the_store_remembers_the_namespace_again_count_where_they_were() {
    let dedup = Duration::from_secs(1);
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
        ("SIGNALGATE_STORM_WINDOW", "3s"),
        ("SIGNALGATE_DEDUP_TTL", "1s"),
    ]);
    let group = |name: &str, pods: std::ops::Range<usize>| {
        webhook(
            pods.map(|i| alert(name, "shop", &format!("p{i}")))
                .collect(),
        )
    };
    let resources = |answer: &signalgate_tests::client::Answer| -> Vec<String> {
        answer.json()["signals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["resource"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // Two resources of their own and a storm of three, which ends.
    let old = s.post_alerts(&group("Old", 0..5));
    assert_eq!(old.status, 201, "{}", old.body);
    let old_resources = resources(&old);
    wait_until_the_storm_ended(&s);

    // The store forgets everything. A new group storms; the namespace is
    // remembered for a dedup window while its storm runs.
    s.restart();
    let new = s.post_alerts(&group("New", 10..15));
    assert_eq!(new.status, 201, "{}", new.body);
    let new_storm = resources(&new)[2].clone();
    assert!(new_storm.starts_with("shop/storm-"), "{}", new.body);
    std::thread::sleep(dedup + Duration::from_millis(100));

    // The first group is re-sent: each alert counts where it was counted.
    let again = s.post_alerts(&group("Old", 0..5));
    assert_eq!(again.status, 202, "{}", again.body);
    for (signal, before) in again.json()["signals"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&old_resources)
    {
        assert_eq!(signal["outcome"], "duplicate", "{}", again.body);
        assert_eq!(signal["resource"], before.as_str(), "{}", again.body);
    }
    let all = s.wait_resources("each storm counting its own members", |r| {
        r.iter()
            .any(|x| x["spec"]["deduplication"]["occurrenceCount"] == 6)
    });
    assert_eq!(all.len(), 6, "{all:?}");
    let storms: Vec<u64> = all
        .iter()
        .filter_map(|x| x["spec"]["storm"]["alertCount"].as_u64())
        .collect();
    assert_eq!(storms, [3, 3], "{all:?}");
}

#[test]
fn a_failed_lookup_leaves_nothing_that_holds_up_the_retry() {
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
    // The retry creates both at once: nothing the failed request did holds
    // it up (warm/p2, a firing the store did not know, was only reviewed in
    // the sink, and claims a request took are given back: kept, a 15 s lease
    // would make the retry wait past its 5 s deadline).
    let a = s.post_alerts(&both);
    assert_eq!(a.status, 201, "{}", a.body);
    let answer = a.json();
    let outcomes: Vec<&str> = answer["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["created", "created"]);
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
