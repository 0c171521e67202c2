//! signalgate's edge as an Envoy dynamic module (a shared library Envoy
//! loads in-process, `envoy.extensions.filters.http.dynamic_modules.v3`):
//! the filter's decision core (`signalgate_filter::{config, decide, table,
//! ...}`) behind Envoy's C ABI instead of proxy-wasm. Only the host glue
//! differs from the wasm build; see docs/native-edge.md.
//!
//! - [`abi`]: the hand-written part of Envoy's `abi.h` this module uses.
//! - [`envoy`]: safe wrappers over those callbacks (the only unsafe calls).
//! - [`hooks`]: the exported event hooks, each guarded against panics.
//! - [`settings`]: one filter configuration (parsed config, counters, seed).
//! - [`request`]: one request through the decision core.
//! - [`store`]: the process-wide bucket table store (one per Envoy process).
//! - [`version`]: refusing an Envoy whose ABI the module was not built for.
//! - `fault` (feature `fault-injection`, tests only): panics on request.
//!
//! Unit tests cover what runs without Envoy ([`store`], [`version`]); the
//! rest calls into Envoy and is tested against the real one
//! (`tests/tests/edge_native.rs`), so it is left out of unit-test builds,
//! which have no Envoy to link against.

// Every unsafe block says why it is sound.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

#[cfg(not(test))]
pub mod abi;
#[cfg(not(test))]
pub mod envoy;
#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(not(test))]
pub mod hooks;
#[cfg(not(test))]
pub mod request;
#[cfg(not(test))]
pub mod settings;
pub mod store;
pub mod version;
