//! The system under check: Envoy with the wasm filter in front of three
//! sidecars (one cluster, round robin: `envoy/e2e.yaml.tmpl`, plus a
//! response header naming the sidecar that answered), a Redis Cluster of
//! three masters reached only through fault proxies, and a real
//! kube-apiserver the sidecars reach through a fault proxy too. The faults
//! of the menu, applied and healed one at a time.
//!
//! Everything is started from the calling (test) thread, which must live
//! until the run ends: a child process dies with the thread that started it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::history::FaultRecord;
use super::plan::{FaultKind, FaultPlan, NAMESPACES, STORM_THRESHOLD};
use super::quiet::until_quiet;
use super::sender::UPSTREAM_HEADER;
use crate::client;
use crate::e2e::edge;
use crate::envoy::envoy_bin;
use crate::fault_proxy::{Fault, FaultProxy, ProxiedCluster};
use crate::k8s::{ApiServer, Identity};
use crate::process::{free_port, temp_dir, wait_for, Proc};
use crate::remediation::{kube_sidecar, private_api_server, try_list, FALLBACK};
use crate::sidecar::Sidecar;

/// The sidecars' settings: short windows, so that a run of a minute sees
/// dedup windows expire, storms start, end and continue, and claims taken
/// over.
pub const SIDECAR_ENV: [(&str, &str); 12] = [
    ("SIGNALGATE_REDIS_TIMEOUT", "500ms"),
    ("SIGNALGATE_CLAIM_LEASE", "5s"),
    ("SIGNALGATE_REQUEST_DEADLINE", "4s"),
    ("SIGNALGATE_FLUSH_INTERVAL", "250ms"),
    ("SIGNALGATE_DEDUP_TTL", "5s"),
    ("SIGNALGATE_STORM_WINDOW", "4s"),
    ("SIGNALGATE_STORM_MAX_DURATION", "12s"),
    ("SIGNALGATE_STORM_MAX_AFFECTED", "1000"),
    ("SIGNALGATE_SHUTDOWN_GRACE", "3s"),
    ("SIGNALGATE_WORKER_THREADS", "1"),
    ("SIGNALGATE_LOG_FORMAT", "text"),
    ("RUST_LOG", "info,signalgate_sidecar=debug"),
];

pub struct System {
    pub api: ApiServer,
    pub api_proxy: FaultProxy,
    pub redis: ProxiedCluster,
    pub sidecars: Vec<Sidecar>,
    envoy: Proc,
    envoy_listen: u16,
    _dir: tempfile::TempDir,
}

impl System {
    pub fn start() -> System {
        let api = private_api_server();
        for ns in NAMESPACES {
            api.create_namespace(ns);
        }
        let dir = temp_dir("checker");
        let api_proxy = FaultProxy::to_port(api.port());
        let kubeconfig = proxied_kubeconfig(&api, &api_proxy, dir.path());
        let redis = ProxiedCluster::start(3);
        let url = redis.url();
        let threshold = STORM_THRESHOLD.to_string();
        let mut env: Vec<(&str, &str)> = vec![
            ("SIGNALGATE_REDIS_URL", &url),
            ("SIGNALGATE_STORM_THRESHOLD", &threshold),
            ("KUBECONFIG", &kubeconfig),
        ];
        env.extend(SIDECAR_ENV);
        let sidecars: Vec<Sidecar> = (1..=3)
            .map(|n| kube_sidecar(&api, &format!("sidecar-{n}"), &env))
            .collect();
        let ports: Vec<u16> = sidecars.iter().map(|s| s.api.port()).collect();
        let (envoy, envoy_listen) = start_envoy(&ports, dir.path());
        System {
            api,
            api_proxy,
            redis,
            sidecars,
            envoy,
            envoy_listen,
            _dir: dir,
        }
    }

    /// Where the senders post their webhooks.
    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/api/v1/signals/prometheus",
            self.envoy_listen
        )
    }

    /// `(port, name)` of each sidecar's signal API.
    pub fn upstreams(&self) -> Vec<(u16, String)> {
        self.sidecars
            .iter()
            .enumerate()
            .map(|(i, s)| (s.api.port(), format!("sidecar-{}", i + 1)))
            .collect()
    }

    /// Applies `f`, holds it, heals it, and says what happened (times from
    /// `started`).
    pub fn inject(&mut self, n: usize, f: &FaultPlan, started: Instant) -> FaultRecord {
        let ms = |i: Instant| i.duration_since(started).as_millis() as u64;
        let begin = Instant::now();
        let hold = Duration::from_millis(f.hold_ms);
        let sidecar = format!("sidecar-{}", f.target + 1);
        let node = format!("redis-node-{}", f.target);
        let (target, detail) = match f.kind {
            FaultKind::Kill => {
                let s = &mut self.sidecars[f.target];
                s.kill();
                std::thread::sleep(hold);
                let t = Instant::now();
                s.restart();
                (
                    sidecar,
                    format!("down {hold:?}, ready {:?} after restart", t.elapsed()),
                )
            }
            FaultKind::Term => {
                let s = &mut self.sidecars[f.target];
                let t = Instant::now();
                let exit = s.terminate(Duration::from_secs(20));
                let stopping = t.elapsed();
                std::thread::sleep(hold);
                s.restart();
                let exit = exit.map_or("did not exit in 20 s: killed".to_string(), |e| {
                    e.to_string()
                });
                (
                    sidecar,
                    format!("exited ({exit}) after {stopping:?}, down {hold:?}"),
                )
            }
            FaultKind::Stop => {
                let pid = sidecar_pid(&self.sidecars[f.target]);
                signal(pid, libc::SIGSTOP);
                std::thread::sleep(hold);
                signal(pid, libc::SIGCONT);
                (sidecar, format!("stopped {hold:?}"))
            }
            FaultKind::RedisDrop => {
                let proxy = &self.redis.proxies()[f.target];
                let before = proxy.replies_dropped();
                proxy.drop_replies_when(1, |req| contains(req, b"sg:{"));
                let fired = wait_until(hold, || proxy.replies_dropped() > before);
                proxy.drop_replies_when(0, |_| false);
                let what = if fired {
                    "the reply to one store call dropped"
                } else {
                    "no store call came: nothing dropped"
                };
                (node, what.to_string())
            }
            FaultKind::RedisSlow | FaultKind::RedisDelay => {
                let proxy = &self.redis.proxies()[f.target];
                proxy.set_fault(Fault::Delay(Duration::from_millis(f.param_ms)));
                std::thread::sleep(hold);
                proxy.pass();
                (
                    node,
                    format!("every request delayed {}ms for {hold:?}", f.param_ms),
                )
            }
            FaultKind::RedisBlackhole => {
                let proxy = &self.redis.proxies()[f.target];
                proxy.set_fault(Fault::Blackhole);
                std::thread::sleep(hold);
                proxy.pass();
                (node, format!("blackholed {hold:?}"))
            }
            FaultKind::RedisFlush => {
                let out = self.redis.cluster().cli(f.target, &["FLUSHALL"]);
                (node, format!("FLUSHALL: {}", out.trim()))
            }
            FaultKind::ApiDown => {
                // SIGTERM: it shuts down gracefully (SIGKILL after 10 s).
                let t = Instant::now();
                self.api.stop();
                let stopping = t.elapsed();
                std::thread::sleep(hold);
                let t = Instant::now();
                self.api.restart();
                (
                    "kube-apiserver".to_string(),
                    format!(
                        "stopped in {stopping:?}, down {hold:?}, ready {:?} after restart",
                        t.elapsed()
                    ),
                )
            }
            FaultKind::ApiSlow => {
                let delay = Duration::from_millis(f.param_ms);
                self.api_proxy.set_fault(Fault::Delay(delay));
                std::thread::sleep(hold);
                self.api_proxy.pass();
                (
                    "kube-apiserver proxy".to_string(),
                    format!("every request delayed {delay:?} for {hold:?}"),
                )
            }
            FaultKind::ApiBlackhole => {
                self.api_proxy.set_fault(Fault::Blackhole);
                std::thread::sleep(hold);
                self.api_proxy.pass();
                (
                    "kube-apiserver proxy".to_string(),
                    format!("blackholed {hold:?}"),
                )
            }
        };
        FaultRecord {
            n,
            kind: f.kind,
            target,
            detail,
            start_ms: ms(begin),
            end_ms: ms(Instant::now()),
        }
    }

    /// Every resource in the run's namespaces and the fallback namespace,
    /// once the system is quiet: nothing pending on any sidecar, nothing in
    /// the store's index of unwritten changes (what a killed sidecar left
    /// is written by another a few seconds later) and no resource changed
    /// for a while ([`until_quiet`]). `Err` with the last listing when it
    /// does not go quiet in time.
    pub fn quiesce(&mut self) -> Result<Vec<Value>, (String, Vec<Value>)> {
        for p in self.redis.proxies() {
            p.pass();
        }
        self.api_proxy.pass();
        if !self.api.is_running() {
            self.api.restart();
        }
        until_quiet(
            || self.list(),
            || {
                self.sidecars
                    .iter()
                    .map(|s| s.metric("signalgate_pending_updates"))
                    .sum::<f64>()
                    + self.unwritten() as f64
            },
        )
    }

    /// Resources in the store's index of unwritten changes, all namespaces.
    fn unwritten(&self) -> u64 {
        NAMESPACES
            .iter()
            .map(|ns| {
                let key = format!("sg:{{{ns}}}:d");
                let node = self.redis.node_for_key(&key);
                let n = self.redis.cluster().cli(node, &["ZCARD", &key]);
                n.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("ZCARD {key} on redis-node-{node}: {n:?}"))
            })
            .sum()
    }

    fn list(&self) -> Result<Vec<Value>, String> {
        let mut all = Vec::new();
        for ns in NAMESPACES.iter().chain([&FALLBACK]) {
            all.extend(try_list(&self.api, ns)?);
        }
        Ok(all)
    }

    /// Which Redis node holds each namespace's keys, for a report.
    pub fn layout(&self) -> String {
        let mut out = String::new();
        for ns in NAMESPACES {
            let node = self.redis.node_for_key(&format!("sg:{{{ns}}}:w"));
            let _ = writeln!(out, "  {ns}: keys on redis-node-{node}");
        }
        let proxies = self.redis.proxies().iter().enumerate();
        let named = proxies
            .map(|(i, p)| (format!("redis-node-{i}"), p))
            .chain([("kube-apiserver".to_string(), &self.api_proxy)]);
        for (name, p) in named {
            let _ = writeln!(
                out,
                "  proxy of {name}: {} connections, {} bytes up, {} down, {} replies dropped",
                p.accepted(),
                p.bytes_up(),
                p.bytes_down(),
                p.replies_dropped()
            );
        }
        out
    }

    /// Copies the sidecars', Envoy's and the kube-apiserver's logs to `dir`
    /// (their own directories go with the run).
    pub fn save_logs(&self, dir: &std::path::Path) {
        let _ = std::fs::create_dir_all(dir);
        let mut logs: Vec<(PathBuf, String)> = self
            .sidecars
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let name = format!("sidecar-{}.log", i + 1);
                (s.log_dir().join(&name), name)
            })
            .collect();
        logs.push((self.envoy.log_path().to_path_buf(), "envoy.log".into()));
        logs.push((
            self.api.dir().join("kube-apiserver.log"),
            "kube-apiserver.log".into(),
        ));
        for (from, name) in logs {
            let _ = std::fs::copy(&from, dir.join(name));
        }
    }
}

/// A sidecar kubeconfig whose server is the fault proxy in front of the
/// API server (its certificate names 127.0.0.1, whatever the port).
fn proxied_kubeconfig(api: &ApiServer, proxy: &FaultProxy, dir: &std::path::Path) -> String {
    let original = api.kubeconfig(Identity::Sidecar);
    let text = std::fs::read_to_string(&original).expect("read the sidecar's kubeconfig");
    let mut config: Value = serde_json::from_str(&text).expect("the kubeconfig is JSON");
    config["clusters"][0]["cluster"]["server"] =
        Value::String(format!("https://127.0.0.1:{}", proxy.port()));
    let path: PathBuf = dir.join("sidecar-via-proxy.kubeconfig");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.display().to_string()
}

/// Envoy on `envoy/e2e.yaml.tmpl` with every answer naming its upstream.
fn start_envoy(ports: &[u16], dir: &std::path::Path) -> (Proc, u16) {
    let (listen, admin) = (free_port(), free_port());
    let template = edge::template();
    const ROUTE: &str = "                route: { cluster: sidecar, timeout: 30s }\n";
    assert!(
        template.contains(ROUTE),
        "envoy/e2e.yaml.tmpl changed its route: {ROUTE:?}"
    );
    let template = template.replace(
        ROUTE,
        &format!(
            "{ROUTE}                response_headers_to_add: [{{header: {{key: {UPSTREAM_HEADER}, \
             value: \"%UPSTREAM_REMOTE_ADDRESS%\"}}}}]\n"
        ),
    );
    let config = edge::config(&template, listen, admin, ports, crate::e2e::OPEN);
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).expect("write envoy.yaml");
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c")
        .arg(&path)
        .arg("--concurrency")
        .arg("1")
        .arg("--disable-hot-restart")
        .args(["-l", "warning"]);
    let mut proc = Proc::spawn("envoy", cmd, dir);
    let ready = format!("http://127.0.0.1:{admin}/ready");
    wait_for("Envoy to be ready", Duration::from_secs(60), || {
        proc.assert_running();
        client::get(&ready)
            .is_ok_and(|a| a.status == 200)
            .then_some(())
    });
    (proc, listen)
}

/// The pid of a running sidecar: the child of this process whose
/// environment says it listens on the sidecar's address.
fn sidecar_pid(s: &Sidecar) -> i32 {
    let me = std::process::id().to_string();
    let needle = format!("SIGNALGATE_LISTEN={}", s.api);
    let found = std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so from its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid != Some(me.as_str()) {
                return false;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        });
    found.unwrap_or_else(|| panic!("no child process listens as {}", s.api))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: a plain syscall on a child process of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Polls `cond` until it holds (true) or `timeout` passes (false).
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
