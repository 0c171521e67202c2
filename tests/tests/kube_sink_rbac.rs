//! The kube sink under RBAC: a namespace it may not write answers 5xx and
//! says why; the shipped RBAC grants only what the sidecar uses, and that
//! is enough for its cache (LIST and WATCH of every RemediationRequest).

use std::time::Duration;

use serde_json::json;
use signalgate_sidecar::config::LookupReads;
use signalgate_sidecar::sink::kube::KubeSink;
use signalgate_sidecar::sink::{Read, Sink};
use signalgate_tests::k8s::{ApiServer, Identity};
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::remediation::{
    kube_sidecar, list, private_api_server, shared_api_server, FALLBACK,
};

#[test]
fn a_namespace_the_sidecar_may_not_write_answers_5xx_and_logs_why() {
    let k = private_api_server();
    k.create_namespace("allowed");
    k.create_namespace("forbidden");
    // Narrow the shipped ClusterRole to one namespace with a RoleBinding.
    k.kubectl_ok(&["delete", "clusterrolebinding", "signalgate-sidecar"]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        "allowed",
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        FALLBACK,
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
    let s = kube_sidecar(&k, "sidecar", &[]);
    assert_eq!(
        s.post_alerts(&webhook(vec![alert("Ok", "allowed", "p")]))
            .status,
        201
    );
    let a = s.post_alerts(&webhook(vec![alert("No", "forbidden", "p")]));
    assert!(a.status >= 500, "{} {}", a.status, a.body);
    assert!(a.header("retry-after").is_some());
    let log = s.log();
    assert!(
        log.contains("sink refused the write") && log.contains("forbidden"),
        "{}",
        s.log_tail(20)
    );
    assert!(list(&k, "forbidden").is_empty());
}

#[test]
fn the_shipped_rbac_grants_only_what_the_sidecar_uses() {
    let k = shared_api_server();
    let can = |verb: &str, resource: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let out = k.kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            "default",
            &format!("--subresource={subresource}"),
            "--as=system:serviceaccount:signalgate-system:signalgate-sidecar",
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for verb in ["get", "create", "patch", "list", "watch"] {
        assert!(
            can(verb, "remediationrequests.signalgate.io"),
            "{verb} must be allowed"
        );
    }
    for (verb, resource) in [
        ("delete", "remediationrequests.signalgate.io"),
        ("update", "remediationrequests.signalgate.io"),
        ("patch", "remediationrequests.signalgate.io/status"),
        ("get", "secrets"),
        ("list", "pods"),
        ("create", "events"),
    ] {
        assert!(
            !can(verb, resource),
            "{verb} {resource} must not be allowed"
        );
    }
}

/// LISTs of RemediationRequests the API server has answered (200) so far.
fn lists_served(k: &ApiServer) -> f64 {
    let (status, metrics) = k.get(Identity::Admin, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"remediationrequests\"")
                && l.contains("verb=\"LIST\"")
                && l.contains("code=\"200\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A resource of incident `fingerprint` in `namespace`, as another client writes it.
fn create(k: &ApiServer, namespace: &str, name: &str, fingerprint: &str) {
    let rr = json!({
        "apiVersion": "signalgate.io/v1alpha1",
        "kind": "RemediationRequest",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"signalgate.io/fingerprint": fingerprint}
        },
        "spec": {
            "signalFingerprint": fingerprint, "signalName": "Watched", "signalType": "prometheus",
            "severity": "warning", "targetResource": {"kind": "Pod", "name": "p"},
            "source": "test", "firingTime": "2026-12-01T10:00:00Z",
            "receivedTime": "2026-12-01T10:00:00Z",
            "deduplication": {
                "firstSeen": "2026-12-01T10:00:00Z", "lastSeen": "2026-12-01T10:00:00Z",
                "occurrenceCount": 1
            }
        }
    });
    let url = format!("/apis/signalgate.io/v1alpha1/namespaces/{namespace}/remediationrequests");
    let (status, body) = k.request(Identity::Admin, "POST", &url, Some(&rr));
    assert_eq!(status, 201, "{body}");
}

/// The sink as the sidecar's service account, and the runtime its cache
/// runs on. Consistent lookups (a resource written a moment before is seen).
fn sink(k: &ApiServer) -> (tokio::runtime::Runtime, KubeSink) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let path = k.kubeconfig(Identity::Sidecar);
    let sink = rt
        .block_on(KubeSink::from_kubeconfig(
            &path,
            FALLBACK,
            LookupReads::Cache,
        ))
        .unwrap();
    (rt, sink)
}

#[test]
fn the_shipped_rbac_lets_the_sink_watch_its_resources() {
    // A private API server: its LIST count is this test's alone.
    let k = private_api_server();
    k.create_namespace("watched");
    let (rt, sink) = sink(&k);
    assert!(
        rt.block_on(sink.cache().wait_synced(Duration::from_secs(30))),
        "the cache's LIST of every RemediationRequest must be allowed"
    );
    let lists = lists_served(&k);
    // Written after the LIST: only the watch can bring it.
    create(&k, "watched", "rr-w-1", "fw");
    let fps = ["fw".to_string()];
    let found = wait_for(
        "the watch to bring the resource",
        Duration::from_secs(30),
        || {
            let found = rt.block_on(sink.find_latest("watched", &fps, Read::Cached));
            found.unwrap().remove(0)
        },
    );
    assert_eq!(found.location.name, "rr-w-1");
    assert_eq!(
        lists_served(&k),
        lists,
        "seen through the watch, not a new LIST"
    );
}

#[test]
fn without_a_cluster_wide_binding_cached_lookups_read_the_api_server() {
    let k = private_api_server();
    k.create_namespace("narrow");
    k.kubectl_ok(&["delete", "clusterrolebinding", "signalgate-sidecar"]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        "narrow",
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        FALLBACK,
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
    create(&k, "narrow", "rr-n-1", "fn");
    let (rt, sink) = sink(&k);
    let before = lists_served(&k);
    let fps = ["fn".to_string()];
    let found = rt
        .block_on(sink.find_latest("narrow", &fps, Read::Cached))
        .unwrap()
        .remove(0);
    assert_eq!(found.map(|f| f.location.name).as_deref(), Some("rr-n-1"));
    // The cache may not LIST across namespaces, so it never syncs: the
    // lookup LISTed the namespace and the fallback one.
    assert!(!sink.cache().synced());
    assert!(lists_served(&k) - before >= 2.0);
}
