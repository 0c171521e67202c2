//! End to end, the way a user runs signalgate (issue 5): a real
//! Alertmanager sends its webhooks to Envoy with the signalgate filter, the
//! sidecar decides with Redis, and RemediationRequests land in a real
//! kube-apiserver. Each scenario checks the END STATE (resources and their
//! counts in the API server), waits on conditions with deadlines, and prints
//! `[e2e] <scenario>: alerts sent, resources expected/found, time` (run with
//! `--nocapture` to see them).
//!
//! Alertmanager here groups by namespace (or one group per alert), waits 1 s
//! before the first notification and re-sends every group about every 1-2 s,
//! so "mid-stream" is always true: a fault hits a chain that keeps sending.
//!
//! This module holds what the scenarios (`tests/tests/e2e_*.rs`) share: the
//! chain's settings, the restartable edge, expectations about the end state,
//! waiting on conditions and reporting.

pub mod edge;
pub mod expect;
pub mod report;
pub mod wait;

use std::time::Duration;

use serde_json::json;

use crate::k8s::ApiServer;
use crate::remediation::kube_sidecar;
use crate::sidecar::Sidecar;

pub const ALERTS_PATH: &str = "/api/v1/signals/prometheus";
pub const EVENTS_PATH: &str = "/api/v1/signals/kubernetes-event";

/// The bearer token Alertmanager sends, and its tenant in the filter.
pub const TOKEN: &str = "e2e-alertmanager-token";
const TOKEN_SHA256: &str = "60e2676050a68a41eb4a89c3e5b4dec4e87eeb22628dccc2e089f14776d284ac";
pub const TENANT: &str = "alertmanager-e2e";

/// The filter for scenarios that are not about rate limits: no practical
/// limit, 503 if one were hit.
pub const OPEN: &str =
    r#"{"requests_per_minute": 100000, "burst": 100000, "over_limit_status": 503}"#;

/// How long a scenario may wait for its end state.
pub const SETTLE: Duration = Duration::from_secs(90);

/// A sidecar with the kube sink (as its service account) and Redis at
/// `redis_url`; short lease and deadline so faults resolve in seconds. The
/// scenarios' Alertmanager sends the same body again every second (its
/// `repeat_interval`): a delivery window of half that keeps those
/// notifications apart (docs/design.md, "A delivery counts once").
pub fn sidecar(k: &ApiServer, name: &str, redis_url: &str, extra: &[(&str, &str)]) -> Sidecar {
    let mut env = vec![
        ("SIGNALGATE_DELIVERY_WINDOW", "500ms"),
        ("SIGNALGATE_REDIS_URL", redis_url),
        ("SIGNALGATE_REDIS_TIMEOUT", "500ms"),
        ("SIGNALGATE_CLAIM_LEASE", "5s"),
        ("SIGNALGATE_REQUEST_DEADLINE", "4s"),
        ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
        ("SIGNALGATE_STORM_THRESHOLD", "10"),
    ];
    env.extend_from_slice(extra);
    kube_sidecar(k, name, &env)
}

/// The filter configuration with Alertmanager as a bearer-token tenant.
pub fn tenant_config() -> String {
    json!({
        "requests_per_minute": 100000,
        "burst": 100000,
        "over_limit_status": 503,
        "tenants": [{"name": TENANT, "token_sha256": TOKEN_SHA256}],
    })
    .to_string()
}
