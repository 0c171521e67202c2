//! The payload checker page (docs/checker.md) in real headless Chromium,
//! served by a real sidecar's admin port, against the real components it
//! claims to agree with: a valid webhook shows the fingerprints the sidecar
//! answers for the same body and the resources it writes; an invalid one
//! shows the field and detail of the edge's 400 (Envoy with the filter) and
//! marks that field in the input; a Kubernetes Event works too. Screenshots
//! land in `target/checker-screenshots/`.
//!
//! Needs `make checker` (the page), the sidecar binary, the wasm filter and
//! Chromium with chromedriver (`make deps`).

use std::path::PathBuf;

use serde_json::{json, Value};
use signalgate_tests::browser::Browser;
use signalgate_tests::edge::{body, problem, KUBE, PROM};
use signalgate_tests::edge_client::Request;
use signalgate_tests::envoy::Envoy;
use signalgate_tests::payloads::{alert, pod_event, webhook};
use signalgate_tests::sidecar::Sidecar;
use signalgate_tests::upstream::Upstream;
use signalgate_tests::workspace;

/// The page's directory, as `make checker` fills it.
fn checker_dir() -> PathBuf {
    let dir = workspace::artefact(
        "SIGNALGATE_CHECKER_DIR",
        workspace::target_dir().join("checker"),
        "build the page with `make checker`",
    );
    workspace::artefact(
        "SIGNALGATE_CHECKER_DIR",
        dir.join("pkg/signalgate_checker_bg.wasm"),
        "build the page with `make checker`",
    );
    dir
}

fn screenshot(browser: &Browser, name: &str) {
    let path = workspace::target_dir()
        .join("checker-screenshots")
        .join(format!("{name}.png"));
    browser.screenshot(&path);
    eprintln!("screenshot: {}", path.display());
}

/// Pastes `payload` into the page, checks it and returns what the page shows:
/// `status`, the `fingerprints` of its signal cards, their `yaml`, the
/// problem's `field` and `detail`, and the `marked` text of the input.
fn check(browser: &Browser, payload: &str) -> Value {
    let before = browser.execute("return Number(document.body.dataset.checked ?? 0);", &[]);
    browser.execute(
        "document.getElementById('source').value = 'test';
         document.getElementById('payload').value = arguments[0];
         document.getElementById('run').click();",
        &[json!(payload)],
    );
    browser.wait(
        "the page to show its report",
        &format!("return Number(document.body.dataset.checked ?? 0) > {before};"),
    );
    browser.execute(
        "const all = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
         const problem = !document.getElementById('problem').hidden;
         return {
           status: document.getElementById('status').textContent,
           fingerprints: all('#signals .fingerprint'),
           yaml: all('#signals .yaml'),
           field: problem ? document.getElementById('problem-field').textContent : null,
           detail: problem ? document.getElementById('problem-detail').textContent : null,
           marked: document.querySelector('#highlight mark')?.textContent ?? null,
         };",
        &[],
    )
}

/// `spec` without what depends on when it was received, and the name
/// without its time: what the page and the sidecar must agree on.
fn timeless(resource: &Value) -> Value {
    let mut spec = resource["spec"].clone();
    for key in ["receivedTime", "deduplication"] {
        spec.as_object_mut().unwrap().remove(key);
    }
    let name = resource["metadata"]["name"].as_str().unwrap();
    let prefix = &name[..name.rfind('-').unwrap()];
    json!({"name": prefix, "labels": resource["metadata"]["labels"], "spec": spec})
}

#[test]
fn the_page_agrees_with_the_sidecar_and_the_edge() {
    let dir = checker_dir();
    let sidecar = Sidecar::start(&[("SIGNALGATE_CHECKER_DIR", dir.to_str().unwrap())]);
    let up = Upstream::start();
    let envoy = Envoy::start("{}", up.port());
    let browser = Browser::start();
    browser.goto(&format!("http://{}/check", sidecar.admin));
    browser.wait(
        "the checker to load its wasm",
        "return document.body.dataset.ready === 'true';",
    );

    // A valid webhook: the sidecar's fingerprints, and the resources it writes.
    let mut node_alert = alert("NodeDown", "ignored", "ignored");
    node_alert["labels"] =
        json!({"alertname": "NodeDown", "node": "worker-3", "severity": "warning"});
    let valid = webhook(vec![
        alert("KubePodCrashLooping", "shop", "cart-1"),
        alert("KubePodCrashLooping", "shop", "cart-2"),
        node_alert,
    ]);
    let text = serde_json::to_string_pretty(&valid).unwrap();
    let shown = check(&browser, &text);
    assert!(
        shown["status"].as_str().unwrap().starts_with("Valid"),
        "{shown}"
    );
    let answer = sidecar.post_alerts_from(&valid, "test");
    assert_eq!(answer.status, 201, "{}", answer.body);
    let answered: Vec<Value> = answer.json()["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["fingerprint"].clone())
        .collect();
    assert_eq!(shown["fingerprints"], json!(answered), "page vs sidecar");
    let written = sidecar.wait_resources("the three resources", |r| r.len() == 3);
    let mut written: Vec<Value> = written.iter().map(timeless).collect();
    let mut built: Vec<Value> = shown["yaml"]
        .as_array()
        .unwrap()
        .iter()
        .map(|y| timeless(&serde_yaml::from_str(y.as_str().unwrap()).unwrap()))
        .collect();
    written.sort_by_key(|v| v.to_string());
    built.sort_by_key(|v| v.to_string());
    assert_eq!(built, written, "the page's resources vs the sidecar's");
    screenshot(&browser, "valid-webhook");

    // An invalid webhook: the edge's field and detail, marked in the input.
    let mut invalid = valid.clone();
    invalid["alerts"][1]["labels"]["namespace"] = json!("Not_A_Namespace");
    let text = serde_json::to_string_pretty(&invalid).unwrap();
    let shown = check(&browser, &text);
    let mut c = envoy.client();
    let edge = problem(&c.send(&Request::post_json(PROM, body(&invalid))), 400);
    assert_eq!(shown["field"], edge["field"], "page {shown} vs edge {edge}");
    assert_eq!(
        shown["detail"], edge["detail"],
        "page {shown} vs edge {edge}"
    );
    assert_eq!(
        shown["marked"],
        json!("\"namespace\": \"Not_A_Namespace\""),
        "{shown}"
    );
    screenshot(&browser, "invalid-webhook");

    // A missing member: the edge names it, the page marks the object lacking it.
    let mut missing = valid.clone();
    missing["alerts"][0]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("alertname");
    let shown = check(&browser, &serde_json::to_string_pretty(&missing).unwrap());
    let edge = problem(&c.send(&Request::post_json(PROM, body(&missing))), 400);
    assert_eq!(shown["field"], edge["field"], "page {shown} vs edge {edge}");
    assert_eq!(
        shown["detail"], edge["detail"],
        "page {shown} vs edge {edge}"
    );
    assert!(shown["marked"].is_string(), "nothing marked: {shown}");

    // A Kubernetes Event, valid, then refused.
    let event = pod_event("data", "db-0", "BackOff", 4);
    let shown = check(&browser, &serde_json::to_string_pretty(&event).unwrap());
    let answer = sidecar.post_event(&event);
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        shown["fingerprints"],
        json!([answer.json()["signals"][0]["fingerprint"]]),
        "{shown}"
    );
    screenshot(&browser, "kubernetes-event");
    let mut bad_event = event.clone();
    bad_event["involvedObject"]["name"] = json!("");
    let shown = check(&browser, &serde_json::to_string_pretty(&bad_event).unwrap());
    let edge = problem(&c.send(&Request::post_json(KUBE, body(&bad_event))), 400);
    assert_eq!(shown["field"], edge["field"], "page {shown} vs edge {edge}");
    assert_eq!(
        shown["detail"], edge["detail"],
        "page {shown} vs edge {edge}"
    );
}

#[test]
fn the_sidecar_serves_the_page_read_only_with_a_policy_that_forbids_other_hosts() {
    let dir = checker_dir();
    let sidecar = Sidecar::start(&[("SIGNALGATE_CHECKER_DIR", dir.to_str().unwrap())]);
    let page = sidecar.admin_get("/check/");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let glue = sidecar.admin_get("/check/pkg/signalgate_checker.js");
    assert_eq!(glue.header("content-type"), Some("text/javascript"));
    let url = format!("http://{}/check/", sidecar.admin);
    let post = signalgate_tests::client::post_json(&url, b"{}", &[]).unwrap();
    assert_eq!(post.status, 405);
    let without = Sidecar::start(&[]);
    let page = without.admin_get("/check/");
    assert_eq!(page.status, 404);
    assert!(page.body.contains("make checker"), "{}", page.body);
}
