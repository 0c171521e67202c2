//! What the edge forwards in real Envoy, with each build of the filter: the
//! request unchanged but for the headers it owns, and the source they
//! carry: the address, a header, `x-forwarded-for`, or a tenant's name.

use serde_json::json;
use signalgate_tests::edge::{
    body, event, problem, second_source, sha256_hex, valid, webhook, Edge, KUBE, PROM, WAIT,
};
use signalgate_tests::edge_client::Request;
use signalgate_tests::edge_suite;
use signalgate_tests::upstream::Upstream;

edge_suite!(
    accepted_requests_go_on_unchanged_with_our_headers_replacing_spoofed_ones,
    tenants_good_wrong_and_missing_tokens,
    the_source_can_come_from_a_header_or_x_forwarded_for,
);

fn accepted_requests_go_on_unchanged_with_our_headers_replacing_spoofed_ones(edge: Edge) {
    let up = Upstream::start();
    let envoy = edge.start("", up.port());
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
    assert_eq!(r.header("ratelimit"), Some("\"per-source\";r=99;t=1"));
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

fn tenants_good_wrong_and_missing_tokens(edge: Edge) {
    let up = Upstream::start();
    let config = json!({
        "requests_per_minute": 100,
        "tenants": [
            {"name": "team-a", "token_sha256": sha256_hex(TOKEN_A), "requests_per_minute": 2},
            {"name": "team-b", "token_sha256": sha256_hex(TOKEN_B).to_uppercase()}
        ]
    });
    let envoy = edge.start(&config.to_string(), up.port());
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

fn the_source_can_come_from_a_header_or_x_forwarded_for(edge: Edge) {
    let up = Upstream::start();
    let envoy = edge.start(
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
    let envoy = edge.start(
        r#"{"source": "x-forwarded-for", "trusted_hops": 1, "requests_per_minute": 1}"#,
        up.port(),
    );
    let mut c = envoy.client();
    let xff = |v: &str| valid().header("x-forwarded-for", v);
    assert_eq!(c.send(&xff("spoofed, 203.0.113.7, 10.0.0.1")).status, 200);
    // Same client behind the same proxy, another spoofed entry: same source.
    assert_eq!(c.send(&xff("other, 203.0.113.7, 10.0.0.9")).status, 429);
    assert_eq!(c.send(&xff("203.0.113.8, 10.0.0.1")).status, 200);
    // Two header lines are one list: the same client as the line before.
    let split = valid()
        .header("x-forwarded-for", "203.0.113.8")
        .header("x-forwarded-for", "10.0.0.1");
    assert_eq!(c.send(&split).status, 429);
    let got = up.wait_for_count(2, WAIT);
    let sources: Vec<&str> = got
        .iter()
        .filter_map(|r| r.header("x-signalgate-source"))
        .collect();
    assert_eq!(sources, ["203.0.113.7", "203.0.113.8"]);
    assert_eq!(up.count(), 2);
}
