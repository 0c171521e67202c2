//! Real Envoy for edge tests: renders a template from `envoy/` with free
//! ports, the built filter and a plugin configuration, starts Envoy with a
//! given `--concurrency`, waits for the admin `/ready`, and reads counters
//! from `/stats/prometheus`. Requests go through
//! [`crate::edge_client::Client`].
//!
//! The wasm is `target/wasm32-wasip1/release/signalgate_filter.wasm` under
//! the workspace target dir (`SIGNALGATE_FILTER_WASM` overrides; `make wasm`
//! builds it); Envoy is `.venv/bin/envoy` (`ENVOY_BIN` overrides; `make deps`
//! installs it).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::edge_client::{Client, Request};
use crate::process::{free_port, temp_dir, Proc};
use crate::workspace;

/// How long Envoy may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The built filter.
pub fn wasm_path() -> PathBuf {
    workspace::artefact(
        "SIGNALGATE_FILTER_WASM",
        workspace::target_dir().join("wasm32-wasip1/release/signalgate_filter.wasm"),
        "build the filter with `make wasm`",
    )
}

/// The Envoy binary.
pub fn envoy_bin() -> PathBuf {
    workspace::artefact(
        "ENVOY_BIN",
        workspace::root().join(".venv/bin/envoy"),
        "install Envoy with `make deps`",
    )
}

/// Which bootstrap to render from `envoy/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    /// `envoy.template.yaml`: the signalgate filter.
    Filter,
    /// `envoy-nofilter.yaml`: the router only.
    NoFilter,
    /// `envoy-native-ratelimit.yaml`: Envoy's local_ratelimit per source.
    NativeRateLimit { requests_per_minute: u32 },
}

impl Template {
    pub fn file(&self) -> &'static str {
        match self {
            Template::Filter => "envoy.template.yaml",
            Template::NoFilter => "envoy-nofilter.yaml",
            Template::NativeRateLimit { .. } => "envoy-native-ratelimit.yaml",
        }
    }
}

/// Replaces each `{{NAME}}` by its value, verbatim; panics if a placeholder
/// is left over.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    // Only look outside comments: they document the placeholders.
    let leftover = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find(|l| l.contains("{{"));
    assert!(
        leftover.is_none(),
        "unrendered placeholder in: {leftover:?}"
    );
    out
}

/// A value for a single-quoted YAML scalar.
pub fn yaml_single_quoted(s: &str) -> String {
    s.replace('\'', "''")
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct Options {
    pub template: Template,
    /// The plugin configuration JSON (the filter template only).
    pub plugin_config: String,
    pub concurrency: u32,
    pub upstream_port: u16,
    /// `--component-log-level wasm:debug` (the filter's refusal reasons).
    pub debug_logs: bool,
}

impl Options {
    /// The filter with `plugin_config`, one worker, debug logs.
    pub fn filter(plugin_config: &str, upstream_port: u16) -> Options {
        Options {
            template: Template::Filter,
            plugin_config: plugin_config.to_string(),
            concurrency: 1,
            upstream_port,
            debug_logs: true,
        }
    }

    pub fn concurrency(mut self, n: u32) -> Options {
        self.concurrency = n;
        self
    }
}

/// Envoy did not become ready.
#[derive(Debug)]
pub struct StartError {
    /// `Some` when the process exited (and how).
    pub exit: Option<ExitStatus>,
    pub log: String,
}

/// A running Envoy (killed when dropped).
pub struct Envoy {
    proc: Proc,
    listener: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts the filter template with `plugin_config` (one worker) in front
    /// of `upstream_port`; panics unless it becomes ready.
    pub fn start(plugin_config: &str, upstream_port: u16) -> Envoy {
        Envoy::start_with(Options::filter(plugin_config, upstream_port))
    }

    /// Starts Envoy; panics (with its log) unless it becomes ready.
    pub fn start_with(options: Options) -> Envoy {
        match Envoy::try_start(options) {
            Ok(e) => e,
            Err(e) => panic!("Envoy did not start ({:?}); log:\n{}", e.exit, e.log),
        }
    }

    /// Starts Envoy and waits for `/ready`; `Err` if it exits first or is
    /// not ready within [`READY_TIMEOUT`].
    pub fn try_start(options: Options) -> Result<Envoy, StartError> {
        let dir = temp_dir("envoy");
        let listener = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let template_path = workspace::root()
            .join("envoy")
            .join(options.template.file());
        let template = std::fs::read_to_string(&template_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", template_path.display()));
        let mut vars = vec![
            ("LISTEN_PORT", listener.port().to_string()),
            ("ADMIN_PORT", admin.port().to_string()),
            ("UPSTREAM_PORT", options.upstream_port.to_string()),
        ];
        match &options.template {
            Template::Filter => {
                vars.push((
                    "WASM_PATH",
                    yaml_single_quoted(&wasm_path().display().to_string()),
                ));
                vars.push(("PLUGIN_CONFIG", yaml_single_quoted(&options.plugin_config)));
            }
            Template::NoFilter => {}
            Template::NativeRateLimit {
                requests_per_minute,
            } => vars.push(("REQUESTS_PER_MINUTE", requests_per_minute.to_string())),
        }
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, render(&template, &vars)).expect("write envoy.yaml");

        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg("info");
        if options.debug_logs {
            cmd.arg("--component-log-level").arg("wasm:debug");
        }
        let mut proc = Proc::spawn("envoy", cmd, dir.path());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proc.try_wait() {
                return Err(StartError {
                    exit: Some(status),
                    log: proc.log(),
                });
            }
            if get_text(admin, "/ready").is_some_and(|(s, body)| s == 200 && body.contains("LIVE"))
            {
                break;
            }
            if Instant::now() >= deadline {
                let log = proc.log();
                proc.kill();
                return Err(StartError { exit: None, log });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Envoy {
            proc,
            listener,
            admin,
            _dir: dir,
        })
    }

    /// Where to send signals.
    pub fn listener(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// A client from 127.0.0.1 to the listener.
    pub fn client(&self) -> Client {
        Client::new(self.listener)
    }

    /// A client from `source` (e.g. 127.0.0.2) to the listener.
    pub fn client_from(&self, source: IpAddr) -> Client {
        Client::from_addr(source, self.listener)
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Every counter and gauge of `/stats/prometheus`, by metric name (values
    /// of the same name with different labels are summed).
    pub fn prometheus(&self) -> BTreeMap<String, u64> {
        let (status, text) =
            get_text(self.admin, "/stats/prometheus").expect("admin /stats/prometheus answers");
        assert_eq!(status, 200, "{text}");
        parse_prometheus(&text)
    }

    /// The value of the metric `name` in `/stats/prometheus` (0 when absent).
    pub fn metric(&self, name: &str) -> u64 {
        self.prometheus().get(name).copied().unwrap_or(0)
    }

    /// The filter's counter for `outcome` (`accepted`, `rate_limited`, ...).
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.metric(&format!("signalgate_{outcome}"))
    }

    /// Waits until the filter's `outcome` counter is `n`, panicking with the
    /// value seen if it is not within 5 s.
    pub fn wait_outcome(&self, outcome: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.outcome(outcome);
            if v == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "counter signalgate_{outcome} is {v}, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain-text admin endpoint (`/stats?filter=...`).
    pub fn admin_get(&self, path: &str) -> String {
        get_text(self.admin, path)
            .map(|(_, t)| t)
            .unwrap_or_default()
    }
}

/// Parses Prometheus text exposition into name → value (labels summed).
pub fn parse_prometheus(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series);
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if value.is_finite() && value >= 0.0 {
            *out.entry(name.to_string()).or_insert(0) += value as u64;
        }
    }
    out
}

fn get_text(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = Client::new(addr);
    c.timeout = Duration::from_secs(2);
    let r = c.try_send(&Request::get(path)).ok()?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_and_checks_placeholders() {
        let t = "# {{DOC}} stays\na: {{A}}\nb: '{{B}}'\n";
        let out = render(t, &[("A", "1".into()), ("B", yaml_single_quoted("it's"))]);
        assert_eq!(out, "# {{DOC}} stays\na: 1\nb: 'it''s'\n");
        let missing = std::panic::catch_unwind(|| render("a: {{A}}", &[]));
        assert!(missing.is_err());
    }

    #[test]
    fn prometheus_text_is_parsed() {
        let text = "# TYPE signalgate_accepted counter\nsignalgate_accepted{} 5\n\
                    envoy_x{a=\"1\"} 2\nenvoy_x{a=\"2\"} 3\nbad line\n";
        let m = parse_prometheus(text);
        assert_eq!(m.get("signalgate_accepted"), Some(&5));
        assert_eq!(m.get("envoy_x"), Some(&5));
    }
}
