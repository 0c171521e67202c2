//! The native edge (the Envoy dynamic module built from `edge-native/`) in
//! real Envoy, beside the wasm filter: the same requests to both, the same
//! answers expected; plus what only the native host has (its own
//! start-up checks, counters under `metrics_namespace`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use signalgate_tests::edge_client::{Client, Request, Response};
use signalgate_tests::envoy::Envoy;
use signalgate_tests::native_edge::{self, NativeEnvoy, NativeOptions};
use signalgate_tests::payloads;
use signalgate_tests::upstream::{Received, Upstream};
use signalgate_tests::workspace;

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

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn valid() -> Request {
    Request::post_json(PROM, body(&webhook()))
}

/// The problem+json body of a refusal.
fn problem(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    let p = r.json();
    assert_eq!(p["status"], status, "{p}");
    p
}

/// The wasm filter and the native module, same configuration, one worker
/// each, each in front of its own recording upstream.
struct Pair {
    wasm: Envoy,
    native: NativeEnvoy,
    wasm_up: Upstream,
    native_up: Upstream,
}

impl Pair {
    fn start(config: &str) -> Pair {
        let wasm_up = Upstream::start();
        let native_up = Upstream::start();
        Pair {
            wasm: Envoy::start(config, wasm_up.port()),
            native: NativeEnvoy::start(config, native_up.port(), 1),
            wasm_up,
            native_up,
        }
    }

    /// Sends `req` to both (from `source`) and checks the answers are the
    /// same: status, body, and the headers the filter sets. Returns the
    /// native one.
    fn same(&self, source: IpAddr, req: &Request, what: &str) -> Response {
        let w = Client::from_addr(source, self.wasm.listener()).send(req);
        let n = self.native.client_from(source).send(req);
        assert_eq!(n.status, w.status, "{what}: native {n:?}\nwasm {w:?}");
        assert_eq!(n.text(), w.text(), "{what}: bodies differ");
        for h in [
            "content-type",
            "retry-after",
            "ratelimit-policy",
            "ratelimit",
            "allow",
        ] {
            assert_eq!(n.header(h), w.header(h), "{what}: header {h} differs");
        }
        n
    }
}

fn forwarded(up: &Upstream, n: usize) -> Vec<Received> {
    up.wait_for_count(n, WAIT)
}

#[test]
fn a_valid_alert_is_forwarded_with_the_source_header_as_by_the_wasm_filter() {
    let pair = Pair::start("");
    let spoofed = valid()
        .header("x-signalgate-source", "trusted-admin")
        .header("x-signalgate-signal-type", "kubernetes-event");
    let r = pair.same(second_source(), &spoofed, "valid alert");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("ratelimit"), Some("\"per-source\";r=99;t=1"));
    let event = Request::post_json(
        KUBE,
        body(&payloads::pod_event("shop", "cart-1", "BackOff", 3)),
    );
    assert_eq!(
        pair.same(second_source(), &event, "valid event").status,
        200
    );

    let native = forwarded(&pair.native_up, 2);
    let wasm = forwarded(&pair.wasm_up, 2);
    for (n, w) in native.iter().zip(&wasm) {
        assert_eq!(n.header_all("x-signalgate-source"), ["127.0.0.2"]);
        assert_eq!(n.body, w.body, "body forwarded unchanged");
        for h in [
            "x-signalgate-source",
            "x-signalgate-signal-type",
            "content-type",
        ] {
            assert_eq!(n.header_all(h), w.header_all(h), "{h}");
        }
    }
    // The client's copy is removed and none is set (the sidecar takes the
    // type from the path).
    for n in &native {
        assert!(n.header_all("x-signalgate-signal-type").is_empty());
    }
    assert_eq!(native[0].body, body(&webhook()));
    pair.native.wait_counter("accepted", 2);
    pair.wasm.wait_outcome("accepted", 2);
}

#[test]
fn refusals_are_the_wasm_filters_byte_for_byte() {
    let pair = Pair::start(r#"{"max_body_bytes": 4096, "max_alerts_per_request": 2}"#);
    let mut no_status = webhook();
    no_status["alerts"][0]
        .as_object_mut()
        .map(|a| a.remove("status"));
    let mut three = webhook();
    three["alerts"] = json!([three["alerts"][0], three["alerts"][0], three["alerts"][0]]);
    let mut big = webhook();
    big["commonAnnotations"]["padding"] = json!("x".repeat(8192));
    let cases = [
        ("not JSON", Request::post_json(PROM, "{\"version\": "), 400),
        ("empty body", Request::post_json(KUBE, ""), 400),
        ("a JSON array", Request::post_json(PROM, "[1]"), 400),
        (
            "an alert without status",
            Request::post_json(PROM, body(&no_status)),
            400,
        ),
        (
            "too many alerts",
            Request::post_json(PROM, body(&three)),
            400,
        ),
        (
            "unknown path",
            Request::post_json("/api/v1/signals/other", "{}"),
            404,
        ),
        ("GET on a signal path", Request::get(PROM), 405),
        (
            "text/plain",
            valid()
                .without("content-type")
                .header("content-type", "text/plain"),
            415,
        ),
        (
            "too large, Content-Length",
            Request::post_json(PROM, body(&big)),
            413,
        ),
        (
            "too large, chunked",
            Request::post_json(PROM, body(&big)).chunked(),
            413,
        ),
    ];
    for (what, req, status) in &cases {
        let r = pair.same(IpAddr::V4(Ipv4Addr::LOCALHOST), req, what);
        problem(&r, *status);
    }
    // The field at fault is named, as by the wasm filter.
    let r = pair.native.client().send(&cases[3].1);
    assert_eq!(
        problem(&r, 400)["field"],
        "/alerts/0/status",
        "{}",
        r.text()
    );
    assert_eq!(
        problem(&pair.native.client().send(&cases[0].1), 400)["type"],
        "https://signalgate.io/problems/invalid-json"
    );

    pair.native.wait_counter("invalid", 5 + 2);
    pair.native.wait_counter("too_large", 2);
    pair.native.wait_counter("not_found", 1);
    pair.native.wait_counter("method_not_allowed", 1);
    pair.native.wait_counter("unsupported_media_type", 1);
    assert_eq!(pair.native.counter("accepted"), 0);
    assert_eq!(pair.native_up.count(), 0, "{:?}", pair.native_up.received());
    // The debug log says why, as the wasm filter's does.
    let log = pair.native.log();
    assert!(
        log.contains("refused 400 (prometheus): /alerts/0/status"),
        "{log}"
    );
}

#[test]
fn a_body_in_many_chunks_is_validated_whole() {
    // 64 KB sent chunked in 1 KB pieces: Envoy hands it over in several
    // body calls and the module must put them together in order.
    let pair = Pair::start("");
    let mut v = webhook();
    v["commonAnnotations"]["padding"] = json!("y".repeat(64 * 1024));
    let payload = body(&v);
    let r = pair.same(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &Request::post_json(PROM, payload.clone()).chunked(),
        "chunked 64 KB",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(forwarded(&pair.native_up, 1)[0].body, payload);
    // Sent with a Content-Length in two reads: the second body call carries
    // the end of the stream and data, after what Envoy buffered.
    let (status, text) = pair
        .native
        .post_in_two_reads(PROM, &payload, payload.len() / 2);
    assert_eq!(status, 200, "{text}");
    assert_eq!(forwarded(&pair.native_up, 2)[1].body, payload);
    // Broken in the middle: refused the same way.
    let mut broken = payload.clone();
    let middle = broken.len() / 2;
    broken[middle] = b'"';
    let r = pair.same(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &Request::post_json(PROM, broken).chunked(),
        "chunked, broken",
    );
    problem(&r, 400);
}

#[test]
fn over_the_limit_is_the_configured_status_with_retry_after_and_ratelimit_headers() {
    let pair = Pair::start(r#"{"requests_per_minute": 1, "over_limit_status": 503}"#);
    let me = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(pair.same(me, &valid(), "first").status, 200);
    let r = pair.same(me, &valid(), "second");
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
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("\"per-source\";r=0;t={retry}").as_str())
    );
    // Another source has its own bucket.
    assert_eq!(
        pair.same(second_source(), &valid(), "other source").status,
        200
    );
    pair.native.wait_counter("rate_limited", 1);
    assert_eq!(forwarded(&pair.native_up, 2).len(), 2);
}

#[test]
fn the_limit_is_one_limit_across_two_workers_and_many_connections() {
    const BURST: u32 = 40;
    const THREADS: usize = 8;
    const PER_THREAD: usize = 20;
    let up = Upstream::start();
    // 1 a minute refills nothing during the test: exactly the burst passes.
    let envoy = NativeEnvoy::start(r#"{"requests_per_minute": 1, "burst": 40}"#, up.port(), 2);
    let accepted = Arc::new(AtomicU32::new(0));
    let limited = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
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
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let total = (THREADS * PER_THREAD) as u32;
    assert_eq!(accepted.load(Ordering::SeqCst), BURST);
    assert_eq!(limited.load(Ordering::SeqCst), total - BURST);
    envoy.wait_counter("accepted", u64::from(BURST));
    envoy.wait_counter("rate_limited", u64::from(total - BURST));
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
fn a_bad_filter_configuration_keeps_envoy_from_starting_naming_the_key() {
    let up = Upstream::start();
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
        let e = match NativeEnvoy::try_start(config, up.port(), 2) {
            Ok(envoy) => panic!("Envoy started with {config}; log:\n{}", envoy.log()),
            Err(e) => e,
        };
        let exit = e
            .exit
            .unwrap_or_else(|| panic!("Envoy never exited for {config}"));
        assert!(!exit.success(), "{config}: {exit}");
        assert!(
            e.log.contains(&format!(
                "signalgate: invalid plugin configuration: key \"{key}\""
            )),
            "{config}: log does not name {key}:\n{}",
            e.log
        );
    }
}

#[test]
fn the_module_checks_which_envoy_it_runs_in_and_counts_like_the_wasm_filter() {
    let up = Upstream::start();
    let envoy = NativeEnvoy::start("", up.port(), 1);
    let log = envoy.log();
    // Its own check (it refuses other Envoy releases), and Envoy's.
    assert!(log.contains("signalgate: running in Envoy 1.40."), "{log}");
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched"),
        "{log}"
    );
    assert_eq!(envoy.client().send(&valid()).status, 200);
    // Every counter the wasm filter has, under the same stat names, plus
    // the native host's `panics`.
    let stats = envoy.admin_get("/stats?filter=^signalgate\\.");
    for name in [
        "accepted",
        "rate_limited",
        "unauthorized",
        "invalid",
        "too_large",
        "unsupported_media_type",
        "not_found",
        "method_not_allowed",
        "rate_limit_errors",
        "panics",
    ] {
        assert!(
            stats.contains(&format!("signalgate.{name}: ")),
            "{name} in:\n{stats}"
        );
    }
    envoy.wait_counter("accepted", 1);
    assert_eq!(envoy.counter("panics"), 0);
}

#[test]
fn the_local_bootstraps_configure_both_filters_alike() {
    let wasm = std::fs::read_to_string(workspace::root().join("envoy/envoy.yaml"))
        .expect("envoy/envoy.yaml");
    let wasm_config = wasm
        .lines()
        .map(str::trim_start)
        .find_map(|l| l.strip_prefix("value: '"))
        .and_then(|v| v.strip_suffix('\''))
        .expect("the wasm filter's configuration");
    assert_eq!(native_edge::local_filter_config(), wasm_config);
}

#[test]
fn a_panic_in_the_module_is_answered_500_and_counted_and_envoy_goes_on() {
    let up = Upstream::start();
    let envoy = NativeEnvoy::start_with(NativeOptions::new("", up.port()).with_faults());
    let mut c = envoy.client();
    for (fault, n) in [("panic-in-headers", 1), ("panic-in-body", 2)] {
        let r = c.send(&valid().header("x-signalgate-fault", fault));
        let p = problem(&r, 500);
        assert_eq!(p["title"], "Internal Server Error", "{fault}: {p}");
        envoy.wait_counter("panics", n);
    }
    // Nothing reached the upstream, and Envoy serves the next requests.
    assert_eq!(c.send(&valid()).status, 200);
    assert_eq!(envoy.client().send(&valid()).status, 200);
    assert_eq!(up.wait_for_count(2, WAIT).len(), 2);
    envoy.wait_counter("accepted", 2);
    let log = envoy.log();
    assert!(
        log.contains("signalgate: panic in request headers"),
        "{log}"
    );
    assert!(log.contains("signalgate: panic in request body"), "{log}");
}

#[test]
fn the_module_refuses_an_envoy_release_its_abi_was_not_built_for() {
    // Only Envoy 1.40 is installed here: the fault-injection build can be
    // told it was built for another release, and must then refuse this one.
    let up = Upstream::start();
    let e = match NativeEnvoy::try_start_with(
        NativeOptions::new("", up.port())
            .with_faults()
            .env("SIGNALGATE_FAULT_BUILT_FOR", "1.38"),
    ) {
        Ok(envoy) => panic!("Envoy started; log:\n{}", envoy.log()),
        Err(e) => e,
    };
    let exit = e.exit.expect("Envoy exits");
    assert!(!exit.success(), "{exit}");
    assert!(
        e.log.contains(
            "signalgate: this module is built for the dynamic-module ABI of Envoy 1.38 \
             (runs on 1.38 and 1.39), not Envoy 1.40."
        ),
        "{}",
        e.log
    );
    // Envoy refuses the configuration that names the module.
    assert!(e.log.contains("signalgate_edge_native"), "{}", e.log);

    // The same build, told the truth, starts.
    let envoy = NativeEnvoy::start_with(
        NativeOptions::new("", up.port())
            .with_faults()
            .env("SIGNALGATE_FAULT_BUILT_FOR", "1.40"),
    );
    assert_eq!(envoy.client().send(&valid()).status, 200);
}

/// SHA-256 hex of `s` (coreutils' sha256sum: the tests crate has no digest crate).
fn sha256_hex(s: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
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

fn sources(got: &[Received]) -> Vec<&str> {
    got.iter()
        .filter_map(|r| r.header("x-signalgate-source"))
        .collect()
}

#[test]
fn tenants_are_authenticated_and_limited_as_by_the_wasm_filter() {
    let config = json!({
        "requests_per_minute": 100,
        "tenants": [
            {"name": "team-a", "token_sha256": sha256_hex("token-a"), "requests_per_minute": 2},
            {"name": "team-b", "token_sha256": sha256_hex("token-b")}
        ]
    });
    let pair = Pair::start(&config.to_string());
    let me = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let bearer = |t: &str| valid().header("authorization", &format!("Bearer {t}"));
    for (what, req, status) in [
        ("no token", valid(), 401),
        ("wrong token", bearer("not-a-token"), 401),
        ("team-a 1", bearer("token-a"), 200),
        ("team-a 2", bearer("token-a"), 200),
        ("team-a 3", bearer("token-a"), 429),
        ("team-b", bearer("token-b"), 200),
    ] {
        let r = pair.same(me, &req, what);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if status == 401 {
            assert_eq!(
                r.header("www-authenticate")
                    .map(|v| v.starts_with("Bearer")),
                Some(true),
                "{what}"
            );
        }
    }
    let got = forwarded(&pair.native_up, 3);
    assert_eq!(sources(&got), ["team-a", "team-a", "team-b"]);
    assert_eq!(got[0].header("authorization"), Some("Bearer token-a"));
    pair.native.wait_counter("unauthorized", 2);
}

#[test]
fn the_source_comes_from_a_header_or_x_forwarded_for_as_with_the_wasm_filter() {
    let me = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let pair = Pair::start(r#"{"source": "header:x-team", "requests_per_minute": 1}"#);
    let team = |t: &str| valid().header("x-team", t);
    for (what, req, status) in [
        ("payments", team("payments"), 200),
        ("payments again", team("payments"), 429),
        ("search", team("search"), 200),
        ("no header: the address", valid(), 200),
        // Sent twice: the last copy (a proxy's) counts.
        (
            "forged then payments",
            valid()
                .header("x-team", "forged-by-client")
                .header("x-team", "payments"),
            429,
        ),
    ] {
        assert_eq!(pair.same(me, &req, what).status, status, "{what}");
    }
    let got = forwarded(&pair.native_up, 3);
    assert_eq!(sources(&got), ["payments", "search", "127.0.0.1"]);
    drop(pair);

    let pair = Pair::start(
        r#"{"source": "x-forwarded-for", "trusted_hops": 1, "requests_per_minute": 1}"#,
    );
    let xff = |v: &str| valid().header("x-forwarded-for", v);
    for (what, req, status) in [
        ("first", xff("spoofed, 203.0.113.7, 10.0.0.1"), 200),
        ("same client", xff("other, 203.0.113.7, 10.0.0.9"), 429),
        // Two header lines are one list.
        (
            "split list",
            valid()
                .header("x-forwarded-for", "203.0.113.8")
                .header("x-forwarded-for", "10.0.0.1"),
            200,
        ),
    ] {
        assert_eq!(pair.same(me, &req, what).status, status, "{what}");
    }
    let got = forwarded(&pair.native_up, 2);
    assert_eq!(sources(&got), ["203.0.113.7", "203.0.113.8"]);
}
