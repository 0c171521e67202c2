//! The whole chain on one machine: real Envoy with the built filter in front
//! of the real sidecar (in-memory store, directory sink).

use signalgate_tests::edge_client::Request;
use signalgate_tests::envoy::Envoy;
use signalgate_tests::payloads::{alert, notification, pod_event, webhook};
use signalgate_tests::sidecar::Sidecar;

#[test]
fn an_alertmanager_payload_at_the_edge_becomes_resource_files() {
    let sidecar = Sidecar::start(&[]);
    let envoy = Envoy::start("{}", sidecar.api.port());
    let mut client = envoy.client();
    let hook = webhook(vec![
        alert("KubePodCrashLooping", "shop", "cart-1"),
        alert("KubePodCrashLooping", "shop", "cart-2"),
    ]);
    let body = serde_json::to_vec(&hook).unwrap();
    let first = client.send(&Request::post_json(
        "/api/v1/signals/prometheus",
        body.clone(),
    ));
    assert_eq!(first.status, 201, "{}", first.text());
    // Its next notification (the same body again would be a retry).
    let next = serde_json::to_vec(&notification(&hook, 2)).unwrap();
    let again = client.send(&Request::post_json("/api/v1/signals/prometheus", next));
    assert_eq!(again.status, 202, "{}", again.text());

    let all = sidecar.wait_resources("two resources counted twice", |r| {
        r.len() == 2
            && r.iter()
                .all(|x| x["spec"]["deduplication"]["occurrenceCount"] == 2)
    });
    let targets: Vec<&str> = all
        .iter()
        .map(|r| r["spec"]["targetResource"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(targets.len(), 2);
    assert!(targets.contains(&"cart-1") && targets.contains(&"cart-2"));
    // The edge set the source: the client's address, not anything it claimed.
    assert!(
        all.iter().all(|r| r["spec"]["source"] == "127.0.0.1"),
        "{all:?}"
    );

    let event = serde_json::to_vec(&pod_event("shop", "cart-1", "BackOff", 1)).unwrap();
    let a = client.send(&Request::post_json(
        "/api/v1/signals/kubernetes-event",
        event,
    ));
    assert_eq!(a.status, 201, "{}", a.text());
    assert_eq!(sidecar.resources().len(), 3);
}

#[test]
fn a_payload_refused_at_the_edge_never_reaches_the_sidecar() {
    let sidecar = Sidecar::start(&[]);
    let envoy = Envoy::start("{}", sidecar.api.port());
    let mut client = envoy.client();
    let mut hook = webhook(vec![alert("A", "shop", "p")]);
    hook["alerts"][0]["labels"]["bad-name"] = serde_json::json!("x");
    let a = client.send(&Request::post_json(
        "/api/v1/signals/prometheus",
        serde_json::to_vec(&hook).unwrap(),
    ));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], "/alerts/0/labels/bad-name");
    assert_eq!(
        sidecar.metric("signalgate_request_duration_seconds_count{status=\"400\"}"),
        0.0
    );
    assert!(sidecar.resources().is_empty());
}
