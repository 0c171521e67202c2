//! `deploy/` is what an operator applies, checked for real:
//!
//! - every kustomization is rendered with the project's own kubectl (Debian's
//!   1.20, kustomize built in) and applied to a real kube-apiserver with a
//!   server-side dry run, after the CRD (and stand-ins for Istio's CRDs);
//! - the rendered objects hang together (selectors, names, ports, security
//!   settings, copies of the CRD and RBAC);
//! - the Envoy bootstrap inside the ConfigMap, and the filter configuration
//!   the Istio EnvoyFilter delivers, are loaded by the real Envoy with the
//!   built filter, which must become ready and answer through the filter;
//! - the Dockerfiles agree with the build and the manifests (no container
//!   engine here: files, users, ports, entry points).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};
use signalgate_tests::k8s::{self, ApiServer};
use signalgate_tests::process::{free_port, temp_dir, Proc};
use signalgate_tests::{envoy, workspace};

/// Every kustomization under `deploy/` (a test fails when one is missing here).
const KUSTOMIZATIONS: &[&str] = &[
    "deploy/base",
    "deploy/overlays/redis-cluster",
    "deploy/istio",
];
/// Kustomizations checked by their own test file instead (Prometheus
/// Operator objects: tests/tests/monitoring_rules.rs).
const TESTED_ELSEWHERE: &[&str] = &["deploy/monitoring"];

const NAMESPACE: &str = "signalgate-system";
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
];
const CRD_FILE: &str = "deploy/crds/remediationrequests.signalgate.io.yaml";
const RBAC_FILE: &str = "deploy/base/rbac.yaml";
const ISTIO_STAND_IN_CRDS: &str = "tests/fixtures/istio-crds-stand-in.yaml";
/// The Makefile's name for the built filter (`WASM :=`).
const WASM_OUTPUT: &str = "target/wasm32-wasip1/release/signalgate_filter.wasm";

// ------------------------------------------------------------ rendering ----

fn root() -> PathBuf {
    workspace::root()
}

/// `kubectl kustomize <dir>` with the kubectl the project installs
/// (scripts/k8s.sh build), never the one on PATH.
fn render(dir: &str) -> String {
    let kubectl = k8s::bin_dir().join("kubectl");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn parse_yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The rendered objects of one kustomization.
struct Rendered {
    dir: &'static str,
    objects: Vec<Value>,
}

impl Rendered {
    fn of(dir: &'static str) -> Rendered {
        let objects = parse_yaml_docs(&render(dir));
        assert!(!objects.is_empty(), "{dir} renders nothing");
        Rendered { dir, objects }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: expected exactly one {kind}", self.dir);
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.dir))
    }

    fn deployment(&self) -> &Value {
        self.named("Deployment", "signalgate")
    }

    fn pod_spec(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    fn container(&self, name: &str) -> Option<&Value> {
        arr(&self.pod_spec()["containers"])
            .iter()
            .find(|c| c["name"] == name)
    }

    fn sidecar(&self) -> &Value {
        self.container("sidecar")
            .unwrap_or_else(|| panic!("{}: no sidecar container", self.dir))
    }

    /// The Envoy bootstrap from the ConfigMap (plain-Envoy kustomizations).
    fn envoy_bootstrap(&self) -> Value {
        let cm_name = arr(&self.pod_spec()["volumes"])
            .iter()
            .find(|v| v["name"] == "envoy-config")
            .and_then(|v| v["configMap"]["name"].as_str())
            .unwrap_or_else(|| panic!("{}: no envoy-config volume", self.dir))
            .to_string();
        let cm = self.named("ConfigMap", &cm_name);
        let text = cm["data"]["envoy.yaml"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: ConfigMap {cm_name} has no envoy.yaml", self.dir));
        let mut docs = parse_yaml_docs(text);
        assert_eq!(docs.len(), 1, "envoy.yaml is one document");
        docs.remove(0)
    }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    arr(&container["env"]).iter().find(|e| e["name"] == name)
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    let var = env_var(container, name)
        .unwrap_or_else(|| panic!("container {} has no {name}", container["name"]));
    str_of(&var["value"], name)
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn container_port(container: &Value, name: &str) -> Option<u64> {
    arr(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

/// Whether every label of `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(sel) = selector.as_object() else {
        return false;
    };
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v)
}

/// Every value at a key named `key`, anywhere in `v`, with its path.
fn find_key<'a>(v: &'a Value, key: &str, path: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{path}/{k}");
                if k == key {
                    out.push((p.clone(), child));
                }
                find_key(child, key, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_key(child, key, format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn all_of<'a>(v: &'a Value, key: &str) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    find_key(v, key, String::new(), &mut out);
    out
}

/// The (single) wasm HTTP filter's `config` in an Envoy bootstrap.
fn wasm_config(bootstrap: &Value) -> &Value {
    let found: Vec<&Value> = all_of(bootstrap, "typed_config")
        .into_iter()
        .map(|(_, tc)| tc)
        .filter(|tc| {
            tc["@type"] == "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one wasm filter in the bootstrap");
    &found[0]["config"]
}

fn plugin_config_json(wasm_config: &Value) -> Value {
    let configuration = &wasm_config["configuration"];
    assert_eq!(
        configuration["@type"], "type.googleapis.com/google.protobuf.StringValue",
        "the plugin configuration is a StringValue"
    );
    serde_json::from_str(str_of(&configuration["value"], "configuration.value"))
        .expect("the plugin configuration is JSON")
}

/// The EnvoyFilter's EXTENSION_CONFIG value (the filter Istio's Envoy runs).
fn istio_extension_config(r: &Rendered) -> &Value {
    let ef = r.one("EnvoyFilter");
    let adds: Vec<&Value> = arr(&ef["spec"]["configPatches"])
        .iter()
        .filter(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .collect();
    assert_eq!(adds.len(), 1, "one EXTENSION_CONFIG patch");
    assert_eq!(adds[0]["patch"]["operation"], "ADD");
    &adds[0]["patch"]["value"]
}

// ------------------------------------------------------- static checks ----

#[test]
fn every_kustomization_under_deploy_is_tested() {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read deploy/") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if matches!(
                path.file_name().and_then(|n| n.to_str()),
                Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
            ) {
                let rel = path
                    .parent()
                    .expect("parent")
                    .strip_prefix(root())
                    .expect("in repo");
                found.insert(rel.display().to_string());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&root().join("deploy"), &mut found);
    let listed: BTreeSet<String> = KUSTOMIZATIONS
        .iter()
        .chain(TESTED_ELSEWHERE)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        found, listed,
        "update KUSTOMIZATIONS in tests/tests/deploy.rs"
    );
}

#[test]
fn crd_and_rbac_copies_equal_the_originals() {
    // kustomize in kubectl 1.20 loads files only from inside the
    // kustomization's directory, so these are copies.
    let crd = read(CRD_FILE);
    for copy in [
        "deploy/base/remediationrequests.signalgate.io.yaml",
        "deploy/istio/remediationrequests.signalgate.io.yaml",
    ] {
        assert!(
            read(copy) == crd,
            "{copy} differs from {CRD_FILE}: run `cp {CRD_FILE} {copy}`"
        );
    }
    assert!(
        read("deploy/istio/rbac.yaml") == read(RBAC_FILE),
        "deploy/istio/rbac.yaml differs from {RBAC_FILE}: run `cp {RBAC_FILE} deploy/istio/rbac.yaml`"
    );
}

/// Checks shared by every kustomization.
fn check_common(r: &Rendered) {
    let dir = r.dir;
    for o in &r.objects {
        let kind = str_of(&o["kind"], "kind");
        assert!(
            o["apiVersion"].is_string(),
            "{dir}: {kind} has no apiVersion"
        );
        assert!(
            o["metadata"]["name"].is_string(),
            "{dir}: {kind} has no name"
        );
        if CLUSTER_SCOPED.contains(&kind) {
            assert!(
                o["metadata"]["namespace"].is_null(),
                "{dir}: {kind} is cluster-scoped"
            );
        } else {
            assert_eq!(
                o["metadata"]["namespace"], NAMESPACE,
                "{dir}: {kind} {} is not in {NAMESPACE}",
                o["metadata"]["name"]
            );
        }
    }
    assert_eq!(r.one("Namespace")["metadata"]["name"], NAMESPACE);

    // The CRD and the RBAC are the originals (kustomize writes `0.0` as `0`).
    let crd = parse_yaml_docs(&read(CRD_FILE)).remove(0);
    assert_eq!(
        numbers_as_f64(r.one("CustomResourceDefinition")),
        numbers_as_f64(&crd),
        "{dir}: CRD differs from {CRD_FILE}"
    );
    for mut original in parse_yaml_docs(&read(RBAC_FILE)) {
        let kind = str_of(&original["kind"], "kind").to_string();
        let name = str_of(&original["metadata"]["name"], "name").to_string();
        if !CLUSTER_SCOPED.contains(&kind.as_str()) {
            original["metadata"]["namespace"] = json!(NAMESPACE);
        }
        assert_eq!(
            numbers_as_f64(r.named(&kind, &name)),
            numbers_as_f64(&original),
            "{dir}: {kind} {name} differs from {RBAC_FILE}"
        );
    }

    let deploy = r.deployment();
    let template = &deploy["spec"]["template"];
    let labels = &template["metadata"]["labels"];
    let pod = &template["spec"];
    assert!(
        selects(&deploy["spec"]["selector"]["matchLabels"], labels),
        "{dir}: Deployment selector"
    );
    assert_eq!(pod["serviceAccountName"], "signalgate-sidecar", "{dir}");

    // Security: non-root, seccomp, and per container no escalation, read-only
    // root, no capabilities, requests and limits.
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true, "{dir}: runAsNonRoot");
    assert!(
        psc["runAsUser"].as_u64().is_some_and(|u| u > 0),
        "{dir}: runAsUser"
    );
    assert_eq!(
        psc["seccompProfile"]["type"], "RuntimeDefault",
        "{dir}: seccomp"
    );
    let inits = arr(&pod["initContainers"]);
    let containers = arr(&pod["containers"]);
    for c in inits.iter().chain(containers) {
        let name = &c["name"];
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{dir}: {name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{dir}: {name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{dir}: {name}");
        assert!(
            sc["capabilities"]["add"].is_null(),
            "{dir}: {name} adds capabilities"
        );
        for bound in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][bound][res].is_string(),
                    "{dir}: {name} has no {bound}.{res}"
                );
            }
        }
        let image = str_of(&c["image"], "image");
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{dir}: {name} image {image} is not pinned to a tag"
        );
    }
    for c in containers {
        for probe in ["readinessProbe", "livenessProbe"] {
            let port = &c[probe]["httpGet"]["port"];
            let port = str_of(port, "probe port (named)");
            assert!(
                container_port(c, port).is_some(),
                "{dir}: {} {probe} uses port {port}, which the container does not declare",
                c["name"]
            );
        }
    }

    // The sidecar: kube sink, Redis URL from the Secret.
    let sidecar = r.sidecar();
    assert_eq!(env_value(sidecar, "SIGNALGATE_SINK"), "kube", "{dir}");
    let redis = env_var(sidecar, "SIGNALGATE_REDIS_URL").expect("SIGNALGATE_REDIS_URL");
    assert!(
        redis["value"].is_null(),
        "{dir}: the Redis URL must come from a Secret"
    );
    let key_ref = &redis["valueFrom"]["secretKeyRef"];
    let secret = r.named("Secret", str_of(&key_ref["name"], "secret name"));
    let key = str_of(&key_ref["key"], "secret key");
    let url = decode_base64(str_of(&secret["data"][key], "secret data"));
    assert!(
        [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://"
        ]
        .iter()
        .any(|p| url.starts_with(p)),
        "{dir}: Redis URL {url:?}"
    );
    assert_eq!(
        port_of(env_value(sidecar, "SIGNALGATE_ADMIN_LISTEN")) as u64,
        container_port(sidecar, "admin").expect("admin port"),
        "{dir}: the admin port the probes use is the one the sidecar listens on"
    );

    // Every ConfigMap volume is rendered here (kube-root-ca.crt is created by
    // Kubernetes in every namespace).
    for (_, cm) in all_of(pod, "configMap") {
        let name = str_of(&cm["name"], "configMap name");
        if name != "kube-root-ca.crt" {
            r.named("ConfigMap", name);
        }
    }

    // One Service port, the signal port; PDB and NetworkPolicy select the pods.
    let svc = r.one("Service");
    assert!(
        selects(&svc["spec"]["selector"], labels),
        "{dir}: Service selector"
    );
    let ports = arr(&svc["spec"]["ports"]);
    assert_eq!(ports.len(), 1, "{dir}: the Service exposes one port");
    let target = str_of(&ports[0]["targetPort"], "Service targetPort (named)");
    assert_eq!(target, "signals", "{dir}");
    let exposing: Vec<&Value> = containers
        .iter()
        .filter(|c| container_port(c, target).is_some())
        .collect();
    assert_eq!(
        exposing.len(),
        1,
        "{dir}: one container has the port {target}"
    );
    let pdb = r.one("PodDisruptionBudget");
    assert!(
        selects(&pdb["spec"]["selector"]["matchLabels"], labels),
        "{dir}: PDB selector"
    );
    let replicas = deploy["spec"]["replicas"].as_u64().expect("replicas");
    assert!(
        pdb["spec"]["minAvailable"].as_u64().expect("minAvailable") < replicas,
        "{dir}: the PDB must allow a drain"
    );
    let np = r.one("NetworkPolicy");
    assert!(
        selects(&np["spec"]["podSelector"]["matchLabels"], labels),
        "{dir}: NetworkPolicy selector"
    );
    assert_eq!(
        np["spec"]["policyTypes"],
        json!(["Ingress", "Egress"]),
        "{dir}"
    );
    let ingress = arr(&np["spec"]["ingress"]);
    assert_eq!(ingress.len(), 1, "{dir}: one ingress rule");
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": target, "protocol": "TCP"}]),
        "{dir}: ingress only to the signal port"
    );
    let egress_ports: BTreeSet<u64> = arr(&np["spec"]["egress"])
        .iter()
        .flat_map(|rule| arr(&rule["ports"]))
        .filter_map(|p| p["port"].as_u64())
        .collect();
    for needed in [53, 6379, 443, 6443] {
        assert!(
            egress_ports.contains(&needed),
            "{dir}: egress to port {needed}"
        );
    }
}

/// Plain Envoy: Envoy + filter + sidecar in one pod.
fn check_envoy_pod(r: &Rendered) {
    let dir = r.dir;
    let pod = r.pod_spec();
    let envoy_c = r.container("envoy").expect("envoy container");
    let sidecar = r.sidecar();
    assert!(
        str_of(&envoy_c["image"], "image").starts_with("envoyproxy/envoy"),
        "{dir}: official Envoy image"
    );
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "{dir}: Envoy gets no API token"
    );
    let token_mounts: Vec<&Value> = arr(&pod["containers"])
        .iter()
        .filter(|c| {
            arr(&c["volumeMounts"])
                .iter()
                .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount")
        })
        .collect();
    assert_eq!(
        token_mounts.len(),
        1,
        "{dir}: only the sidecar mounts the API token"
    );
    assert_eq!(token_mounts[0]["name"], "sidecar");

    // The sidecar's signal API is loopback only and not declared as a port.
    let listen = env_value(sidecar, "SIGNALGATE_LISTEN");
    assert!(
        listen.starts_with("127.0.0.1:"),
        "{dir}: sidecar listens on {listen}"
    );
    assert!(
        arr(&sidecar["ports"])
            .iter()
            .all(|p| p["containerPort"].as_u64() != Some(port_of(listen) as u64)),
        "{dir}: the loopback signal port must not be a container port"
    );

    // Bootstrap vs pod: admin on loopback, listeners on the declared ports,
    // the sidecar cluster on the sidecar's port, the wasm where the init
    // container puts it.
    let boot = r.envoy_bootstrap();
    assert_eq!(
        boot["admin"]["address"]["socket_address"]["address"], "127.0.0.1",
        "{dir}: admin"
    );
    let listeners = arr(&boot["static_resources"]["listeners"]);
    let mut listener_ports = BTreeMap::new();
    for l in listeners {
        let sa = &l["address"]["socket_address"];
        listener_ports.insert(
            str_of(&l["name"], "listener name").to_string(),
            sa["port_value"].as_u64(),
        );
    }
    assert_eq!(
        listener_ports["signals"],
        container_port(envoy_c, "signals"),
        "{dir}"
    );
    assert_eq!(
        listener_ports["envoy-probe"],
        container_port(envoy_c, "envoy-probe"),
        "{dir}"
    );
    let sidecar_cluster = arr(&boot["static_resources"]["clusters"])
        .iter()
        .find(|c| c["name"] == "sidecar")
        .expect("cluster sidecar");
    let (_, sa) = all_of(sidecar_cluster, "socket_address").remove(0);
    assert_eq!(sa["address"], "127.0.0.1");
    assert_eq!(
        sa["port_value"].as_u64(),
        Some(port_of(listen) as u64),
        "{dir}: cluster sidecar port"
    );

    let wasm = wasm_config(&boot);
    assert_eq!(wasm["allow_on_headers_stop_iteration"], true, "{dir}");
    assert_eq!(
        wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8",
        "{dir}"
    );
    let wasm_file = str_of(
        &wasm["vm_config"]["code"]["local"]["filename"],
        "wasm filename",
    );
    let mount_of = |c: &Value, volume: &str| -> String {
        arr(&c["volumeMounts"])
            .iter()
            .find(|m| m["name"] == volume)
            .map(|m| str_of(&m["mountPath"], "mountPath").to_string())
            .unwrap_or_else(|| panic!("{dir}: {} does not mount {volume}", c["name"]))
    };
    assert!(
        wasm_file.starts_with(&format!("{}/", mount_of(envoy_c, "filter"))),
        "{dir}"
    );
    let init = arr(&pod["initContainers"])
        .iter()
        .find(|c| c["name"] == "install-filter")
        .expect("init container install-filter");
    let cmd: Vec<&str> = arr(&init["command"])
        .iter()
        .map(|v| str_of(v, "command"))
        .collect();
    assert_eq!(
        cmd.last().copied(),
        Some(wasm_file),
        "{dir}: the init container writes the file Envoy loads"
    );
    assert!(
        wasm_file.starts_with(&format!("{}/", mount_of(init, "filter"))),
        "{dir}"
    );
    let cfg_mount = mount_of(envoy_c, "envoy-config");
    let args: Vec<&str> = arr(&envoy_c["args"])
        .iter()
        .map(|v| str_of(v, "arg"))
        .collect();
    let config_path = args
        .iter()
        .position(|a| *a == "--config-path")
        .map(|i| args[i + 1])
        .expect("--config-path");
    assert_eq!(config_path, format!("{cfg_mount}/envoy.yaml"), "{dir}");
}

#[test]
fn rendered_manifests_hang_together() {
    let base = Rendered::of("deploy/base");
    let cluster = Rendered::of("deploy/overlays/redis-cluster");
    let istio = Rendered::of("deploy/istio");
    for r in [&base, &cluster, &istio] {
        check_common(r);
    }
    check_envoy_pod(&base);
    check_envoy_pod(&cluster);

    // The overlay changes the Redis URL and the replicas, nothing else.
    let cluster_url = {
        let key_ref = &env_var(cluster.sidecar(), "SIGNALGATE_REDIS_URL").expect("url")
            ["valueFrom"]["secretKeyRef"];
        decode_base64(str_of(
            &cluster.named("Secret", str_of(&key_ref["name"], "name"))["data"]["url"],
            "url",
        ))
    };
    assert!(cluster_url.starts_with("redis+cluster://"), "{cluster_url}");
    assert!(
        cluster_url.contains(','),
        "several seed nodes: {cluster_url}"
    );
    assert!(
        cluster.deployment()["spec"]["replicas"].as_u64()
            > base.deployment()["spec"]["replicas"].as_u64()
    );
    assert_eq!(cluster.envoy_bootstrap(), base.envoy_bootstrap());
    assert_eq!(cluster.objects.len(), base.objects.len());

    // Istio: the sidecar alone, reachable on the pod IP (Istio forwards
    // inbound traffic there), and the filter through WasmPlugin + EnvoyFilter.
    let pod = istio.pod_spec();
    assert_eq!(
        arr(&pod["containers"]).len(),
        1,
        "Istio injects Envoy itself"
    );
    assert!(pod["initContainers"].is_null());
    let sidecar = istio.sidecar();
    let listen = env_value(sidecar, "SIGNALGATE_LISTEN");
    let signals_port = container_port(sidecar, "signals").expect("signals port");
    assert_eq!(port_of(listen) as u64, signals_port);
    let labels = &istio.deployment()["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["sidecar.istio.io/inject"], "true");

    let wp = istio.one("WasmPlugin");
    assert_eq!(wp["apiVersion"], "extensions.istio.io/v1alpha1");
    assert!(
        selects(&wp["spec"]["selector"]["matchLabels"], labels),
        "WasmPlugin selector"
    );
    assert_eq!(
        wp["spec"]["match"],
        json!([{"mode": "SERVER", "ports": [{"number": signals_port}]}])
    );
    assert_eq!(wp["spec"]["failStrategy"], "FAIL_CLOSE");
    let ef = istio.one("EnvoyFilter");
    assert_eq!(ef["apiVersion"], "networking.istio.io/v1alpha3");
    assert!(
        selects(&ef["spec"]["workloadSelector"]["labels"], labels),
        "EnvoyFilter selector"
    );
    let ext = istio_extension_config(&istio);
    let ext_name = str_of(&ext["name"], "extension config name");
    let wasm = &ext["typed_config"]["config"];
    assert_eq!(
        ext["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
    assert_eq!(wasm["root_id"], wp["spec"]["pluginName"], "same root id");
    assert_eq!(
        wasm["vm_config"]["code"]["remote"]["http_uri"]["uri"], wp["spec"]["url"],
        "EnvoyFilter and WasmPlugin must load the same OCI image"
    );
    assert_eq!(
        plugin_config_json(wasm),
        wp["spec"]["pluginConfig"],
        "EnvoyFilter and WasmPlugin must carry the same plugin configuration"
    );
    // The REPLACE patches swap the WasmPlugin's filter for the one above.
    let wasm_plugin_id = format!("{NAMESPACE}.{}", str_of(&wp["metadata"]["name"], "name"));
    let replaces: Vec<&Value> = arr(&ef["spec"]["configPatches"])
        .iter()
        .filter(|p| p["applyTo"] == "HTTP_FILTER")
        .collect();
    assert!(!replaces.is_empty());
    for p in replaces {
        assert_eq!(p["patch"]["operation"], "REPLACE");
        assert_eq!(p["match"]["context"], "SIDECAR_INBOUND");
        let sub = str_of(
            &p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
            "subFilter",
        );
        assert!(
            sub.contains(&wasm_plugin_id),
            "{sub} names the WasmPlugin {wasm_plugin_id}"
        );
        assert_eq!(p["patch"]["value"]["name"], ext_name);
        assert_eq!(
            p["patch"]["value"]["config_discovery"]["type_urls"],
            json!(["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"])
        );
    }

    // One set of shipped defaults for the filter.
    assert_eq!(
        plugin_config_json(wasm_config(&base.envoy_bootstrap())),
        wp["spec"]["pluginConfig"],
        "deploy/base/envoy.yaml and deploy/istio ship the same plugin configuration"
    );
}

/// `v` with every number as a float, for comparisons across YAML writers.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().expect("finite number")),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn decode_base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).expect("utf-8 secret")
}

// ------------------------------------------------ real kube-apiserver ----

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
    // it), and stand-ins for Istio's CRDs (clearly marked in the file).
    k8s.apply_file(&root().join(CRD_FILE));
    k8s.create_namespace(NAMESPACE);
    k8s.apply_file(&root().join(ISTIO_STAND_IN_CRDS));
    let tmp = temp_dir("deploy-dry-run");

    for dir in KUSTOMIZATIONS {
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

// ------------------------------------------------------------ real Envoy ----

/// Moves every socket address of `bootstrap` to a free loopback port (the
/// same old port always gets the same new one, so the probe listener's admin
/// cluster still reaches the admin), points the filter at the local build,
/// and returns the new port of each old one.
fn localise(bootstrap: &mut Value, wasm: &Path) -> BTreeMap<u64, u16> {
    fn walk(v: &mut Value, ports: &mut BTreeMap<u64, u16>, wasm: &Path, wasm_found: &mut usize) {
        match v {
            Value::Object(map) => {
                if let Some(sa) = map.get_mut("socket_address") {
                    let old = sa["port_value"].as_u64().expect("port_value");
                    let new = *ports.entry(old).or_insert_with(free_port);
                    sa["port_value"] = json!(new);
                    sa["address"] = json!("127.0.0.1");
                }
                if let Some(code) = map.get_mut("code") {
                    if code.get("local").is_some() || code.get("remote").is_some() {
                        *code = json!({"local": {"filename": wasm.display().to_string()}});
                        *wasm_found += 1;
                    }
                }
                for child in map.values_mut() {
                    walk(child, ports, wasm, wasm_found);
                }
            }
            Value::Array(items) => {
                for child in items {
                    walk(child, ports, wasm, wasm_found);
                }
            }
            _ => {}
        }
    }
    let mut ports = BTreeMap::new();
    let mut wasm_found = 0;
    walk(bootstrap, &mut ports, wasm, &mut wasm_found);
    assert_eq!(wasm_found, 1, "one wasm code source in the bootstrap");
    ports
}

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str) -> Option<(u16, String)> {
    let mut r = agent.get(url).call().ok()?;
    let status = r.status().as_u16();
    Some((status, r.body_mut().read_to_string().unwrap_or_default()))
}

/// A real Envoy running `bootstrap` with the Deployment's own arguments.
struct RunningEnvoy {
    proc: Proc,
    ports: BTreeMap<u64, u16>,
    _dir: tempfile::TempDir,
}

impl RunningEnvoy {
    fn start(mut bootstrap: Value, deployment_args: &[&str]) -> RunningEnvoy {
        let dir = temp_dir("deploy-envoy");
        let admin_port = bootstrap["admin"]["address"]["socket_address"]["port_value"]
            .as_u64()
            .expect("admin port");
        let ports = localise(&mut bootstrap, &envoy::wasm_path());
        let config = dir.path().join("envoy.json");
        std::fs::write(
            &config,
            serde_json::to_vec_pretty(&bootstrap).expect("json"),
        )
        .expect("write");
        let mut args: Vec<String> = deployment_args.iter().map(|s| s.to_string()).collect();
        let i = args
            .iter()
            .position(|a| a == "--config-path")
            .expect("--config-path");
        args[i + 1] = config.display().to_string();
        let mut cmd = Command::new(envoy::envoy_bin());
        cmd.args(&args);
        let mut proc = Proc::spawn("envoy", cmd, dir.path());
        let admin = ports[&admin_port];
        let agent = http();
        let deadline = Instant::now() + envoy::READY_TIMEOUT;
        loop {
            if let Some(status) = proc.try_wait() {
                panic!(
                    "Envoy exited ({status}) before becoming ready:\n{}",
                    proc.log_tail(60)
                );
            }
            if get(&agent, &format!("http://127.0.0.1:{admin}/ready"))
                .is_some_and(|(s, body)| s == 200 && body.contains("LIVE"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in time:\n{}",
                proc.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RunningEnvoy {
            proc,
            ports,
            _dir: dir,
        }
    }

    fn url(&self, old_port: u64, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[&old_port])
    }

    /// The filter answers on the signal listener: a wrong Content-Type gets
    /// its 415 problem+json (nothing is forwarded).
    fn assert_filter_answers(&mut self, signals_port: u64) {
        let mut r = http()
            .post(&self.url(signals_port, "/api/v1/signals/prometheus"))
            .header("Content-Type", "text/plain")
            .send("not json")
            .expect("POST to the signal listener");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(status, 415, "{body}\n{}", self.proc.log_tail(30));
        assert!(
            body.contains("\"status\":415"),
            "problem+json from the filter: {body}"
        );
        self.proc.assert_running();
    }
}

fn deployment_args(r: &Rendered) -> Vec<String> {
    let envoy_c = r.container("envoy").expect("envoy container");
    assert_eq!(envoy_c["command"], json!(["/usr/local/bin/envoy"]));
    arr(&envoy_c["args"])
        .iter()
        .map(|a| str_of(a, "arg").to_string())
        .collect()
}

#[test]
fn envoy_runs_the_configmap_bootstrap_and_becomes_ready() {
    let base = Rendered::of("deploy/base");
    let boot = base.envoy_bootstrap();
    let envoy_c = base.container("envoy").expect("envoy");
    let signals = container_port(envoy_c, "signals").expect("signals");
    let probe = container_port(envoy_c, "envoy-probe").expect("envoy-probe");
    let args = deployment_args(&base);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = RunningEnvoy::start(boot, &args);

    // What kubelet's probes reach, through the probe listener only.
    let agent = http();
    let ready_path = str_of(&envoy_c["readinessProbe"]["httpGet"]["path"], "path");
    let live_path = str_of(&envoy_c["livenessProbe"]["httpGet"]["path"], "path");
    let (status, body) = get(&agent, &running.url(probe, ready_path)).expect("readiness probe");
    assert_eq!((status, body.trim()), (200, "LIVE"));
    assert_eq!(
        get(&agent, &running.url(probe, live_path)).map(|r| r.0),
        Some(200)
    );
    let (status, metrics) = get(&agent, &running.url(probe, "/stats/prometheus")).expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("signalgate"),
        "the filter's metrics are scraped here"
    );
    // Nothing else of the admin interface is reachable from outside the pod.
    for path in [
        "/server_info",
        "/config_dump",
        "/quitquitquit",
        "/healthcheck/fail",
    ] {
        assert_eq!(
            get(&agent, &running.url(probe, path)).map(|r| r.0),
            Some(404),
            "{path}"
        );
    }
    let r = agent
        .post(&running.url(probe, "/quitquitquit"))
        .send("")
        .expect("POST");
    assert_eq!(r.status().as_u16(), 404);

    running.assert_filter_answers(signals);
}

#[test]
fn envoy_runs_the_istio_filter_configuration() {
    // The wasm filter exactly as the EnvoyFilter hands it to Istio's Envoy
    // (with the OCI image swapped for the local build, which is what
    // istio-agent does), in the base bootstrap's chain.
    let base = Rendered::of("deploy/base");
    let istio = Rendered::of("deploy/istio");
    let mut boot = base.envoy_bootstrap();
    let istio_wasm = istio_extension_config(&istio)["typed_config"].clone();
    let mut replaced = 0;
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners")
    {
        for chain in l["filter_chains"].as_array_mut().expect("filter_chains") {
            for f in chain["filters"].as_array_mut().expect("filters") {
                if let Some(http_filters) = f["typed_config"]["http_filters"].as_array_mut() {
                    for hf in http_filters {
                        if hf["name"] == "envoy.filters.http.wasm" {
                            hf["typed_config"] = istio_wasm.clone();
                            replaced += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(replaced, 1);
    let signals = container_port(base.container("envoy").expect("envoy"), "signals").expect("port");
    let args = deployment_args(&base);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = RunningEnvoy::start(boot, &args);
    running.assert_filter_answers(signals);
}

// ----------------------------------------------------------- Dockerfiles ----

/// One Dockerfile instruction: keyword (upper case) and the rest.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug, Default)]
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<Instruction>,
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "dangling line continuation");
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (kw, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = Instruction {
            keyword: kw.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                other => panic!("unexpected FROM {other:?}"),
            };
            stages.push(Stage {
                from: words[0].to_string(),
                name,
                instructions: Vec::new(),
            });
        } else {
            stages
                .last_mut()
                .expect("instruction before FROM")
                .instructions
                .push(ins);
        }
    }
    stages
}

impl Stage {
    fn all(&self, keyword: &str) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }
}

/// A COPY's `--from`, sources and destination.
fn copy_parts(ins: &Instruction) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut words = Vec::new();
    for w in ins.args.split_whitespace() {
        if let Some(f) = w.strip_prefix("--from=") {
            from = Some(f.to_string());
        } else if !w.starts_with("--") {
            words.push(w.to_string());
        }
    }
    let dest = words.pop().expect("COPY destination");
    (from, words, dest)
}

/// `key="value" key2=value2` pairs of a LABEL.
fn label_pairs(args: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = args.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        assert_eq!(chars.next(), Some('='), "LABEL {args}");
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let v = std::iter::from_fn(|| chars.next_if(|c| *c != '"')).collect();
            assert_eq!(
                chars.next(),
                Some('"'),
                "unterminated quote in LABEL {args}"
            );
            v
        } else {
            std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect()
        };
        out.insert(key.trim().to_string(), value);
    }
}

/// The exec form `["a", "b"]` of ENTRYPOINT/CMD.
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form JSON: {args}: {e}"))
}

/// Whether `path` is excluded by a .dockerignore's `patterns` (last match
/// wins; `*` matches everything, otherwise a pattern is a path or a prefix
/// directory).
fn ignored(patterns: &[String], path: &str) -> bool {
    let mut excluded = false;
    for p in patterns {
        let (negated, pat) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let pat = pat.trim_end_matches('/');
        let matches = pat == "*" || path == pat || path.starts_with(&format!("{pat}/"));
        if matches {
            excluded = !negated;
        }
    }
    excluded
}

fn dockerignore(dockerfile: &Path) -> Vec<String> {
    let path = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (each Dockerfile keeps its own)", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn dockerfiles_match_the_build_and_the_manifests() {
    let makefile = read("Makefile");
    assert!(
        makefile.contains(&format!("WASM := {WASM_OUTPUT}")),
        "the Makefile names {WASM_OUTPUT} as the filter build output"
    );
    let images_dir = root().join("deploy/images");
    let mut dockerfiles: Vec<PathBuf> = std::fs::read_dir(&images_dir)
        .expect("deploy/images")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Dockerfile") && !n.ends_with(".dockerignore"))
        })
        .collect();
    dockerfiles.sort();
    let names: Vec<String> = dockerfiles
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "Dockerfile.sidecar",
            "Dockerfile.wasm",
            "Dockerfile.wasm-init"
        ]
    );

    let mut parsed = BTreeMap::new();
    for path in &dockerfiles {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let stages = parse_dockerfile(&std::fs::read_to_string(path).expect("read Dockerfile"));
        let ignore = dockerignore(path);
        let mut stage_names = BTreeSet::new();
        for stage in &stages {
            // Base images pinned (or scratch, or an earlier stage).
            let from = &stage.from;
            assert!(
                from == "scratch"
                    || stage_names.contains(from)
                    || (from.contains(':') && !from.ends_with(":latest")),
                "{name}: FROM {from} is not pinned"
            );
            for copy in stage.all("COPY").into_iter().chain(stage.all("ADD")) {
                let (from_stage, sources, _) = copy_parts(copy);
                match from_stage {
                    Some(s) => assert!(
                        stage_names.contains(&s) || s.contains(':'),
                        "{name}: COPY --from={s} names no earlier stage"
                    ),
                    None => {
                        for src in sources {
                            let src = src
                                .trim_start_matches("./")
                                .trim_end_matches('/')
                                .to_string();
                            assert!(
                                root().join(&src).exists() || makefile.contains(&src),
                                "{name}: COPY {src}: neither in the repository nor a build output of the Makefile"
                            );
                            assert!(
                                !ignored(&ignore, &src),
                                "{name}: COPY {src} is excluded by its .dockerignore"
                            );
                        }
                    }
                }
            }
            assert!(
                stage.all("EXPOSE").is_empty(),
                "{name}: ports are documented, not EXPOSEd"
            );
            if let Some(n) = &stage.name {
                stage_names.insert(n.clone());
            }
        }
        // The image runs as a numeric, non-root user.
        let last = stages.last().expect("a stage");
        let users = last.all("USER");
        let user = &users
            .last()
            .unwrap_or_else(|| panic!("{name}: no USER in the final stage"))
            .args;
        let ids: Vec<u32> = user
            .split(':')
            .map(|id| {
                id.parse()
                    .unwrap_or_else(|_| panic!("{name}: USER {user} is not numeric"))
            })
            .collect();
        assert!(ids.iter().all(|id| *id != 0), "{name}: USER {user} is root");
        parsed.insert(name, stages);
    }

    let base = Rendered::of("deploy/base");
    let istio = Rendered::of("deploy/istio");

    // Dockerfile.wasm: Istio's compat format, one layer with plugin.wasm.
    let wasm = parsed["Dockerfile.wasm"].last().expect("stage");
    assert_eq!(wasm.from, "scratch");
    let layers: Vec<&Instruction> = wasm
        .instructions
        .iter()
        .filter(|i| matches!(i.keyword.as_str(), "COPY" | "ADD" | "RUN"))
        .collect();
    assert_eq!(layers.len(), 1, "Dockerfile.wasm: exactly one layer");
    let (_, sources, dest) = copy_parts(layers[0]);
    assert_eq!(sources, [WASM_OUTPUT]);
    assert_eq!(dest, "/plugin.wasm");

    // Dockerfile.wasm-init: what the init container runs is in the image.
    let init_image = parsed["Dockerfile.wasm-init"].last().expect("stage");
    let dests: BTreeMap<String, Vec<String>> = init_image
        .all("COPY")
        .into_iter()
        .map(|c| {
            let (_, sources, dest) = copy_parts(c);
            (dest, sources)
        })
        .collect();
    assert_eq!(
        dests.get("/plugin.wasm"),
        Some(&vec![WASM_OUTPUT.to_string()])
    );
    let init = arr(&base.pod_spec()["initContainers"])
        .iter()
        .find(|c| c["name"] == "install-filter")
        .expect("install-filter");
    let cmd: Vec<String> = arr(&init["command"])
        .iter()
        .map(|v| str_of(v, "cmd").to_string())
        .collect();
    assert!(
        dests.contains_key(&cmd[0]),
        "init container runs {}, which the image lacks",
        cmd[0]
    );
    assert_eq!(cmd[1..3], ["cp", "/plugin.wasm"]);
    let entry = exec_form(&init_image.all("ENTRYPOINT")[0].args);
    assert_eq!(
        entry,
        cmd[..3],
        "the image's ENTRYPOINT does what the manifest runs"
    );
    assert_eq!(
        exec_form(&init_image.all("CMD")[0].args),
        cmd[3..],
        "the image's default target is the manifest's"
    );

    // Dockerfile.sidecar: builds and runs the sidecar binary; its documented
    // ports are the manifests' and the sidecar's defaults.
    let sidecar_stages = &parsed["Dockerfile.sidecar"];
    let bin = "signalgate-sidecar";
    assert!(read("sidecar/Cargo.toml").contains(&format!("name = \"{bin}\"")));
    assert!(
        sidecar_stages[0]
            .all("RUN")
            .iter()
            .any(|r| r.args.contains(&format!("-p {bin}"))),
        "Dockerfile.sidecar builds {bin}"
    );
    // Cargo loads every workspace member even to build one package: the
    // build stage must copy each member's directory.
    let build_sources: Vec<String> = sidecar_stages[0]
        .all("COPY")
        .into_iter()
        .flat_map(|c| copy_parts(c).1)
        .collect();
    let manifest = read("Cargo.toml");
    let members: Vec<&str> = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .expect("Cargo.toml lists the workspace members on one line")
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(members.len() >= 5, "{members:?}");
    for member in members {
        assert!(
            build_sources
                .iter()
                .any(|src| member == src || member.starts_with(&format!("{src}/"))),
            "Dockerfile.sidecar does not copy workspace member {member}: cargo would not load the workspace"
        );
    }
    let last = sidecar_stages.last().expect("stage");
    let entry = exec_form(&last.all("ENTRYPOINT")[0].args);
    let copied: Vec<String> = last
        .all("COPY")
        .into_iter()
        .map(|c| copy_parts(c).2)
        .collect();
    assert!(copied.contains(&entry[0]) && entry[0].ends_with(&format!("/{bin}")));
    let labels: BTreeMap<String, String> = last
        .all("LABEL")
        .into_iter()
        .flat_map(|l| label_pairs(&l.args))
        .collect();
    let port_label = |key: &str| -> u16 {
        labels
            .get(key)
            .unwrap_or_else(|| panic!("Dockerfile.sidecar has no LABEL {key}"))
            .parse()
            .expect("port number")
    };
    let signals_port = port_label("io.signalgate.port.signals");
    let admin_port = port_label("io.signalgate.port.admin");
    let knob = |name: &str| {
        signalgate_sidecar::config::KNOBS
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.default)
            .expect("knob")
    };
    assert_eq!(
        port_of(knob("LISTEN")),
        signals_port,
        "the sidecar's default signal port"
    );
    assert_eq!(
        port_of(knob("ADMIN_LISTEN")),
        admin_port,
        "the sidecar's default admin port"
    );
    for r in [&base, &istio] {
        let s = r.sidecar();
        assert_eq!(
            port_of(env_value(s, "SIGNALGATE_LISTEN")),
            signals_port,
            "{}",
            r.dir
        );
        assert_eq!(
            port_of(env_value(s, "SIGNALGATE_ADMIN_LISTEN")),
            admin_port,
            "{}",
            r.dir
        );
        assert_eq!(
            container_port(s, "admin"),
            Some(admin_port as u64),
            "{}",
            r.dir
        );
    }
    assert_eq!(
        container_port(istio.sidecar(), "signals"),
        Some(signals_port as u64)
    );

    // The manifests name these images, tagged with the workspace version.
    let version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace version")
        .to_string();
    let image_of = |container: &Value| str_of(&container["image"], "image").to_string();
    let init_ref = image_of(init);
    let sidecar_ref = image_of(base.sidecar());
    assert!(
        init_ref.ends_with(&format!("/signalgate-filter-init:{version}")),
        "{init_ref}"
    );
    assert!(
        sidecar_ref.ends_with(&format!("/signalgate-sidecar:{version}")),
        "{sidecar_ref}"
    );
    assert_eq!(image_of(istio.sidecar()), sidecar_ref);
    let wp_url = str_of(&istio.one("WasmPlugin")["spec"]["url"], "url");
    assert!(
        wp_url.starts_with("oci://") && wp_url.ends_with(&format!("/signalgate-filter:{version}")),
        "{wp_url}"
    );
}
