//! The manifests under `deploy/` as an operator applies them: every
//! kustomization rendered with the project's own kubectl (Debian's 1.20,
//! kustomize built in), parsed, and the pieces the deploy tests look at.

use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::{k8s, workspace};

/// Every kustomization under `deploy/` (a test fails when one is missing here).
pub const KUSTOMIZATIONS: &[&str] = &[
    "deploy/base",
    "deploy/overlays/redis-cluster",
    "deploy/overlays/native",
    "deploy/istio",
    "deploy/istio/common",
    "deploy/overlays/istio-native",
];
/// Kustomizations that are examples to adapt, not a whole install (no
/// namespace, CRD or workload of their own): rendered, dry-run and checked
/// by tests/tests/deploy_native.rs, but not by the install-wide checks.
pub const EXAMPLES: &[&str] = &["deploy/examples/envoy-gateway-native"];
/// Kustomizations checked by their own test file instead (Prometheus
/// Operator objects: tests/tests/monitoring_rules.rs).
pub const TESTED_ELSEWHERE: &[&str] = &["deploy/monitoring"];

pub const NAMESPACE: &str = "signalgate-system";
pub const CRD_FILE: &str = "deploy/crds/remediationrequests.signalgate.io.yaml";

/// `kubectl kustomize <dir>` with the kubectl the project installs
/// (scripts/k8s.sh build), never the one on PATH.
pub fn render(dir: &str) -> String {
    let kubectl = k8s::bin_dir().join("kubectl");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(workspace::root().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn parse_yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn read(rel: &str) -> String {
    let path = workspace::root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The rendered objects of one kustomization.
pub struct Rendered {
    pub dir: &'static str,
    pub objects: Vec<Value>,
}

impl Rendered {
    pub fn of(dir: &'static str) -> Rendered {
        let objects = parse_yaml_docs(&render(dir));
        assert!(!objects.is_empty(), "{dir} renders nothing");
        Rendered { dir, objects }
    }

    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "{}: expected exactly one {kind}", self.dir);
        all[0]
    }

    pub fn named(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} named {name}", self.dir))
    }

    pub fn deployment(&self) -> &Value {
        self.named("Deployment", "signalgate")
    }

    pub fn pod_spec(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]
    }

    pub fn container(&self, name: &str) -> Option<&Value> {
        arr(&self.pod_spec()["containers"])
            .iter()
            .find(|c| c["name"] == name)
    }

    pub fn sidecar(&self) -> &Value {
        self.container("sidecar")
            .unwrap_or_else(|| panic!("{}: no sidecar container", self.dir))
    }

    /// The Envoy bootstrap from the ConfigMap (plain-Envoy kustomizations).
    pub fn envoy_bootstrap(&self) -> Value {
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

pub fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

pub fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    arr(&container["env"]).iter().find(|e| e["name"] == name)
}

pub fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    let var = env_var(container, name)
        .unwrap_or_else(|| panic!("container {} has no {name}", container["name"]));
    str_of(&var["value"], name)
}

pub fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

pub fn container_port(container: &Value, name: &str) -> Option<u64> {
    arr(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

/// Whether every label of `selector` is on `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
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

pub fn all_of<'a>(v: &'a Value, key: &str) -> Vec<(String, &'a Value)> {
    let mut out = Vec::new();
    find_key(v, key, String::new(), &mut out);
    out
}

/// The (single) wasm HTTP filter's `config` in an Envoy bootstrap.
pub fn wasm_config(bootstrap: &Value) -> &Value {
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

/// The type of the dynamic-module HTTP filter's configuration.
pub const DYNAMIC_MODULE_FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// The (single) dynamic-module HTTP filter's `typed_config` in `v` (a
/// bootstrap or an EnvoyFilter).
pub fn dynamic_module_filter(v: &Value) -> &Value {
    let found: Vec<&Value> = all_of(v, "typed_config")
        .into_iter()
        .map(|(_, tc)| tc)
        .filter(|tc| tc["@type"] == DYNAMIC_MODULE_FILTER)
        .collect();
    assert_eq!(found.len(), 1, "exactly one dynamic-module filter");
    found[0]
}

/// The file a dynamic-module filter loads (`module.local.filename`).
pub fn module_file(filter: &Value) -> &str {
    str_of(
        &filter["dynamic_module_config"]["module"]["local"]["filename"],
        "dynamic_module_config.module.local.filename",
    )
}

/// A dynamic-module filter's configuration (a StringValue holding JSON).
pub fn module_config_json(filter: &Value) -> Value {
    let config = &filter["filter_config"];
    assert_eq!(
        config["@type"], "type.googleapis.com/google.protobuf.StringValue",
        "the module's configuration is a StringValue"
    );
    serde_json::from_str(str_of(&config["value"], "filter_config.value"))
        .expect("the module's configuration is JSON")
}

pub fn plugin_config_json(wasm_config: &Value) -> Value {
    let configuration = &wasm_config["configuration"];
    assert_eq!(
        configuration["@type"], "type.googleapis.com/google.protobuf.StringValue",
        "the plugin configuration is a StringValue"
    );
    serde_json::from_str(str_of(&configuration["value"], "configuration.value"))
        .expect("the plugin configuration is JSON")
}

/// The EnvoyFilter's EXTENSION_CONFIG value (the filter Istio's Envoy runs).
pub fn istio_extension_config(r: &Rendered) -> &Value {
    let ef = r.one("EnvoyFilter");
    let adds: Vec<&Value> = arr(&ef["spec"]["configPatches"])
        .iter()
        .filter(|p| p["applyTo"] == "EXTENSION_CONFIG")
        .collect();
    assert_eq!(adds.len(), 1, "one EXTENSION_CONFIG patch");
    assert_eq!(adds[0]["patch"]["operation"], "ADD");
    &adds[0]["patch"]["value"]
}
