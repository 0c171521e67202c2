//! The kube sink under RBAC: a namespace it may not write answers 5xx and
//! says why; the shipped RBAC grants only what the sidecar uses, and that
//! is enough for its cache (LIST and WATCH of every RemediationRequest).

use std::time::Duration;

use signalgate_sidecar::sink::{Read, Sink};
use signalgate_tests::k8s::ApiServer;
use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::remediation::{
    create_as_admin, foreign_resource, kube_sidecar, list, private_api_server, requests_served,
    shared_api_server, sidecar_sink, FALLBACK,
};

/// Binds the shipped ClusterRole to the sidecar's service account in `namespace`.
fn bind_sidecar(k: &ApiServer, namespace: &str) {
    k.kubectl_ok(&[
        "create",
        "rolebinding",
        "signalgate-sidecar",
        "-n",
        namespace,
        "--clusterrole=signalgate-sidecar",
        "--serviceaccount=signalgate-system:signalgate-sidecar",
    ]);
}

#[test]
fn a_namespace_the_sidecar_may_not_write_answers_5xx_and_logs_why() {
    let k = private_api_server();
    k.create_namespace("allowed");
    k.create_namespace("forbidden");
    // Narrow the shipped ClusterRole to one namespace with a RoleBinding.
    k.kubectl_ok(&["delete", "clusterrolebinding", "signalgate-sidecar"]);
    bind_sidecar(&k, "allowed");
    bind_sidecar(&k, FALLBACK);
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

/// When the resources these tests write were first seen.
const FIRST: &str = "2026-12-01T10:00:00Z";

#[test]
fn the_shipped_rbac_lets_the_sink_watch_its_resources() {
    // A private API server: its LIST count is this test's alone.
    let k = private_api_server();
    k.create_namespace("watched");
    let (rt, sink) = sidecar_sink(&k);
    assert!(
        rt.block_on(sink.cache().wait_synced(Duration::from_secs(30))),
        "the cache's LIST of every RemediationRequest must be allowed"
    );
    let lists = requests_served(&k, &["LIST"], Some("200"));
    // Written after the LIST: only the watch can bring it.
    create_as_admin(&k, &foreign_resource("watched", "rr-w-1", "fw", FIRST));
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
        requests_served(&k, &["LIST"], Some("200")),
        lists,
        "seen through the watch, not a new LIST"
    );
}

#[test]
fn without_a_cluster_wide_binding_cached_lookups_read_the_api_server() {
    let k = private_api_server();
    k.create_namespace("narrow");
    k.kubectl_ok(&["delete", "clusterrolebinding", "signalgate-sidecar"]);
    bind_sidecar(&k, "narrow");
    bind_sidecar(&k, FALLBACK);
    create_as_admin(&k, &foreign_resource("narrow", "rr-n-1", "fn", FIRST));
    let (rt, sink) = sidecar_sink(&k);
    let before = requests_served(&k, &["LIST"], Some("200"));
    let fps = ["fn".to_string()];
    let found = rt
        .block_on(sink.find_latest("narrow", &fps, Read::Cached))
        .unwrap()
        .remove(0);
    assert_eq!(found.map(|f| f.location.name).as_deref(), Some("rr-n-1"));
    // The cache may not LIST across namespaces, so it never syncs: the
    // lookup LISTed the namespace and the fallback one.
    assert!(!sink.cache().synced());
    assert!(requests_served(&k, &["LIST"], Some("200")) - before >= 2.0);
}
