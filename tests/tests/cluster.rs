//! The shipped manifests on a real node (issue 20): `scripts/cluster.sh`'s
//! single-node cluster (kubelet, containerd, the CNI bridge, kube-proxy),
//! the images `make images` built, `deploy/base` through the test overlay.
//! Senders reach signalgate the way they do in a cluster: the Service's
//! ClusterIP, through kube-proxy.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use signalgate_model::rfc3339::unix_millis;
use signalgate_tests::alertmanager::{sum_samples, Alertmanager, Receiver};
use signalgate_tests::client;
use signalgate_tests::cluster::{
    is_ready, panic_text, Cluster, EDGE_SELECTOR, NAMESPACE, READY_TIMEOUT,
};
use signalgate_tests::e2e::expect::{alerts, incidents, one_each_listed, Incident};
use signalgate_tests::e2e::wait::{check, eventually};
use signalgate_tests::e2e::{ALERTS_PATH, SETTLE};
use signalgate_tests::fault_checker::history::{attempt_line, History};
use signalgate_tests::fault_checker::invariants;
use signalgate_tests::fault_checker::plan::{Plan, NAMESPACES};
use signalgate_tests::fault_checker::quiet::until_quiet;
use signalgate_tests::fault_checker::sender::Sender;
use signalgate_tests::payloads::{self, webhook};
use signalgate_tests::remediation::name_of;

/// The sidecar's identity in the cluster: its pod's service account.
const SIDECAR_USER: &str = "system:serviceaccount:signalgate-system:signalgate-sidecar";
/// A bound (projected) token names the pod it was issued for.
const POD_NAME_CLAIM: &str = "authentication.kubernetes.io/pod-name";

/// Waits until every incident of `expected` has exactly one resource.
fn wait_one_each(c: &Cluster, expected: &[Incident], what: &str) -> Vec<Value> {
    check(
        eventually(what, SETTLE, || {
            one_each_listed(|ns| c.remediation_requests(ns), expected)
        }),
        || c.diagnostics(),
    )
}

#[test]
fn the_shipped_manifests_come_up_ready_with_the_filter_in_place() {
    let c = Cluster::lease();
    let pods = c.edge_pods();
    assert_eq!(
        pods.len(),
        2,
        "the Deployment's 2 replicas\n{}",
        c.diagnostics()
    );
    for pod in &pods {
        let name = name_of(pod);
        assert!(is_ready(pod), "{name} is not Ready\n{}", c.diagnostics());
        // The init container copied the filter and ended well.
        let init = &pod["status"]["initContainerStatuses"][0];
        assert_eq!(init["name"], "install-filter");
        assert_eq!(
            init["state"]["terminated"]["exitCode"], 0,
            "{name}: install-filter: {init}"
        );
        // kubelet's probes pass, on the ports the manifests name.
        let ready = Cluster::pod_get(pod, 9902, "/ready").expect("Envoy's probe port");
        assert_eq!(ready.status, 200, "{name}: Envoy /ready: {}", ready.body);
        let admin = Cluster::pod_get(pod, 9902, "/quitquitquit").expect("Envoy's probe port");
        assert_eq!(
            admin.status, 404,
            "{name}: the probe port must not reach Envoy's admin interface"
        );
        let readyz = Cluster::pod_get(pod, 9090, "/readyz").expect("the sidecar's admin port");
        assert_eq!(
            readyz.status, 200,
            "{name}: sidecar /readyz: {}",
            readyz.body
        );
        // No container ended on its own (a crash, a failed start): the only
        // restart allowed is after a SIGKILL, which another test of this
        // file sends a sidecar.
        for status in pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let ended = &status["lastState"]["terminated"];
            assert!(
                ended.is_null() || ended["exitCode"] == 137,
                "{name}: container {} ended: {ended}\n{}",
                status["name"],
                c.diagnostics()
            );
        }
    }
    // The filter runs in Envoy: its rate-limit headers are on an answer, and
    // it refuses a bad payload itself (problem+json naming the field).
    let url = c.service_url(ALERTS_PATH);
    let bad = client::post_json(&url, br#"{"version":"4","alerts":"none"}"#, &[])
        .expect("the Service answers");
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(
        bad.header("content-type"),
        Some("application/problem+json"),
        "{bad:?}"
    );
    assert!(
        bad.body.contains("/alerts"),
        "names the field: {}",
        bad.body
    );
    let ns = "cluster-probe";
    c.fresh_namespaces(&[ns]);
    let good = webhook(vec![payloads::alert("ClusterProbe", ns, "p-00")]);
    let good = serde_json::to_vec(&good).expect("json");
    let good = client::post_json(&url, &good, &[]).expect("the Service answers");
    assert_eq!(good.status, 201, "{good:?}");
    assert!(
        good.header("ratelimit-policy").is_some(),
        "the filter's rate-limit headers: {good:?}"
    );
}

#[test]
fn alertmanager_through_the_service_gets_resources_the_pods_write_with_their_own_token() {
    let c = Cluster::lease();
    let started = SystemTime::now();
    let ns = "cluster-am";
    c.fresh_namespaces(&[ns]);
    let am = Alertmanager::start(&Receiver::new(&c.service_url(ALERTS_PATH)));
    let sent = alerts("ClusterAlertmanager", ns, "web", 3);
    am.push(&sent);
    let expected = incidents(&sent);
    wait_one_each(&c, &expected, "one resource per alert sent by Alertmanager");

    // Who wrote them: the audit log of the API server. A token bound to a
    // pod names it: only the projected token the sidecar container mounts
    // does (no kubeconfig file, no static token).
    let pods: BTreeSet<String> = c.edge_pods().iter().map(name_of).collect();
    let writes: Vec<Value> = c
        .audit_events()
        .into_iter()
        .filter(|e| e["objectRef"]["namespace"] == ns)
        .filter(|e| {
            let at = e["requestReceivedTimestamp"].as_str().and_then(unix_millis);
            at.is_some_and(|ms| ms >= millis(started))
        })
        .filter(|e| ["create", "update", "patch"].contains(&e["verb"].as_str().unwrap_or("")))
        .collect();
    assert!(!writes.is_empty(), "no write of {ns} in the audit log");
    for w in &writes {
        let user = &w["user"];
        assert_eq!(user["username"], SIDECAR_USER, "{w}");
        let pod = user["extra"][POD_NAME_CLAIM][0].as_str().unwrap_or("");
        assert!(
            pods.contains(pod),
            "written with a token bound to pod {pod:?}, not one of {pods:?}: {w}"
        );
    }
    let created = writes
        .iter()
        .filter(|w| w["verb"] == "create" && w["responseStatus"]["code"] == 201)
        .count();
    assert_eq!(
        created,
        expected.len(),
        "one create per incident: {writes:?}"
    );
    let n = am.notifications();
    assert_eq!(
        n.failed, 0.0,
        "Alertmanager gave up on a notification: {n:?}"
    );
}

#[test]
fn a_drain_keeps_one_replica_serving() {
    let c = Cluster::lease();
    let node = c.node();
    let ns = "cluster-drain";
    c.fresh_namespaces(&[ns]);
    let url = c.service_url(ALERTS_PATH);
    let before: BTreeSet<String> = c.edge_pods().iter().map(name_of).collect();

    // Signals go on during the drain, each retried as Alertmanager retries
    // (a 5xx or a transport error, for up to 10 s); the Service's Ready
    // endpoints are sampled meanwhile.
    let bodies: Vec<Vec<u8>> = (0..5)
        .map(|i| payloads::alert("ClusterDrain", ns, &format!("p-{i:02}")))
        .map(|a| serde_json::to_vec(&webhook(vec![a])).expect("json"))
        .collect();
    let stop = AtomicBool::new(false);
    let lowest = Mutex::new(usize::MAX);
    let (sent, failed_attempts, lost) = (
        Mutex::new(0usize),
        Mutex::new(Vec::new()),
        Mutex::new(Vec::new()),
    );
    let (drain, uncordon) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (failures, acked) = deliver(&url, &bodies[n % bodies.len()]);
                *sent.lock().unwrap() += 1;
                failed_attempts.lock().unwrap().extend(failures.clone());
                if !acked {
                    lost.lock().unwrap().push(failures);
                }
                n += 1;
                // A steady stream, not a flood.
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let ready = c.ready_endpoints().len();
                let mut low = lowest.lock().unwrap();
                *low = (*low).min(ready);
                drop(low);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        // kubectl drain evicts (the eviction API honours the PDB) and
        // retries a refused eviction until its timeout: on one node, the
        // evicted replica's replacement cannot be scheduled (cordoned), so
        // the second eviction must be refused for as long as the drain runs.
        let out = c.kubectl(&[
            "drain",
            &node,
            "--pod-selector",
            EDGE_SELECTOR,
            "--delete-local-data",
            "--ignore-daemonsets",
            "--timeout=20s",
        ]);
        stop.store(true, Ordering::Relaxed);
        // Uncordoned here, whatever the assertions below find.
        (out, c.kubectl(&["uncordon", &node]))
    });
    // One original replica evicted (terminating or gone), the other kept.
    let kept: Vec<String> = c
        .edge_pods()
        .iter()
        .filter(|p| before.contains(&name_of(p)))
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p))
        .map(name_of)
        .collect();
    let stderr = String::from_utf8_lossy(&drain.stderr).to_string();
    let stdout = String::from_utf8_lossy(&drain.stdout).to_string();
    assert!(uncordon.status.success(), "uncordon: {uncordon:?}");
    assert!(
        !drain.status.success(),
        "the drain evicted both replicas: {stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("disruption budget"),
        "the second eviction was refused by the PodDisruptionBudget: {stdout}\n{stderr}"
    );
    assert_eq!(
        kept.len(),
        1,
        "one of {before:?} evicted, one kept Ready: kept {kept:?}\n{stdout}\n{stderr}"
    );
    let low = *lowest.lock().unwrap();
    assert!(low >= 1, "the Service was left with {low} Ready endpoints");
    let lost = lost.into_inner().unwrap();
    let failed_attempts = failed_attempts.into_inner().unwrap();
    eprintln!(
        "[cluster] drain: {} signals sent, {} attempts failed and were retried: {failed_attempts:?}",
        sent.into_inner().unwrap(),
        failed_attempts.len()
    );
    assert!(
        lost.is_empty(),
        "signals never acknowledged during the drain: {lost:?}"
    );
    // Envoy's preStop hook holds its SIGTERM until the evicted pod has left
    // the Service: no attempt fails (without it, a few were refused).
    assert!(
        failed_attempts.is_empty(),
        "attempts failed during the drain: {failed_attempts:?}"
    );
    // Uncordoned, the replacement runs again.
    c.wait_rolled_out();
}

/// Posts `body` until a 2xx, retrying a 5xx or a transport error after
/// 0.5 s, 0.75 s, ... for up to 10 s (Alertmanager's way); 4xx is final.
/// The failed attempts, and whether it was acknowledged.
fn deliver(url: &str, body: &[u8]) -> (Vec<String>, bool) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    let mut failures = Vec::new();
    loop {
        match client::post_json(url, body, &[]) {
            Ok(a) if (200..300).contains(&a.status) => return (failures, true),
            Ok(a) if a.status < 500 => {
                failures.push(format!("{}: {}", a.status, a.body));
                return (failures, false);
            }
            Ok(a) => failures.push(format!("{}: {}", a.status, a.body)),
            Err(e) => failures.push(e),
        }
        if started.elapsed() + backoff > Duration::from_secs(10) {
            return (failures, false);
        }
        std::thread::sleep(backoff);
        backoff = backoff * 3 / 2;
    }
}

/// How long the checker's workload runs: the disruptions take about 50 s
/// here, and must all fall within it.
const WORKLOAD: Duration = Duration::from_secs(110);

#[test]
fn a_rollout_restart_and_killed_pods_under_load_lose_and_double_nothing() {
    let c = Cluster::lease();
    // Alertmanager sends all along, every alert its own group (one
    // notification each, re-sent every second or two).
    let am_ns = "cluster-am-load";
    let namespaces: Vec<&str> = NAMESPACES.iter().copied().chain([am_ns]).collect();
    c.fresh_namespaces(&namespaces);
    let receiver = Receiver::new(&c.service_url(ALERTS_PATH)).group_by(&["..."]);
    let am = Alertmanager::start(&receiver);
    let am_alerts = alerts("ClusterLoad", am_ns, "api", 4);
    am.push(&am_alerts);

    // The randomized checker's workload (issue 19), without its faults:
    // incidents that fire, repeat, resolve and fire again, each delivery
    // retried as Alertmanager retries. The disruptions are the cluster's.
    let seed = 20;
    let plan = Plan::generate(seed, WORKLOAD.as_millis() as u64, &[]);
    let history = Mutex::new(History::default());
    let started = Instant::now();
    let sender = Sender {
        url: c.service_url(ALERTS_PATH),
        seed,
        started,
        plan: &plan,
        upstreams: Vec::new(),
        history: &history,
    };
    let disrupted = std::thread::scope(|s| {
        for lane in 0..NAMESPACES.len() {
            let sender = &sender;
            s.spawn(move || sender.run_lane(lane));
        }
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| disrupt(&c, started)));
        // Before the scope waits for the senders to finish.
        let disrupted_for = started.elapsed();
        done.map(|d| (d, disrupted_for)).map_err(|e| panic_text(&e))
    });
    let (
        Disrupted {
            log: disruptions,
            first_kill,
        },
        disrupted_for,
    ) = disrupted.unwrap_or_else(|e| panic!("{e}\n{}", c.diagnostics()));

    let items = quiesce(&c);
    let history = history.into_inner().unwrap_or_else(|e| e.into_inner());
    let violations = invariants::check(&plan, &history, &items);
    let acked = history
        .deliveries
        .iter()
        .filter(|d| d.ack().is_some())
        .count();
    // When and why deliveries were retried (for the note, and a failure).
    let retried: Vec<String> = history
        .deliveries
        .iter()
        .filter(|d| d.attempts.len() > 1)
        .map(|d| format!("{} {}", d.id(), attempt_line(&d.attempts[0], None)))
        .collect();
    let n = am.notifications();
    eprintln!(
        "[cluster] {} deliveries, {acked} acknowledged, {} retried {retried:?}; {} resources; \
         disruptions: {disruptions:?}; Alertmanager: {n:?}",
        history.deliveries.len(),
        retried.len(),
        items.len()
    );
    if !violations.is_empty() {
        let mut text = String::new();
        for v in violations.iter().take(5) {
            text.push_str(&format!("{}: {}\n{}\n", v.inv.label(), v.what, v.story));
        }
        panic!(
            "{} invariant violations after the rollout and the pod kills:\n{text}\n{}",
            violations.len(),
            c.diagnostics()
        );
    }
    assert_eq!(
        acked,
        history.deliveries.len(),
        "a delivery was never acknowledged"
    );
    // Envoy's preStop hook keeps a rolling restart invisible to senders:
    // the only failed attempts are the kills'.
    let kill_ms = first_kill.as_millis() as u64;
    let during_rollout: Vec<String> = history
        .deliveries
        .iter()
        .filter(|d| d.attempts.iter().any(|a| !a.acked() && a.at_ms < kill_ms))
        .map(|d| d.id())
        .collect();
    assert!(
        during_rollout.is_empty(),
        "deliveries failed during the rolling restart, before any pod was killed: \
         {during_rollout:?} ({retried:?})"
    );
    assert!(
        disrupted_for < WORKLOAD,
        "the disruptions took {disrupted_for:?}, past the workload's {WORKLOAD:?}: \
         they were not all under load ({disruptions:?})"
    );
    let expected = incidents(&am_alerts);
    wait_one_each(&c, &expected, "Alertmanager's alerts, one resource each");
    let n = am.notifications();
    assert_eq!(
        n.failed,
        0.0,
        "Alertmanager gave up on a notification during the disruptions: {n:?}\n{}",
        am.log_tail(30)
    );
}

/// What [`disrupt`] did, on the senders' clock (since `started`).
struct Disrupted {
    /// What happened when.
    log: Vec<String>,
    /// When the first pod was killed (the rolling restart was over).
    first_kill: Duration,
}

/// The disruptions, one after the other, each waited out: a rolling
/// restart, a pod deleted without grace, a sidecar SIGKILLed.
fn disrupt(c: &Cluster, started: Instant) -> Disrupted {
    let at = |what: &str| format!("{what} at {:.1}s", started.elapsed().as_secs_f64());
    let mut log = Vec::new();
    std::thread::sleep(Duration::from_secs(5)); // the workload's first deliveries
    log.push(at("rollout restart"));
    c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "rollout",
        "restart",
        "deployment/signalgate",
    ]);
    c.wait_rollout_status();
    log.push(at("rolled out"));

    // Pods of the old ReplicaSet may still be shutting down: the victims
    // are taken from the live ones.
    let live = |p: &Value| p["metadata"]["deletionTimestamp"].is_null();
    let live_ready = |pods: &[Value]| -> Vec<Value> {
        pods.iter()
            .filter(|p| live(p) && is_ready(p))
            .cloned()
            .collect()
    };
    let victim = name_of(&live_ready(&c.edge_pods())[0]);
    let first_kill = started.elapsed();
    log.push(at(&format!("delete --grace-period=0 {victim}")));
    c.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &victim,
        "--grace-period=0",
        "--force",
    ]);
    c.wait_pods(
        "2 Ready replicas after the pod was deleted",
        READY_TIMEOUT,
        |pods| {
            let ready = live_ready(pods);
            ready.len() == 2 && ready.iter().all(|p| name_of(p) != victim)
        },
    );
    log.push(at("replaced"));

    let pod = live_ready(&c.edge_pods())[0].clone();
    let restarts = |p: &Value| -> u64 {
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == "sidecar")
            .and_then(|s| s["restartCount"].as_u64())
            .unwrap_or(0)
    };
    let before = restarts(&pod);
    log.push(at(&format!("SIGKILL the sidecar of {}", name_of(&pod))));
    c.kill_container(&pod, "sidecar");
    c.wait_pods(
        "the killed sidecar restarted and Ready",
        READY_TIMEOUT,
        |pods| {
            pods.iter()
                .find(|p| name_of(p) == name_of(&pod))
                .is_some_and(|p| restarts(p) > before && is_ready(p))
        },
    );
    log.push(at("restarted"));
    Disrupted { log, first_kill }
}

/// Waits until the resources of the checker's namespaces stop changing and
/// nothing is pending (no sidecar holds an unwritten update, the store's
/// index of unwritten changes is empty); returns them.
fn quiesce(c: &Cluster) -> Vec<Value> {
    let namespaces: Vec<&str> = NAMESPACES.iter().copied().chain([NAMESPACE]).collect();
    let list = || -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        for ns in &namespaces {
            all.extend(c.remediation_requests(ns)?);
        }
        Ok(all)
    };
    let pending = || -> f64 {
        let in_sidecars: f64 = c
            .edge_pods()
            .iter()
            .map(|p| match Cluster::pod_get(p, 9090, "/metrics") {
                Ok(a) => sum_samples(&a.body, "signalgate_pending_updates", ""),
                Err(_) => 1.0, // not answering: not known to be quiet
            })
            .sum();
        let unwritten: f64 = NAMESPACES
            .iter()
            .map(|ns| {
                let key = format!("sg:{{{ns}}}:d");
                c.redis_cli(&["ZCARD", &key])
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(1.0)
            })
            .sum();
        in_sidecars + unwritten
    };
    until_quiet(list, pending).unwrap_or_else(|(why, _)| panic!("{why}\n{}", c.diagnostics()))
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}
