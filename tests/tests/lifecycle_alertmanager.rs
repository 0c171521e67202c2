//! Incident lifecycle (issue 18) with a real Alertmanager at compressed
//! timings (group_wait 1 s, group_interval 2 s, repeat_interval 6 s,
//! send_resolved) sending straight to a sidecar on its defaults (memory
//! store, directory sink) with a 2 s dedup window: an alert that keeps
//! firing is ONE resource whose count rises with each re-send; its
//! resolution is recorded; a new firing is a new resource; the test, acting
//! as the remediation controller on the directory sink (rewriting the
//! resource's file with a status), makes new firings absorbed while its
//! phase is not terminal, and again within the re-open cooldown after a
//! terminal phase; after the cooldown a new firing is a new resource.
//! Prints `[lifecycle] ...` (run with `--nocapture`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_tests::alertmanager::{Alertmanager, Receiver};
use signalgate_tests::e2e::wait::diag;
use signalgate_tests::e2e::ALERTS_PATH;
use signalgate_tests::lifecycle::{
    absorbed_into, api_alert, dir_set_status, find, fire_across_windows, firing_count, instance_ms,
    is_resolved, key, now_ms, occurrence_count, phase, resolve_via_alertmanager, rfc3339_ms,
    wait_for_clock, wait_state,
};
use signalgate_tests::sidecar::Sidecar;

const NS: &str = "lifecycle-am";
const ALERT: &str = "KubePodCrashLooping";
const POD: &str = "cart-0";
const HOUR_MS: i64 = 3_600_000;
/// SIGNALGATE_REOPEN_COOLDOWN: long enough for a resolve and a new firing
/// to travel through Alertmanager (a group interval each) within it.
const COOLDOWN_MS: i64 = 12_000;
/// The longest a push takes to reach the sidecar as a notification.
const DELIVERY_MS: i64 = 5_000;
const STEP: Duration = Duration::from_secs(20);

fn firing_since(starts_ms: i64) -> Value {
    api_alert(ALERT, NS, POD, starts_ms, starts_ms + HOUR_MS)
}

#[test]
fn a_firing_alert_is_one_resource_until_resolved_and_the_controller_phase_is_respected() {
    let started = Instant::now();
    let s = Sidecar::start(&[
        ("SIGNALGATE_DEDUP_TTL", "2s"),
        ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
        ("SIGNALGATE_REOPEN_COOLDOWN", "12s"),
        // (at most half the repeat interval: each repeat a delivery)
        ("SIGNALGATE_DELIVERY_WINDOW", "3s"),
    ]);
    let am = Alertmanager::start(
        &Receiver::new(&format!("http://{}{ALERTS_PATH}", s.api))
            .group_by(&["alertname", "namespace", "pod"])
            .group_wait(Duration::from_secs(1))
            .group_interval(Duration::from_secs(2))
            .repeat_interval(Duration::from_secs(6))
            .send_resolved(true),
    );
    let list = || -> Result<Vec<Value>, String> {
        Ok(s.resources()
            .into_iter()
            .filter(|rr| rr["metadata"]["namespace"] == NS)
            .collect())
    };
    let d = || diag(&[&s], Some(&am), None);

    // 1. Firing for ~20 s, re-sent every 6 s past the 2 s window: one resource.
    let t0 = now_ms();
    let first = fire_across_windows(&am, &s, &list, &firing_since(t0), 3, &d);
    let first_key = key(&first);
    assert_eq!(
        instance_ms(&first),
        Some(t0),
        "the instance is startsAt: {first}"
    );
    assert_eq!(firing_count(&first).unwrap_or(1), 1, "{first}");
    assert!(!is_resolved(&first), "still firing: {first}");

    // 2. Resolved through Alertmanager's API: recorded on the resource.
    let r1 = now_ms();
    let first = resolve_via_alertmanager(&am, &list, 1, &first_key, &firing_since(t0), r1, &d);
    let resolved_count = occurrence_count(&first);

    // 3. Firing again (a new startsAt): a second resource.
    let t1 = now_ms();
    am.push(&[firing_since(t1)]);
    let second_key = wait_state(
        "a second resource for the new firing",
        STEP,
        &list,
        2,
        |rrs| {
            let new = rrs
                .iter()
                .find(|rr| key(rr) != first_key)
                .ok_or("no second resource yet")?;
            let old = find(rrs, &first_key).ok_or("the first resource is gone")?;
            if instance_ms(new) != Some(t1) || firing_count(new).unwrap_or(1) != 1 {
                return Err(format!(
                    "the new resource does not count the firing at {t1}"
                ));
            }
            if !is_resolved(old) || occurrence_count(old) != resolved_count {
                return Err("the first resource changed after it resolved".to_string());
            }
            Ok(key(new))
        },
        &d,
    );

    // 4. The controller works on it (non-terminal phase): a resolve and a new
    //    firing are absorbed into it.
    dir_set_status(&s.sink_dir, &second_key, json!({"phase": "Running"}));
    let r2 = now_ms();
    resolve_via_alertmanager(&am, &list, 2, &second_key, &firing_since(t1), r2, &d);
    let t2 = now_ms();
    am.push(&[firing_since(t2)]);
    let absorbed = wait_state(
        "the new firing absorbed into the resource being remediated",
        STEP,
        &list,
        2,
        |rrs| absorbed_into(rrs, &second_key, t2, 2),
        &d,
    );
    assert_eq!(
        phase(&absorbed),
        Some("Running"),
        "the sink keeps the status"
    );

    // 5. Terminal phase: within the cooldown a new firing is still absorbed...
    let done = now_ms();
    dir_set_status(
        &s.sink_dir,
        &second_key,
        json!({"phase": "Completed", "completionTime": rfc3339_ms(done)}),
    );
    let r3 = now_ms();
    resolve_via_alertmanager(&am, &list, 2, &second_key, &firing_since(t2), r3, &d);
    let t3 = now_ms();
    assert!(
        t3 + DELIVERY_MS < done + COOLDOWN_MS,
        "the test took {} ms from Completed to this firing: too slow to check the cooldown \
         (not a signalgate failure)",
        t3 - done
    );
    am.push(&[firing_since(t3)]);
    wait_state(
        &format!(
            "a firing within the re-open cooldown (until {}) absorbed",
            rfc3339_ms(done + COOLDOWN_MS)
        ),
        STEP,
        &list,
        2,
        |rrs| absorbed_into(rrs, &second_key, t3, 3),
        &d,
    );
    // ... and after it, a new firing is a new resource.
    let r4 = now_ms();
    resolve_via_alertmanager(&am, &list, 2, &second_key, &firing_since(t3), r4, &d);
    wait_for_clock(done + COOLDOWN_MS + 500);
    let t4 = now_ms();
    am.push(&[firing_since(t4)]);
    let all = wait_state(
        "a third resource for the firing after the cooldown",
        STEP,
        &list,
        3,
        |rrs| {
            let third = rrs
                .iter()
                .find(|rr| key(rr) != first_key && key(rr) != second_key)
                .ok_or("no third resource yet")?;
            if instance_ms(third) == Some(t4) && firing_count(third).unwrap_or(1) == 1 {
                Ok(rrs.to_vec())
            } else {
                Err(format!(
                    "the third resource does not count the firing at {t4}"
                ))
            }
        },
        &d,
    );
    let second = find(&all, &second_key).expect("second resource");
    assert_eq!(firing_count(second), Some(3), "{second}");
    assert_eq!(
        phase(second),
        Some("Completed"),
        "the sink keeps the status: {second}"
    );
    assert_eq!(
        second["status"]["completionTime"],
        json!(rfc3339_ms(done)),
        "the sink keeps the status: {second}"
    );
    let n = am.notifications();
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    eprintln!(
        "[lifecycle] alertmanager, dir sink: 3 resources as expected, {} notifications, \
         time {:.1}s",
        n.total,
        started.elapsed().as_secs_f64()
    );
}
