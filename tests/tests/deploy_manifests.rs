//! `deploy/` renders into objects that hang together: every kustomization
//! is listed, the CRD and RBAC copies equal their originals, and selectors,
//! names, ports, security settings and the shipped filter configuration
//! agree across the rendered objects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Value};
use signalgate_tests::manifests::{
    all_of, arr, container_port, dynamic_module_filter, env_value, env_var, istio_extension_config,
    module_file, parse_yaml_docs, plugin_config_json, port_of, read, selects, str_of, wasm_config,
    Rendered, CRD_FILE, DYNAMIC_MODULE_FILTER, EXAMPLES, KUSTOMIZATIONS, NAMESPACE,
    TESTED_ELSEWHERE,
};
use signalgate_tests::workspace;

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
];
const RBAC_FILE: &str = "deploy/base/rbac.yaml";
const ISTIO_RBAC_COPY: &str = "deploy/istio/common/rbac.yaml";

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
                    .strip_prefix(workspace::root())
                    .expect("in repo");
                found.insert(rel.display().to_string());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&workspace::root().join("deploy"), &mut found);
    let listed: BTreeSet<String> = KUSTOMIZATIONS
        .iter()
        .chain(EXAMPLES)
        .chain(TESTED_ELSEWHERE)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        found, listed,
        "update KUSTOMIZATIONS in tests/src/manifests.rs"
    );
}

#[test]
fn crd_and_rbac_copies_equal_the_originals() {
    // kustomize in kubectl 1.20 loads files only from inside the
    // kustomization's directory, so these are copies.
    let crd = read(CRD_FILE);
    for copy in [
        "deploy/base/remediationrequests.signalgate.io.yaml",
        "deploy/istio/common/remediationrequests.signalgate.io.yaml",
    ] {
        assert!(
            read(copy) == crd,
            "{copy} differs from {CRD_FILE}: run `cp {CRD_FILE} {copy}`"
        );
    }
    assert!(
        read(ISTIO_RBAC_COPY) == read(RBAC_FILE),
        "{ISTIO_RBAC_COPY} differs from {RBAC_FILE}: run `cp {RBAC_FILE} {ISTIO_RBAC_COPY}`"
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

/// The file Envoy loads the filter from: the wasm filter's (with the flags
/// it needs) or the dynamic module's.
fn loaded_filter_file(dir: &str, boot: &Value) -> String {
    let module_filters = all_of(boot, "typed_config")
        .into_iter()
        .filter(|(_, tc)| tc["@type"] == DYNAMIC_MODULE_FILTER)
        .count();
    if module_filters > 0 {
        return module_file(dynamic_module_filter(boot)).to_string();
    }
    let wasm = wasm_config(boot);
    assert_eq!(wasm["allow_on_headers_stop_iteration"], true, "{dir}");
    assert_eq!(
        wasm["vm_config"]["runtime"], "envoy.wasm.runtime.v8",
        "{dir}"
    );
    str_of(
        &wasm["vm_config"]["code"]["local"]["filename"],
        "wasm filename",
    )
    .to_string()
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
    // the sidecar cluster on the sidecar's port, the filter (wasm or module)
    // where the init container puts it.
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

    let filter_file = loaded_filter_file(dir, &boot);
    let mount_of = |c: &Value, volume: &str| -> String {
        arr(&c["volumeMounts"])
            .iter()
            .find(|m| m["name"] == volume)
            .map(|m| str_of(&m["mountPath"], "mountPath").to_string())
            .unwrap_or_else(|| panic!("{dir}: {} does not mount {volume}", c["name"]))
    };
    assert!(
        filter_file.starts_with(&format!("{}/", mount_of(envoy_c, "filter"))),
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
        Some(filter_file.as_str()),
        "{dir}: the init container writes the file Envoy loads"
    );
    assert!(
        filter_file.starts_with(&format!("{}/", mount_of(init, "filter"))),
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
    for dir in KUSTOMIZATIONS {
        check_common(&Rendered::of(dir));
    }
    let base = Rendered::of("deploy/base");
    let cluster = Rendered::of("deploy/overlays/redis-cluster");
    let istio = Rendered::of("deploy/istio");
    for r in [&base, &cluster, &Rendered::of("deploy/overlays/native")] {
        check_envoy_pod(r);
    }

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
