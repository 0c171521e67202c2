//! Incident lifecycle (issue 18) for Kubernetes Events: an event that
//! kubernetes-event-exporter re-posts each time its `count` grows (same
//! first timestamp, later last timestamp) is ONE incident however far apart
//! the re-posts are: one resource whose occurrence count rises, across many
//! dedup windows. Both event shapes: core/v1 (`firstTimestamp`, `count`)
//! and events.k8s.io/v1 (`eventTime`, `series`); also once the store has
//! forgotten them (the sidecar restarted on its memory store: the sink
//! knows). A new series (a later first timestamp) is a new incident. On the
//! directory sink and on the kube sink against the real kube-apiserver.

use std::time::Duration;

use serde_json::Value;
use signalgate_tests::e2e::wait::diag;
use signalgate_tests::lifecycle::{
    core_event, expect, find, key, now_ms, occurrence_count, series_event, wait_for_clock,
    wait_state, List,
};
use signalgate_tests::remediation::{kube_sidecar, shared_api_server, try_list};
use signalgate_tests::sidecar::{read_resources, Sidecar};

/// SIGNALGATE_DEDUP_TTL in ms: every re-post below comes after it.
const WINDOW_MS: i64 = 1_000;
const SETTINGS: &[(&str, &str)] = &[
    ("SIGNALGATE_DEDUP_TTL", "1s"),
    ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
];
/// Re-posts of the core/v1 event after its first post.
const REPOSTS: u64 = 4;

#[test]
fn a_recurring_event_is_one_resource_across_dedup_windows_on_the_directory_sink() {
    let ns = "lifecycle-events-dir";
    let mut s = Sidecar::start(SETTINGS);
    let dir = s.sink_dir.clone();
    let list = || -> Result<Vec<Value>, String> {
        Ok(read_resources(&dir)
            .into_iter()
            .filter(|rr| rr["metadata"]["namespace"] == ns)
            .collect())
    };
    recurring_events_are_one_resource_each(&mut s, ns, &list);
}

#[test]
fn a_recurring_event_is_one_resource_across_dedup_windows_on_the_kube_sink() {
    let ns = "lifecycle-events-kube";
    let k = shared_api_server();
    k.create_namespace(ns);
    let mut s = kube_sidecar(k, "sidecar", SETTINGS);
    let list = || try_list(k, ns);
    recurring_events_are_one_resource_each(&mut s, ns, &list);
}

/// Whole seconds (what `metav1.Time` holds), a little in the past.
fn series_start() -> i64 {
    (now_ms() - 5_000).div_euclid(1000) * 1000
}

/// Posts `event`; checks the answer; returns the resource it names.
fn post(s: &Sidecar, event: &Value, status: u16, outcome: &str, what: &str) -> Option<String> {
    expect(&s.post_event(event), status, outcome, what, &s.log_tail(20))
}

/// Waits until each of the two resources (and no other) has its count.
fn wait_counts(s: &Sidecar, list: List, counts: [(&str, u64); 2]) {
    wait_state(
        &format!("one resource per event, counting every post: {counts:?}"),
        Duration::from_secs(10),
        list,
        2,
        |rrs| {
            let all = counts
                .iter()
                .all(|(k, n)| find(rrs, k).map(occurrence_count) == Some(*n));
            if rrs.len() == 2 && all {
                Ok(())
            } else {
                Err(format!("expected {counts:?}"))
            }
        },
        &|| diag(&[s], None, None),
    );
}

fn recurring_events_are_one_resource_each(s: &mut Sidecar, ns: &str, list: List) {
    // core/v1: the kubelet's BackOff, its count growing.
    let first = series_start();
    let backoff_at = |count: u64, last: i64| core_event(ns, "web-0", "BackOff", first, count, last);
    let mut last = now_ms();
    let backoff = post(
        s,
        &backoff_at(1, last),
        201,
        "created",
        "the first post of the event",
    )
    .expect("created names its resource");
    for count in 2..=1 + REPOSTS {
        wait_for_clock(last + WINDOW_MS + 200);
        let now = now_ms();
        let what = format!(
            "the event re-posted with count {count}, {} ms after its last post \
             (dedup window {WINDOW_MS} ms), same firstTimestamp",
            now - last
        );
        let at = post(s, &backoff_at(count, now), 202, "duplicate", &what);
        assert_eq!(at.as_deref(), Some(backoff.as_str()), "count {count}");
        last = now;
    }

    // events.k8s.io/v1: first observed at eventTime, series.count growing.
    let observed = series_start();
    let failed_at =
        |count: u64, last: i64| series_event(ns, "api", "FailedCreate", observed, count, last);
    let mut last = now_ms();
    let what = "the first post of the events.k8s.io event";
    let failed =
        post(s, &failed_at(1, last), 201, "created", what).expect("created names its resource");
    for count in 2..=3 {
        wait_for_clock(last + WINDOW_MS + 200);
        let now = now_ms();
        let what = format!(
            "the events.k8s.io event re-posted with series.count {count}, {} ms after its \
             last post (dedup window {WINDOW_MS} ms), same eventTime",
            now - last
        );
        let at = post(s, &failed_at(count, now), 202, "duplicate", &what);
        assert_eq!(at.as_deref(), Some(failed.as_str()), "series.count {count}");
        last = now;
    }
    wait_counts(s, list, [(&backoff, 1 + REPOSTS), (&failed, 3)]);

    // The store forgets them (a restart on the memory store): the sink knows.
    s.restart();
    wait_for_clock(last + WINDOW_MS + 200);
    let now = now_ms();
    let what = "the event re-posted after the store forgot it";
    let at = post(s, &backoff_at(2 + REPOSTS, now), 202, "duplicate", what);
    assert_eq!(at.as_deref(), Some(backoff.as_str()), "{what}");
    let what = "the events.k8s.io event re-posted after the store forgot it";
    let at = post(s, &failed_at(4, now), 202, "duplicate", what);
    assert_eq!(at.as_deref(), Some(failed.as_str()), "{what}");
    wait_counts(s, list, [(&backoff, 2 + REPOSTS), (&failed, 4)]);

    // A new series of the same event (a later firstTimestamp): a new incident.
    let again = series_start().max(first + 1000);
    let now = now_ms();
    let what = "a new series of the event (a later firstTimestamp)";
    let event = core_event(ns, "web-0", "BackOff", again, 1, now);
    let renewed = post(s, &event, 201, "created", what).expect("created names its resource");
    assert_ne!(renewed, backoff);
    wait_state(
        "a resource for the new series",
        Duration::from_secs(10),
        list,
        3,
        |rrs| {
            if rrs.len() == 3 && rrs.iter().any(|r| key(r) == renewed) {
                Ok(())
            } else {
                Err(format!("no {renewed} yet"))
            }
        },
        &|| diag(&[s], None, None),
    );
}
