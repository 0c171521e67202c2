//! Helpers for the edge tests (`tests/tests/edge_*.rs`): the signal paths,
//! valid payloads, and the checks every refusal must pass.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;

use crate::edge_client::{Request, Response};
use crate::payloads;

pub const PROM: &str = "/api/v1/signals/prometheus";
pub const KUBE: &str = "/api/v1/signals/kubernetes-event";
pub const WAIT: Duration = Duration::from_secs(10);

/// The address of a second client (the first is 127.0.0.1).
pub fn second_source() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))
}

/// A valid Alertmanager webhook with one alert.
pub fn webhook() -> Value {
    payloads::webhook(vec![payloads::alert(
        "KubePodCrashLooping",
        "shop",
        "cart-1",
    )])
}

/// A valid Kubernetes Event.
pub fn event() -> Value {
    payloads::pod_event("shop", "cart-1", "BackOff", 3)
}

/// `v` as JSON bytes.
pub fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// A valid request: the webhook, POSTed as JSON to its path.
pub fn valid() -> Request {
    Request::post_json(PROM, body(&webhook()))
}

/// The problem+json body of a refusal, checked for the RFC 9457 members.
pub fn problem(r: &Response, status: u16) -> Value {
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

/// The statuses of `rs`, for assertion messages.
pub fn statuses(rs: &[Response]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

/// The SHA-256 of `s` in hex, as a tenant's `token_sha256`.
pub fn sha256_hex(s: &str) -> String {
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
