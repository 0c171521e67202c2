//! Every kustomization under `deploy/` is accepted by a real kube-apiserver
//! (server-side dry run), after the CRD and stand-ins for Istio's and Envoy
//! Gateway's CRDs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use signalgate_tests::k8s::ApiServer;
use signalgate_tests::manifests::{
    str_of, Rendered, CRD_FILE, EXAMPLES, KUSTOMIZATIONS, NAMESPACE,
};
use signalgate_tests::process::temp_dir;
use signalgate_tests::workspace;

const STAND_IN_CRDS: &[&str] = &[
    "tests/fixtures/istio-crds-stand-in.yaml",
    "tests/fixtures/envoy-gateway-crds-stand-in.yaml",
];

/// `kind.group/name`, as `kubectl ... -o name` prints it.
fn kubectl_name(o: &Value) -> String {
    let kind = str_of(&o["kind"], "kind").to_lowercase();
    let api = str_of(&o["apiVersion"], "apiVersion");
    let name = str_of(&o["metadata"]["name"], "name");
    match api.split_once('/') {
        Some((group, _)) => format!("{kind}.{group}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// The test API server is Kubernetes 1.20, which serves PodDisruptionBudget
/// only as policy/v1beta1 (policy/v1 is GA from 1.21, and v1beta1 is gone in
/// 1.25, so the manifests rightly use v1). The two versions have the same
/// fields; everything else is sent unchanged.
fn for_api_server_1_20(objects: &[Value]) -> Vec<Value> {
    objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o["kind"] == "PodDisruptionBudget" && o["apiVersion"] == "policy/v1" {
                o["apiVersion"] = json!("policy/v1beta1");
            }
            o
        })
        .collect()
}

fn write_objects(dir: &Path, name: &str, objects: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&path, serde_json::to_vec_pretty(&list).expect("json")).expect("write objects");
    path
}

#[test]
fn every_kustomization_is_accepted_by_a_real_api_server() {
    let k8s = ApiServer::start();
    // For real: the CRD (as `make k8s-up` and operators do first), the
    // namespace (a dry run does not create it, and namespaced objects need
    // it), and stand-ins for Istio's and Envoy Gateway's CRDs (clearly
    // marked in the files).
    k8s.apply_file(&workspace::root().join(CRD_FILE));
    k8s.create_namespace(NAMESPACE);
    for file in STAND_IN_CRDS {
        k8s.apply_file(&workspace::root().join(file));
    }
    let tmp = temp_dir("deploy-dry-run");

    for dir in KUSTOMIZATIONS.iter().chain(EXAMPLES) {
        let rendered = Rendered::of(dir);
        let objects = for_api_server_1_20(&rendered.objects);
        let file = write_objects(
            tmp.path(),
            &format!("{}.json", dir.replace('/', "_")),
            &objects,
        );
        let out = k8s.kubectl(&[
            "apply",
            "--dry-run=server",
            "--validate=true",
            "-o",
            "name",
            "-f",
            file.to_str().expect("utf-8 path"),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{dir}: the API server refused the dry run:\n{}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let accepted: BTreeSet<String> = stdout.lines().map(|l| l.trim().to_string()).collect();
        let expected: BTreeSet<String> = objects.iter().map(kubectl_name).collect();
        assert_eq!(expected.len(), objects.len(), "{dir}: duplicate objects");
        assert_eq!(accepted, expected, "{dir}: every object must be accepted");
    }

    // A dry run creates nothing ...
    let out = k8s.kubectl_ok(&[
        "get",
        "deployments,services,configmaps,secrets,networkpolicies",
        "-n",
        NAMESPACE,
        "-o",
        "name",
    ]);
    assert!(
        out.lines()
            .all(|l| l.starts_with("configmap/kube-root-ca.crt")
                || l.starts_with("secret/default-token")),
        "the dry run created objects:\n{out}"
    );

    // ... and is not a rubber stamp: an invalid object is refused.
    let mut broken = for_api_server_1_20(&Rendered::of("deploy/base").objects);
    let deploy = broken
        .iter_mut()
        .find(|o| o["kind"] == "Deployment")
        .expect("Deployment");
    deploy["spec"]["template"]["spec"]["containers"][0]["name"] = json!("Not_A_DNS_Label");
    let file = write_objects(tmp.path(), "broken.json", &broken);
    let out = k8s.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        file.to_str().expect("utf-8"),
    ]);
    assert!(
        !out.status.success(),
        "an invalid Deployment passed the dry run"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Not_A_DNS_Label"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
