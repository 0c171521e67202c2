//! [`Config::from_sources`]: the environment and the flags, applied knob
//! by knob over the defaults, then the checks that span knobs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::knobs::{CLAIM_LEASE, KNOBS, REQUEST_DEADLINE, STORM_MAX_DURATION, STORM_WINDOW};
use super::{Config, ConfigError, LogFormat, LookupReads, SinkConfig};
use crate::lifecycle::Policy;
use crate::store::Settings;

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
            if let Some(v) = env.get(&knob.env()) {
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
        let mut config = blank();
        for knob in KNOBS {
            let value = values.get(knob.name).map_or(knob.default, String::as_str);
            knob.apply(&mut config, value)?;
        }
        config.lifecycle.dedup_ttl = config.store.dedup_ttl;
        config.lifecycle.incident_ttl = config.store.incident_ttl;
        if config.store.storm_max_duration < config.store.storm_window {
            return Err(ConfigError(format!(
                "{} must be at least {}",
                STORM_MAX_DURATION.env(),
                STORM_WINDOW.env()
            )));
        }
        if config.store.claim_lease < config.request_deadline + LEASE_MARGIN {
            return Err(ConfigError(format!(
                "{} ({:?}) must exceed {} ({:?}) by at least {:?}: a request may hold \
                 its claims until its deadline, and a create sent just before it must land \
                 before another request may take the claim over",
                CLAIM_LEASE.env(),
                config.store.claim_lease,
                REQUEST_DEADLINE.env(),
                config.request_deadline,
                LEASE_MARGIN
            )));
        }
        Ok(config)
    }
}

/// How much longer than the request deadline a claim's lease must be.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// What every knob then overwrites (each is applied, given or default).
fn blank() -> Config {
    let nowhere = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    Config {
        listen: nowhere,
        admin_listen: nowhere,
        redis_url: None,
        redis_timeout: Duration::ZERO,
        sink: SinkConfig::Dir(PathBuf::new()),
        kube_lookup_reads: LookupReads::Auto,
        store: Settings::default(),
        lifecycle: Policy::default(),
        fallback_namespace: String::new(),
        request_deadline: Duration::ZERO,
        flush_interval: Duration::ZERO,
        delivery_window: Duration::ZERO,
        max_body_bytes: 0,
        max_alerts: 0,
        max_new_namespaces: 0,
        max_in_flight: 0,
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::ZERO,
        log_format: LogFormat::Text,
        worker_threads: None,
        checker_dir: None,
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
        assert_eq!(c.max_new_namespaces, 16);
        assert_eq!(c.kube_lookup_reads, LookupReads::Auto);
        assert_eq!(c.lifecycle, Policy::default());
        assert_eq!(c.store.incident_ttl, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn terminal_phases_are_a_list_and_the_cooldown_may_be_off() {
        let c = cfg(
            &[
                ("SIGNALGATE_TERMINAL_PHASES", " Done , Gave-Up,"),
                ("SIGNALGATE_REOPEN_COOLDOWN", "0"),
                ("SIGNALGATE_DEDUP_TTL", "2s"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.lifecycle.terminal_phases, ["Done", "Gave-Up"]);
        assert_eq!(c.lifecycle.reopen_cooldown, Duration::ZERO);
        assert_eq!(c.lifecycle.dedup_ttl, Duration::from_secs(2));
        let e = cfg(&[("SIGNALGATE_TERMINAL_PHASES", " , ")], &[]).unwrap_err();
        assert!(e.0.contains("SIGNALGATE_TERMINAL_PHASES"), "{e}");
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
    fn a_claim_lease_must_outlast_the_request_deadline() {
        let lease_and_deadline = |lease: &str, deadline: &str| {
            cfg(
                &[
                    ("SIGNALGATE_CLAIM_LEASE", lease),
                    ("SIGNALGATE_REQUEST_DEADLINE", deadline),
                ],
                &[],
            )
        };
        for (lease, deadline) in [("3s", "4s"), ("5s", "5s"), ("5s", "4500ms")] {
            let e = lease_and_deadline(lease, deadline).unwrap_err();
            assert!(e.0.contains("SIGNALGATE_CLAIM_LEASE"), "{e}");
            assert!(e.0.contains("SIGNALGATE_REQUEST_DEADLINE"), "{e}");
        }
        assert!(lease_and_deadline("5s", "4s").is_ok());
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
