//! Configuration: every knob is an environment variable `SIGNALGATE_<NAME>`
//! and a flag `--<name>` (flags win). Bad values stop startup with a message
//! naming the variable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::Settings;
use signalgate_model::namespace::is_namespace_name;

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
    pub fallback_namespace: String,
    /// How long one request may take in total (waiting on another sidecar's
    /// claim, retrying the sink) before it is answered 503.
    pub request_deadline: Duration,
    /// Occurrence and storm updates are written at most once per resource per interval.
    pub flush_interval: Duration,
    pub max_body_bytes: usize,
    pub max_alerts: usize,
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
}

/// One knob: its name, default and what it means (printed by `--help`).
pub struct Knob {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every knob, with its default. README lists the same table.
pub const KNOBS: &[Knob] = &[
    Knob { name: "LISTEN", default: "127.0.0.1:8081", help: "signal API address; only Envoy may reach it (it trusts x-signalgate-source)" },
    Knob { name: "ADMIN_LISTEN", default: "127.0.0.1:9090", help: "/metrics, /healthz, /readyz" },
    Knob { name: "REDIS_URL", default: "", help: "redis://, rediss:// or redis+cluster://h1:p1,h2:p2; unset = in-memory store (one process only)" },
    Knob { name: "REDIS_TIMEOUT", default: "1s", help: "per Redis call; past it the request is answered 503" },
    Knob { name: "SINK", default: "dir:./remediationrequests", help: "dir:<path> (one JSON file per resource) or kube" },
    Knob { name: "DEDUP_TTL", default: "5m", help: "a fingerprint is a duplicate until this long after its LAST sighting" },
    Knob { name: "STORM_THRESHOLD", default: "10", help: "distinct new signals per namespace per window created individually before a storm starts" },
    Knob { name: "STORM_WINDOW", default: "1m", help: "window for counting distinct signals; each storm member extends the storm this long" },
    Knob { name: "STORM_MAX_DURATION", default: "5m", help: "a storm ends at the latest this long after it started" },
    Knob { name: "STORM_MAX_AFFECTED", default: "100", help: "cap on a storm's affected-resource list (the rest is counted)" },
    Knob { name: "CLAIM_LEASE", default: "15s", help: "how long a claim waits for its creator before another request takes it over" },
    Knob { name: "KUBE_LOOKUP_READS", default: "auto", help: "kube sink lookups: consistent (see every resource written before), cache (the API server's watch cache: cheaper before Kubernetes 1.31, may miss one written a moment before) or auto (consistent from 1.31 on, else cache)" },
    Knob { name: "FALLBACK_NAMESPACE", default: "default", help: "namespace for signals without one, and for namespaces that do not exist" },
    Knob { name: "REQUEST_DEADLINE", default: "5s", help: "total time one request may take before it is answered 503" },
    Knob { name: "FLUSH_INTERVAL", default: "1s", help: "occurrence/storm updates are written at most once per resource per interval" },
    Knob { name: "MAX_BODY_BYTES", default: "1048576", help: "largest request body the sidecar reads" },
    Knob { name: "MAX_ALERTS", default: "1000", help: "most alerts in one Alertmanager request" },
    Knob { name: "MAX_IN_FLIGHT", default: "256", help: "signal requests served at once; more are answered 503 with Retry-After before their body is read" },
    Knob { name: "SHUTDOWN_DELAY", default: "0s", help: "on SIGTERM, how long to keep serving (readiness false) before stopping: let Envoy stop sending first" },
    Knob { name: "SHUTDOWN_GRACE", default: "10s", help: "on SIGTERM, after the delay, how long in-flight requests may finish; the final flush of counts then gets as long again" },
    Knob { name: "LOG_FORMAT", default: "text", help: "text or json (level from RUST_LOG, default info)" },
    Knob { name: "WORKER_THREADS", default: "1", help: "threads serving requests; auto = one per CPU the pod may use (scale with replicas first)" },
];

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment and command-line flags.
    pub fn from_env_and_args() -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let args: Vec<String> = std::env::args().skip(1).collect();
        Config::from_sources(&env, &args)
    }

    /// `env` holds `SIGNALGATE_*` variables; `args` flags like `--dedup-ttl 2m` or `--dedup-ttl=2m`.
    pub fn from_sources(
        env: &BTreeMap<String, String>,
        args: &[String],
    ) -> Result<Config, ConfigError> {
        let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
        for knob in KNOBS {
            if let Some(v) = env.get(&format!("SIGNALGATE_{}", knob.name)) {
                values.insert(knob.name, v.clone());
            }
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError(format!("unexpected argument {arg:?}")));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            let key = name.replace('-', "_").to_ascii_uppercase();
            let Some(knob) = KNOBS.iter().find(|k| k.name == key) else {
                return Err(ConfigError(format!("unknown flag --{name} (see --help)")));
            };
            let value = match value {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value")))?,
            };
            values.insert(knob.name, value);
        }
        let get = |name: &str| -> String {
            values.get(name).cloned().unwrap_or_else(|| {
                KNOBS
                    .iter()
                    .find(|k| k.name == name)
                    .map(|k| k.default.to_string())
                    .unwrap_or_default()
            })
        };
        let store = Settings {
            dedup_ttl: duration("DEDUP_TTL", &get("DEDUP_TTL"))?,
            storm_threshold: number("STORM_THRESHOLD", &get("STORM_THRESHOLD"))?,
            storm_window: duration("STORM_WINDOW", &get("STORM_WINDOW"))?,
            storm_max_duration: duration("STORM_MAX_DURATION", &get("STORM_MAX_DURATION"))?,
            storm_max_affected: number("STORM_MAX_AFFECTED", &get("STORM_MAX_AFFECTED"))?,
            claim_lease: duration("CLAIM_LEASE", &get("CLAIM_LEASE"))?,
        };
        if store.storm_max_duration < store.storm_window {
            return Err(ConfigError(
                "SIGNALGATE_STORM_MAX_DURATION must be at least SIGNALGATE_STORM_WINDOW".into(),
            ));
        }
        let redis_url = Some(get("REDIS_URL")).filter(|u| !u.is_empty());
        if let Some(url) = &redis_url {
            if ![
                "redis://",
                "rediss://",
                "redis+cluster://",
                "rediss+cluster://",
            ]
            .iter()
            .any(|p| url.starts_with(p))
            {
                return Err(ConfigError(format!(
                    "SIGNALGATE_REDIS_URL: {url:?} must start with redis://, rediss:// or redis+cluster://"
                )));
            }
        }
        let fallback_namespace = get("FALLBACK_NAMESPACE");
        if !is_namespace_name(&fallback_namespace) {
            return Err(ConfigError(format!(
                "SIGNALGATE_FALLBACK_NAMESPACE: {fallback_namespace:?} is not a valid namespace name"
            )));
        }
        let config = Config {
            listen: addr("LISTEN", &get("LISTEN"))?,
            admin_listen: addr("ADMIN_LISTEN", &get("ADMIN_LISTEN"))?,
            redis_url,
            redis_timeout: duration("REDIS_TIMEOUT", &get("REDIS_TIMEOUT"))?,
            sink: sink(&get("SINK"))?,
            kube_lookup_reads: match get("KUBE_LOOKUP_READS").trim() {
                "auto" => LookupReads::Auto,
                "consistent" => LookupReads::Consistent,
                "cache" => LookupReads::Cache,
                other => {
                    return Err(ConfigError(format!(
                        "SIGNALGATE_KUBE_LOOKUP_READS: {other:?} is not auto, consistent or cache"
                    )))
                }
            },
            store,
            fallback_namespace,
            request_deadline: duration("REQUEST_DEADLINE", &get("REQUEST_DEADLINE"))?,
            flush_interval: duration("FLUSH_INTERVAL", &get("FLUSH_INTERVAL"))?,
            max_body_bytes: number("MAX_BODY_BYTES", &get("MAX_BODY_BYTES"))?,
            max_alerts: number("MAX_ALERTS", &get("MAX_ALERTS"))?,
            max_in_flight: number("MAX_IN_FLIGHT", &get("MAX_IN_FLIGHT"))?,
            shutdown_delay: match get("SHUTDOWN_DELAY").trim() {
                "0" | "0s" | "0ms" => Duration::ZERO,
                v => duration("SHUTDOWN_DELAY", v)?,
            },
            shutdown_grace: duration("SHUTDOWN_GRACE", &get("SHUTDOWN_GRACE"))?,
            worker_threads: match get("WORKER_THREADS").trim() {
                n if n.eq_ignore_ascii_case("auto") => None,
                n => Some(number("WORKER_THREADS", n)?),
            },
            log_format: match get("LOG_FORMAT").as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError(format!(
                        "SIGNALGATE_LOG_FORMAT: {other:?} is not text or json"
                    )))
                }
            },
        };
        Ok(config)
    }

    /// `--help` text.
    pub fn help() -> String {
        let mut s = String::from(
            "signalgate-sidecar: signals in, deduplicated RemediationRequests out.\n\n\
             Every setting is an environment variable SIGNALGATE_<NAME> or a flag --<name>:\n\n",
        );
        for k in KNOBS {
            let flag = k.name.to_ascii_lowercase().replace('_', "-");
            let default = if k.default.is_empty() {
                "unset"
            } else {
                k.default
            };
            s.push_str(&format!(
                "  --{flag:<22} SIGNALGATE_{:<20} default {default}\n      {}\n",
                k.name, k.help
            ));
        }
        s
    }
}

/// Longest duration a knob takes: far beyond any sensible setting, and small
/// enough that adding it to a clock reading can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses `300ms`, `4s`, `5m`, `1h` (positive, at most [`MAX_DURATION`]).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!d.is_zero() && d <= MAX_DURATION).then_some(d)
}

fn duration(name: &str, v: &str) -> Result<Duration, ConfigError> {
    parse_duration(v).ok_or_else(|| {
        ConfigError(format!(
            "SIGNALGATE_{name}: {v:?} is not a positive duration of at most a year (examples: 300ms, 4s, 5m, 1h)"
        ))
    })
}

fn number<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    v: &str,
) -> Result<T, ConfigError> {
    match v.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(ConfigError(format!(
            "SIGNALGATE_{name}: {v:?} is not a positive whole number"
        ))),
    }
}

fn addr(name: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        ConfigError(format!(
            "SIGNALGATE_{name}: {v:?} is not an address like 127.0.0.1:8081"
        ))
    })
}

fn sink(v: &str) -> Result<SinkConfig, ConfigError> {
    if v == "kube" {
        return Ok(SinkConfig::Kube);
    }
    match v.strip_prefix("dir:") {
        Some(path) if !path.is_empty() => Ok(SinkConfig::Dir(PathBuf::from(path))),
        _ => Err(ConfigError(format!(
            "SIGNALGATE_SINK: {v:?} is not dir:<path> or kube"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(env: &[(&str, &str)], args: &[&str]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Config::from_sources(&env, &args)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = cfg(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.redis_url, None);
        assert_eq!(c.sink, SinkConfig::Dir("./remediationrequests".into()));
        assert_eq!(c.store, Settings::default());
        assert_eq!(c.redis_timeout, Duration::from_secs(1));
        assert_eq!(c.worker_threads, Some(1));
        assert_eq!(c.max_in_flight, 256);
        assert_eq!(c.kube_lookup_reads, LookupReads::Auto);
    }

    #[test]
    fn kube_lookup_reads_are_auto_consistent_or_cache() {
        let c = cfg(&[("SIGNALGATE_KUBE_LOOKUP_READS", "consistent")], &[]).unwrap();
        assert_eq!(c.kube_lookup_reads, LookupReads::Consistent);
        let c = cfg(&[], &["--kube-lookup-reads=cache"]).unwrap();
        assert_eq!(c.kube_lookup_reads, LookupReads::Cache);
        let e = cfg(&[("SIGNALGATE_KUBE_LOOKUP_READS", "fast")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_KUBE_LOOKUP_READS"), "{e}");
    }

    #[test]
    fn worker_threads_take_a_count_or_auto() {
        let c = cfg(&[("SIGNALGATE_WORKER_THREADS", "auto")], &[]).unwrap();
        assert_eq!(c.worker_threads, None);
        let c = cfg(&[], &["--worker-threads", "3"]).unwrap();
        assert_eq!(c.worker_threads, Some(3));
        for bad in ["0", "-1", "many"] {
            let e = cfg(&[("SIGNALGATE_WORKER_THREADS", bad)], &[]).unwrap_err();
            assert!(e.0.contains("SIGNALGATE_WORKER_THREADS"), "{e}");
        }
    }

    #[test]
    fn durations_accept_ms_s_m_h() {
        assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_duration("4s"), Some(Duration::from_secs(4)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("8784h"), Some(MAX_DURATION));
        // Longer ones would overflow a deadline computed from them.
        for bad in [
            "",
            "5",
            "m",
            "5x",
            "-1s",
            "0s",
            "1.5s",
            "8785h",
            "2500000000000000h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shutdown_delay_is_off_by_default_and_takes_a_duration() {
        let delay = |env: &[(&str, &str)]| cfg(env, &[]).map(|c| c.shutdown_delay).ok();
        assert_eq!(delay(&[]), Some(Duration::ZERO));
        assert_eq!(
            delay(&[("SIGNALGATE_SHUTDOWN_DELAY", "15s")]),
            Some(Duration::from_secs(15))
        );
        assert_eq!(delay(&[("SIGNALGATE_SHUTDOWN_DELAY", "soon")]), None);
    }

    #[test]
    fn flags_override_environment() {
        let c = cfg(
            &[
                ("SIGNALGATE_DEDUP_TTL", "2m"),
                ("SIGNALGATE_STORM_THRESHOLD", "4"),
            ],
            &["--dedup-ttl", "3s", "--storm-threshold=7"],
        )
        .unwrap();
        assert_eq!(c.store.dedup_ttl, Duration::from_secs(3));
        assert_eq!(c.store.storm_threshold, 7);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = cfg(&[("SIGNALGATE_DEDUP_TTL", "soon")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_DEDUP_TTL"), "{e}");
        let e = cfg(&[("SIGNALGATE_STORM_THRESHOLD", "0")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_STORM_THRESHOLD"), "{e}");
        let e = cfg(&[("SIGNALGATE_SINK", "s3:x")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_SINK"), "{e}");
        let e = cfg(&[("SIGNALGATE_REDIS_URL", "http://x")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_REDIS_URL"), "{e}");
        let e = cfg(&[("SIGNALGATE_LISTEN", "nowhere")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_LISTEN"), "{e}");
        let e = cfg(&[("SIGNALGATE_FALLBACK_NAMESPACE", "Not_Valid")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_FALLBACK_NAMESPACE"), "{e}");
        let e = cfg(&[], &["--nope", "1"]).unwrap_err();
        assert!(e.0.contains("--nope"), "{e}");
    }

    #[test]
    fn storm_max_duration_cannot_be_shorter_than_the_window() {
        let e = cfg(
            &[
                ("SIGNALGATE_STORM_WINDOW", "2m"),
                ("SIGNALGATE_STORM_MAX_DURATION", "1m"),
            ],
            &[],
        )
        .unwrap_err();
        assert!(e.0.contains("STORM_MAX_DURATION"), "{e}");
    }
}
