//! How the edge is set up and what it reports, in real Envoy: with each
//! build of the filter, a bad plugin configuration keeps Envoy from
//! starting and the counters per outcome; and the local bootstraps (the
//! wasm template, the native one configured alike) and the baseline
//! templates.

use serde_json::{json, Value};
use signalgate_tests::edge::{second_source, sha256_hex, valid, Edge, KUBE, PROM};
use signalgate_tests::edge_client::Request;
use signalgate_tests::edge_suite;
use signalgate_tests::envoy::{Envoy, Options, StartError};
use signalgate_tests::upstream::Upstream;
use signalgate_tests::workspace::root;

edge_suite!(
    counters_per_outcome_are_in_stats_prometheus,
    a_bad_plugin_configuration_keeps_envoy_from_starting,
);

fn counters_per_outcome_are_in_stats_prometheus(edge: Edge) {
    let up = Upstream::start();
    let token = "counter-token";
    let config = json!({
        "requests_per_minute": 2,
        "max_body_bytes": 4096,
        "tenants": [{"name": "t", "token_sha256": sha256_hex(token)}]
    });
    let envoy = edge.start(&config.to_string(), up.port());
    let mut c = envoy.client();
    let auth = |r: Request| r.header("authorization", &format!("Bearer {token}"));
    assert_eq!(c.send(&auth(valid())).status, 200);
    assert_eq!(c.send(&auth(Request::post_json(PROM, "nope"))).status, 400);
    assert_eq!(c.send(&auth(valid())).status, 429);
    assert_eq!(c.send(&valid()).status, 401);
    assert_eq!(c.send(&Request::get("/metrics")).status, 404);
    assert_eq!(c.send(&Request::get(KUBE)).status, 405);

    let expected = [
        ("accepted", 1),
        ("invalid", 1),
        ("rate_limited", 1),
        ("unauthorized", 1),
        ("not_found", 1),
        ("method_not_allowed", 1),
        ("too_large", 0),
        ("unsupported_media_type", 0),
        ("rate_limit_errors", 0),
    ];
    for (outcome, n) in expected {
        envoy.wait_outcome(outcome, n);
    }
    // The names as Prometheus sees them, with their TYPE lines: Envoy
    // prefixes a dynamic module's metrics namespace, not the wasm filter's.
    let prefix = match edge {
        Edge::Wasm => "signalgate_",
        Edge::Native => "envoy_signalgate_",
    };
    let text = envoy.admin_get("/stats/prometheus");
    assert!(
        text.contains(&format!("# TYPE {prefix}accepted counter")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{prefix}unsupported_media_type")),
        "{text}"
    );
}

fn start_failure(edge: Edge, plugin_config: &str) -> StartError {
    let up = Upstream::start();
    match Envoy::try_start(edge.options(plugin_config, up.port()).concurrency(2)) {
        Ok(envoy) => panic!(
            "Envoy started with configuration {plugin_config}; log:\n{}",
            envoy.log()
        ),
        Err(e) => e,
    }
}

fn a_bad_plugin_configuration_keeps_envoy_from_starting(edge: Edge) {
    for (config, key) in [
        (
            r#"{"requests_per_minute": 20, "rate_limit": 5}"#,
            "rate_limit",
        ),
        (r#"{"requests_per_minute": "20"}"#, "requests_per_minute"),
        (r#"{"over_limit_status": 500}"#, "over_limit_status"),
        (
            r#"{"tenants": [{"name": "a", "token_sha256": "not-hex"}]}"#,
            "tenants[0].token_sha256",
        ),
    ] {
        let e = start_failure(edge, config);
        let exit = e
            .exit
            .unwrap_or_else(|| panic!("Envoy never exited for {config}"));
        assert!(!exit.success(), "{config}: {exit}");
        assert!(
            e.log
                .contains(&format!("invalid plugin configuration: key \"{key}\"")),
            "{config}: log does not name {key}:\n{}",
            e.log
        );
        if edge == Edge::Native {
            // The module's log lines carry its name.
            assert!(
                e.log.contains(&format!(
                    "signalgate: invalid plugin configuration: key \"{key}\""
                )),
                "{config}:\n{}",
                e.log
            );
        }
    }
}

/// The text of `envoy/<file>`.
fn read(file: &str) -> String {
    std::fs::read_to_string(root().join("envoy").join(file)).expect(file)
}

/// The plugin configuration of a local bootstrap (its one `value: '...'`
/// line), unquoted.
fn local_plugin_config(bootstrap: &str) -> String {
    bootstrap
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: '"))
        .and_then(|v| v.strip_suffix('\''))
        .expect("a plugin configuration line")
        .replace("''", "'")
}

#[test]
fn the_local_bootstrap_is_the_template_rendered_with_the_local_defaults() {
    use signalgate_tests::envoy::render;
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let local = read("envoy.yaml");
    let plugin_config = local_plugin_config(&local);
    // The local configuration spells out the defaults.
    let cfg: Value = serde_json::from_str(&plugin_config).expect("plugin configuration JSON");
    assert_eq!(cfg["requests_per_minute"], 100);
    let rendered = render(
        &read("envoy.template.yaml"),
        &[
            ("LISTEN_PORT", "8080".into()),
            ("ADMIN_PORT", "9901".into()),
            ("UPSTREAM_PORT", "8081".into()),
            (
                "WASM_PATH",
                "target/wasm32-wasip1/release/signalgate_filter.wasm".into(),
            ),
            ("PLUGIN_CONFIG", plugin_config),
        ],
    );
    assert_eq!(strip(&rendered), strip(&local));
    assert!(local.contains("allow_on_headers_stop_iteration: true"));
    assert!(local.contains("runtime: envoy.wasm.runtime.v8"));
}

#[test]
fn the_local_bootstraps_configure_both_filters_alike() {
    let native = local_plugin_config(&read("envoy-native.yaml"));
    assert_eq!(native, local_plugin_config(&read("envoy.yaml")));
    // The filter's defaults, spelled out.
    let cfg: Value = serde_json::from_str(&native).expect("JSON filter configuration");
    assert_eq!(cfg["requests_per_minute"], 100);
    assert_eq!(cfg["over_limit_status"], 429);
    assert_eq!(cfg["source"], "remote_address");
}

#[test]
fn the_baseline_templates_start_and_forward() {
    use signalgate_tests::envoy::Template;
    let up = Upstream::start();
    for template in [
        Template::NoFilter,
        Template::NativeRateLimit {
            requests_per_minute: 3,
        },
    ] {
        up.clear();
        let limited = matches!(template, Template::NativeRateLimit { .. });
        let envoy = Envoy::start_with(Options {
            template,
            ..Options::filter("", up.port())
        });
        let statuses: Vec<u16> = (0..5)
            .map(|_| envoy.client().send(&valid()).status)
            .collect();
        let other = envoy.client_from(second_source()).send(&valid()).status;
        if limited {
            assert_eq!(statuses, [200, 200, 200, 429, 429]);
        } else {
            assert_eq!(statuses, [200; 5]);
        }
        assert_eq!(other, 200);
    }
}
