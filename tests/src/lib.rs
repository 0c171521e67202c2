//! Harness for signalgate's integration tests.
//!
//! Every test starts the real components it needs (Envoy with the built
//! filter, `redis-server`, `kube-apiserver`, the sidecar binary) as private
//! child processes on free loopback ports, and waits on conditions with a
//! deadline instead of sleeping.

pub mod alertmanager;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod dockerfile;
pub mod e2e;
pub mod edge;
pub mod edge_client;
pub mod envoy;
pub mod fault_checker;
pub mod fault_proxy;
pub mod k8s;
pub mod lifecycle;
pub mod manifests;
pub mod payloads;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod remediation;
pub mod rng;
pub mod sidecar;
pub mod store_suite;
pub mod upstream;
pub mod workspace;
