//! Real Envoy for edge tests, with either build of the filter: renders a
//! bootstrap from `envoy/` with free ports, the built filter (the wasm, or
//! the native module on `LD_LIBRARY_PATH`) and a plugin configuration,
//! starts Envoy with a given `--concurrency`, waits for the admin `/ready`,
//! and reads counters from `/stats/prometheus`. Requests go through
//! [`crate::edge_client::Client`].
//!
//! The wasm is `target/wasm32-wasip1/release/signalgate_filter.wasm` under
//! the workspace target dir (`SIGNALGATE_FILTER_WASM` overrides; `make wasm`
//! builds it); the native module `target/release/libsignalgate_edge_native.so`
//! (`SIGNALGATE_EDGE_NATIVE` overrides; `make native`), its fault-injection
//! build `target/fault-injection/` (`SIGNALGATE_EDGE_NATIVE_FAULTS`;
//! `make native-faults`); Envoy is `.venv/bin/envoy` (`ENVOY_BIN` overrides;
//! `make deps` installs it).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::edge_client::{Client, Request};
use crate::process::{free_port, temp_dir, wait_for, Proc};
use crate::upstream::read_message;
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

/// The file name Envoy looks for (`lib<name>.so`, the bootstrap's `name`).
pub const MODULE_FILE: &str = "libsignalgate_edge_native.so";

/// The built native module.
pub fn module_path() -> PathBuf {
    workspace::artefact(
        "SIGNALGATE_EDGE_NATIVE",
        workspace::target_dir().join("release").join(MODULE_FILE),
        "build the native module with `make native`",
    )
}

/// The native module built with test-only fault injection
/// (`make native-faults`): the request header `x-signalgate-fault:
/// panic-in-headers` or `panic-in-body` makes that hook panic, and
/// `SIGNALGATE_FAULT_BUILT_FOR` changes the release it believes it was
/// built for.
pub fn fault_module_path() -> PathBuf {
    workspace::artefact(
        "SIGNALGATE_EDGE_NATIVE_FAULTS",
        workspace::target_dir()
            .join("fault-injection")
            .join(MODULE_FILE),
        "build the fault-injection module with `make native-faults`",
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
    /// `envoy.template.yaml`: the signalgate wasm filter.
    Filter,
    /// `envoy-native.yaml`, the local bootstrap with other ports and plugin
    /// configuration (see [`render_native`]): the signalgate native module
    /// in `module`.
    Module { module: PathBuf },
    /// `envoy-nofilter.yaml`: the router only.
    NoFilter,
    /// `envoy-native-ratelimit.yaml`: Envoy's local_ratelimit per source.
    NativeRateLimit { requests_per_minute: u32 },
}

impl Template {
    pub fn file(&self) -> &'static str {
        match self {
            Template::Filter => "envoy.template.yaml",
            Template::Module { .. } => "envoy-native.yaml",
            Template::NoFilter => "envoy-nofilter.yaml",
            Template::NativeRateLimit { .. } => "envoy-native-ratelimit.yaml",
        }
    }

    /// What `/stats/prometheus` puts before a filter counter's name: Envoy
    /// prefixes a dynamic module's `metrics_namespace` with `envoy_`, not
    /// the wasm filter's own namespace.
    pub fn metric_prefix(&self) -> &'static str {
        match self {
            Template::Module { .. } => "envoy_signalgate_",
            _ => "signalgate_",
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

/// The local native bootstrap's values [`render_native`] replaces.
const LOCAL_ADMIN: &str = "port_value: 9901 }";
const LOCAL_LISTENER: &str = "port_value: 8080 }";
const LOCAL_UPSTREAM: &str = "port_value: 8081 }";
const CONFIG_LINE: &str = "value: '";

/// `text` with the one occurrence of `from` replaced; panics unless there
/// is exactly one (the bootstrap changed shape).
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "envoy/envoy-native.yaml must hold {from:?} exactly once"
    );
    text.replacen(from, to, 1)
}

/// `local` (the text of `envoy/envoy-native.yaml`, a bootstrap to run by
/// hand, not a template) with other ports and plugin configuration.
pub fn render_native(
    local: &str,
    listen: u16,
    admin: u16,
    upstream: u16,
    plugin_config: &str,
) -> String {
    let mut out = replace_once(local, LOCAL_ADMIN, &format!("port_value: {admin} }}"));
    out = replace_once(&out, LOCAL_LISTENER, &format!("port_value: {listen} }}"));
    out = replace_once(&out, LOCAL_UPSTREAM, &format!("port_value: {upstream} }}"));
    let config_line = out
        .lines()
        .find(|l| l.trim_start().starts_with(CONFIG_LINE))
        .expect("a filter_config value line")
        .to_string();
    let indent = &config_line[..config_line.len() - config_line.trim_start().len()];
    replace_once(
        &out,
        &config_line,
        &format!("{indent}value: '{}'", yaml_single_quoted(plugin_config)),
    )
}

/// A value for a single-quoted YAML scalar.
pub fn yaml_single_quoted(s: &str) -> String {
    s.replace('\'', "''")
}

/// How to start Envoy.
#[derive(Debug, Clone)]
pub struct Options {
    pub template: Template,
    /// The plugin configuration JSON (the filter's templates only).
    pub plugin_config: String,
    pub concurrency: u32,
    pub upstream_port: u16,
    /// The filter's debug logs (its refusal reasons):
    /// `--component-log-level wasm:debug`, or `dynamic_modules:debug`.
    pub debug_logs: bool,
    /// More environment for Envoy (and so for a native module).
    pub env: Vec<(String, String)>,
}

impl Options {
    /// The wasm filter with `plugin_config`, one worker, debug logs.
    pub fn filter(plugin_config: &str, upstream_port: u16) -> Options {
        Options {
            template: Template::Filter,
            plugin_config: plugin_config.to_string(),
            concurrency: 1,
            upstream_port,
            debug_logs: true,
            env: Vec::new(),
        }
    }

    /// The native module of `make native` with `plugin_config`, one worker,
    /// debug logs.
    pub fn native(plugin_config: &str, upstream_port: u16) -> Options {
        Options {
            template: Template::Module {
                module: module_path(),
            },
            ..Options::filter(plugin_config, upstream_port)
        }
    }

    pub fn concurrency(mut self, n: u32) -> Options {
        self.concurrency = n;
        self
    }

    /// The fault-injection build of the native module ([`fault_module_path`]).
    pub fn with_faults(mut self) -> Options {
        self.template = Template::Module {
            module: fault_module_path(),
        };
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Options {
        self.env.push((name.to_string(), value.to_string()));
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
    /// [`Template::metric_prefix`].
    metric_prefix: &'static str,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts the wasm filter with `plugin_config` (one worker) in front of
    /// `upstream_port`; panics unless it becomes ready.
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
        let mut cmd = Command::new(envoy_bin());
        let mut log_level = "wasm:debug";
        let bootstrap = match &options.template {
            Template::Module { module } => {
                cmd.env("LD_LIBRARY_PATH", module_dir(module));
                log_level = "dynamic_modules:debug";
                render_native(
                    &template,
                    listener.port(),
                    admin.port(),
                    options.upstream_port,
                    &options.plugin_config,
                )
            }
            Template::Filter => {
                vars.push((
                    "WASM_PATH",
                    yaml_single_quoted(&wasm_path().display().to_string()),
                ));
                vars.push(("PLUGIN_CONFIG", yaml_single_quoted(&options.plugin_config)));
                render(&template, &vars)
            }
            Template::NoFilter => render(&template, &vars),
            Template::NativeRateLimit {
                requests_per_minute,
            } => {
                vars.push(("REQUESTS_PER_MINUTE", requests_per_minute.to_string()));
                render(&template, &vars)
            }
        };
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, bootstrap).expect("write envoy.yaml");

        cmd.envs(options.env.iter().map(|(n, v)| (n, v)))
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(options.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg("info");
        if options.debug_logs {
            cmd.arg("--component-log-level").arg(log_level);
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
            metric_prefix: options.template.metric_prefix(),
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

    /// The name `/stats/prometheus` gives the filter's counter for
    /// `outcome`: `signalgate_<outcome>` for the wasm filter,
    /// `envoy_signalgate_<outcome>` for the native module.
    pub fn outcome_metric(&self, outcome: &str) -> String {
        format!("{}{outcome}", self.metric_prefix)
    }

    /// The filter's counter for `outcome` (`accepted`, `rate_limited`, ...,
    /// and the native module's `panics`).
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.metric(&self.outcome_metric(outcome))
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
                "counter {} is {v}, expected {n}",
                self.outcome_metric(outcome)
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

    /// Bytes Envoy has read from clients on the listener so far.
    fn bytes_read(&self) -> u64 {
        self.admin_get("/stats?filter=^http\\.signals\\.downstream_cx_rx_bytes_total$")
            .rsplit_once(": ")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// POSTs `body` (JSON, with a Content-Length) to `path` in two parts:
    /// the head and `first` bytes of the body, then, once Envoy has read
    /// those, the rest. So the filter sees the body in two reads, the last
    /// one carrying the end of the stream. Returns the status and body.
    pub fn post_in_two_reads(&self, path: &str, body: &[u8], first: usize) -> (u16, String) {
        let before = self.bytes_read();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            self.listener,
            body.len()
        );
        let mut stream = TcpStream::connect(self.listener).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (part1, part2) = body.split_at(first);
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(part1).expect("write first part");
        let sent = (head.len() + part1.len()) as u64;
        wait_for(
            "Envoy to read the first part",
            Duration::from_secs(5),
            || (self.bytes_read() >= before + sent).then_some(()),
        );
        stream.write_all(part2).expect("write the rest");
        let mut reader = BufReader::new(stream);
        let msg = read_message(&mut reader, true, false)
            .expect("read response")
            .expect("a response");
        let status = msg
            .start_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, String::from_utf8_lossy(&msg.body).into_owned())
    }
}

/// The directory Envoy loads `module` from (it goes on `LD_LIBRARY_PATH`).
fn module_dir(module: &Path) -> &Path {
    module.parent().expect("the module's directory")
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
    fn the_local_native_bootstrap_renders_with_other_ports_and_configuration() {
        let local = std::fs::read_to_string(workspace::root().join("envoy/envoy-native.yaml"))
            .expect("read envoy/envoy-native.yaml");
        let out = render_native(
            &local,
            1001,
            1002,
            1003,
            r#"{"over_limit_status": 503, "x": "it's"}"#,
        );
        assert!(out.contains("port_value: 1001 }"), "{out}");
        assert!(out.contains("port_value: 1002 }"), "{out}");
        assert!(out.contains("port_value: 1003 }"), "{out}");
        assert!(
            out.contains(r#"value: '{"over_limit_status": 503, "x": "it''s"}'"#),
            "{out}"
        );
        for local in [LOCAL_ADMIN, LOCAL_LISTENER, LOCAL_UPSTREAM] {
            assert!(!out.contains(local), "{local} left in {out}");
        }
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
