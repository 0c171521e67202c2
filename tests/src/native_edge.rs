//! Real Envoy with the native edge (the dynamic module built from
//! `edge-native/`): renders the checked-in local bootstrap
//! `envoy/envoy-native.yaml` with free ports and a filter configuration,
//! puts the module's directory on `LD_LIBRARY_PATH`, starts Envoy and waits
//! for `/ready`. Requests go through [`crate::edge_client::Client`], as for the
//! wasm filter.
//!
//! The module is `target/release/libsignalgate_edge_native.so` under the
//! workspace target dir (`SIGNALGATE_EDGE_NATIVE` overrides; `make native`
//! builds it).

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::edge_client::{Client, Request};
use crate::envoy::{envoy_bin, parse_prometheus, yaml_single_quoted, StartError, READY_TIMEOUT};
use crate::process::{free_port, temp_dir, wait_for, Proc};
use crate::upstream::read_message;
use crate::workspace;

/// The file name Envoy looks for (`lib<name>.so`, the bootstrap's `name`).
pub const MODULE_FILE: &str = "libsignalgate_edge_native.so";

/// The built module.
pub fn module_path() -> PathBuf {
    workspace::artefact(
        "SIGNALGATE_EDGE_NATIVE",
        workspace::target_dir().join("release").join(MODULE_FILE),
        "build the native module with `make native`",
    )
}

/// The module built with test-only fault injection (`make native-faults`):
/// the request header `x-signalgate-fault: panic-in-headers` or
/// `panic-in-body` makes that hook panic.
pub fn fault_module_path() -> PathBuf {
    workspace::artefact(
        "SIGNALGATE_EDGE_NATIVE_FAULTS",
        workspace::target_dir()
            .join("fault-injection")
            .join(MODULE_FILE),
        "build the fault-injection module with `make native-faults`",
    )
}

/// The local bootstrap's values the tests replace.
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

/// `envoy/envoy-native.yaml` with other ports and filter configuration.
pub fn render(listen: u16, admin: u16, upstream: u16, filter_config: &str) -> String {
    let path = workspace::root().join("envoy/envoy-native.yaml");
    let local = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = replace_once(&local, LOCAL_ADMIN, &format!("port_value: {admin} }}"));
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
        &format!("{indent}value: '{}'", yaml_single_quoted(filter_config)),
    )
}

/// The filter configuration of the local bootstrap.
pub fn local_filter_config() -> String {
    let path = workspace::root().join("envoy/envoy-native.yaml");
    let local = std::fs::read_to_string(&path).expect("read envoy/envoy-native.yaml");
    let line = local
        .lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(CONFIG_LINE))
        .expect("a filter_config value line");
    line[CONFIG_LINE.len()..line.len() - 1].replace("''", "'")
}

/// How to start Envoy with the native module.
#[derive(Debug, Clone)]
pub struct NativeOptions {
    /// The module's file (its directory goes on `LD_LIBRARY_PATH`).
    pub module: PathBuf,
    /// The filter configuration JSON.
    pub filter_config: String,
    pub upstream_port: u16,
    pub concurrency: u32,
    /// More environment for Envoy (and so for the module).
    pub env: Vec<(String, String)>,
}

impl NativeOptions {
    /// The module of `make native`, one worker.
    pub fn new(filter_config: &str, upstream_port: u16) -> NativeOptions {
        NativeOptions {
            module: module_path(),
            filter_config: filter_config.to_string(),
            upstream_port,
            concurrency: 1,
            env: Vec::new(),
        }
    }

    pub fn concurrency(mut self, n: u32) -> NativeOptions {
        self.concurrency = n;
        self
    }

    /// The fault-injection build of the module ([`fault_module_path`]).
    pub fn with_faults(mut self) -> NativeOptions {
        self.module = fault_module_path();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> NativeOptions {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// A running Envoy with the native module (killed when dropped).
pub struct NativeEnvoy {
    proc: Proc,
    listener: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl NativeEnvoy {
    /// Starts the module with `filter_config` and `concurrency` workers in
    /// front of `upstream_port`; panics (with the log) unless it is ready.
    pub fn start(filter_config: &str, upstream_port: u16, concurrency: u32) -> NativeEnvoy {
        NativeEnvoy::start_with(
            NativeOptions::new(filter_config, upstream_port).concurrency(concurrency),
        )
    }

    /// Starts Envoy; panics (with its log) unless it becomes ready.
    pub fn start_with(options: NativeOptions) -> NativeEnvoy {
        match NativeEnvoy::try_start_with(options) {
            Ok(e) => e,
            Err(e) => panic!("Envoy did not start ({:?}); log:\n{}", e.exit, e.log),
        }
    }

    /// Starts Envoy and waits for `/ready`; `Err` if it exits first or is
    /// not ready within [`READY_TIMEOUT`].
    pub fn try_start(
        filter_config: &str,
        upstream_port: u16,
        concurrency: u32,
    ) -> Result<NativeEnvoy, StartError> {
        NativeEnvoy::try_start_with(
            NativeOptions::new(filter_config, upstream_port).concurrency(concurrency),
        )
    }

    /// [`NativeEnvoy::try_start`] with every option.
    pub fn try_start_with(options: NativeOptions) -> Result<NativeEnvoy, StartError> {
        let NativeOptions {
            module,
            filter_config,
            upstream_port,
            concurrency,
            env,
        } = options;
        let module_dir = module.parent().expect("the module's directory");
        let dir = temp_dir("envoy-native");
        let listener = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let config = dir.path().join("envoy.yaml");
        let yaml = render(listener.port(), admin.port(), upstream_port, &filter_config);
        std::fs::write(&config, yaml).expect("write envoy.yaml");

        let mut cmd = Command::new(envoy_bin());
        cmd.env("LD_LIBRARY_PATH", module_dir)
            .arg("-c")
            .arg(&config)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("-l")
            .arg("info")
            .arg("--component-log-level")
            .arg("dynamic_modules:debug");
        cmd.envs(env);
        let mut proc = Proc::spawn("envoy-native", cmd, dir.path());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = proc.try_wait() {
                return Err(StartError {
                    exit: Some(status),
                    log: proc.log(),
                });
            }
            if admin_text(admin, "/ready")
                .is_some_and(|(s, body)| s == 200 && body.contains("LIVE"))
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
        Ok(NativeEnvoy {
            proc,
            listener,
            admin,
            _dir: dir,
        })
    }

    pub fn listener(&self) -> SocketAddr {
        self.listener
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

    /// A plain-text admin endpoint.
    pub fn admin_get(&self, path: &str) -> String {
        admin_text(self.admin, path)
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

    /// Every counter and gauge of `/stats/prometheus`, by metric name.
    pub fn prometheus(&self) -> BTreeMap<String, u64> {
        parse_prometheus(&self.admin_get("/stats/prometheus"))
    }

    /// The module's counter `name` (`accepted`, `rate_limited`, `panics`,
    /// ...): `signalgate.<name>` in Envoy's stats, which Prometheus names
    /// `envoy_signalgate_<name>` (Envoy prefixes a dynamic module's
    /// `metrics_namespace`, unlike the wasm filter's own namespace).
    pub fn counter(&self, name: &str) -> u64 {
        self.prometheus()
            .get(&format!("envoy_signalgate_{name}"))
            .copied()
            .unwrap_or(0)
    }

    /// Waits until the counter `name` is `n` (5 s at most).
    pub fn wait_counter(&self, name: &str, n: u64) {
        wait_for(
            &format!("counter signalgate.{name} = {n}"),
            Duration::from_secs(5),
            || (self.counter(name) == n).then_some(()),
        )
    }
}

fn admin_text(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = Client::new(addr);
    c.timeout = Duration::from_secs(2);
    let r = c.try_send(&Request::get(path)).ok()?;
    Some((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_bootstrap_renders_with_other_ports_and_configuration() {
        let out = render(
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
    fn the_local_filter_configuration_is_the_filters_defaults_spelled_out() {
        let local: serde_json::Value =
            serde_json::from_str(&local_filter_config()).expect("JSON filter configuration");
        assert_eq!(local["requests_per_minute"], 100);
        assert_eq!(local["over_limit_status"], 429);
        assert_eq!(local["source"], "remote_address");
    }
}
