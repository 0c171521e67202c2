//! `signalgate-bench micro`: the per-body work of the filter and the sidecar,
//! natively and in isolation, to tell apart what the body costs from what
//! the hosts (Envoy's wasm VM, the sidecar's HTTP and Redis I/O) cost. Run it
//! under `valgrind --tool=callgrind` to see where the instructions go.

use std::hint::black_box;
use std::time::Instant;

use signalgate_model::alertmanager;
use signalgate_model::signal::{self, Context, Identity};

use crate::payload::{self, BodyGen, Kind};

/// One step and its cost per call in nanoseconds.
pub struct Step {
    pub name: &'static str,
    pub ns_per_call: f64,
}

fn time<F: FnMut()>(iterations: u64, mut f: F) -> f64 {
    for _ in 0..iterations.min(100) {
        f();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed().as_nanos() as f64 / iterations.max(1) as f64
}

/// Times each step on a webhook of `size` bytes.
pub fn run(size: usize, iterations: u64, only: Option<&str>) -> Result<Vec<Step>, String> {
    let gen = BodyGen::new(Kind::Webhook, size, None, false, &payload::now_rfc3339());
    let body = gen.body(0);
    alertmanager::parse(&body, 1000).map_err(|e| format!("the bench body is invalid: {e}"))?;
    let ctx = Context {
        source: "bench",
        fallback_namespace: "default",
    };
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    let mut steps = Vec::new();
    if wanted("value") {
        steps.push(Step {
            name: "value",
            ns_per_call: time(iterations, || {
                let v: Result<serde_json::Value, _> = serde_json::from_slice(black_box(&body));
                let _ = black_box(v);
            }),
        });
    }
    if wanted("validate") {
        steps.push(Step {
            name: "validate",
            ns_per_call: time(iterations, || {
                let _ = black_box(alertmanager::parse(black_box(&body), 1000).is_ok());
            }),
        });
    }
    if wanted("signals") {
        steps.push(Step {
            name: "signals",
            ns_per_call: time(iterations, || {
                if let Ok(w) = alertmanager::parse(black_box(&body), 1000) {
                    let s = signal::from_alertmanager(&w, &ctx);
                    let _ = black_box(s);
                }
            }),
        });
    }
    if wanted("identities") {
        // The sidecar's per-body work on the duplicate path: parse, the
        // identity of every alert and its fingerprint.
        steps.push(Step {
            name: "identities",
            ns_per_call: time(iterations, || {
                if let Ok(w) = alertmanager::parse(black_box(&body), 1000) {
                    let ids = signal::alert_identities(&w, &ctx);
                    let f: Vec<String> = ids.iter().map(Identity::fingerprint).collect();
                    let _ = black_box(f);
                }
            }),
        });
    }
    Ok(steps)
}
