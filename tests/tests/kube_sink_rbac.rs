//! The kube sink under RBAC: a namespace it may not write answers 5xx and
//! says why; the shipped RBAC grants only what the sidecar uses.

use signalgate_tests::payloads::{alert, webhook};
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
    for verb in ["get", "create", "patch", "list"] {
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
