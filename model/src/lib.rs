//! The signal model shared by signalgate's edge filter and sidecar.
//!
//! - [`alertmanager`] and [`kube_event`]: the two payloads signalgate accepts,
//!   as zero-copy serde types, each with its `validate` rules.
//! - [`labels`]: label sets and the Prometheus label-name rule.
//! - [`namespace`]: the Kubernetes namespace-name rule and where a signal's
//!   namespace came from.
//! - [`Invalid`]: why a payload was refused, naming the field as a JSON pointer.
//! - [`problem`]: the RFC 9457 `application/problem+json` error body.
//! - [`signal`]: the normalised [`Signal`] the sidecar works on, built from
//!   either payload, and its [`fingerprint`](signal::fingerprint).
//!
//! Nothing here panics on input: the edge filter runs this code inside Envoy,
//! where a panic traps the VM.
#![forbid(unsafe_code)]

mod alert_labels;
pub mod alertmanager;
pub mod http;
pub mod invalid;
mod json;
pub mod kube_event;
pub mod labels;
pub mod namespace;
pub mod problem;
pub mod rfc3339;
pub mod signal;
mod text;

pub use invalid::Invalid;
pub use signal::{Signal, SignalType, Status, Target};
pub use text::Text;
