//! The knobs, each declared once: its name (environment variable
//! `SIGNALGATE_<NAME>`, flag `--<name>`), default, meaning and how its value
//! is read into [`Config`]. Parsing ([`Config::from_sources`]), `--help` and
//! the reference table in `docs/reference.md` (both in `reference.rs`) are
//! all built from [`KNOBS`].

use super::values::{
    addr, duration, duration_or_zero, log_format, lookup_reads, namespace, number, phases,
    redis_url, sink, worker_threads,
};
use super::{Config, ConfigError};

/// One knob.
pub struct Knob {
    /// The variable is `SIGNALGATE_<name>`; the flag `--<name>`, in lower
    /// case with `-` for `_`.
    pub name: &'static str,
    /// The value when neither is given; empty: none (shown as `unset`).
    pub default: &'static str,
    /// What it means (markdown), for `--help` and the reference table.
    pub meaning: &'static str,
    /// Reads a value into its field; the error says what is wrong with it.
    read: fn(&mut Config, &str) -> Result<(), String>,
}

impl Knob {
    /// Its environment variable, `SIGNALGATE_<NAME>`.
    pub fn env(&self) -> String {
        format!("SIGNALGATE_{}", self.name)
    }

    /// Its flag, `--<name>`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.to_ascii_lowercase().replace('_', "-"))
    }

    /// Reads `value` into `config`; a bad value's error names the variable.
    pub(super) fn apply(&self, config: &mut Config, value: &str) -> Result<(), ConfigError> {
        (self.read)(config, value).map_err(|why| ConfigError(format!("{}: {why}", self.env())))
    }
}

/// Every knob, in the order `--help` and the reference list them.
pub const KNOBS: &[Knob] = &[
    LISTEN,
    ADMIN_LISTEN,
    REDIS_URL,
    REDIS_TIMEOUT,
    SINK,
    DEDUP_TTL,
    STORM_THRESHOLD,
    STORM_WINDOW,
    STORM_MAX_DURATION,
    STORM_MAX_AFFECTED,
    CLAIM_LEASE,
    INCIDENT_TTL,
    TERMINAL_PHASES,
    REOPEN_COOLDOWN,
    KUBE_LOOKUP_READS,
    FALLBACK_NAMESPACE,
    REQUEST_DEADLINE,
    FLUSH_INTERVAL,
    DELIVERY_WINDOW,
    MAX_BODY_BYTES,
    MAX_ALERTS,
    MAX_NEW_NAMESPACES_PER_REQUEST,
    MAX_IN_FLIGHT,
    SHUTDOWN_DELAY,
    SHUTDOWN_GRACE,
    LOG_FORMAT,
    WORKER_THREADS,
    CHECKER_DIR,
];

pub const LISTEN: Knob = Knob {
    name: "LISTEN",
    default: "127.0.0.1:8081",
    meaning: "signal API; only Envoy may reach it",
    read: |c, v| {
        c.listen = addr(v)?;
        Ok(())
    },
};

pub const ADMIN_LISTEN: Knob = Knob {
    name: "ADMIN_LISTEN",
    default: "127.0.0.1:9090",
    meaning: "`/metrics`, `/healthz`, `/readyz`",
    read: |c, v| {
        c.admin_listen = addr(v)?;
        Ok(())
    },
};

pub const REDIS_URL: Knob = Knob {
    name: "REDIS_URL",
    default: "",
    meaning: "`redis://[:password@]host:port[/db]`, `rediss://…` (TLS), \
        `redis+cluster://host1:port1,host2:port2` (Redis Cluster) or \
        `rediss+cluster://…` (Cluster over TLS); unset = in-memory store, single process \
        only",
    read: |c, v| {
        c.redis_url = redis_url(v)?;
        Ok(())
    },
};

pub const REDIS_TIMEOUT: Knob = Knob {
    name: "REDIS_TIMEOUT",
    default: "1s",
    meaning: "per store call; past it the request answers 503",
    read: |c, v| {
        c.redis_timeout = duration(v)?;
        Ok(())
    },
};

pub const SINK: Knob = Knob {
    name: "SINK",
    default: "dir:./remediationrequests",
    meaning: "`dir:<path>` (one JSON file per resource at `<path>/<namespace>/<name>.json`) or \
        `kube` (in-cluster config, else `KUBECONFIG`)",
    read: |c, v| {
        c.sink = sink(v)?;
        Ok(())
    },
};

pub const DEDUP_TTL: Knob = Knob {
    name: "DEDUP_TTL",
    default: "5m",
    meaning: "a fingerprint is a duplicate until this long after its last sighting",
    read: |c, v| {
        c.store.dedup_ttl = duration(v)?;
        Ok(())
    },
};

pub const STORM_THRESHOLD: Knob = Knob {
    name: "STORM_THRESHOLD",
    default: "10",
    meaning: "distinct new signals per namespace per window created individually before a \
        storm starts",
    read: |c, v| {
        c.store.storm_threshold = number(v)?;
        Ok(())
    },
};

pub const STORM_WINDOW: Knob = Knob {
    name: "STORM_WINDOW",
    default: "1m",
    meaning: "window for counting distinct signals; each storm member extends the storm this \
        long",
    read: |c, v| {
        c.store.storm_window = duration(v)?;
        Ok(())
    },
};

pub const STORM_MAX_DURATION: Knob = Knob {
    name: "STORM_MAX_DURATION",
    default: "5m",
    meaning: "a storm ends at the latest this long after it started",
    read: |c, v| {
        c.store.storm_max_duration = duration(v)?;
        Ok(())
    },
};

pub const STORM_MAX_AFFECTED: Knob = Knob {
    name: "STORM_MAX_AFFECTED",
    default: "100",
    meaning: "cap on a storm's affected-resource list (the rest is counted)",
    read: |c, v| {
        c.store.storm_max_affected = number(v)?;
        Ok(())
    },
};

pub const CLAIM_LEASE: Knob = Knob {
    name: "CLAIM_LEASE",
    default: "15s",
    meaning: "how long a claim waits for its creator before another request takes it over; \
        at least 1s longer than SIGNALGATE_REQUEST_DEADLINE (checked at start-up)",
    read: |c, v| {
        c.store.claim_lease = duration(v)?;
        Ok(())
    },
};

pub const INCIDENT_TTL: Knob = Knob {
    name: "INCIDENT_TTL",
    default: "24h",
    meaning: "the store remembers an incident (a fingerprint and its firing instance: an \
        alert's `startsAt`, an event series' first timestamp) this long after its last signal; \
        a later re-send of the same firing is looked up in the sink's view. Keep it above \
        Alertmanager's `repeat_interval`",
    read: |c, v| {
        c.store.incident_ttl = duration(v)?;
        Ok(())
    },
};

pub const TERMINAL_PHASES: Knob = Knob {
    name: "TERMINAL_PHASES",
    default: "Completed,Failed,Cancelled",
    meaning: "comma-separated `status.phase` values with which the remediation controller says \
        it is done with a resource; any other phase means it is working on it, and new firings \
        of its incident are absorbed into it (see the status contract in docs/reference.md)",
    read: |c, v| {
        c.lifecycle.terminal_phases = phases(v)?;
        Ok(())
    },
};

pub const REOPEN_COOLDOWN: Knob = Knob {
    name: "REOPEN_COOLDOWN",
    default: "5m",
    meaning: "after a terminal phase, new firings are still absorbed into the resource this \
        long from its `status.completionTime`; `0`: not at all",
    read: |c, v| {
        c.lifecycle.reopen_cooldown = duration_or_zero(v)?;
        Ok(())
    },
};

pub const KUBE_LOOKUP_READS: Knob = Knob {
    name: "KUBE_LOOKUP_READS",
    default: "auto",
    meaning: "how the kube sink's lookups (in a *cold* namespace, see docs/design.md) read the \
        API server: `consistent` (they see every resource written before them; an API \
        server before 1.31 reads them from etcd: 380 ms instead of 3 ms a LIST in a \
        namespace of 2 000 resources, measured on 1.20), `cache` (its watch cache: cheap \
        everywhere, but it may not hold a resource written a moment before, so one \
        written just before Redis lost its record could get a second resource), `auto` \
        (`consistent` from Kubernetes 1.31 on, which normally serves consistent LISTs \
        from the cache unless its `ConsistentListFromCache` gate is off; else `cache`, \
        with a warning. Decided once per process, at its first lookup, from `GET \
        /version` (the emulated version where the server reports one): restart the \
        sidecars after upgrading the control plane to 1.31. While the version cannot be \
        read, lookups read the cache: for good if the API server refuses it \
        (401/403/404), else until a later lookup reads it)",
    read: |c, v| {
        c.kube_lookup_reads = lookup_reads(v)?;
        Ok(())
    },
};

pub const FALLBACK_NAMESPACE: Knob = Knob {
    name: "FALLBACK_NAMESPACE",
    default: "default",
    meaning: "namespace for signals without one (cluster-scoped targets) and for namespaces \
        that do not exist or are being deleted (the original is kept in label \
        `signalgate.io/original-namespace`)",
    read: |c, v| {
        c.fallback_namespace = namespace(v)?;
        Ok(())
    },
};

pub const REQUEST_DEADLINE: Knob = Knob {
    name: "REQUEST_DEADLINE",
    default: "5s",
    meaning: "total time one request may take (sink retries, waiting on a claim) before it \
        answers 503",
    read: |c, v| {
        c.request_deadline = duration(v)?;
        Ok(())
    },
};

pub const FLUSH_INTERVAL: Knob = Knob {
    name: "FLUSH_INTERVAL",
    default: "1s",
    meaning: "occurrence/storm updates are written at most once per resource per interval",
    read: |c, v| {
        c.flush_interval = duration(v)?;
        Ok(())
    },
};

pub const DELIVERY_WINDOW: Knob = Knob {
    name: "DELIVERY_WINDOW",
    default: "5m",
    meaning: "the same source's same body within this window is one delivery (a retry), counted once; 0 counts every request",
    read: |c, v| {
        c.delivery_window = duration_or_zero(v)?;
        Ok(())
    },
};

pub const MAX_BODY_BYTES: Knob = Knob {
    name: "MAX_BODY_BYTES",
    default: "1048576",
    meaning: "largest body the sidecar reads",
    read: |c, v| {
        c.max_body_bytes = number(v)?;
        Ok(())
    },
};

pub const MAX_ALERTS: Knob = Knob {
    name: "MAX_ALERTS",
    default: "1000",
    meaning: "most alerts in one Alertmanager request",
    read: |c, v| {
        c.max_alerts = number(v)?;
        Ok(())
    },
};

pub const MAX_NEW_NAMESPACES_PER_REQUEST: Knob = Knob {
    name: "MAX_NEW_NAMESPACES_PER_REQUEST",
    default: "16",
    meaning: "namespaces one request may cost the sink's backend work in: a lookup of a *cold* \
        namespace (see docs/design.md), or a create in a namespace the kube sink does not know \
        to exist (it may not: the resource then goes to the fallback namespace). The signals \
        of further such namespaces are left undecided and the request, once the rest is done, \
        is answered `503 too-many-new-namespaces` with `Retry-After: 1`: the sender's retry \
        goes on with the next ones. `SIGNALGATE_MAX_ALERTS` or more: no limit",
    read: |c, v| {
        c.max_new_namespaces = number(v)?;
        Ok(())
    },
};

pub const MAX_IN_FLIGHT: Knob = Knob {
    name: "MAX_IN_FLIGHT",
    default: "256",
    meaning: "signal requests served at once; the next one is answered `503 overloaded` with \
        `Retry-After: 1` before its body is read, so the sidecar's request memory stays \
        under this × `SIGNALGATE_MAX_BODY_BYTES` (plus parsing). Envoy's default circuit \
        breaker lets 1024 requests through to it",
    read: |c, v| {
        c.max_in_flight = number(v)?;
        Ok(())
    },
};

pub const SHUTDOWN_DELAY: Knob = Knob {
    name: "SHUTDOWN_DELAY",
    default: "0s",
    meaning: "on SIGTERM, how long to keep serving with readiness false before the listeners \
        close, so that what Envoy still forwards while the pod's endpoint is removed is \
        answered (the manifests: `15s`)",
    read: |c, v| {
        c.shutdown_delay = duration_or_zero(v)?;
        Ok(())
    },
};

pub const SHUTDOWN_GRACE: Knob = Knob {
    name: "SHUTDOWN_GRACE",
    default: "10s",
    meaning: "on SIGTERM, after the delay, how long in-flight requests may finish; the final \
        flush of counts then gets as long again (a hung sink cannot hold the exit)",
    read: |c, v| {
        c.shutdown_grace = duration(v)?;
        Ok(())
    },
};

pub const LOG_FORMAT: Knob = Knob {
    name: "LOG_FORMAT",
    default: "text",
    meaning: "`text` or `json`; the level comes from `RUST_LOG` (default `info`)",
    read: |c, v| {
        c.log_format = log_format(v)?;
        Ok(())
    },
};

pub const WORKER_THREADS: Knob = Knob {
    name: "WORKER_THREADS",
    default: "1",
    meaning: "threads serving requests; `auto` = one per CPU the process may use (cgroup \
        limits respected). One thread serves tens of thousands of requests a second, and \
        next to Envoy (and Redis) on few cores more threads mostly add wake-ups between \
        them (see docs/performance.md): scale with replicas first",
    read: |c, v| {
        c.worker_threads = worker_threads(v)?;
        Ok(())
    },
};

pub const CHECKER_DIR: Knob = Knob {
    name: "CHECKER_DIR",
    default: "",
    meaning: "directory of the payload checker page (`make checker` builds it in \
        `target/checker`), served read-only at `/check` on the admin port; unset: not served \
        (docs/checker.md)",
    read: |c, v| {
        c.checker_dir = (!v.is_empty()).then(|| std::path::PathBuf::from(v));
        Ok(())
    },
};
