//! RemediationRequests in a real kube-apiserver: the API server prepared as
//! an operator prepares it, a sidecar writing to it as its service account,
//! and what the API server holds, read as the admin.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use signalgate_sidecar::config::LookupReads;
use signalgate_sidecar::sink::kube::KubeSink;

use crate::k8s::{ApiServer, Identity};
use crate::process::wait_for;
use crate::sidecar::Sidecar;
use crate::workspace;

/// Where the sidecar writes a resource whose namespace does not exist.
pub const FALLBACK: &str = "signalgate-system";

/// CRD, the sidecar's RBAC and its namespace, as an operator applies them.
pub fn prepare(k: &ApiServer) {
    k.apply_file(&workspace::root().join("deploy/crds"));
    k.create_namespace(FALLBACK);
    k.apply_file(&workspace::root().join("deploy/base/rbac.yaml"));
}

/// One API server for every test of a test binary that does not stop it
/// (each test uses its own namespaces).
pub fn shared_api_server() -> &'static ApiServer {
    static K8S: OnceLock<ApiServer> = OnceLock::new();
    K8S.get_or_init(|| {
        let k = ApiServer::start();
        prepare(&k);
        k
    })
}

/// A prepared API server of one test's own, for tests that stop or change it.
pub fn private_api_server() -> ApiServer {
    let k = ApiServer::start();
    prepare(&k);
    k
}

/// A sidecar with the kube sink, authenticating as the sidecar's service
/// account, with `extra` settings.
pub fn kube_sidecar(k: &ApiServer, name: &str, extra: &[(&str, &str)]) -> Sidecar {
    let kubeconfig = k.kubeconfig(Identity::Sidecar).display().to_string();
    let mut env = vec![
        ("SIGNALGATE_SINK", "kube"),
        ("KUBECONFIG", kubeconfig.as_str()),
        ("SIGNALGATE_FALLBACK_NAMESPACE", FALLBACK),
    ];
    env.extend_from_slice(extra);
    Sidecar::start_named(name, &env)
}

/// The RemediationRequests in `ns`, sorted by name (read as the admin over
/// HTTP); why not, when the API server does not answer with a list.
pub fn try_list(k: &ApiServer, ns: &str) -> Result<Vec<Value>, String> {
    let url = format!(
        "{}/apis/signalgate.io/v1alpha1/namespaces/{ns}/remediationrequests",
        k.url()
    );
    match k.try_request(Identity::Admin, "GET", &url, None) {
        Ok((200, body)) => items_by_name(ns, &body),
        Ok((status, body)) => Err(format!("listing resources in {ns}: HTTP {status}: {body}")),
        Err(e) => Err(format!("listing resources in {ns}: {e}")),
    }
}

/// The items of `body`, a list of `ns`'s resources as the API server
/// answers it, sorted by name.
pub fn items_by_name(ns: &str, body: &str) -> Result<Vec<Value>, String> {
    let list: Value = serde_json::from_str(body).map_err(|e| format!("list {ns}: {e}: {body}"))?;
    let mut items = list["items"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("list {ns}: no items in {body}"))?;
    items.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    Ok(items)
}

/// The RemediationRequests in `ns`, sorted by name; panics when the API
/// server does not answer with a list.
pub fn list(k: &ApiServer, ns: &str) -> Vec<Value> {
    try_list(k, ns).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits up to 30 s until the resources in `ns` satisfy `cond`; returns them.
pub fn wait_list(
    k: &ApiServer,
    ns: &str,
    what: &str,
    cond: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_for(what, Duration::from_secs(30), || {
        let items = list(k, ns);
        cond(&items).then_some(items)
    })
}

pub fn is_storm(rr: &Value) -> bool {
    rr["metadata"]["labels"]["signalgate.io/storm"] == "true"
}

/// The resource's occurrence count; panics when it has none.
pub fn count(rr: &Value) -> u64 {
    rr["spec"]["deduplication"]["occurrenceCount"]
        .as_u64()
        .unwrap_or_else(|| panic!("no occurrenceCount in {rr}"))
}

/// An object's `metadata.name` (a resource's, a pod's).
pub fn name_of(rr: &Value) -> String {
    rr["metadata"]["name"].as_str().unwrap_or("?").to_string()
}

/// RemediationRequest requests the API server has answered so far, of one
/// of `verbs` (`"LIST"`, `"GET"`, …) and, if given, with status `code`.
pub fn requests_served(k: &ApiServer, verbs: &[&str], code: Option<&str>) -> f64 {
    let (status, metrics) = k.get(Identity::Admin, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"remediationrequests\"")
                && verbs.iter().any(|v| l.contains(&format!("verb=\"{v}\"")))
                && code.is_none_or(|c| l.contains(&format!("code=\"{c}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The URIs of the sink's lookups the API server has logged so far, in
/// order: its LISTs of RemediationRequests by label (the watch cache's LISTs
/// and the readiness probe's have no selector).
pub fn lookups(k: &ApiServer) -> Vec<String> {
    k.remediation_request_lists()
        .into_iter()
        .filter(|uri| uri.contains("labelSelector="))
        .collect()
}

/// `read` once two reads 300 ms apart agree: the API server counts a
/// request (and writes its audit event) a moment after answering it.
pub fn settled<T: PartialEq>(mut read: impl FnMut() -> T) -> T {
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The kube sink as the sidecar's service account (lookups through its
/// watch cache), and the runtime the cache runs on.
pub fn sidecar_sink(k: &ApiServer) -> (tokio::runtime::Runtime, KubeSink) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let path = k.kubeconfig(Identity::Sidecar);
    let sink = rt
        .block_on(KubeSink::from_kubeconfig(
            &path,
            FALLBACK,
            LookupReads::Cache,
        ))
        .expect("kube sink");
    (rt, sink)
}

/// A RemediationRequest as another client than signalgate writes it:
/// incident `fingerprint` of `namespace` named `name`, first seen at
/// `first`, last seen on 2026-12-01 at 11:00, counted 5 times over 2 firings.
pub fn foreign_resource(namespace: &str, name: &str, fingerprint: &str, first: &str) -> Value {
    serde_json::json!({
        "apiVersion": "signalgate.io/v1alpha1",
        "kind": "RemediationRequest",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"signalgate.io/fingerprint": fingerprint}
        },
        "spec": {
            "signalFingerprint": fingerprint, "signalName": "Foreign", "signalType": "prometheus",
            "severity": "warning",
            "targetResource": {"kind": "Pod", "name": "p", "namespace": namespace},
            "source": "test", "firingTime": "2026-12-01T10:00:00Z", "receivedTime": first,
            "deduplication": {
                "firstSeen": first, "lastSeen": "2026-12-01T11:00:00Z", "occurrenceCount": 5,
                "firingCount": 2, "lastFiringTime": "2026-12-01T10:30:00Z"
            }
        }
    })
}

/// Creates `rr` (in its namespace) as the cluster admin.
pub fn create_as_admin(k: &ApiServer, rr: &Value) {
    let ns = rr["metadata"]["namespace"].as_str().expect("a namespace");
    let url = format!("/apis/signalgate.io/v1alpha1/namespaces/{ns}/remediationrequests");
    let (status, body) = k.request(Identity::Admin, "POST", &url, Some(rr));
    assert_eq!(status, 201, "{body}");
}
