//! The sidecar binary on Redis: an outage answers 503 and recovers; two
//! sidecars share one Redis; what a killed sidecar acknowledged reaches its
//! resource through another; a retry whose first attempt counted late, on
//! another sidecar, counts once; what a sidecar acknowledged reaches its
//! resource even if Redis lost it first; a Redis restored from an older
//! snapshot or restarted empty does not make a second resource.

use std::time::Duration;

use serde_json::Value;
use signalgate_tests::client;
use signalgate_tests::fault_proxy::{Fault, FaultProxy};
use signalgate_tests::payloads::{alert, resolved, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::sidecar::{fresh_source, Sidecar};

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
                scope.spawn(move || {
                    side.post("/api/v1/signals/prometheus", body, &fresh_source())
                        .status
                })
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

/// A sidecar acknowledges duplicates (202) and a resolution, and is killed
/// (SIGKILL: no shutdown, no flush) before its next flush: another sidecar
/// on the same Redis writes them to their resources.
#[test]
fn what_a_killed_sidecar_acknowledged_reaches_its_resource_through_another() {
    let redis = RedisServer::start();
    let url = redis.url();
    // A flushes once an hour: what it counts stays unwritten until it is gone.
    let mut a = Sidecar::start_named(
        "sidecar-a",
        &[
            ("SIGNALGATE_REDIS_URL", &url),
            ("SIGNALGATE_FLUSH_INTERVAL", "1h"),
        ],
    );
    let firing = webhook(vec![alert("Killed", "shop", "p1")]);
    let ending = webhook(vec![alert("Killed", "shop", "p2")]);
    for hook in [&firing, &ending] {
        let made = a.post_alerts(hook);
        assert_eq!(made.status, 201, "{}", made.body);
    }
    for _ in 0..3 {
        let again = a.post_alerts(&firing);
        assert_eq!(again.status, 202, "{}", again.body);
        assert_eq!(again.json()["signals"][0]["outcome"], "duplicate");
    }
    let gone = a.post_alerts(&webhook(vec![resolved("Killed", "shop", "p2")]));
    assert_eq!(gone.status, 202, "{}", gone.body);
    assert_eq!(gone.json()["signals"][0]["outcome"], "resolved");
    let files = a.resources();
    assert_eq!(files.len(), 2);
    assert!(files
        .iter()
        .all(|r| r["spec"]["deduplication"]["occurrenceCount"] == 1
            && r["spec"]["resolution"].is_null()));
    a.kill();

    let dir = format!("dir:{}", a.sink_dir.display());
    let b = Sidecar::start_named(
        "sidecar-b",
        &[("SIGNALGATE_REDIS_URL", &url), ("SIGNALGATE_SINK", &dir)],
    );
    // (the files are where A wrote them: B writes there too)
    a.wait_resources("the duplicates counted and the resolution recorded", |r| {
        r.len() == 2
            && r.iter()
                .any(|x| x["spec"]["deduplication"]["occurrenceCount"] == 4)
            && r.iter()
                .any(|x| x["spec"]["resolution"]["resolvedAt"] == "2026-11-26T21:07:15.000Z")
    });
    assert!(b.metric("signalgate_unwritten_taken_total") >= 2.0);
}

/// Issue 19, finding 1: the store lost counters a sidecar had acknowledged
/// (202) before its flush wrote them (Redis flushed in between). The flush
/// writes what the sidecar acknowledged; before, it found the store empty
/// and dropped them, and the resource kept its first count.
#[test]
fn counts_acknowledged_before_the_store_lost_them_reach_the_resource() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Flushes once an hour, and on SIGTERM: after the store lost the counts.
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_REDIS_URL", &url),
        ("SIGNALGATE_FLUSH_INTERVAL", "1h"),
    ]);
    let hook = webhook(vec![alert("Flushed", "shop", "p1")]);
    let first = s.post_alerts(&hook);
    assert_eq!(first.status, 201, "{}", first.body);
    for _ in 0..3 {
        let again = s.post_alerts(&hook);
        assert_eq!(again.status, 202, "{}", again.body);
        assert_eq!(again.json()["signals"][0]["outcome"], "duplicate");
    }
    assert_eq!(
        s.resources()[0]["spec"]["deduplication"]["occurrenceCount"],
        1
    );
    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    assert!(s.terminate(Duration::from_secs(10)).is_some());
    let all = s.resources();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0]["spec"]["deduplication"]["occurrenceCount"], 4,
        "{all:?}"
    );
}

/// The same for a storm: members acknowledged (202) after the storm's
/// resource was made are written with it although Redis lost them first,
/// and those it listed stay listed (a lookup after the loss finds members
/// by that list). Before, the counts were dropped; then written with no
/// affected resources at all; then with the two lists' union cut to the
/// longer one's length, the rest counted as overflow.
#[test]
fn a_storm_acknowledged_before_the_store_lost_it_keeps_its_members() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_REDIS_URL", &url),
        ("SIGNALGATE_FLUSH_INTERVAL", "1h"),
        ("SIGNALGATE_STORM_THRESHOLD", "2"),
    ]);
    let evicted =
        |pods: &[&str]| webhook(pods.iter().map(|p| alert("Evicted", "shop", p)).collect());
    // Two incidents of their own, then a storm of the next two.
    let own = s.post_alerts(&evicted(&["p1", "p2"]));
    assert_eq!(own.status, 201, "{}", own.body);
    let started = s.post_alerts(&evicted(&["p3", "p4"]));
    assert_eq!(started.status, 201, "{}", started.body);
    assert_eq!(started.json()["signals"][0]["outcome"], "storm_started");
    // Two members more, acknowledged and not written.
    let joined = s.post_alerts(&evicted(&["p5", "p6"]));
    assert_eq!(joined.status, 202, "{}", joined.body);
    let outcomes: Vec<Value> = joined.json()["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["storm_aggregated", "storm_aggregated"]);
    let storm_of = |all: &[Value]| {
        all.iter()
            .find(|r| r["metadata"]["labels"]["signalgate.io/storm"] == "true")
            .cloned()
            .expect("a storm resource")
    };
    let made = storm_of(&s.resources());
    // As made: its starter only; the rest waits for the hourly flush.
    assert_eq!(
        made["spec"]["storm"]["affectedResources"],
        serde_json::json!(["Pod/p3"]),
        "{made}"
    );

    assert_eq!(redis.cli(&["FLUSHALL"]).trim(), "OK");
    assert!(s.terminate(Duration::from_secs(10)).is_some());
    let storm = storm_of(&s.resources());
    let spec = &storm["spec"];
    assert_eq!(spec["storm"]["alertCount"], 4, "{storm}");
    assert_eq!(spec["deduplication"]["occurrenceCount"], 4, "{storm}");
    assert_eq!(
        spec["storm"]["affectedResources"],
        serde_json::json!(["Pod/p3", "Pod/p4", "Pod/p5", "Pod/p6"]),
        "{storm}"
    );
    // Every member listed: none counted as unlisted (a lookup would take a
    // storm with an overflow for any target's).
    assert_eq!(spec["storm"]["affectedResourcesOverflow"], 0, "{storm}");
}

/// Finding 5 of issue 19: a delivery's first attempt reaches sidecar A,
/// whose store call is held in a partition; the sender gives up on it and
/// retries on sidecar B, which counts the delivery; then the partition
/// heals and A's call runs, late. One delivery acknowledged once (by B):
/// counted once. Before the delivery identity, A's late call counted it
/// again (3 for 2 deliveries), as does a sidecar SIGSTOPped between
/// counting and answering.
#[test]
fn a_retry_whose_first_attempt_counted_late_on_another_sidecar_counts_once() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::to_port(redis.port());
    // A reaches Redis through the proxy, and waits for it longer than the
    // sender waits for A.
    let a = Sidecar::start_named(
        "sidecar-a",
        &[
            ("SIGNALGATE_REDIS_URL", &format!("redis://{}", proxy.addr())),
            ("SIGNALGATE_REDIS_TIMEOUT", "30s"),
            ("SIGNALGATE_REQUEST_DEADLINE", "40s"),
            ("SIGNALGATE_CLAIM_LEASE", "45s"),
        ],
    );
    let dir = format!("dir:{}", a.sink_dir.display());
    let b = Sidecar::start_named(
        "sidecar-b",
        &[
            ("SIGNALGATE_REDIS_URL", &redis.url()),
            ("SIGNALGATE_SINK", &dir),
        ],
    );
    let hook = webhook(vec![alert("Late", "shop", "p1")]);
    let made = b.post_alerts(&hook);
    assert_eq!(made.status, 201, "{}", made.body);

    // The delivery: first attempt to A, held; the sender gives up on it.
    proxy.set_fault(Fault::Blackhole);
    let body = serde_json::to_vec(&hook).expect("json");
    let url = format!("http://{}/api/v1/signals/prometheus", a.api);
    let first = std::thread::spawn(move || {
        client::post_json(&url, &body, &[("x-signalgate-source", "alertmanager-0")])
    });
    // Its retry, on B: counted, acknowledged.
    let retry = b.post_alerts_from(&hook, "alertmanager-0");
    assert_eq!(retry.status, 202, "{}", retry.body);
    assert_eq!(
        retry.json()["signals"][0]["outcome"],
        "duplicate",
        "{}",
        retry.body
    );
    // The partition heals: A's call runs now, and A answers the attempt
    // nobody waits for any more.
    proxy.pass();
    let late = first.join().expect("the first attempt's thread");
    let late = late.unwrap_or_else(|e| panic!("A never answered: {e}\n{}", a.log_tail(20)));
    eprintln!(
        "the first attempt, answered late: {} {}",
        late.status, late.body
    );
    let count = redis.cli(&["EVAL", COUNT_OF_ONLY_RECORD, "0"]);
    assert_eq!(
        count.trim(),
        "2",
        "one delivery and its retry count once in the store"
    );
    a.wait_resources("the resource to count two deliveries", |r| {
        r.len() == 1 && r[0]["spec"]["deduplication"]["occurrenceCount"] == 2
    });
}

/// The count (field c) of the only fingerprint record in Redis.
const COUNT_OF_ONLY_RECORD: &str =
    "local k = redis.call('KEYS', 'sg:*:f:*') return redis.call('HGET', k[1], 'c')";

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
