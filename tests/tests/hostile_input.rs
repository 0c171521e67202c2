//! Hostile bodies: tens of thousands of valid payloads, each damaged at
//! random (deterministically, from a fixed seed), go through everything the
//! edge and the sidecar do with a body before the store sees it; damaged
//! plugin configurations go through the filter's configuration parser, and
//! hostile request heads through its headers phase.
//!
//! - Nothing panics. In the filter a panic traps the Wasm VM and, with
//!   Envoy's default fail-closed policy, refuses every later request.
//! - A refused body gets a 400 problem+json that names what is wrong.
//! - An accepted body keeps the promises the rest of the sidecar relies on:
//!   the identity decided in the store (read from the labels in place) is the
//!   identity of the signal later written; every namespace is a valid one
//!   (it becomes a Redis key, a directory and an API path); and the resource
//!   built from it is one the API server takes (labels within 63 valid
//!   characters, values cut to their bound, JSON that serializes).
//!
//! The damage is byte-level (flips to JSON punctuation, bytes that are not
//! UTF-8, deletions, duplications, truncation) and token-level (JSON values
//! and keys that are out of range, escaped surrogates, very long strings),
//! one to four of them per body, so that both the parser's refusals and the
//! rare damaged body that is still valid are exercised; the test checks it
//! saw enough of each.

use serde_json::{json, Value};
use signalgate_filter::{config::Config as FilterConfig, decide};
use signalgate_model::{alertmanager, kube_event, namespace, signal, SignalType};
use signalgate_resource::builder::affected_name;
use signalgate_resource::{RemediationRequest, MAX_ENTRIES, MAX_VALUE_BYTES};
use signalgate_sidecar::resource;
use signalgate_sidecar::store::{Snapshot, StormSnapshot};
use signalgate_tests::payloads;
use signalgate_tests::rng::Rng;

/// Damaged bodies per seed payload.
const ROUNDS: usize = 20_000;

/// `items[i]` for a random index.
fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.index(items.len())]
}

/// Bytes that change a JSON document's structure, or its encoding.
const BYTES: &[u8] = &[
    b'{', b'}', b'[', b']', b'"', b'\\', b':', b',', b'0', b'9', b'-', b'.', b'e', b'n', b't',
    b' ', b'/', 0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xe2, 0xed, 0xf0, 0xff,
];

/// Tokens a sender could put anywhere.
fn tokens() -> Vec<String> {
    let mut t: Vec<String> = [
        "\"\\ud800\"",
        "\"\\udc00\\ud800\"",
        "\"\\u0000\"",
        "\"é\"",
        "\"😀\"",
        "\"\"",
        "null",
        "true",
        "{}",
        "[]",
        "[[[[[[[[[[[[[[[[",
        "1e999",
        "-0",
        "18446744073709551616",
        "-9223372036854775809",
        "0.5",
        "\"namespace\"",
        "\"exported_namespace\"",
        "\"alertname\"",
        "\"pod\"",
        "\"node\"",
        "\"labels\"",
        "\"alerts\"",
        "\"status\"",
        "\"resolved\"",
        "\"startsAt\"",
        "\"0001-01-01T00:00:00Z\"",
        "\"9999-12-31T23:59:60.999999999+14:00\"",
        "\"2026-02-30T25:61:61Z\"",
        "\"kube-system\"",
        "\"Kube_System\"",
        "\"involvedObject\"",
        "\"count\"",
        "\"-\"",
        "\"a.b\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    t.push(format!("\"{}\"", "x".repeat(5000)));
    t.push(format!("\"{}\"", "é".repeat(700)));
    t
}

fn damage(rng: &mut Rng, seed: &[u8], tokens: &[String]) -> Vec<u8> {
    let mut body = seed.to_vec();
    for _ in 0..1 + rng.index(4) {
        let at = rng.index(body.len() + 1);
        match rng.index(6) {
            0 | 1 if at < body.len() => body[at] = *pick(rng, BYTES),
            2 if at < body.len() => {
                let end = (at + 1 + rng.index(40)).min(body.len());
                body.drain(at..end);
            }
            3 if at < body.len() => {
                let end = (at + 1 + rng.index(60)).min(body.len());
                let copy = body[at..end].to_vec();
                body.splice(at..at, copy);
            }
            4 => {
                let token = pick(rng, tokens).clone();
                body.splice(at..at, token.into_bytes());
            }
            _ => body.truncate(at),
        }
    }
    body
}

/// Strings a sender could put in any value or key.
const STRINGS: &[&str] = &[
    "",
    " ",
    "..",
    "../../etc",
    "a/b",
    "Shop",
    "shop.",
    "-shop",
    "shop-",
    "kube-system",
    "x\u{0}y",
    "\n",
    "tab\there",
    "é",
    "😀",
    "\u{202e}rtl",
    "0123456789012345678901234567890123456789012345678901234567890123",
    "firing",
    "resolved",
    "Warning",
    "2026-11-26T20:57:15Z",
    "0001-01-01T00:00:00Z",
    "not a time",
];

/// Any value: a hostile string, a number, or another JSON type.
fn hostile_value(rng: &mut Rng) -> Value {
    match rng.index(8) {
        0 => json!(null),
        1 => json!(rng.index(2) == 0),
        2 => json!(rng.next_u64() as i64),
        3 => json!(-1.5e300),
        4 => json!([]),
        5 => json!({ *pick(rng, STRINGS): *pick(rng, STRINGS) }),
        6 => json!("x".repeat(rng.index(3000))),
        _ => json!(*pick(rng, STRINGS)),
    }
}

/// Every node of `v`, as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// The seed with one to three of its values replaced, or keys added to
/// its objects: valid JSON, hostile content.
fn damage_values(rng: &mut Rng, seed: &Value) -> Vec<u8> {
    let mut doc = seed.clone();
    for _ in 0..1 + rng.index(3) {
        let mut all = Vec::new();
        pointers(&doc, String::new(), &mut all);
        let at = pick(rng, &all).clone();
        let value = hostile_value(rng);
        let key = pick(rng, STRINGS).to_string();
        let add_key = rng.index(3) == 0;
        if let Some(node) = doc.pointer_mut(&at) {
            match node {
                Value::Object(map) if add_key => {
                    map.insert(key, value);
                }
                _ => *node = value,
            }
        }
    }
    serde_json::to_vec(&doc).expect("a JSON value serialises")
}

fn snapshot() -> Snapshot {
    Snapshot {
        resource: "rr-0123456789abcdef-m1x2y3".into(),
        first_seen_ms: 1_764_190_635_123,
        last_seen_ms: 1_764_190_640_000,
        occurrence_count: 3,
        storm: Some(StormSnapshot {
            alert_count: 11,
            affected: vec!["Pod/cart-1".into()],
            affected_overflow: 0,
            started_ms: 1_764_190_635_123,
            ends_ms: 1_764_190_935_123,
            ..StormSnapshot::default()
        }),
        firings: 1,
        ..Snapshot::default()
    }
}

/// `[A-Za-z0-9._-]`, at most 63, alphanumeric at both ends (or empty).
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    v.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && b.first().is_none_or(|c| c.is_ascii_alphanumeric())
        && b.last().is_none_or(|c| c.is_ascii_alphanumeric())
}

/// What the API server would refuse, and the bounds the sidecar promises.
fn check_resource(rr: &RemediationRequest, namespace: &str, what: &str) {
    assert_eq!(rr.metadata.namespace.as_deref(), Some(namespace), "{what}");
    for (k, v) in rr.metadata.labels.iter().flatten() {
        assert!(
            is_label_value(v),
            "{what}: label {k}={v:?} is not a valid label value"
        );
    }
    for map in [&rr.spec.signal_labels, &rr.spec.signal_annotations] {
        assert!(map.len() <= MAX_ENTRIES, "{what}: {} entries", map.len());
        for (k, v) in map {
            assert!(
                k.len() <= MAX_VALUE_BYTES && v.len() <= MAX_VALUE_BYTES,
                "{what}: entry {k:?} past {MAX_VALUE_BYTES} bytes"
            );
        }
    }
    let json = serde_json::to_vec(rr);
    assert!(
        json.is_ok(),
        "{what}: the resource does not serialize: {json:?}"
    );
}

/// What the sidecar does with an accepted body, up to the resources it
/// would write; the identities it decides must be the signals' own.
fn follow_accepted(signal_type: SignalType, body: &[u8], what: &str) -> usize {
    let ctx = signal::Context {
        source: "10.0.0.1",
        fallback_namespace: "signalgate-system",
    };
    let signals = match signal_type {
        SignalType::Prometheus => {
            let Ok(webhook) =
                alertmanager::parse(body, FilterConfig::default().max_alerts_per_request)
            else {
                return 0;
            };
            let identities = signal::alert_identities(&webhook, &ctx);
            let signals: Vec<_> = (0..identities.len())
                .map(|i| signal::alert_signal(&webhook, i, &ctx))
                .collect();
            assert!(
                signal::alert_signal(&webhook, identities.len(), &ctx).is_none(),
                "{what}: more signals than identities"
            );
            for (identity, signal) in identities.iter().zip(&signals) {
                let signal = signal.as_ref();
                assert_eq!(
                    Some(identity),
                    signal.map(|s| s.identity()).as_ref(),
                    "{what}: the identity decided is not the signal's"
                );
            }
            signals.into_iter().flatten().collect()
        }
        SignalType::KubernetesEvent => {
            let Ok(event) = kube_event::parse(body) else {
                return 0;
            };
            vec![signal::from_kube_event(&event, &ctx)]
        }
    };
    let snapshot = snapshot();
    for s in &signals {
        assert!(
            namespace::is_namespace_name(&s.namespace),
            "{what}: namespace {:?} is not a valid one",
            s.namespace
        );
        let fingerprint = s.identity().fingerprint();
        assert!(
            fingerprint.len() == 64 && fingerprint.bytes().all(|c| c.is_ascii_hexdigit()),
            "{what}: fingerprint {fingerprint:?}"
        );
        let own = resource::for_signal(s, &fingerprint, &snapshot, 1_764_190_640_000);
        check_resource(&own, &s.namespace, what);
        let affected = affected_name(&s.target);
        let storm = resource::for_storm(s, &affected, &snapshot, 1_764_190_640_000);
        check_resource(&storm, &s.namespace, what);
    }
    1
}

/// Runs `ROUNDS` damaged copies of `seed` through the edge's validation and
/// the sidecar's parsing; returns (accepted, refused).
fn hammer(signal_type: SignalType, seed: &Value, rng: &mut Rng) -> (usize, usize) {
    let seed_bytes = serde_json::to_vec_pretty(seed).expect("the seed serialises");
    let tokens = tokens();
    let cfg = FilterConfig::default();
    assert!(
        decide::validate_body(&cfg, signal_type, &seed_bytes).is_none()
            && follow_accepted(signal_type, &seed_bytes, "the undamaged seed") == 1,
        "the undamaged seed must be valid"
    );
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let body = if round % 2 == 0 {
            damage(rng, &seed_bytes, &tokens)
        } else {
            damage_values(rng, seed)
        };
        let text = String::from_utf8_lossy(&body);
        let shown: String = text.chars().take(1500).collect();
        let what = format!(
            "{} round {round} (the body regenerates from the seed), body {shown:?}{}",
            signal_type.as_str(),
            if shown.len() < text.len() { "…" } else { "" }
        );
        match decide::validate_body(&cfg, signal_type, &body) {
            None => {
                accepted += follow_accepted(signal_type, &body, &what);
            }
            Some(reply) => {
                refused += 1;
                assert_eq!(reply.status, 400, "{what}");
                let problem: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| {
                    panic!("{what}: the refusal is not JSON ({e}): {}", reply.body)
                });
                assert_eq!(problem["status"], json!(400), "{what}: {}", reply.body);
                assert!(
                    problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{what}: no detail in {}",
                    reply.body
                );
                assert_eq!(
                    follow_accepted(signal_type, &body, &what),
                    0,
                    "{what}: the edge refused what the sidecar takes"
                );
            }
        }
    }
    (accepted, refused)
}

/// Both outcomes must be exercised, or the test proves little: at least
/// `min_accepted` damaged inputs were still valid, and half were refused.
fn assert_both_seen(what: &str, (accepted, refused): (usize, usize), min_accepted: usize) {
    eprintln!("{what}: {accepted} damaged inputs accepted, {refused} refused");
    assert!(accepted >= min_accepted, "{what}: only {accepted} accepted");
    assert!(refused >= ROUNDS / 2, "{what}: only {refused} refused");
}

#[test]
fn damaged_alertmanager_webhooks_are_refused_cleanly_or_kept_whole() {
    let mut rng = Rng::new(0x5167_a1e5_7a7e_0001);
    let mut rich = payloads::alert("KubePodCrashLooping", "shop", "cart-7d9f");
    rich["labels"]["exported_namespace"] = json!("shop-exported");
    rich["labels"]["deployment"] = json!("cart");
    rich["labels"]["team"] = json!("välue ✓ \u{0}");
    rich["annotations"]["description"] = json!("line one\nline \"two\"\t\\ é 😀");
    let webhook = payloads::webhook(vec![
        rich,
        payloads::resolved("NodeDown", "kube-system", "node-1"),
        json!({"status": "firing", "labels": {"alertname": "Watchdog"}, "annotations": {},
               "startsAt": "2026-11-26T20:57:15Z"}),
        json!({"status": "firing", "labels": {"alertname": "DiskFull", "node": "worker-3",
               "severity": "warning"}, "annotations": {"summary": "disk"},
               "startsAt": "2026-11-26T20:57:15+02:00"}),
    ]);
    let seen = hammer(SignalType::Prometheus, &webhook, &mut rng);
    assert_both_seen("alertmanager", seen, ROUNDS / 50);
}

#[test]
fn damaged_kubernetes_events_are_refused_cleanly_or_kept_whole() {
    let mut rng = Rng::new(0x5167_a1e5_7a7e_0002);
    let mut event = payloads::pod_event("shop", "cart-7d9f", "BackOff", 12);
    event["metadata"]["labels"] = json!({"app": "cart", "tier": "web"});
    event["involvedObject"]["fieldPath"] = json!("spec.containers{cart}");
    let seen = hammer(SignalType::KubernetesEvent, &event, &mut rng);
    assert_both_seen("kubernetes event", seen, ROUNDS / 50);
}

#[test]
fn damaged_plugin_configurations_are_refused_by_key_or_give_limits_in_range() {
    let mut rng = Rng::new(0x5167_a1e5_7a7e_0003);
    let seed = json!({
        "requests_per_minute": 600, "burst": 50, "source": "x-forwarded-for",
        "trusted_hops": 1, "over_limit_status": 503, "max_body_bytes": 262144,
        "max_alerts_per_request": 1000,
        "tenants": [
            {"name": "team-a", "token_sha256": "a".repeat(64), "requests_per_minute": 60},
            {"name": "team-b", "token_sha256": "b".repeat(64)}
        ]
    });
    let seed_bytes = serde_json::to_vec_pretty(&seed).expect("the seed serialises");
    assert!(
        signalgate_filter::config::parse(Some(&seed_bytes)).is_ok(),
        "the undamaged seed must be valid"
    );
    let tokens = tokens();
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..ROUNDS {
        let body = if round % 2 == 0 {
            damage(&mut rng, &seed_bytes, &tokens)
        } else {
            damage_values(&mut rng, &seed)
        };
        let what = format!("round {round}: {:?}", String::from_utf8_lossy(&body));
        match signalgate_filter::config::parse(Some(&body)) {
            Ok(cfg) => {
                accepted += 1;
                assert!(cfg.limit.per_minute >= 1 && cfg.limit.burst >= 1, "{what}");
                assert!(matches!(cfg.over_limit_status, 429 | 503), "{what}");
                assert!(
                    cfg.max_body_bytes >= 1 && cfg.max_alerts_per_request >= 1,
                    "{what}"
                );
                if let Some(tenants) = &cfg.tenants {
                    assert!(!tenants.list().is_empty(), "{what}");
                }
            }
            Err(e) => {
                refused += 1;
                assert!(!e.detail.is_empty(), "{what}: an error without detail");
            }
        }
    }
    // The configuration refuses unknown keys and wrong types: few damaged
    // copies stay valid.
    assert_both_seen("plugin configuration", (accepted, refused), ROUNDS / 400);
}

/// Shared data for one filter VM (no concurrency: CAS always wins).
#[derive(Default)]
struct SharedData(std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>);

impl signalgate_filter::table::SharedStore for SharedData {
    fn get(
        &self,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, Option<u32>), signalgate_filter::table::StoreError> {
        Ok(match self.0.borrow().get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(
        &self,
        key: &str,
        value: &[u8],
        _: Option<u32>,
    ) -> Result<(), signalgate_filter::table::StoreError> {
        let mut map = self.0.borrow_mut();
        let cas = map.get(key).map_or(1, |(_, c)| c + 1);
        map.insert(key.to_string(), (value.to_vec(), cas));
        Ok(())
    }
}

/// A header value Envoy accepts: visible ASCII, space and tab, no CR, LF or NUL.
fn is_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

#[test]
fn hostile_request_heads_are_refused_cleanly_or_admitted_with_safe_headers() {
    let mut rng = Rng::new(0x5167_a1e5_7a7e_0004);
    let token_hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; // "test"
    let configs: Vec<FilterConfig> = [
        json!({}),
        json!({"source": "x-forwarded-for", "trusted_hops": 2, "burst": 3}),
        json!({"source": "header:x-source", "requests_per_minute": 1}),
        json!({"tenants": [{"name": "team a", "token_sha256": token_hash}]}),
    ]
    .iter()
    .map(|c| {
        signalgate_filter::config::parse(Some(c.to_string().as_bytes()))
            .unwrap_or_else(|e| panic!("the test's configuration {c} is invalid: {e:?}"))
    })
    .collect();
    assert_eq!(
        configs.len(),
        4,
        "every configuration of the test must be valid"
    );
    let values: Vec<String> = [
        "POST",
        "GET",
        "post",
        "/api/v1/signals/prometheus",
        "/api/v1/signals/kubernetes-event",
        "/api/v1/signals/prometheus?x=1#f",
        "/api/v1/signals/../prometheus",
        "//",
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON;charset=\"UTF-8\"",
        "text/plain",
        "4096",
        "-1",
        "18446744073709551616",
        "0x10",
        "Bearer test",
        "Bearer  test",
        "bearer test",
        "Bearer",
        "Basic dGVzdA==",
        "10.0.0.1:5555",
        "[::1]:80",
        "[fe80::1%eth0]:1",
        "10.0.0.1",
        "::1",
        "1.2.3.4, 5.6.7.8,9.9.9.9",
        ",,,",
        " , ",
        "x\r\ny",
        "x\0y",
        "é😀",
        "\u{7f}",
        "",
        " ",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "a".repeat(70_000),
        format!("{}1.1.1.1", "2.2.2.2,".repeat(200)),
        "9".repeat(40),
    ])
    .collect();
    let (mut admitted, mut refused) = (0, 0);
    for (round, now_s) in (0..ROUNDS).zip(1_700_000_000u64..) {
        let cfg = pick(&mut rng, &configs);
        // Each field valid, missing, or hostile (possibly two values run together).
        let valid = [
            "POST",
            "/api/v1/signals/prometheus",
            "application/json",
            "4096",
            "Bearer test",
            "10.0.0.1:5555",
            "1.2.3.4",
        ];
        let fields: Vec<Option<String>> = valid
            .iter()
            .map(|v| match rng.index(8) {
                0 => None,
                1 | 2 => {
                    let mut v = pick(&mut rng, &values).clone();
                    if rng.index(4) == 0 {
                        let more: &String = pick(&mut rng, &values);
                        v.push_str(more);
                    }
                    Some(v)
                }
                _ => Some(v.to_string()),
            })
            .collect();
        let head = decide::RequestHead {
            method: fields[0].as_deref().unwrap_or(""),
            path: fields[1].as_deref().unwrap_or(""),
            content_type: fields[2].as_deref(),
            content_length: fields[3].as_deref(),
            authorization: fields[4].as_deref(),
            remote_address: fields[5].as_deref(),
            source_header: fields[6].as_deref(),
        };
        let what = format!("round {round}: {head:?}");
        let store = SharedData::default();
        let seed = signalgate_filter::table::Seed([7; 16]);
        match decide::on_headers(cfg, &head, &store, &seed, now_s * 1_000_000_000) {
            decide::HeadersAction::ReadBody(a) => {
                admitted += 1;
                for (name, value) in a.forward_headers() {
                    assert!(
                        is_header_value(value) && value.len() <= 1024,
                        "{what}: forwards {name}: {value:?}"
                    );
                }
                for (name, value) in &a.response_headers {
                    assert!(is_header_value(value), "{what}: answers {name}: {value:?}");
                }
            }
            decide::HeadersAction::Refuse(reply) => {
                refused += 1;
                assert!(
                    matches!(reply.status, 400..=499 | 503),
                    "{what}: status {}",
                    reply.status
                );
                let problem: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| {
                    panic!("{what}: the refusal is not JSON ({e}): {}", reply.body)
                });
                assert_eq!(
                    problem["status"],
                    json!(reply.status),
                    "{what}: {}",
                    reply.body
                );
                for (name, value) in reply.all_headers() {
                    assert!(is_header_value(value), "{what}: answers {name}: {value:?}");
                }
            }
        }
    }
    assert_both_seen("request heads", (admitted, refused), ROUNDS / 20);
}
