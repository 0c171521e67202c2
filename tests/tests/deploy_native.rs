//! The native-module variants under `deploy/` are their wasm counterparts
//! with the filter swapped and nothing else: deploy/overlays/native against
//! deploy/base, deploy/overlays/istio-native against deploy/istio, and the
//! Envoy Gateway example; each loads the module from where its pod puts it,
//! with the same filter configuration, on an Envoy the module runs in.

use serde_json::{json, Value};
use signalgate_tests::manifests::{
    arr, container_port, dynamic_module_filter, module_config_json, module_file,
    plugin_config_json, read, selects, str_of, wasm_config, Rendered, NAMESPACE,
};

/// The Envoy releases the module is built for (docs/native-edge.md).
const SUPPORTED_ENVOY: &[&str] = &["1.40", "1.41"];
/// The module's file name (`lib<name>.so`).
const MODULE: &str = "libsignalgate_edge_native.so";
const MODULE_NAME: &str = "signalgate_edge_native";

fn assert_supported_envoy(image: &str) {
    let tag = image
        .strip_prefix("envoyproxy/envoy:v")
        .unwrap_or_else(|| panic!("{image} is not an official Envoy image"));
    assert!(
        SUPPORTED_ENVOY
            .iter()
            .any(|minor| tag.starts_with(&format!("{minor}."))),
        "{image}: the module runs on Envoy {SUPPORTED_ENVOY:?} only"
    );
}

fn workspace_version() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace version")
        .to_string()
}

/// The shipped filter configuration (deploy/base's wasm filter).
fn shipped_filter_config(base: &Rendered) -> Value {
    plugin_config_json(wasm_config(&base.envoy_bootstrap()))
}

fn http_filters(boot: &mut Value) -> Vec<&mut Value> {
    let mut out = Vec::new();
    for l in boot["static_resources"]["listeners"]
        .as_array_mut()
        .expect("listeners")
    {
        for chain in l["filter_chains"].as_array_mut().expect("filter_chains") {
            for f in chain["filters"].as_array_mut().expect("filters") {
                if let Some(hf) = f["typed_config"]["http_filters"].as_array_mut() {
                    out.extend(hf.iter_mut());
                }
            }
        }
    }
    out
}

fn init_container(r: &Rendered) -> &Value {
    arr(&r.pod_spec()["initContainers"])
        .iter()
        .find(|c| c["name"] == "install-filter")
        .unwrap_or_else(|| panic!("{}: no install-filter", r.dir))
}

#[test]
fn native_overlay_is_the_base_with_the_module() {
    let base = Rendered::of("deploy/base");
    let native = Rendered::of("deploy/overlays/native");

    // The bootstrap: deploy/base's, with the module in the wasm filter's place.
    let native_boot = native.envoy_bootstrap();
    let module = dynamic_module_filter(&native_boot).clone();
    assert_eq!(module["dynamic_module_config"]["name"], MODULE_NAME);
    assert_eq!(
        module["dynamic_module_config"]["metrics_namespace"],
        "signalgate"
    );
    assert_eq!(module["filter_name"], "signalgate");
    assert_eq!(
        module_config_json(&module),
        shipped_filter_config(&base),
        "the module runs the configuration deploy/base ships"
    );
    assert!(module_file(&module).ends_with(&format!("/{MODULE}")));
    let mut expected = base.envoy_bootstrap();
    let mut swapped = 0;
    for hf in http_filters(&mut expected) {
        if hf["name"] == "envoy.filters.http.wasm" {
            *hf = json!({"name": "envoy.filters.http.dynamic_modules", "typed_config": module});
            swapped += 1;
        }
    }
    assert_eq!(swapped, 1);
    assert_eq!(
        native_boot, expected,
        "deploy/overlays/native/envoy.yaml differs from deploy/base/envoy.yaml in more than the filter"
    );

    // The objects: the same, but for the ConfigMap's hash and the Deployment's
    // init container and Envoy image.
    let names = |r: &Rendered| -> Vec<String> {
        let mut v: Vec<String> = r
            .objects
            .iter()
            .filter(|o| o["kind"] != "ConfigMap")
            .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&native), names(&base));
    let init = init_container(&native);
    let cmd: Vec<&str> = arr(&init["command"])
        .iter()
        .map(|v| str_of(v, "command"))
        .collect();
    assert_eq!(
        cmd,
        [
            "/bin/busybox",
            "cp",
            &format!("/{MODULE}"),
            module_file(&module)
        ],
        "the init container copies the module to the file Envoy loads"
    );
    let envoy_image = str_of(&native.container("envoy").expect("envoy")["image"], "image");
    assert_supported_envoy(envoy_image);
    let mut expected = base.deployment().clone();
    let pod = &mut expected["spec"]["template"]["spec"];
    pod["initContainers"][0]["image"] = init["image"].clone();
    pod["initContainers"][0]["command"] = init["command"].clone();
    for c in pod["containers"].as_array_mut().expect("containers") {
        if c["name"] == "envoy" {
            c["image"] = json!(envoy_image);
        }
    }
    for v in pod["volumes"].as_array_mut().expect("volumes") {
        if v["name"] == "envoy-config" {
            v["configMap"]["name"] = native.pod_spec()["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == "envoy-config"))
                .expect("envoy-config")["configMap"]["name"]
                .clone();
        }
    }
    assert_eq!(native.deployment(), &expected);
}

#[test]
fn istio_native_is_istio_with_the_module() {
    let base = Rendered::of("deploy/base");
    let istio = Rendered::of("deploy/istio");
    let native = Rendered::of("deploy/overlays/istio-native");

    // deploy/istio's objects without the WasmPlugin and its EnvoyFilter, plus
    // the module's EnvoyFilter; the Deployment gains two annotations.
    let ef = native.one("EnvoyFilter");
    assert_eq!(ef["metadata"]["name"], "signalgate-edge-native");
    assert!(native.all("WasmPlugin").is_empty());
    let mut expected: Vec<&Value> = istio
        .objects
        .iter()
        .filter(|o| !matches!(o["kind"].as_str(), Some("WasmPlugin" | "EnvoyFilter")))
        .chain([ef])
        .collect();
    let mut got: Vec<&Value> = native.objects.iter().collect();
    let key = |o: &&Value| format!("{}/{}", o["kind"], o["metadata"]["name"]);
    expected.sort_by_key(key);
    got.sort_by_key(key);
    let annotations = &native.deployment()["spec"]["template"]["metadata"]["annotations"];
    let mut istio_deployment = istio.deployment().clone();
    let added = [
        "sidecar.istio.io/userVolume",
        "sidecar.istio.io/userVolumeMount",
    ];
    for a in added {
        istio_deployment["spec"]["template"]["metadata"]["annotations"][a] = annotations[a].clone();
    }
    let expected: Vec<Value> = expected
        .into_iter()
        .map(|o| {
            if o["kind"] == "Deployment" {
                istio_deployment.clone()
            } else {
                o.clone()
            }
        })
        .collect();
    let got: Vec<Value> = got.into_iter().cloned().collect();
    assert_eq!(
        got, expected,
        "istio-native differs from deploy/istio in more than the filter"
    );

    // The EnvoyFilter: the pods, the signal port, before the router.
    let labels = &native.deployment()["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&ef["spec"]["workloadSelector"]["labels"], labels));
    let patches = arr(&ef["spec"]["configPatches"]);
    assert_eq!(patches.len(), 1);
    let p = &patches[0];
    assert_eq!(p["applyTo"], "HTTP_FILTER");
    assert_eq!(p["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(
        p["match"]["listener"]["portNumber"].as_u64(),
        container_port(native.sidecar(), "signals"),
        "the filter sits on the sidecar's signal port"
    );
    assert_eq!(
        p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    assert_eq!(p["patch"]["operation"], "INSERT_BEFORE");
    let module = dynamic_module_filter(ef);
    assert_eq!(module["dynamic_module_config"]["name"], MODULE_NAME);
    assert_eq!(module_config_json(module), shipped_filter_config(&base));

    // The module file is in the image volume istio-proxy mounts.
    let parse = |a: &str| -> Value {
        serde_json::from_str(str_of(&annotations[a], a))
            .unwrap_or_else(|e| panic!("annotation {a} is not JSON: {e}"))
    };
    let volumes = parse("sidecar.istio.io/userVolume");
    let mounts = parse("sidecar.istio.io/userVolumeMount");
    let (name, mount) = mounts
        .as_object()
        .and_then(|m| m.iter().next())
        .expect("one mount");
    assert_eq!(mount["readOnly"], true);
    let path = str_of(&mount["mountPath"], "mountPath");
    assert_eq!(module_file(module), format!("{path}/{MODULE}"));
    let image = str_of(
        &volumes[name]["image"]["reference"],
        "image volume reference",
    );
    assert!(
        image.ends_with(&format!(
            "/signalgate-edge-native-init:{}",
            workspace_version()
        )),
        "{image}"
    );
}

#[test]
fn envoy_gateway_example_loads_the_module_with_the_shipped_configuration() {
    let base = Rendered::of("deploy/base");
    let eg = Rendered::of("deploy/examples/envoy-gateway-native");
    for o in &eg.objects {
        assert_eq!(o["metadata"]["namespace"], NAMESPACE);
    }
    let proxy = eg.one("EnvoyProxy");
    let policy = eg.one("EnvoyExtensionPolicy");
    assert_eq!(proxy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    assert_eq!(policy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");

    // The policy names the module the EnvoyProxy registers, and carries the
    // shipped configuration.
    let registered = arr(&proxy["spec"]["dynamicModules"]);
    assert_eq!(registered.len(), 1);
    let uses = arr(&policy["spec"]["dynamicModule"]);
    assert_eq!(uses.len(), 1);
    assert_eq!(registered[0]["name"], uses[0]["name"]);
    assert_eq!(uses[0]["filterName"], "signalgate");
    assert_eq!(uses[0]["config"], shipped_filter_config(&base));
    assert_eq!(
        policy["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "signalgate"}])
    );

    // The registered file is in the image volume Envoy mounts, on an Envoy
    // the module runs in.
    assert_eq!(registered[0]["source"]["type"], "Local");
    let path = str_of(&registered[0]["source"]["local"]["path"], "local.path");
    let k8s = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"];
    let container = &k8s["container"];
    assert_supported_envoy(str_of(&container["image"], "Envoy image"));
    let mounts = arr(&container["volumeMounts"]);
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["readOnly"], true);
    let mount_path = str_of(&mounts[0]["mountPath"], "mountPath");
    assert_eq!(path, format!("{mount_path}/{MODULE}"));
    let volume = arr(&k8s["pod"]["volumes"])
        .iter()
        .find(|v| v["name"] == mounts[0]["name"])
        .expect("the mounted volume");
    let image = str_of(&volume["image"]["reference"], "image volume reference");
    assert!(
        image.ends_with(&format!(
            "/signalgate-edge-native-init:{}",
            workspace_version()
        )),
        "{image}"
    );
}
