//! The real sidecar binary, started per test on free ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::client::{self, Answer};
use crate::process::{free_port, temp_dir, wait_for, Proc};
use crate::workspace;

/// The sidecar binary (`SIGNALGATE_SIDECAR_BIN`, else `target/debug/signalgate-sidecar`).
pub fn binary() -> PathBuf {
    workspace::artefact(
        "SIGNALGATE_SIDECAR_BIN",
        workspace::target_dir().join("debug/signalgate-sidecar"),
        "build it with `cargo build -p signalgate-sidecar` (make test does)",
    )
}

pub struct Sidecar {
    proc: Option<Proc>,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    /// The directory sink's root (when the sink is `dir:`).
    pub sink_dir: PathBuf,
    env: Vec<(String, String)>,
    log_dir: PathBuf,
    name: String,
    _tmp: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the sidecar with `env` (`SIGNALGATE_*` pairs) over the defaults
    /// (in-memory store, directory sink in a private temp dir), waits until ready.
    pub fn start(env: &[(&str, &str)]) -> Sidecar {
        Sidecar::start_named("sidecar", env)
    }

    pub fn start_named(name: &str, env: &[(&str, &str)]) -> Sidecar {
        let tmp = temp_dir(name);
        let sink_dir = tmp.path().join("resources");
        let api: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut full: Vec<(String, String)> = vec![
            ("SIGNALGATE_LISTEN".into(), api.to_string()),
            ("SIGNALGATE_ADMIN_LISTEN".into(), admin.to_string()),
            (
                "SIGNALGATE_SINK".into(),
                format!("dir:{}", sink_dir.display()),
            ),
            ("SIGNALGATE_FLUSH_INTERVAL".into(), "100ms".into()),
            ("RUST_LOG".into(), "info,signalgate_sidecar=debug".into()),
        ];
        for (k, v) in env {
            full.retain(|(fk, _)| fk != k);
            full.push((k.to_string(), v.to_string()));
        }
        let mut s = Sidecar {
            proc: None,
            api,
            admin,
            sink_dir,
            env: full,
            log_dir: tmp.path().to_path_buf(),
            name: name.to_string(),
            _tmp: tmp,
        };
        s.spawn();
        s.wait_ready();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.env_clear();
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        self.proc = Some(Proc::spawn(&self.name, cmd, &self.log_dir));
    }

    /// Waits until `/readyz` answers 200 (panics with the log otherwise).
    pub fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(a) = client::get(&url) {
                if a.status == 200 {
                    return;
                }
            }
            if let Some(p) = self.proc.as_mut() {
                p.assert_running();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sidecar not ready in time; log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again with the same ports and settings.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM, without waiting.
    pub fn sigterm(&self) {
        if let Some(p) = &self.proc {
            p.signal(libc::SIGTERM);
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut p = self.proc.take()?;
        p.signal(libc::SIGTERM);
        p.wait_exit(timeout)
    }

    pub fn log_tail(&self, n: usize) -> String {
        self.proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }

    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Whole log so far (also after the process exited).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// `POST` a raw body to `path` on the signal API as `source`.
    pub fn post(&self, path: &str, body: &[u8], source: &str) -> Answer {
        let url = format!("http://{}{path}", self.api);
        client::post_json(&url, body, &[("x-signalgate-source", source)])
            .unwrap_or_else(|e| panic!("POST {url}: {e}\nlog:\n{}", self.log_tail(30)))
    }

    /// `POST /api/v1/signals/prometheus`, a delivery of its own (from a
    /// source of its own: the same body again is not a retry).
    pub fn post_alerts(&self, webhook: &Value) -> Answer {
        self.post_alerts_from(webhook, &fresh_source())
    }

    /// `POST /api/v1/signals/prometheus` from `source`: the same body from
    /// the same source within the delivery window is a retry of one
    /// delivery.
    pub fn post_alerts_from(&self, webhook: &Value, source: &str) -> Answer {
        let body = serde_json::to_vec(webhook).expect("json");
        self.post("/api/v1/signals/prometheus", &body, source)
    }

    /// `POST /api/v1/signals/kubernetes-event`, a delivery of its own.
    pub fn post_event(&self, event: &Value) -> Answer {
        let body = serde_json::to_vec(event).expect("json");
        self.post("/api/v1/signals/kubernetes-event", &body, &fresh_source())
    }

    pub fn admin_get(&self, path: &str) -> Answer {
        client::get(&format!("http://{}{path}", self.admin)).expect("admin GET")
    }

    /// The value of one sample in `/metrics` (`name{labels}` as printed), 0 if
    /// absent; a value that is not a number is a panic.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.admin_get("/metrics").body;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == sample).then(|| {
                    v.parse()
                        .unwrap_or_else(|e| panic!("/metrics: {l:?} has no number: {e}"))
                })
            })
            .unwrap_or(0.0)
    }

    /// Every resource the directory sink holds, sorted by namespace/name.
    pub fn resources(&self) -> Vec<Value> {
        read_resources(&self.sink_dir)
    }

    /// The paths of the directory sink's resource files, sorted.
    pub fn resources_paths(&self) -> Vec<PathBuf> {
        resource_paths(&self.sink_dir)
    }

    /// Waits until `cond` holds for the resources in the directory sink.
    pub fn wait_resources(&self, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_for(what, Duration::from_secs(15), || {
            let r = self.resources();
            cond(&r).then_some(r)
        })
    }
}

/// A source no other post of this process used: each post a delivery of
/// its own.
pub fn fresh_source() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SENT: AtomicU64 = AtomicU64::new(0);
    format!("test-{}", SENT.fetch_add(1, Ordering::Relaxed))
}

/// Reads `<dir>/<namespace>/<name>.json` files, sorted by path; a file
/// removed since it was listed is left out, one that cannot be read or is
/// not JSON is a panic (the sink replaces files atomically).
pub fn read_resources(dir: &Path) -> Vec<Value> {
    resource_paths(dir)
        .iter()
        .filter_map(|p| match std::fs::read(p) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display())),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read {}: {e}", p.display()),
        })
        .collect()
}

/// The `<dir>/<namespace>/<name>.json` files, sorted.
fn resource_paths(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Ok(namespaces) = std::fs::read_dir(dir) {
        for ns in namespaces.flatten() {
            if let Ok(entries) = std::fs::read_dir(ns.path()) {
                for e in entries.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "json") {
                        files.push(p);
                    }
                }
            }
        }
    }
    files.sort();
    files
}

/// The store a sidecar under test runs on: its memory store, or a private
/// Redis. [`on_every_store!`](crate::on_every_store) runs a case on each.
pub enum StoreBackend {
    Memory,
    Redis(crate::redis::RedisServer),
}

impl StoreBackend {
    pub fn redis() -> StoreBackend {
        StoreBackend::Redis(crate::redis::RedisServer::start())
    }

    /// A sidecar on this store, with the extra environment `extra`.
    pub fn start(&self, extra: &[(&str, &str)]) -> Sidecar {
        let url;
        let mut env: Vec<(&str, &str)> = extra.to_vec();
        if let StoreBackend::Redis(r) = self {
            url = r.url();
            env.push(("SIGNALGATE_REDIS_URL", &url));
        }
        Sidecar::start(&env)
    }
}

/// One test per store for each case `fn case(b: &StoreBackend)`: modules
/// `memory` and `redis`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() {
                super::$name(&$crate::sidecar::StoreBackend::Memory)
            } )*
        }
        mod redis {
            $( #[test] fn $name() {
                super::$name(&$crate::sidecar::StoreBackend::redis())
            } )*
        }
    };
}
