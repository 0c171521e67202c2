//! The alerting rules in `deploy/monitoring/` (issue 23), checked without a
//! cluster: promtool accepts the rules file and its unit tests pass, every
//! alert has a unit test where it fires and one where it stays silent, the
//! PrometheusRule wraps exactly the plain rules file, every alert links its
//! runbook section in `docs/alerts.md`, and the PodMonitor scrapes the ports
//! `deploy/base` declares.
//!
//! `signalgate-rules.yaml` is the one source: `prometheusrule.yaml` is
//! generated from it. After editing the rules, run
//! `SIGNALGATE_WRITE_PROMETHEUSRULE=1 cargo test -p signalgate-tests --test monitoring_rules`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use signalgate_tests::prometheus::promtool;
use signalgate_tests::{k8s, workspace};

const RULES: &str = "deploy/monitoring/signalgate-rules.yaml";
const RULE_TESTS: &str = "deploy/monitoring/tests/signalgate-rules.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/monitoring/prometheusrule.yaml";
const POD_MONITOR: &str = "deploy/monitoring/podmonitor.yaml";
const KUSTOMIZATION: &str = "deploy/monitoring";
const DEPLOYMENT: &str = "deploy/base/deployment.yaml";
const ENVOY_BOOTSTRAP: &str = "deploy/base/envoy.yaml";
const RUNBOOK: &str = "docs/alerts.md";
/// Where each alert's `runbook_url` points: this plus the section's anchor.
const RUNBOOK_BASE: &str = "https://github.com/signalgate/signalgate/blob/main/docs/alerts.md#";
const NAMESPACE: &str = "signalgate-system";
/// The environment variable that makes the generation test write the file.
const WRITE: &str = "SIGNALGATE_WRITE_PROMETHEUSRULE";

fn path(rel: &str) -> PathBuf {
    workspace::root().join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(path(rel))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path(rel).display()))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(&read(rel));
    assert_eq!(docs.len(), 1, "{rel}: one YAML document");
    docs.remove(0)
}

fn array<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
}

fn string<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// Every alerting rule of the shipped rules file.
fn alert_rules() -> Vec<Value> {
    let rules = yaml(RULES);
    let mut out = Vec::new();
    for group in array(&rules["groups"], "groups") {
        for rule in array(&group["rules"], "rules") {
            assert!(rule["alert"].is_string(), "{RULES}: not an alert: {rule}");
            out.push(rule.clone());
        }
    }
    out
}

fn alert_names() -> BTreeSet<String> {
    alert_rules()
        .iter()
        .map(|r| string(&r["alert"], "alert").to_string())
        .collect()
}

fn assert_promtool_ok(args: &[&str]) -> String {
    let out = promtool(&workspace::root(), args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_rules_file() {
    let text = assert_promtool_ok(&["check", "rules", RULES]);
    let expected = format!("SUCCESS: {} rules found", alert_rules().len());
    assert!(text.contains(&expected), "{text}");
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let text = assert_promtool_ok(&["test", "rules", RULE_TESTS]);
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_is_silent() {
    let tests = yaml(RULE_TESTS);
    let rule_files: Vec<&str> = array(&tests["rule_files"], "rule_files")
        .iter()
        .map(|f| string(f, "rule file"))
        .collect();
    assert_eq!(
        rule_files,
        ["../signalgate-rules.yaml"],
        "{RULE_TESTS} must test the shipped rules file"
    );
    // alertname -> (cases where it fires, cases where it is silent)
    let mut cases: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for test in array(&tests["tests"], "tests") {
        for case in array(&test["alert_rule_test"], "alert_rule_test") {
            let name = string(&case["alertname"], "alertname").to_string();
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let entry = cases.entry(name).or_default();
            if fires {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let alerts = alert_names();
    let tested: BTreeSet<String> = cases.keys().cloned().collect();
    let stale: Vec<&String> = tested.difference(&alerts).collect();
    assert!(
        stale.is_empty(),
        "{RULE_TESTS} tests unknown alerts: {stale:?}"
    );
    for alert in &alerts {
        let (fires, silent) = cases.get(alert).copied().unwrap_or_default();
        assert!(
            fires > 0,
            "{alert} has no unit test in {RULE_TESTS} where it fires"
        );
        assert!(
            silent > 0,
            "{alert} has no unit test in {RULE_TESTS} where it stays silent"
        );
    }
}

/// `prometheusrule.yaml` as generated from the rules file: a fixed header
/// and the rules file's body (from `groups:` on) indented under `spec:`.
fn generated_prometheus_rule(rules_text: &str) -> String {
    let mut out = String::from(
        "# GENERATED from signalgate-rules.yaml by tests/tests/monitoring_rules.rs: do\n\
         # not edit. After changing the rules run\n\
         #   SIGNALGATE_WRITE_PROMETHEUSRULE=1 cargo test -p signalgate-tests --test monitoring_rules\n\
         # If your Prometheus Operator selects rules by label (e.g. `release:` for\n\
         # kube-prometheus-stack), add it with a kustomize overlay (docs/alerts.md).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n\
         \x20 name: signalgate\n\
         \x20 labels:\n\
         \x20   app.kubernetes.io/name: signalgate\n\
         \x20   app.kubernetes.io/part-of: signalgate\n\
         spec:\n",
    );
    let body = rules_text
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim().is_empty());
    for line in body {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Writes the PrometheusRule when [`WRITE`] is set; the generated text.
fn write_if_asked() -> String {
    let expected = generated_prometheus_rule(&read(RULES));
    if std::env::var_os(WRITE).is_some() {
        // Renamed into place: the other test reading it never sees half a file.
        let tmp = path(&format!(
            "{PROMETHEUS_RULE}.{:?}.tmp",
            std::thread::current().id()
        ));
        std::fs::write(&tmp, &expected).expect("write the PrometheusRule");
        std::fs::rename(&tmp, path(PROMETHEUS_RULE)).expect("move the PrometheusRule");
    }
    expected
}

#[test]
fn the_prometheus_rule_is_generated_from_the_rules_file() {
    let expected = write_if_asked();
    assert!(
        read(PROMETHEUS_RULE) == expected,
        "{PROMETHEUS_RULE} is not the wrapper of {RULES}: run \
         `{WRITE}=1 cargo test -p signalgate-tests --test monitoring_rules`"
    );
    // And the wrapper means the same rules (indenting kept every block scalar).
    let wrapper = yaml(PROMETHEUS_RULE);
    assert_eq!(wrapper["kind"], "PrometheusRule");
    assert_eq!(wrapper["spec"]["groups"], yaml(RULES)["groups"]);
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_text_and_its_runbook_section() {
    let runbook = read(RUNBOOK);
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(anchor)
        .collect();
    for rule in alert_rules() {
        let name = string(&rule["alert"], "alert");
        let severity = string(&rule["labels"]["severity"], "severity");
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity}"
        );
        for field in ["summary", "description"] {
            let text = string(&rule["annotations"][field], field);
            assert!(text.len() > 20, "{name}: {field} too short: {text}");
        }
        let url = string(&rule["annotations"]["runbook_url"], "runbook_url");
        let section = url
            .strip_prefix(RUNBOOK_BASE)
            .unwrap_or_else(|| panic!("{name}: runbook_url {url} is not under {RUNBOOK_BASE}"));
        assert_eq!(
            section,
            name.to_lowercase(),
            "{name}: its runbook section is named after it"
        );
        assert!(
            sections.contains(section),
            "{name}: {RUNBOOK} has no `## {name}` section"
        );
        assert!(rule["for"].is_string(), "{name}: no `for:`");
    }
}

/// The named ports of the container `name` in deploy/base's Deployment.
fn container_ports(deployment: &Value, name: &str) -> BTreeMap<String, u64> {
    let containers = array(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    let container = containers
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: no container {name}"));
    array(&container["ports"], "ports")
        .iter()
        .map(|p| {
            (
                string(&p["name"], "port name").to_string(),
                p["containerPort"].as_u64().expect("containerPort"),
            )
        })
        .collect()
}

#[test]
fn the_pod_monitor_scrapes_the_metric_ports_deploy_base_declares() {
    let deployment = yaml_docs(&read(DEPLOYMENT))
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let monitor = yaml(POD_MONITOR);
    assert_eq!(monitor["kind"], "PodMonitor");

    // It selects the signalgate pods.
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(&pod_labels[k], v, "the PodMonitor selects {k}={v}");
    }

    let endpoints: BTreeMap<String, String> = array(
        &monitor["spec"]["podMetricsEndpoints"],
        "podMetricsEndpoints",
    )
    .iter()
    .map(|e| {
        (
            string(&e["port"], "port").to_string(),
            string(&e["path"], "path").to_string(),
        )
    })
    .collect();
    let expected: BTreeMap<String, String> = [
        ("admin".to_string(), "/metrics".to_string()),
        ("envoy-probe".to_string(), "/stats/prometheus".to_string()),
    ]
    .into();
    assert_eq!(endpoints, expected);

    // The sidecar's admin port: declared, and where the sidecar listens.
    let sidecar = container_ports(&deployment, "sidecar");
    let admin = sidecar.get("admin").expect("sidecar port admin");
    let containers = array(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    let env = array(
        &containers
            .iter()
            .find(|c| c["name"] == "sidecar")
            .expect("sidecar")["env"],
        "env",
    );
    let listen = env
        .iter()
        .find(|e| e["name"] == "SIGNALGATE_ADMIN_LISTEN")
        .and_then(|e| e["value"].as_str())
        .expect("SIGNALGATE_ADMIN_LISTEN");
    assert_eq!(listen, format!("0.0.0.0:{admin}"));

    // Envoy's probe port: declared, and its listener proxies /stats/prometheus.
    let envoy = container_ports(&deployment, "envoy");
    let probe = envoy.get("envoy-probe").expect("envoy port envoy-probe");
    let bootstrap = yaml(ENVOY_BOOTSTRAP);
    let listener = array(&bootstrap["static_resources"]["listeners"], "listeners")
        .iter()
        .find(|l| l["name"] == "envoy-probe")
        .expect("listener envoy-probe")
        .clone();
    assert_eq!(
        listener["address"]["socket_address"]["port_value"].as_u64(),
        Some(*probe)
    );
    let text = serde_json::to_string(&listener).expect("json");
    assert!(
        text.contains(r#""path":"/stats/prometheus""#),
        "the envoy-probe listener routes /stats/prometheus: {text}"
    );
}

#[test]
fn the_monitoring_kustomization_renders_the_rule_and_the_monitor() {
    write_if_asked();
    let kubectl = k8s::bin_dir().join("kubectl");
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(path(KUSTOMIZATION))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {KUSTOMIZATION}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects = yaml_docs(&String::from_utf8_lossy(&out.stdout));
    let kinds: BTreeSet<&str> = objects.iter().map(|o| string(&o["kind"], "kind")).collect();
    assert_eq!(kinds, BTreeSet::from(["PodMonitor", "PrometheusRule"]));
    for o in &objects {
        assert_eq!(o["metadata"]["namespace"], NAMESPACE, "{}", o["kind"]);
    }
    let rule = objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("PrometheusRule");
    assert_eq!(rule["spec"]["groups"], yaml(RULES)["groups"]);
}
