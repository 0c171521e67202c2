//! The kube-apiserver harness works: a real API server with namespaces, CRDs,
//! custom objects, RBAC, and a stop/restart that keeps the data.

use signalgate_tests::k8s::{ApiServer, Identity, SIDECAR_USER};

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.signalgate.io
spec:
  group: harness.signalgate.io
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size:
                  type: integer
"#;

const WIDGETS: &str = "/apis/harness.signalgate.io/v1/namespaces/harness/widgets";

#[test]
fn real_apiserver_with_crds_rbac_and_restart() {
    let mut k8s = ApiServer::start();
    assert!(k8s.url().starts_with("https://127.0.0.1:"));
    assert_eq!(k8s.readyz(), Some(200));

    let (status, body) = k8s.get(Identity::Admin, "/api");
    assert_eq!(status, 200, "{body}");
    let version = k8s.kubectl_ok(&["version", "-o", "json"]);
    assert!(version.contains("\"gitVersion\": \"v1.20.2\""), "{version}");

    k8s.create_namespace("harness");
    k8s.create_namespace("harness"); // idempotent
    let crd = k8s.dir().join("widget-crd.yaml");
    std::fs::write(&crd, CRD).expect("write CRD");
    k8s.apply_file(&crd);

    let widget = serde_json::json!({
        "apiVersion": "harness.signalgate.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "labels": {"app": "harness"}},
        "spec": {"size": 3},
    });
    let (status, body) = k8s.request(Identity::Admin, "POST", WIDGETS, Some(&widget));
    assert_eq!(status, 201, "{body}");
    let (status, _) = k8s.request(Identity::Admin, "POST", WIDGETS, Some(&widget));
    assert_eq!(status, 409, "a second create is AlreadyExists");

    // The sidecar's identity authenticates but has no RBAC grant yet.
    let (status, body) = k8s.get(Identity::Sidecar, WIDGETS);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(SIDECAR_USER), "{body}");
    let (status, body) = k8s.request(Identity::Sidecar, "POST", WIDGETS, Some(&widget));
    assert_eq!(status, 403, "{body}");
    let denied = k8s.kubectl_as(Identity::Sidecar, &["get", "widgets", "-n", "harness"]);
    assert!(!denied.status.success());

    // A Role + RoleBinding for it is enough.
    let rbac = k8s.dir().join("rbac.yaml");
    std::fs::write(
        &rbac,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: widget-reader, namespace: harness}}\n\
             rules: [{{apiGroups: [harness.signalgate.io], resources: [widgets], verbs: [get, list]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: widget-reader, namespace: harness}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: widget-reader}}\n\
             subjects: [{{kind: User, name: \"{SIDECAR_USER}\", apiGroup: rbac.authorization.k8s.io}}]\n"
        ),
    )
    .expect("write rbac");
    k8s.apply_file(&rbac);
    signalgate_tests::process::wait_for(
        "RBAC grant to take effect",
        std::time::Duration::from_secs(10),
        || (k8s.get(Identity::Sidecar, &format!("{WIDGETS}/w1")).0 == 200).then_some(()),
    );
    let (status, _) = k8s.request(Identity::Sidecar, "DELETE", &format!("{WIDGETS}/w1"), None);
    assert_eq!(status, 403, "the Role grants no delete");
    let sidecar_kubeconfig = k8s.kubeconfig(Identity::Sidecar);
    assert!(std::fs::read_to_string(&sidecar_kubeconfig)
        .expect("read kubeconfig")
        .contains(k8s.sidecar_token()));

    // The API server goes away for a while and comes back with the data.
    let port = k8s.port();
    k8s.stop();
    assert!(!k8s.is_running());
    assert_eq!(k8s.readyz(), None, "nothing answers while stopped");
    assert!(k8s
        .try_request(
            Identity::Admin,
            "GET",
            &format!("{}{WIDGETS}", k8s.url()),
            None
        )
        .is_err());
    k8s.restart();
    assert_eq!(k8s.port(), port);
    assert_eq!(k8s.readyz(), Some(200));
    let (status, body) = k8s.get(Identity::Admin, &format!("{WIDGETS}/w1"));
    assert_eq!(status, 200, "{body}");
    let stored: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(stored["spec"]["size"], 3);
    let listed = k8s.kubectl_ok(&[
        "get",
        "widgets",
        "-n",
        "harness",
        "-l",
        "app=harness",
        "-o",
        "name",
    ]);
    assert_eq!(listed.trim(), "widget.harness.signalgate.io/w1");
}

/// A server started on a thread that has since exited (as in a
/// `static OnceLock<ApiServer>` shared by several tests) keeps running:
/// PR_SET_PDEATHSIG must not fire when that thread ends.
#[test]
fn server_outlives_the_thread_that_started_it() {
    let k8s = std::thread::spawn(ApiServer::start)
        .join()
        .expect("start thread");
    let (status, body) = k8s.get(Identity::Admin, "/readyz");
    assert_eq!(status, 200, "{body}");
    k8s.create_namespace("outlives");
}
