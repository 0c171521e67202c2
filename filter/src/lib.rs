//! signalgate's edge: a proxy-wasm filter for Envoy that routes, rate-limits
//! per source and validates signal payloads before they reach the sidecar.
//!
//! Everything but [`host`] is plain Rust, unit-tested on the host:
//! - [`config`]: the plugin configuration (exactly the documented knobs).
//! - [`decide`]: the per-request decision (route, auth, limit, validate) as
//!   [`decide::HeadersAction`] / [`decide::BodyAction`], made of one step
//!   per module: [`route`] (404/405), [`quota`] (the rate limit and its
//!   headers), [`content`] (415/413); each refusal is a [`reply::Reply`]
//!   counted under an [`outcome::Outcome`].
//! - [`ratelimit`]: token-bucket arithmetic, with the clock passed in.
//! - [`table`]: the bounded, process-wide bucket table kept in proxy-wasm
//!   shared data behind the [`table::SharedStore`] trait (get / CAS), each
//!   of its values a [`slot`].
//! - [`source`]: who a request comes from.
//! - [`tenants`]: optional bearer-token tenants.
//! - [`request_headers`]: the values the filter reads from a request's headers.
//!
//! [`host`] (wasm only) is the one thin layer of proxy-wasm calls.
// No unsafe code, except the entry point proxy-wasm's `main!` macro expands to in `host`.
#![deny(unsafe_code)]

pub mod config;
pub mod content;
pub mod decide;
pub mod outcome;
pub mod quota;
pub mod ratelimit;
pub mod reply;
pub mod request_headers;
pub mod route;
pub mod slot;
pub mod source;
pub mod table;
pub mod tenants;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod host;
