//! signalgate sidecar: parses signals, decides in one atomic store step per
//! signal whether each is new, a duplicate or part of a storm, and writes
//! RemediationRequest resources through a sink.
//!
//! - [`config`]: every knob, from environment and flags.
//! - [`store`]: the atomic decision and the claim protocol (memory, Redis).
//! - [`pipeline`]: one request from body to answer; [`delivery`]: which
//!   delivery it is (its retries count once); [`failure`]: why one
//!   failed; [`store_call`]: one store call, timed and bounded.
//! - [`recovery`]: sink lookups and adoption when the store does not know
//!   a firing (a cold namespace, a new firing instance); [`lifecycle`]: what
//!   the fingerprint's latest resource, and its controller's status, make of
//!   a new firing.
//! - [`resource`]: the store's counters as a `RemediationRequest`'s (the
//!   resource itself is the `signalgate-resource` crate's).
//! - [`sink`]: where resources are written (directory, Kubernetes).
//! - [`coalesce`]: counters written at most once per resource per interval.
//! - [`http`], [`app`], [`metrics`]: the server around it;
//!   [`checker_page`]: the payload checker's files on the admin port.

pub mod app;
pub mod checker_page;
pub mod clock;
pub mod coalesce;
pub mod config;
pub mod delivery;
pub mod failure;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod recovery;
pub mod resource;
pub mod sink;
pub mod store;
pub mod store_call;
