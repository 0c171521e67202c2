//! The edge suite's machinery (`tests/tests/edge_*.rs`): every case runs
//! against both builds of the filter in real Envoy, the wasm filter and the
//! native module ([`Edge`]). A test file lists its cases in
//! [`edge_suite!`](crate::edge_suite), which makes one test per case and
//! host (modules `wasm` and `native`). Plus the signal paths, valid
//! payloads, and the checks every refusal must pass.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;

use crate::edge_client::{Request, Response};
use crate::envoy::{Envoy, Options};
use crate::payloads;

/// Makes one test per case and host: `$case(Edge)` run with the wasm filter
/// (`wasm::$case`) and with the native module (`native::$case`).
#[macro_export]
macro_rules! edge_suite {
    ($($case:ident),* $(,)?) => {
        mod wasm {
            $(
                #[test]
                fn $case() {
                    super::$case($crate::edge::Edge::Wasm)
                }
            )*
        }
        mod native {
            $(
                #[test]
                fn $case() {
                    super::$case($crate::edge::Edge::Native)
                }
            )*
        }
    };
}

/// Which build of the filter Envoy runs: the same decision core behind
/// either host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// The proxy-wasm filter (`make wasm`), in V8.
    Wasm,
    /// The Envoy dynamic module (`make native`), in-process.
    Native,
}

impl Edge {
    /// This build with `plugin_config`, one worker, debug logs, in front of
    /// `upstream_port`.
    pub fn options(self, plugin_config: &str, upstream_port: u16) -> Options {
        match self {
            Edge::Wasm => Options::filter(plugin_config, upstream_port),
            Edge::Native => Options::native(plugin_config, upstream_port),
        }
    }

    /// Starts Envoy with this build and `plugin_config` (one worker) in
    /// front of `upstream_port`; panics unless it becomes ready.
    pub fn start(self, plugin_config: &str, upstream_port: u16) -> Envoy {
        Envoy::start_with(self.options(plugin_config, upstream_port))
    }
}

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
