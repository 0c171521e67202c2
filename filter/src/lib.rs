//! signalgate's edge: a proxy-wasm filter for Envoy that routes, rate-limits
//! per source and validates signal payloads before they reach the sidecar.
//!
//! Everything but [`host`] is plain Rust, unit-tested on the host:
//! - [`config`]: the plugin configuration (exactly the documented knobs).
//! - [`ratelimit`]: token-bucket arithmetic, with the clock passed in.
//! - [`table`]: the bounded, process-wide bucket table kept in proxy-wasm
//!   shared data behind the [`table::SharedStore`] trait (get / CAS).
//! - [`source`]: who a request comes from.
//! - [`tenants`]: optional bearer-token tenants.
//! - [`decide`]: the per-request decision (route, auth, limit, validate) as
//!   [`decide::HeadersAction`] / [`decide::BodyAction`].
//!
//! [`host`] (wasm only) is the one thin layer of proxy-wasm calls.
// No unsafe code, except the entry point proxy-wasm's `main!` macro expands to in `host`.
#![deny(unsafe_code)]

pub mod config;
pub mod decide;
pub mod ratelimit;
pub mod source;
pub mod table;
pub mod tenants;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod host;
