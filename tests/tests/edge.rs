//! The edge in real Envoy: the built filter, a recording upstream, and
//! requests over real sockets (from 127.0.0.1, and 127.0.0.2 as a second
//! source).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signalgate_tests::envoy::{Envoy, Options, Request, Response, StartError};
use signalgate_tests::payloads;
use signalgate_tests::upstream::Upstream;

const PROM: &str = "/api/v1/signals/prometheus";
const KUBE: &str = "/api/v1/signals/kubernetes-event";
const WAIT: Duration = Duration::from_secs(10);

fn second_source() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
}

fn webhook() -> Value {
    payloads::webhook(vec![payloads::alert(
        "KubePodCrashLooping",
        "shop",
        "cart-1",
    )])
}

fn event() -> Value {
    payloads::pod_event("shop", "cart-1", "BackOff", 3)
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn valid() -> Request {
    Request::post_json(PROM, body(&webhook()))
}

/// The problem+json body of a refusal, checked for the RFC 9457 members.
fn problem(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    let p = r.json();
    assert_eq!(p["status"], status, "{p}");
    for member in ["type", "title", "detail"] {
        assert!(p[member].is_string(), "{member} missing in {p}");
    }
    p
}

fn statuses(rs: &[Response]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

#[test]
fn thirty_quick_requests_at_20_per_minute_pass_20_and_429_the_rest_while_another_source_is_unaffected(
) {
    let up = Upstream::start();
    let envoy = Envoy::start(r#"{"requests_per_minute": 20}"#, up.port());
    let other = {
        let mut c = envoy.client_from(second_source());
        std::thread::spawn(move || (0..5).map(|_| c.send(&valid())).collect::<Vec<_>>())
    };
    let started = Instant::now();
    let mut c = envoy.client();
    let responses: Vec<Response> = (0..30).map(|_| c.send(&valid())).collect();
    let elapsed = started.elapsed();
    let others = other.join().expect("second source");

    // One token comes back every 3 s: the 30 requests take far less.
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let ok: Vec<&Response> = responses.iter().filter(|r| r.status == 200).collect();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok.len(), 20, "{:?}", statuses(&responses));
    assert_eq!(limited.len(), 10, "{:?}", statuses(&responses));
    // The first 20 pass, then every one is refused.
    assert!(responses[..20].iter().all(|r| r.status == 200));
    for r in &limited {
        let p = problem(r, 429);
        assert_eq!(p["type"], "https://signalgate.io/problems/rate-limited");
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no whole-second Retry-After in {r:?}"));
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"per-source\";q=20;w=60")
        );
        assert_eq!(
            r.header("ratelimit"),
            Some(format!("\"per-source\";r=0;t={retry}").as_str())
        );
    }
    // Accepted answers carry the remaining quota.
    assert_eq!(ok[0].header("ratelimit"), Some("\"per-source\";r=19;t=3"));
    assert_eq!(
        ok[19].header("ratelimit-policy"),
        Some("\"per-source\";q=20;w=60")
    );

    assert_eq!(statuses(&others), [200; 5], "second source was limited");
    let got = up.wait_for_count(25, WAIT);
    let from = |s: &str| {
        got.iter()
            .filter(|r| r.header("x-signalgate-source") == Some(s))
            .count()
    };
    assert_eq!(from("127.0.0.1"), 20);
    assert_eq!(from("127.0.0.2"), 5);
    envoy.wait_outcome("accepted", 25);
    envoy.wait_outcome("rate_limited", 10);
    assert_eq!(up.count(), 25);
}

#[test]
fn the_limit_is_one_limit_across_two_workers_and_many_connections() {
    const BURST: u64 = 40;
    const THREADS: usize = 8;
    const PER_THREAD: usize = 20;
    let up = Upstream::start();
    // 1 a minute refills nothing during the test: exactly the burst passes.
    let envoy = Envoy::start_with(
        Options::filter(r#"{"requests_per_minute": 1, "burst": 40}"#, up.port()).concurrency(2),
    );
    let accepted = Arc::new(AtomicU32::new(0));
    let limited = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            // Two connections per thread, used in turn.
            let mut clients = [envoy.client(), envoy.client()];
            let (accepted, limited) = (Arc::clone(&accepted), Arc::clone(&limited));
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let r = clients[i % 2].send(&valid());
                    match r.status {
                        200 => accepted.fetch_add(1, Ordering::SeqCst),
                        429 => limited.fetch_add(1, Ordering::SeqCst),
                        s => panic!("unexpected {s}: {}", r.text()),
                    };
                }
                clients.iter().map(|c| c.connections).sum::<u32>()
            })
        })
        .collect();
    let connections: u32 = threads.into_iter().map(|t| t.join().expect("client")).sum();
    assert!(connections >= 2 * THREADS as u32);
    let total = (THREADS * PER_THREAD) as u32;
    assert_eq!(accepted.load(Ordering::SeqCst) as u64, BURST);
    assert_eq!(limited.load(Ordering::SeqCst), total - BURST as u32);
    envoy.wait_outcome("accepted", BURST);
    envoy.wait_outcome("rate_limited", u64::from(total) - BURST);
    assert_eq!(
        up.wait_for_count(BURST as usize, WAIT).len(),
        BURST as usize
    );

    // Both workers really served requests.
    let per_worker = envoy.admin_get("/stats?filter=listener\\..*worker_.\\.downstream_cx_total");
    let workers_used = per_worker
        .lines()
        .filter(|l| {
            l.rsplit_once(": ")
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .is_some_and(|v| v > 0)
        })
        .count();
    assert_eq!(workers_used, 2, "{per_worker}");
}

#[test]
fn over_limit_status_503_with_retry_after() {
    let up = Upstream::start();
    let envoy = Envoy::start(
        r#"{"requests_per_minute": 1, "over_limit_status": 503}"#,
        up.port(),
    );
    let mut c = envoy.client();
    assert_eq!(c.send(&valid()).status, 200);
    let r = c.send(&valid());
    let p = problem(&r, 503);
    assert_eq!(p["type"], "https://signalgate.io/problems/rate-limited");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-source\";q=1;w=60")
    );
    envoy.wait_outcome("rate_limited", 1);
    assert_eq!(up.wait_for_count(1, WAIT).len(), 1);
}

#[test]
fn tokens_come_back_after_retry_after() {
    let up = Upstream::start();
    let envoy = Envoy::start(r#"{"requests_per_minute": 60, "burst": 1}"#, up.port());
    let mut c = envoy.client();
    assert_eq!(c.send(&valid()).status, 200);
    let r = c.send(&valid());
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    // Wait what Retry-After says (1 s at 60/min), then one request passes.
    std::thread::sleep(Duration::from_millis(1050));
    assert_eq!(c.send(&valid()).status, 200);
    assert_eq!(c.send(&valid()).status, 429);
}

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

#[test]
fn each_validation_rejection_names_its_status_and_field_and_nothing_reaches_the_upstream() {
    let up = Upstream::start();
    let envoy = Envoy::start(r#"{"max_alerts_per_request": 2}"#, up.port());
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

#[test]
fn accepted_requests_go_on_unchanged_with_our_headers_replacing_spoofed_ones() {
    let up = Upstream::start();
    let envoy = Envoy::start("", up.port());
    let mut c = envoy.client_from(second_source());
    let payload = body(&event());
    let r = c.send(
        &Request::post_json(KUBE, payload.clone())
            .header("x-signalgate-source", "trusted-admin")
            .header("X-Signalgate-Source", "also-spoofed")
            .header("x-signalgate-signal-type", "prometheus")
            .header("x-other", "kept"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{}", "the upstream's answer comes back");
    let got = up.wait_for_count(1, WAIT);
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, KUBE);
    assert_eq!(req.body, payload, "body forwarded unchanged");
    assert_eq!(req.header_all("x-signalgate-source"), ["127.0.0.2"]);
    // The sidecar takes the type from the path: the edge sets no type header,
    // and removes the one the client sent.
    assert!(
        req.header_all("x-signalgate-signal-type").is_empty(),
        "{req:?}"
    );
    assert_eq!(req.header("x-other"), Some("kept"));
    assert_eq!(req.header("content-type"), Some("application/json"));

    let r = c.send(&valid().header("x-signalgate-signal-type", "kubernetes-event"));
    assert_eq!(r.status, 200);
    let got = up.wait_for_count(2, WAIT);
    assert!(
        got[1].header_all("x-signalgate-signal-type").is_empty(),
        "{:?}",
        got[1]
    );
    assert_eq!(got[1].header_all("x-signalgate-source"), ["127.0.0.2"]);
    // Default limit: 100 a minute.
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-source\";q=100;w=60")
    );
    assert_eq!(r.header("ratelimit"), Some("\"per-source\";r=98;t=2"));
}

const TOKEN_A: &str = "token-of-team-a";
const TOKEN_B: &str = "token-of-team-b";

fn sha256_hex(s: &str) -> String {
    // The tests crate has no SHA-256 crate: sha256sum is in coreutils.
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(s.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

#[test]
fn tenants_good_wrong_and_missing_tokens() {
    let up = Upstream::start();
    let config = json!({
        "requests_per_minute": 100,
        "tenants": [
            {"name": "team-a", "token_sha256": sha256_hex(TOKEN_A), "requests_per_minute": 2},
            {"name": "team-b", "token_sha256": sha256_hex(TOKEN_B).to_uppercase()}
        ]
    });
    let envoy = Envoy::start(&config.to_string(), up.port());
    let mut c = envoy.client();
    let bearer = |t: &str| valid().header("authorization", &format!("Bearer {t}"));

    // Missing and wrong tokens: 401, many times, before team-a's first request.
    for _ in 0..5 {
        let r = c.send(&valid());
        let p = problem(&r, 401);
        assert_eq!(p["type"], "https://signalgate.io/problems/unauthorized");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        problem(&c.send(&bearer("not-a-token")), 401);
        problem(&c.send(&bearer(&sha256_hex(TOKEN_A))), 401);
        problem(
            &c.send(&valid().header("authorization", &format!("Basic {TOKEN_A}"))),
            401,
        );
    }
    envoy.wait_outcome("unauthorized", 20);
    assert_eq!(up.count(), 0);

    // 401s were not counted: team-a still has its 2 tokens, then 429.
    assert_eq!(c.send(&bearer(TOKEN_A)).status, 200);
    assert_eq!(c.send(&bearer(TOKEN_A)).status, 200);
    let r = c.send(&bearer(TOKEN_A));
    problem(&r, 429);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-source\";q=2;w=60")
    );
    // team-b, from the same address, has its own bucket (the global 100).
    let r = c.send(&bearer(TOKEN_B));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-source\";q=100;w=60")
    );

    let got = up.wait_for_count(3, WAIT);
    let sources: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("x-signalgate-source"))
        .collect();
    assert_eq!(sources, ["team-a", "team-a", "team-b"]);
    // The token travels on to the sidecar untouched.
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {TOKEN_A}").as_str())
    );
}

#[test]
fn bodies_over_the_limit_get_413_with_and_without_content_length() {
    let up = Upstream::start();
    let envoy = Envoy::start(r#"{"max_body_bytes": 2048}"#, up.port());

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

#[test]
fn the_source_can_come_from_a_header_or_x_forwarded_for() {
    let up = Upstream::start();
    let envoy = Envoy::start(
        r#"{"source": "header:x-team", "requests_per_minute": 1}"#,
        up.port(),
    );
    let mut c = envoy.client();
    assert_eq!(c.send(&valid().header("x-team", "payments")).status, 200);
    assert_eq!(c.send(&valid().header("x-team", "payments")).status, 429);
    assert_eq!(c.send(&valid().header("x-team", "search")).status, 200);
    // Without the header: the address.
    assert_eq!(c.send(&valid()).status, 200);
    let got = up.wait_for_count(3, WAIT);
    let sources: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("x-signalgate-source"))
        .collect();
    assert_eq!(sources, ["payments", "search", "127.0.0.1"]);

    // A header value that is not UTF-8 does not trap the filter: the source
    // keeps its printable ASCII.
    let payload = body(&webhook());
    let mut raw = format!(
        "POST {PROM} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nx-team: caf",
        payload.len()
    )
    .into_bytes();
    raw.extend_from_slice(b"\xe9-team\r\n\r\n");
    raw.extend_from_slice(&payload);
    let r = c.send_raw(&raw);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.wait_for_count(4, WAIT);
    assert_eq!(got[3].header("x-signalgate-source"), Some("caf-team"));
    assert_eq!(c.send(&valid().header("x-team", "other")).status, 200);
    // Sent twice (a client's copy, then the one a proxy appended): the last
    // one counts, so the forged copy does not buy a fresh bucket.
    let twice = valid()
        .header("x-team", "forged-by-client")
        .header("x-team", "payments");
    assert_eq!(c.send(&twice).status, 429);
    drop(envoy);

    let up = Upstream::start();
    let envoy = Envoy::start(
        r#"{"source": "x-forwarded-for", "trusted_hops": 1, "requests_per_minute": 1}"#,
        up.port(),
    );
    let mut c = envoy.client();
    let xff = |v: &str| valid().header("x-forwarded-for", v);
    assert_eq!(c.send(&xff("spoofed, 203.0.113.7, 10.0.0.1")).status, 200);
    // Same client behind the same proxy, another spoofed entry: same source.
    assert_eq!(c.send(&xff("other, 203.0.113.7, 10.0.0.9")).status, 429);
    assert_eq!(c.send(&xff("203.0.113.8, 10.0.0.1")).status, 200);
    let got = up.wait_for_count(2, WAIT);
    let sources: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("x-signalgate-source"))
        .collect();
    assert_eq!(sources, ["203.0.113.7", "203.0.113.8"]);
}

#[test]
fn counters_per_outcome_are_in_stats_prometheus() {
    let up = Upstream::start();
    let token = "counter-token";
    let config = json!({
        "requests_per_minute": 2,
        "max_body_bytes": 4096,
        "tenants": [{"name": "t", "token_sha256": sha256_hex(token)}]
    });
    let envoy = Envoy::start(&config.to_string(), up.port());
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
    // The names as Prometheus sees them, with their TYPE lines.
    let text = envoy.admin_get("/stats/prometheus");
    assert!(
        text.contains("# TYPE signalgate_accepted counter"),
        "{text}"
    );
    assert!(text.contains("signalgate_unsupported_media_type"), "{text}");
}

fn start_failure(plugin_config: &str) -> StartError {
    let up = Upstream::start();
    match Envoy::try_start(Options::filter(plugin_config, up.port()).concurrency(2)) {
        Ok(envoy) => panic!(
            "Envoy started with configuration {plugin_config}; log:\n{}",
            envoy.log()
        ),
        Err(e) => e,
    }
}

#[test]
fn a_bad_plugin_configuration_keeps_envoy_from_starting() {
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
        let e = start_failure(config);
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
    }
}

#[test]
fn the_local_bootstrap_is_the_template_rendered_with_the_local_defaults() {
    use signalgate_tests::envoy::render;
    use signalgate_tests::workspace::root;
    let read = |f: &str| std::fs::read_to_string(root().join("envoy").join(f)).expect(f);
    let strip = |s: &str| {
        s.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let local = read("envoy.yaml");
    let plugin_config = local
        .lines()
        .find_map(|l| l.trim().strip_prefix("value: '"))
        .and_then(|v| v.strip_suffix('\''))
        .expect("plugin configuration in envoy.yaml");
    // The local configuration spells out the defaults.
    let cfg: Value = serde_json::from_str(plugin_config).expect("plugin configuration JSON");
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
            ("PLUGIN_CONFIG", plugin_config.into()),
        ],
    );
    assert_eq!(strip(&rendered), strip(&local));
    assert!(local.contains("allow_on_headers_stop_iteration: true"));
    assert!(local.contains("runtime: envoy.wasm.runtime.v8"));
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

/// Envoy's `/memory` `allocated` bytes.
fn allocated(envoy: &Envoy) -> u64 {
    let v: Value = serde_json::from_str(&envoy.admin_get("/memory")).expect("/memory JSON");
    v["allocated"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v["allocated"].as_u64())
        .expect("allocated")
}

/// Sends one request counted against source `x-team: <prefix><i>` for each
/// `i` in `range`, over 4 connections.
fn distinct_sources(envoy: &Envoy, prefix: &str, range: std::ops::Range<u32>) {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let mut c = envoy.client();
            let prefix = prefix.to_string();
            let range = range.clone();
            std::thread::spawn(move || {
                for i in range.filter(|i| i % 4 == t) {
                    // Counted, then refused 415 (no body): cheap, and nothing
                    // reaches the upstream.
                    let r = c.send(
                        &Request::post_json(PROM, "")
                            .without("content-type")
                            .header("x-team", &format!("{prefix}{i}")),
                    );
                    assert_eq!(r.status, 415, "{}", r.text());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn memory_stays_bounded_with_many_distinct_sources() {
    const N: u32 = 20_000;
    let up = Upstream::start();
    let envoy = Envoy::start_with(Options {
        // Debug logs would log nothing here but cost time.
        debug_logs: false,
        ..Options::filter(r#"{"source": "header:x-team"}"#, up.port())
    });
    // The table (every shared-data key) exists before the first request, so
    // the first N sources (more than the 16 384 tracked at once) settle
    // whatever Envoy allocates for connections and stats ...
    distinct_sources(&envoy, "warm-", 0..N);
    let before = allocated(&envoy);
    // ... and N more distinct sources do not grow it.
    distinct_sources(&envoy, "more-", 0..N);
    let after = allocated(&envoy);
    envoy.wait_outcome("unsupported_media_type", u64::from(2 * N));
    let growth = after.saturating_sub(before);
    eprintln!("allocated: {before} -> {after} bytes after {N} more distinct sources");
    assert!(
        growth < 1024 * 1024,
        "Envoy grew by {growth} bytes for {N} new sources ({before} -> {after})"
    );
    // An early source, evicted since, is let through again: it takes over a
    // way whose bucket (one token used a moment ago) is nearly full.
    let r = envoy.client().send(&valid().header("x-team", "warm-0"));
    assert_eq!(r.status, 200);
    let left: u32 = r
        .header("ratelimit")
        .and_then(|v| v.split(";r=").nth(1))
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.parse().ok())
        .expect("RateLimit r=");
    assert!((98..=99).contains(&left), "{:?}", r.header("ratelimit"));
    assert_eq!(up.count(), 1);
}
