//! The Envoy bootstrap inside the ConfigMap, and the filter configuration
//! the Istio EnvoyFilter delivers, are loaded by the real Envoy with the
//! built filter, which must become ready and answer through the filter; the
//! same for the native module (deploy/overlays/native, istio-native and the
//! Envoy Gateway example).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_sidecar::config::values::parse_duration;
use signalgate_tests::envoy;
use signalgate_tests::manifests::{
    arr, container_port, dynamic_module_filter, env_value, istio_extension_config, str_of,
    Rendered, DYNAMIC_MODULE_FILTER,
};

use signalgate_tests::process::{free_port, temp_dir, Proc};

/// Moves every socket address of `bootstrap` to a free loopback port (the
/// same old port always gets the same new one, so the probe listener's admin
/// cluster still reaches the admin), points the filter (wasm or module) at
/// the local build, and returns the new port of each old one.
fn localise(bootstrap: &mut Value) -> BTreeMap<u64, u16> {
    let mut ports = BTreeMap::new();
    let mut filters_found = 0;
    // Each build is looked up only when the bootstrap loads it.
    walk(
        bootstrap,
        &mut ports,
        &envoy::wasm_path,
        &envoy::module_path,
        &mut filters_found,
    );
    assert_eq!(filters_found, 1, "one filter code source in the bootstrap");
    ports
}

fn walk(
    v: &mut Value,
    ports: &mut BTreeMap<u64, u16>,
    wasm: &dyn Fn() -> PathBuf,
    module: &dyn Fn() -> PathBuf,
    found: &mut usize,
) {
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
                    *code = json!({"local": {"filename": wasm().display().to_string()}});
                    *found += 1;
                }
            }
            if map.get("@type").is_some_and(|t| t == DYNAMIC_MODULE_FILTER) {
                map["dynamic_module_config"]["module"] =
                    json!({"local": {"filename": module().display().to_string()}});
                *found += 1;
            }
            for child in map.values_mut() {
                walk(child, ports, wasm, module, found);
            }
        }
        Value::Array(items) => {
            for child in items {
                walk(child, ports, wasm, module, found);
            }
        }
        _ => {}
    }
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
        let ports = localise(&mut bootstrap);
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
    let mut running = RunningEnvoy::start(boot.clone(), &args);

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

    // The preStop hook: answered through the probe listener once its delay
    // has passed (kubelet sends SIGTERM, on which Envoy exits at once, only
    // then), a delay shorter than the sidecar's unready-but-serving one.
    let hook = &envoy_c["lifecycle"]["preStop"]["httpGet"];
    assert_eq!(hook["port"], "envoy-probe", "{hook}");
    let path = str_of(&hook["path"], "path");
    let delay = prestop_delay(&boot, path);
    let sidecar_c = base.container("sidecar").expect("sidecar");
    let serving = env_value(sidecar_c, "SIGNALGATE_SHUTDOWN_DELAY");
    assert!(
        delay < duration(serving),
        "Envoy's preStop delay {delay:?} must end before the sidecar's shutdown delay {serving}"
    );
    let slow = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(delay + Duration::from_secs(5)))
        .build()
        .into();
    // As kubelet 1.20 asks it: "http://<pod IP>:<port>/" + path.
    let asked = format!("/{path}");
    let began = Instant::now();
    assert_eq!(
        get(&slow, &running.url(probe, &asked)).map(|r| r.0),
        Some(200)
    );
    // Envoy's timers may fire a few milliseconds early (seen: 9.998 s for
    // 10 s); the hook must not be answered before that.
    let earliest = delay.saturating_sub(Duration::from_millis(100));
    assert!(
        began.elapsed() >= earliest,
        "{asked} answered after {:?}, before its delay {delay:?}",
        began.elapsed()
    );

    running.assert_filter_answers(signals);
}

/// The fault-filter delay on the probe listener's `path` route.
fn prestop_delay(boot: &Value, path: &str) -> Duration {
    let listener = arr(&boot["static_resources"]["listeners"])
        .iter()
        .find(|l| l["name"] == "envoy-probe")
        .expect("listener envoy-probe");
    let hcm = &listener["filter_chains"][0]["filters"][0]["typed_config"];
    let route = arr(&hcm["route_config"]["virtual_hosts"][0]["routes"])
        .iter()
        .find(|r| r["match"]["path"] == path)
        .unwrap_or_else(|| panic!("no route {path} on envoy-probe"));
    let delay = str_of(
        &route["typed_per_filter_config"]["envoy.filters.http.fault"]["delay"]["fixed_delay"],
        "fixed_delay",
    );
    duration(delay)
}

/// `"10s"` as the sidecar reads its durations (Envoy's `fixed_delay` here
/// is whole seconds too).
fn duration(text: &str) -> Duration {
    parse_duration(text).unwrap_or_else(|| panic!("not a duration: {text}"))
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

/// deploy/base's bootstrap with `filter` (a whole HTTP filter entry) in
/// place of the wasm filter.
fn base_bootstrap_with(base: &Rendered, filter: Value) -> Value {
    let mut boot = base.envoy_bootstrap();
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
                            *hf = filter.clone();
                            replaced += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(replaced, 1);
    boot
}

/// Starts Envoy on `boot` with the arguments of `pod`'s Envoy container and
/// checks that it becomes ready through its readiness probe, that the module
/// answers on the signal listener and, given the metrics namespace, that it
/// counts the refusal there.
fn assert_module_serves(pod: &Rendered, boot: Value, metrics_namespace: Option<&str>) {
    let envoy_c = pod.container("envoy").expect("envoy");
    let signals = container_port(envoy_c, "signals").expect("signals");
    let probe = container_port(envoy_c, "envoy-probe").expect("envoy-probe");
    let args = deployment_args(pod);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut running = RunningEnvoy::start(boot, &args);
    let ready_path = str_of(&envoy_c["readinessProbe"]["httpGet"]["path"], "path");
    let (status, body) = get(&http(), &running.url(probe, ready_path)).expect("readiness probe");
    assert_eq!((status, body.trim()), (200, "LIVE"));
    running.assert_filter_answers(signals);
    let Some(namespace) = metrics_namespace else {
        return;
    };
    let (status, metrics) =
        get(&http(), &running.url(probe, "/stats/prometheus")).expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("envoy_{namespace}_unsupported_media_type")),
        "the module's counter of the refused request:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("signalgate"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn envoy_runs_the_native_overlay_bootstrap_and_becomes_ready() {
    // The native overlay's ConfigMap and Deployment, as kubelet would run
    // them (the module at the path the init container writes, here the
    // local build), probes included.
    let native = Rendered::of("deploy/overlays/native");
    assert_module_serves(&native, native.envoy_bootstrap(), Some("signalgate"));
}

#[test]
fn envoy_runs_the_istio_native_filter_configuration() {
    // The module exactly as the EnvoyFilter inserts it into istio-proxy's
    // chain (the image volume's file swapped for the local build), in the
    // base bootstrap's chain.
    let base = Rendered::of("deploy/base");
    let istio = Rendered::of("deploy/overlays/istio-native");
    let ef = istio.one("EnvoyFilter");
    let value = ef["spec"]["configPatches"][0]["patch"]["value"].clone();
    assert_eq!(dynamic_module_filter(&value), &value["typed_config"]);
    assert_module_serves(&base, base_bootstrap_with(&base, value), Some("signalgate"));
}

#[test]
fn envoy_runs_the_envoy_gateway_example_filter_configuration() {
    // The filter as Envoy Gateway builds it from the example: the registered
    // module, the policy's filter name, and its `config` as JSON in a
    // StringValue.
    let base = Rendered::of("deploy/base");
    let eg = Rendered::of("deploy/examples/envoy-gateway-native");
    let registered = &eg.one("EnvoyProxy")["spec"]["dynamicModules"][0];
    let policy = &eg.one("EnvoyExtensionPolicy")["spec"]["dynamicModule"][0];
    let filter = json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER,
            "dynamic_module_config": {
                "name": registered["name"],
                "module": {"local": {"filename": registered["source"]["local"]["path"]}},
            },
            "filter_name": policy["filterName"],
            "filter_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": serde_json::to_string(&policy["config"]).expect("json"),
            },
        },
    });
    // Envoy Gateway sets no metrics namespace: Envoy's default applies.
    assert_module_serves(&base, base_bootstrap_with(&base, filter), None);
}
