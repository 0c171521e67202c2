//! The edge's refusals in real Envoy, with each build of the filter: every
//! route, media-type and payload rule with its status and field, and the
//! body size limit, with and without `Content-Length`.

use serde_json::{json, Value};
use signalgate_tests::edge::{body, event, problem, valid, webhook, Edge, KUBE, PROM, WAIT};
use signalgate_tests::edge_client::Request;
use signalgate_tests::edge_suite;
use signalgate_tests::upstream::Upstream;

edge_suite!(
    each_validation_rejection_names_its_status_and_field_and_nothing_reaches_the_upstream,
    bodies_over_the_limit_get_413_with_and_without_content_length,
);

/// One validation case: the request, the expected status, the expected `field`.
struct Case {
    name: &'static str,
    request: Request,
    status: u16,
    problem_type: &'static str,
    field: Option<&'static str>,
}

fn with(mut v: Value, f: impl FnOnce(&mut Value)) -> Value {
    f(&mut v);
    v
}

fn cases() -> Vec<Case> {
    let prom = |v: Value| Request::post_json(PROM, body(&v));
    let kube = |v: Value| Request::post_json(KUBE, body(&v));
    let case = |name, request, status, problem_type, field| Case {
        name,
        request,
        status,
        problem_type,
        field,
    };
    vec![
        case(
            "unknown path",
            Request::post_json("/api/v1/signals/other", body(&webhook())),
            404,
            "not-found",
            None,
        ),
        case("root path", Request::get("/"), 404, "not-found", None),
        case(
            "GET on a signal path",
            Request::get(PROM),
            405,
            "method-not-allowed",
            None,
        ),
        case(
            "PUT on a signal path",
            valid().method("PUT"),
            405,
            "method-not-allowed",
            None,
        ),
        case(
            "text/plain",
            valid()
                .without("content-type")
                .header("content-type", "text/plain"),
            415,
            "unsupported-media-type",
            None,
        ),
        case(
            "no content type",
            valid().without("content-type"),
            415,
            "unsupported-media-type",
            None,
        ),
        case(
            "not JSON",
            Request::post_json(PROM, "{\"version\": "),
            400,
            "invalid-json",
            None,
        ),
        case(
            "empty body",
            Request::post_json(KUBE, ""),
            400,
            "invalid-json",
            None,
        ),
        case(
            "a JSON array",
            Request::post_json(PROM, "[1]"),
            400,
            "invalid-signal",
            Some(""),
        ),
        case(
            "version 3",
            prom(with(webhook(), |v| v["version"] = json!("3"))),
            400,
            "invalid-signal",
            Some("/version"),
        ),
        case(
            "no alerts",
            prom(with(webhook(), |v| v["alerts"] = json!([]))),
            400,
            "invalid-signal",
            Some("/alerts"),
        ),
        case(
            "too many alerts",
            prom(with(webhook(), |v| {
                let a = v["alerts"][0].clone();
                v["alerts"] = json!([a.clone(), a.clone(), a]);
            })),
            400,
            "invalid-signal",
            Some("/alerts"),
        ),
        case(
            "alert status",
            prom(with(webhook(), |v| {
                v["alerts"][0]["status"] = json!("pending")
            })),
            400,
            "invalid-signal",
            Some("/alerts/0/status"),
        ),
        case(
            "empty alertname",
            prom(with(webhook(), |v| {
                v["alerts"][0]["labels"]["alertname"] = json!("")
            })),
            400,
            "invalid-signal",
            Some("/alerts/0/labels/alertname"),
        ),
        case(
            "label name",
            prom(with(webhook(), |v| {
                v["alerts"][0]["labels"]["bad-name"] = json!("x")
            })),
            400,
            "invalid-signal",
            Some("/alerts/0/labels/bad-name"),
        ),
        case(
            "label value not a string",
            prom(with(webhook(), |v| {
                v["alerts"][0]["labels"]["replicas"] = json!(3)
            })),
            400,
            "invalid-signal",
            Some("/alerts/0/labels/replicas"),
        ),
        case(
            "startsAt",
            prom(with(webhook(), |v| {
                v["alerts"][0]["startsAt"] = json!("yesterday")
            })),
            400,
            "invalid-signal",
            Some("/alerts/0/startsAt"),
        ),
        case(
            "event without object",
            kube(with(event(), |v| {
                v.as_object_mut().map(|o| o.remove("involvedObject"));
            })),
            400,
            "invalid-signal",
            Some("/involvedObject"),
        ),
        case(
            "event object kind",
            kube(with(event(), |v| v["involvedObject"]["kind"] = json!(""))),
            400,
            "invalid-signal",
            Some("/involvedObject/kind"),
        ),
        case(
            "event object name",
            kube(with(event(), |v| {
                v["involvedObject"]
                    .as_object_mut()
                    .map(|o| o.remove("name"));
            })),
            400,
            "invalid-signal",
            Some("/involvedObject/name"),
        ),
        case(
            "alert namespace that is not a namespace name",
            prom(with(webhook(), |v| {
                v["alerts"][0]["labels"]["namespace"] = json!("../escaped")
            })),
            400,
            "invalid-signal",
            Some("/alerts/0/labels/namespace"),
        ),
        case(
            "event namespace that is not a namespace name",
            kube(with(event(), |v| {
                v["involvedObject"]["namespace"] = json!("a/b")
            })),
            400,
            "invalid-signal",
            Some("/involvedObject/namespace"),
        ),
        case(
            "event reason",
            kube(with(event(), |v| v["reason"] = json!(""))),
            400,
            "invalid-signal",
            Some("/reason"),
        ),
        case(
            "event type",
            kube(with(event(), |v| v["type"] = json!("Error"))),
            400,
            "invalid-signal",
            Some("/type"),
        ),
        case(
            "a webhook sent as an event",
            Request::post_json(KUBE, body(&webhook())),
            400,
            "invalid-signal",
            Some("/involvedObject"),
        ),
    ]
}

fn each_validation_rejection_names_its_status_and_field_and_nothing_reaches_the_upstream(
    edge: Edge,
) {
    let up = Upstream::start();
    let envoy = edge.start(r#"{"max_alerts_per_request": 2}"#, up.port());
    let mut c = envoy.client();
    let all = cases();
    for case in &all {
        let r = c.send(&case.request);
        let p = problem(&r, case.status);
        assert_eq!(
            p["type"],
            format!("https://signalgate.io/problems/{}", case.problem_type),
            "{}: {p}",
            case.name
        );
        assert_eq!(
            p.get("field").and_then(Value::as_str),
            case.field,
            "{}: {p}",
            case.name
        );
        if case.status == 405 {
            assert_eq!(r.header("allow"), Some("POST"), "{}", case.name);
        }
    }
    let count = |status| all.iter().filter(|c| c.status == status).count() as u64;
    envoy.wait_outcome("invalid", count(400));
    envoy.wait_outcome("unsupported_media_type", count(415));
    envoy.wait_outcome("not_found", count(404));
    envoy.wait_outcome("method_not_allowed", count(405));
    assert_eq!(envoy.outcome("accepted"), 0);
    assert_eq!(up.count(), 0, "{:?}", up.received());

    // The debug log says why each was refused.
    let log = envoy.log();
    assert!(
        log.contains("refused 400 (prometheus): /alerts/0/status"),
        "{log}"
    );
    assert!(log.contains("refused 415"), "{log}");

    // And valid payloads of both kinds (with a charset) pass.
    let ok = c.send(
        &valid()
            .without("content-type")
            .header("content-type", "application/json; charset=utf-8"),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    let ok = c.send(&Request::post_json(KUBE, body(&event())));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let mut v1 = event();
    v1["regarding"] = v1["involvedObject"].take();
    v1.as_object_mut().map(|o| o.remove("involvedObject"));
    let ok = c.send(&Request::post_json(KUBE, body(&v1)));
    assert_eq!(ok.status, 200, "{}", ok.text());
    // kubernetes-event-exporter's shape: core/v1 plus its extra fields.
    let mut exported = event();
    exported["clusterName"] = json!("prod-eu");
    exported["involvedObject"]["labels"] = json!({"app": "cart"});
    exported["involvedObject"]["annotations"] = json!({"team": "shop"});
    let ok = c.send(&Request::post_json(KUBE, body(&exported)));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(up.wait_for_count(4, WAIT).len(), 4);
}

fn bodies_over_the_limit_get_413_with_and_without_content_length(edge: Edge) {
    let up = Upstream::start();
    let envoy = edge.start(r#"{"max_body_bytes": 2048}"#, up.port());

    // Content-Length alone is enough: the body is never sent.
    let mut c = envoy.client();
    let r = c.send(&Request {
        declared_length_only: Some(10_000_000),
        ..Request::post_json(PROM, "")
    });
    let p = problem(&r, 413);
    assert_eq!(
        p["type"],
        "https://signalgate.io/problems/payload-too-large"
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap_or("")
            .contains("Content-Length"),
        "{p}"
    );

    // Streamed (chunked, no Content-Length): cut when the buffer passes the limit.
    let mut big = webhook();
    big["commonAnnotations"]["padding"] = json!("x".repeat(4096));
    let r = envoy
        .client()
        .send(&Request::post_json(PROM, body(&big)).chunked());
    problem(&r, 413);

    // Same with a Content-Length just over the limit; at the limit, chunked
    // or not, it passes.
    let padded = |len: usize| {
        let mut v = webhook();
        v["commonAnnotations"]["padding"] = json!("");
        let base = body(&v).len();
        v["commonAnnotations"]["padding"] = json!("x".repeat(len - base));
        let b = body(&v);
        assert_eq!(b.len(), len);
        b
    };
    problem(
        &envoy.client().send(&Request::post_json(PROM, padded(2049))),
        413,
    );
    let b = padded(2048);
    assert_eq!(
        envoy
            .client()
            .send(&Request::post_json(PROM, b.clone()))
            .status,
        200
    );
    assert_eq!(
        envoy
            .client()
            .send(&Request::post_json(PROM, b.clone()).chunked())
            .status,
        200
    );

    envoy.wait_outcome("too_large", 3);
    let got = up.wait_for_count(2, WAIT);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.body == b));
}
