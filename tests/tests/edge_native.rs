//! The two builds of the filter side by side, and what only one host has.
//! The edge suite (`edge_rate_limit`, `edge_validation`, `edge_headers`,
//! `edge_config`) runs every case against each build; here the same
//! requests go to both at once and the answers must be the same byte for
//! byte (status, body, the filter's headers), and the native module's own
//! checks run: a panic caught at the boundary, the refusal of an Envoy
//! release its ABI was not built for, its counters.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;
use signalgate_tests::edge::{
    body, problem, second_source, sha256_hex, valid, webhook, Edge, KUBE, PROM, WAIT,
};
use signalgate_tests::edge_client::{Request, Response};
use signalgate_tests::envoy::{Envoy, Options};
use signalgate_tests::upstream::{Received, Upstream};

/// Both builds answer alike.
mod same_answers {
    use super::*;

    /// The wasm filter and the native module, same configuration, one worker
    /// each, each in front of its own recording upstream.
    struct Pair {
        wasm: Envoy,
        native: Envoy,
        wasm_up: Upstream,
        native_up: Upstream,
    }

    impl Pair {
        fn start(config: &str) -> Pair {
            let wasm_up = Upstream::start();
            let native_up = Upstream::start();
            Pair {
                wasm: Edge::Wasm.start(config, wasm_up.port()),
                native: Edge::Native.start(config, native_up.port()),
                wasm_up,
                native_up,
            }
        }

        /// Sends `req` to both (from `source`) and checks the answers are the
        /// same: status, body, and the headers the filter sets. Returns the
        /// native one.
        fn same(&self, source: IpAddr, req: &Request, what: &str) -> Response {
            let w = self.wasm.client_from(source).send(req);
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

    fn sources(got: &[Received]) -> Vec<&str> {
        got.iter()
            .filter_map(|r| r.header("x-signalgate-source"))
            .collect()
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

        pair.native.wait_outcome("invalid", 5 + 2);
        pair.native.wait_outcome("too_large", 2);
        pair.native.wait_outcome("not_found", 1);
        pair.native.wait_outcome("method_not_allowed", 1);
        pair.native.wait_outcome("unsupported_media_type", 1);
        assert_eq!(pair.native.outcome("accepted"), 0);
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
        assert_eq!(forwarded(&pair.wasm_up, 1)[0].body, payload);
        // Sent with a Content-Length in two reads: the second body call carries
        // the end of the stream and data, after what Envoy buffered.
        let (status, text) = pair
            .native
            .post_in_two_reads(PROM, &payload, payload.len() / 2);
        assert_eq!(status, 200, "{text}");
        assert_eq!(forwarded(&pair.native_up, 2)[1].body, payload);
        let wasm = pair
            .wasm
            .post_in_two_reads(PROM, &payload, payload.len() / 2);
        assert_eq!(
            wasm,
            (status, text),
            "two reads: the wasm filter answers otherwise"
        );
        assert_eq!(forwarded(&pair.wasm_up, 2)[1].body, payload);
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
        pair.native.wait_outcome("rate_limited", 1);
        assert_eq!(forwarded(&pair.native_up, 2).len(), 2);
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
        pair.native.wait_outcome("unauthorized", 2);
    }
}

/// What only the native module has.
mod native_only {
    use super::*;

    #[test]
    fn the_module_checks_which_envoy_it_runs_in_and_counts_like_the_wasm_filter() {
        let up = Upstream::start();
        let envoy = Edge::Native.start("", up.port());
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
        envoy.wait_outcome("accepted", 1);
        assert_eq!(envoy.outcome("panics"), 0);
        // In /stats/prometheus Envoy prefixes the module's namespace.
        let prometheus = envoy.prometheus();
        assert_eq!(prometheus.get("envoy_signalgate_accepted"), Some(&1));
        assert_eq!(prometheus.get("signalgate_accepted"), None);
    }

    #[test]
    fn a_panic_in_the_module_is_answered_500_and_counted_and_envoy_goes_on() {
        let up = Upstream::start();
        let envoy = Envoy::start_with(Options::native("", up.port()).with_faults());
        let mut c = envoy.client();
        for (fault, n) in [("panic-in-headers", 1), ("panic-in-body", 2)] {
            let r = c.send(&valid().header("x-signalgate-fault", fault));
            let p = problem(&r, 500);
            assert_eq!(p["title"], "Internal Server Error", "{fault}: {p}");
            envoy.wait_outcome("panics", n);
        }
        // Nothing reached the upstream, and Envoy serves the next requests.
        assert_eq!(c.send(&valid()).status, 200);
        assert_eq!(envoy.client().send(&valid()).status, 200);
        assert_eq!(up.wait_for_count(2, WAIT).len(), 2);
        envoy.wait_outcome("accepted", 2);
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
        let e = match Envoy::try_start(
            Options::native("", up.port())
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
        let envoy = Envoy::start_with(
            Options::native("", up.port())
                .with_faults()
                .env("SIGNALGATE_FAULT_BUILT_FOR", "1.40"),
        );
        assert_eq!(envoy.client().send(&valid()).status, 200);
    }
}
