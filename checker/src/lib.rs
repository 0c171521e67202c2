//! The payload checker's binding: what the edge and the sidecar would make of
//! a payload, computed in the browser by their own code (the model's parsing
//! and validation, its signals and fingerprints, the resource crate's
//! building and naming). Nothing here decides anything on its own but which
//! of the two shapes a pasted payload is.
#![forbid(unsafe_code)]

mod report;

use wasm_bindgen::prelude::wasm_bindgen;

/// Checks `body` as `shape` (`prometheus`, `kubernetes-event`, or `auto`)
/// and returns the report as JSON (see [`report::check`]).
#[wasm_bindgen]
pub fn check(
    body: &str,
    shape: &str,
    source: &str,
    fallback_namespace: &str,
    max_alerts: u32,
    now_ms: f64,
) -> String {
    let settings = report::Settings {
        source,
        fallback_namespace,
        max_alerts: max_alerts as usize,
        now_ms: now_ms as i64,
    };
    report::check(body.as_bytes(), shape, &settings).to_string()
}
