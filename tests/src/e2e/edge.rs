//! Envoy with the signalgate filter in front of the scenario's sidecars.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::client;
use crate::envoy::{envoy_bin, parse_prometheus, render, wasm_path, yaml_single_quoted};
use crate::process::{free_port, temp_dir, Proc};
use crate::workspace;

/// `envoy/e2e.yaml.tmpl`, as it is.
pub fn template() -> String {
    let path = workspace::root().join("envoy/e2e.yaml.tmpl");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `template` (the e2e template, maybe with more in it) rendered: Envoy on
/// `listen` and `admin`, the filter with `plugin_config`, one cluster of
/// `upstream_ports` (round robin).
pub fn config(
    template: &str,
    listen: u16,
    admin: u16,
    upstream_ports: &[u16],
    plugin_config: &str,
) -> String {
    let endpoints: Vec<String> = upstream_ports
        .iter()
        .map(|port| {
            format!("{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}")
        })
        .collect();
    render(
        template,
        &[
            ("LISTEN_PORT", listen.to_string()),
            ("ADMIN_PORT", admin.to_string()),
            ("UPSTREAM_ENDPOINTS", format!("[{}]", endpoints.join(", "))),
            (
                "WASM_PATH",
                yaml_single_quoted(&wasm_path().display().to_string()),
            ),
            ("PLUGIN_CONFIG", yaml_single_quoted(plugin_config)),
        ],
    )
}

/// Envoy with the signalgate filter in front of one or more sidecars (one
/// cluster, round robin; `envoy/e2e.yaml.tmpl`), restartable on the same
/// ports.
pub struct Edge {
    proc: Option<Proc>,
    listen: u16,
    admin: u16,
    dir: tempfile::TempDir,
}

impl Edge {
    pub fn start(plugin_config: &str, upstream_ports: &[u16]) -> Edge {
        let dir = temp_dir("e2e-envoy");
        let (listen, admin) = (free_port(), free_port());
        let config = config(&template(), listen, admin, upstream_ports, plugin_config);
        std::fs::write(dir.path().join("envoy.yaml"), config).expect("write envoy.yaml");
        let mut edge = Edge {
            proc: None,
            listen,
            admin,
            dir,
        };
        edge.spawn();
        edge
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(self.dir.path().join("envoy.yaml"))
            .arg("--concurrency")
            .arg("1")
            .arg("--disable-hot-restart")
            .args(["-l", "warning", "--component-log-level", "wasm:info"]);
        let mut proc = Proc::spawn("envoy", cmd, self.dir.path());
        let ready = format!("http://127.0.0.1:{}/ready", self.admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            proc.assert_running();
            if client::get(&ready).is_ok_and(|a| a.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Envoy not ready in 60 s; log:\n{}",
                proc.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Some(proc);
    }

    /// SIGKILL: the listener is gone (connection refused) until `start_again`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts Envoy again, same ports and configuration, with fresh state.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }

    /// A counter or gauge from `/stats/prometheus` (labels summed; 0 if absent).
    pub fn stat(&self, name: &str) -> u64 {
        let url = format!("http://127.0.0.1:{}/stats/prometheus", self.admin);
        let text = client::get(&url).map(|a| a.body).unwrap_or_default();
        parse_prometheus(&text).get(name).copied().unwrap_or(0)
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }
}
