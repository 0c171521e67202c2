//! Incident lifecycle (issue 18) on the kube sink against the real
//! kube-apiserver. First a real Alertmanager (group_interval 2 s,
//! repeat_interval 6 s, send_resolved) sends straight to the sidecar (2 s
//! dedup window): an alert firing over several windows is one resource
//! whose count rises, and its resolution is recorded. Then, with
//! Alertmanager stopped, Alertmanager-shaped webhooks posted directly (so
//! every answer is checked): late and unknown resolves, a new firing is a
//! new resource, and the remediation controller — an identity of its own
//! whose RBAC allows only `patch` on `remediationrequests/status` — sets the
//! phase through the status subresource: new firings are absorbed while it
//! is not terminal and within the re-open cooldown after a terminal one,
//! and make a new resource after it. Also: a storm that outlasts its maximum
//! duration continues as a new storm resource linked to the previous one,
//! with no individual resources in between.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_tests::alertmanager::{Alertmanager, Receiver};
use signalgate_tests::e2e::wait::diag;
use signalgate_tests::e2e::ALERTS_PATH;
use signalgate_tests::lifecycle::{
    absorbed_into, api_alert, expect, find, fire_across_windows, firing_alert, firing_count, hook,
    instance_ms, is_resolved, key, now_ms, occurrence_count, phase, resolve_via_alertmanager,
    resolved_alert, resolved_at_ms, rfc3339_ms, single, wait_for_clock, wait_resolution,
    wait_state, Controller,
};
use signalgate_tests::remediation::{is_storm, kube_sidecar, shared_api_server, try_list};

const ALERT: &str = "KubePodCrashLooping";
const POD: &str = "cart-0";
const HOUR_MS: i64 = 3_600_000;
/// SIGNALGATE_REOPEN_COOLDOWN.
const COOLDOWN_MS: i64 = 6_000;
/// How long a recorded signal may take to show in the API server: the
/// flush interval (250 ms) and a patch, with room for a loaded machine.
const RECORDED: Duration = Duration::from_secs(5);

#[test]
fn an_alert_is_one_resource_until_resolved_and_the_controller_status_is_respected() {
    let started = Instant::now();
    let ns = "lifecycle-kube";
    let k = shared_api_server();
    k.create_namespace(ns);
    let controller = Controller::install(k);
    let mut s = kube_sidecar(
        k,
        "sidecar",
        &[
            ("SIGNALGATE_DEDUP_TTL", "2s"),
            ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
            ("SIGNALGATE_REOPEN_COOLDOWN", "6s"),
            // (at most half the repeat interval: each repeat a delivery)
            ("SIGNALGATE_DELIVERY_WINDOW", "3s"),
        ],
    );
    let mut am = Alertmanager::start(
        &Receiver::new(&format!("http://{}{ALERTS_PATH}", s.api))
            .group_by(&["alertname", "namespace", "pod"])
            .group_wait(Duration::from_secs(1))
            .group_interval(Duration::from_secs(2))
            .repeat_interval(Duration::from_secs(6))
            .send_resolved(true),
    );
    let list = || try_list(k, ns);
    let d = || diag(&[&s], Some(&am), None);

    // 1. Alertmanager: firing over several windows, then resolved.
    let t0 = now_ms();
    let alert = api_alert(ALERT, ns, POD, t0, t0 + HOUR_MS);
    let first = fire_across_windows(&am, &s, &list, &alert, 3, &d);
    let first_key = key(&first);
    assert_eq!(
        instance_ms(&first),
        Some(t0),
        "the instance is startsAt: {first}"
    );
    let r1 = now_ms();
    resolve_via_alertmanager(&am, &list, 1, &first_key, &alert, r1, &d);
    let n = am.notifications();
    assert_eq!(n.failed, 0.0, "failed notifications: {n:?}");
    am.stop();

    // 2. Late resolves and re-sends change nothing but counts, also once the
    //    store has forgotten the incident (a restart on the memory store).
    s.restart();
    let d = || diag(&[&s], None, None);
    let log = || s.log_tail(20);
    // Another replica's resolve of the same instance: the first resolve wins
    // (a store that no longer knows the incident says resolved_unknown).
    let late = single(&s.post_alerts(&hook(resolved_alert(ALERT, ns, POD, t0, r1 + 1_000))));
    assert!(
        (late.outcome == "resolved" && late.resource.as_deref() == Some(first_key.as_str()))
            || (late.outcome == "resolved_unknown" && late.resource.is_none()),
        "a repeated resolve: {}",
        late.body
    );
    // A resolve of an instance nobody knows.
    let stale = resolved_alert(ALERT, ns, POD, t0 - 60_000, t0 - 30_000);
    let unknown = expect(
        &s.post_alerts(&hook(stale)),
        200,
        "resolved_unknown",
        "a resolve of an unknown firing",
        &log(),
    );
    assert_eq!(unknown, None, "resolved_unknown names no resource");
    // A stale re-send of the resolved firing: counted in its resource, which stays resolved.
    let rrs = list().expect("list the resources");
    let before = occurrence_count(find(&rrs, &first_key).expect("the first resource"));
    let dup = expect(
        &s.post_alerts(&hook(firing_alert(ALERT, ns, POD, t0))),
        202,
        "duplicate",
        "a stale re-send of the resolved firing",
        &log(),
    );
    assert_eq!(dup.as_deref(), Some(first_key.as_str()));
    wait_state(
        "the stale re-send counted, the resolution kept",
        RECORDED,
        &list,
        1,
        |rrs| {
            let rr = find(rrs, &first_key).ok_or("no first resource")?;
            if occurrence_count(rr) == before + 1 && resolved_at_ms(rr) == Some(r1) {
                Ok(())
            } else {
                Err(format!(
                    "expected occurrenceCount {} and resolvedAt {r1}",
                    before + 1
                ))
            }
        },
        &d,
    );

    // 3. A new firing (a new startsAt): a second resource.
    let t1 = now_ms();
    let second_key = expect(
        &s.post_alerts(&hook(firing_alert(ALERT, ns, POD, t1))),
        201,
        "created",
        "a new firing after the resolve",
        &log(),
    )
    .expect("created names its resource");
    assert_ne!(second_key, first_key);
    wait_state(
        "the second resource",
        RECORDED,
        &list,
        2,
        |rrs| match find(rrs, &second_key) {
            Some(rr) if instance_ms(rr) == Some(t1) => Ok(()),
            _ => Err(format!("no {second_key} for the firing at {t1}")),
        },
        &d,
    );

    // 4. The controller: its identity may patch the status and nothing else.
    assert_eq!(
        controller.try_patch_spec(&second_key),
        403,
        "the controller's identity must not patch the spec"
    );
    controller.set_status(&second_key, json!({"phase": "Running"}));
    let r2 = now_ms();
    post_resolve(&s, ns, t1, r2, &second_key);
    wait_resolution(&list, 2, &second_key, r2, RECORDED, &d);
    let t2 = now_ms();
    let absorbed = expect(
        &s.post_alerts(&hook(firing_alert(ALERT, ns, POD, t2))),
        202,
        "absorbed",
        "a new firing of a resource being remediated (phase Running)",
        &log(),
    );
    assert_eq!(absorbed.as_deref(), Some(second_key.as_str()));
    let rr = wait_state(
        "the firing absorbed (firingCount 2, open again)",
        RECORDED,
        &list,
        2,
        |rrs| absorbed_into(rrs, &second_key, t2, 2),
        &d,
    );
    assert_eq!(occurrence_count(&rr), 2, "created + absorbed: {rr}");

    // 5. Terminal phase: absorbed within the cooldown, a new resource after it.
    let done = now_ms();
    controller.set_status(
        &second_key,
        json!({"phase": "Completed", "completionTime": rfc3339_ms(done)}),
    );
    let r3 = now_ms();
    post_resolve(&s, ns, t2, r3, &second_key);
    wait_resolution(&list, 2, &second_key, r3, RECORDED, &d);
    let t3 = now_ms();
    assert!(
        t3 + 1_000 < done + COOLDOWN_MS,
        "the test took {} ms from Completed to this firing: too slow to check the cooldown \
         (not a signalgate failure)",
        t3 - done
    );
    let within = expect(
        &s.post_alerts(&hook(firing_alert(ALERT, ns, POD, t3))),
        202,
        "absorbed",
        "a new firing within the re-open cooldown after Completed",
        &log(),
    );
    assert_eq!(within.as_deref(), Some(second_key.as_str()));
    wait_state(
        "the firing within the cooldown absorbed (firingCount 3)",
        RECORDED,
        &list,
        2,
        |rrs| absorbed_into(rrs, &second_key, t3, 3),
        &d,
    );
    let r4 = now_ms();
    post_resolve(&s, ns, t3, r4, &second_key);
    wait_resolution(&list, 2, &second_key, r4, RECORDED, &d);
    wait_for_clock(done + COOLDOWN_MS + 300);
    let t4 = now_ms();
    let third_key = expect(
        &s.post_alerts(&hook(firing_alert(ALERT, ns, POD, t4))),
        201,
        "created",
        "a new firing after the cooldown",
        &log(),
    )
    .expect("created names its resource");
    assert!(
        third_key != first_key && third_key != second_key,
        "{third_key}"
    );
    let all = wait_state(
        "the third resource",
        RECORDED,
        &list,
        3,
        |rrs| match find(rrs, &third_key) {
            Some(rr) if instance_ms(rr) == Some(t4) && !is_resolved(rr) => Ok(rrs.to_vec()),
            _ => Err(format!("no {third_key} for the firing at {t4}")),
        },
        &d,
    );
    let second = find(&all, &second_key).expect("second resource");
    assert_eq!(firing_count(second), Some(3), "{second}");
    assert_eq!(phase(second), Some("Completed"), "{second}");
    assert_eq!(
        second["status"]["completionTime"],
        json!(rfc3339_ms(done)),
        "the controller's completionTime is kept: {second}"
    );
    eprintln!(
        "[lifecycle] kube sink: 3 resources as expected, time {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Posts the resolve of the firing at `starts_ms`, resolved at `ends_ms`;
/// checks it is recorded on `resource`.
fn post_resolve(
    s: &signalgate_tests::sidecar::Sidecar,
    ns: &str,
    starts_ms: i64,
    ends_ms: i64,
    resource: &str,
) {
    let at = expect(
        &s.post_alerts(&hook(resolved_alert(ALERT, ns, POD, starts_ms, ends_ms))),
        202,
        "resolved",
        &format!("the resolve of the firing at {}", rfc3339_ms(starts_ms)),
        &s.log_tail(20),
    );
    assert_eq!(
        at.as_deref(),
        Some(resource),
        "the resolve names its resource"
    );
}

#[test]
fn a_storm_that_outlasts_its_maximum_duration_continues_as_a_new_storm_resource() {
    let ns = "lifecycle-storm";
    let k = shared_api_server();
    k.create_namespace(ns);
    let s = kube_sidecar(
        k,
        "sidecar-storm",
        &[
            ("SIGNALGATE_STORM_THRESHOLD", "3"),
            ("SIGNALGATE_STORM_WINDOW", "2s"),
            ("SIGNALGATE_STORM_MAX_DURATION", "3s"),
            ("SIGNALGATE_DEDUP_TTL", "1s"),
            ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
        ],
    );
    // A distinct alert every 200 ms (well within the window): the namespace
    // storms without a pause, past two maximum durations.
    let mut answers: Vec<(String, String, Option<String>)> = Vec::new();
    let mut storms: Vec<String> = Vec::new();
    for i in 0..80 {
        let pod = format!("job-{i:02}");
        let a = single(&s.post_alerts(&hook(firing_alert("PodNotReady", ns, &pod, now_ms()))));
        if a.outcome == "storm_started" {
            storms.push(
                a.resource
                    .clone()
                    .expect("storm_started names its resource"),
            );
        }
        answers.push((pod, a.outcome, a.resource));
        if storms.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200)); // the sender's pace
    }
    let outcomes: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        outcomes[..4],
        ["created", "created", "created", "storm_started"],
        "threshold 3: {outcomes:?}"
    );
    let between: Vec<&str> = answers[4..]
        .iter()
        .filter(|a| a.1 == "created")
        .map(|a| a.0.as_str())
        .collect();
    assert!(
        between.is_empty(),
        "individual resources between storms for {between:?}; outcomes in order: {outcomes:?}"
    );
    assert_eq!(
        storms.len(),
        3,
        "the storm must continue as a new storm resource after its maximum duration (3 s); \
         outcomes in order: {outcomes:?}"
    );
    let members = answers
        .iter()
        .filter(|a| a.1 == "storm_started" || a.1 == "storm_aggregated")
        .count() as u64;
    let list = || try_list(k, ns);
    let d = || diag(&[&s], None, None);
    let all = wait_state(
        "3 individual resources and 3 linked storm resources counting every member",
        RECORDED,
        &list,
        3 + storms.len(),
        |rrs| {
            let counted: u64 = rrs
                .iter()
                .filter(|r| is_storm(r))
                .map(|r| r["spec"]["storm"]["alertCount"].as_u64().unwrap_or(0))
                .sum();
            if rrs.len() == 6 && counted == members {
                Ok(rrs.to_vec())
            } else {
                Err(format!(
                    "storm alertCounts add up to {counted} of {members} members"
                ))
            }
        },
        &d,
    );
    for (i, storm) in storms.iter().enumerate() {
        let rr = find(&all, storm).unwrap_or_else(|| panic!("no storm resource {storm}"));
        let previous = &rr["spec"]["storm"]["previous"];
        if i == 0 {
            assert!(
                previous.is_null(),
                "the first storm continues nothing: {rr}"
            );
        } else {
            let before = storms[i - 1].split_once('/').map_or("", |(_, name)| name);
            assert_eq!(
                previous,
                &json!(before),
                "storm {i} continues storm {}: {rr}",
                i - 1
            );
        }
    }
    let individual: Vec<&Value> = all.iter().filter(|r| !is_storm(r)).collect();
    assert_eq!(individual.len(), 3, "{all:?}");
}
