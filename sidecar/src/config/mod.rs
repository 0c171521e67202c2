//! Configuration: every knob is an environment variable `SIGNALGATE_<NAME>`
//! and a flag `--<name>` (flags win). Bad values stop startup with a message
//! naming the variable.
//!
//! - [`knobs`]: every knob, declared once (name, default, meaning, reader).
//! - [`values`]: how a value is read (durations, numbers, addresses, …).
//! - `load`: [`Config::from_sources`], the environment and flags applied.
//! - [`reference`](mod@reference): `--help` and the reference table, built
//!   from the knobs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::lifecycle::Policy;
use crate::store::Settings;

pub mod knobs;
mod load;
pub mod reference;
pub mod values;

/// Where resources go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// One JSON file per resource under this directory.
    Dir(PathBuf),
    /// The Kubernetes API (in-cluster config, else `KUBECONFIG`).
    Kube,
}

/// How the kube sink's lookups (in a namespace the store does not know
/// for a whole dedup window) read the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupReads {
    /// Consistent where the API server serves consistent LISTs from its
    /// cache (Kubernetes 1.31 and later), else from the cache.
    Auto,
    /// Consistent LISTs: they see every resource written before them; API
    /// servers before 1.31 read them from etcd.
    Consistent,
    /// From the API server's watch cache (resourceVersion 0): cheap on any
    /// version, but it may not hold a resource written a moment before.
    Cache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `None`: the in-memory store.
    pub redis_url: Option<String>,
    pub redis_timeout: Duration,
    pub sink: SinkConfig,
    pub kube_lookup_reads: LookupReads,
    pub store: Settings,
    /// How the remediation controller's status is read (its `dedup_ttl` is
    /// the store's).
    pub lifecycle: Policy,
    pub fallback_namespace: String,
    /// How long one request may take in total (waiting on another sidecar's
    /// claim, retrying the sink) before it is answered 503.
    pub request_deadline: Duration,
    /// Occurrence and storm updates are written at most once per resource per interval.
    pub flush_interval: Duration,
    /// The same source's same body within this window is one delivery
    /// ([`crate::delivery`]); zero: every request is its own.
    pub delivery_window: Duration,
    pub max_body_bytes: usize,
    pub max_alerts: usize,
    /// Namespaces one request may look up in the sink's backend (cold) or
    /// create in without the sink knowing they exist (at least 1).
    pub max_new_namespaces: usize,
    /// Signal requests served at once (memory is bounded by this times
    /// `max_body_bytes`); the next one is answered 503 without being read.
    pub max_in_flight: usize,
    /// On SIGTERM, serving goes on this long (readiness false) before the
    /// listeners close.
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// Threads of the async runtime; `None`: one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// The payload checker's files (`make checker`), served at `/check` on
    /// the admin port; `None`: not served.
    pub checker_dir: Option<PathBuf>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}
