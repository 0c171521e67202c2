//! Private Redis for tests: a standalone `redis-server` ([`RedisServer`]) or a
//! Redis Cluster of N masters ([`RedisCluster`]), each on free loopback ports
//! with its own temporary directory, no persistence (`--save ""
//! --appendonly no`), killed with the test.
//!
//! [`RedisServer::shared`] and [`RedisCluster::shared`] hand out one server
//! (one cluster) per test process for tests that isolate themselves by key
//! (e.g. by namespace), so a suite does not pay a cluster start per test.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

use crate::process::{free_port, temp_dir, wait_for, Proc};

/// How long a server may take to answer PING, a cluster to reach `cluster_state:ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `redis-server` process on a fixed port.
struct Node {
    port: u16,
    dir: PathBuf,
    name: String,
    extra: Vec<String>,
    proc: Option<Proc>,
}

impl Node {
    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg("")
            .args(&self.extra);
        let mut proc = Proc::spawn(&self.name, cmd, &self.dir);
        let port = self.port;
        wait_for(
            &format!("redis-server on port {port} to answer PING"),
            READY_TIMEOUT,
            || {
                proc.assert_running();
                (command(port, "PING").as_deref() == Some("+PONG")).then_some(())
            },
        );
        self.proc = Some(proc);
    }

    fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.kill();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

/// Sends one inline command on a fresh connection and returns the first
/// reply line (e.g. `+PONG`), or `None` when nothing answers.
fn command(port: u16, line: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&reply);
    text.lines().next().map(str::to_string)
}

/// `redis-cli -h 127.0.0.1 -p port args...`: its stdout; panics if it fails.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    assert!(
        out.status.success(),
        "redis-cli -p {port} {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Feeds `commands` (one per line, e.g. `PTTL key`) to one `redis-cli` on
/// stdin: one reply line each (panics if redis-cli fails).
fn cli_batch(port: u16, commands: &[String]) -> Vec<String> {
    use std::process::Stdio;
    let mut child = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
    let mut input = commands.join("\n");
    input.push('\n');
    let mut stdin = child.stdin.take().expect("redis-cli stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("redis-cli: {e}"));
    let _ = writer.join();
    assert!(
        out.status.success(),
        "redis-cli -p {port} (stdin) failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `field:value` lines of an `INFO` answer, as pairs.
pub fn parse_info(info: &str) -> Vec<(String, String)> {
    info.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A private standalone `redis-server`.
pub struct RedisServer {
    node: Node,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port, ready (answers PING).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments
    /// (configuration directives such as `--rename-command GETEX ""`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = temp_dir("redis");
        let mut node = Node {
            port: free_port(),
            dir: dir.path().to_path_buf(),
            name: "redis-server".to_string(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            proc: None,
        };
        node.spawn();
        RedisServer { node, dir }
    }

    /// One server for the whole test process (started on first use, killed
    /// when the process exits). Tests sharing it must use their own keys.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<&'static RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            let server = keep_forever(RedisServer::start);
            at_exit(
                server.node.proc.iter().filter_map(Proc::pid).collect(),
                server.dir(),
            );
            server
        })
    }

    /// `redis://127.0.0.1:PORT` (the same across `stop`/`start_again`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.node.port)
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// The server's private directory (its log is `redis-server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&self) -> bool {
        self.node.proc.is_some()
    }

    /// Kills the server (SIGKILL, like a crash). Its data is gone: there is no
    /// persistence. Clients get "connection refused" until `start_again`.
    pub fn stop(&mut self) {
        self.node.stop();
    }

    /// Starts the server again on the same port, and waits for PING: empty,
    /// or with what the test last saved (`SAVE` writes its `dump.rdb`).
    pub fn start_again(&mut self) {
        self.node.stop();
        self.node.spawn();
    }

    /// Runs `redis-cli` against this server: its stdout (panics on failure).
    /// E.g. `cli(&["INFO", "commandstats"])`.
    pub fn cli(&self, args: &[&str]) -> String {
        self.node.cli(args)
    }

    /// Runs `commands` through one `redis-cli` (stdin): one reply line each.
    pub fn cli_batch(&self, commands: &[String]) -> Vec<String> {
        cli_batch(self.node.port, commands)
    }

    /// One field of `INFO <section>`, e.g. `info("stats", "total_reads_processed")`.
    pub fn info(&self, section: &str, field: &str) -> Option<String> {
        parse_info(&self.cli(&["INFO", section]))
            .into_iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
    }

    /// Starts `redis-cli MONITOR` against this server; see [`Monitor`].
    pub fn monitor(&self) -> Monitor {
        Monitor::start(self.node.port, self.dir())
    }

    /// The server log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        self.node
            .proc
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default()
    }
}

/// `redis-cli MONITOR` running in the background: every command the server
/// executes, one line each (`<time> [<db> <client addr>] "CMD" "arg"...`;
/// commands run by scripts show `lua` as the client).
pub struct Monitor {
    proc: Proc,
}

impl Monitor {
    fn start(port: u16, dir: &Path) -> Monitor {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-h")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(port.to_string())
            .arg("MONITOR");
        let mut proc = Proc::spawn(&format!("monitor-{n}"), cmd, dir);
        wait_for("redis-cli MONITOR to start", READY_TIMEOUT, || {
            proc.assert_running();
            proc.log().starts_with("OK").then_some(())
        });
        Monitor { proc }
    }

    /// The lines seen so far (the leading `OK` excluded).
    pub fn lines(&self) -> Vec<String> {
        self.proc
            .log()
            .lines()
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    /// Waits until a line contains `needle` (e.g. an `ECHO` marker) and
    /// returns all lines up to and including it.
    pub fn wait_for_line(&self, needle: &str) -> Vec<String> {
        wait_for(
            &format!("MONITOR to show {needle:?}"),
            READY_TIMEOUT,
            || {
                let lines = self.lines();
                let at = lines.iter().position(|l| l.contains(needle))?;
                Some(lines[..=at].to_vec())
            },
        )
    }
}

/// A private Redis Cluster: N masters, no replicas, every slot assigned.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) `redis-server --cluster-enabled yes` on
    /// free ports (client and bus), joins them with `redis-cli --cluster
    /// create`, and waits until every node says `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        RedisCluster::start_announcing(masters, |_, port| port)
    }

    /// Like [`RedisCluster::start`], each node `i` (listening on `port`)
    /// announcing itself to the cluster and its clients (`CLUSTER SLOTS`,
    /// `CLUSTER NODES`, redirects) at `127.0.0.1:announce(i, port)`, e.g. a
    /// proxy's port (see `fault_proxy::ProxiedCluster`); its cluster bus is
    /// announced as it is. [`RedisCluster::master_port_for_key`] and
    /// `redis-cli --cluster` then see the announced ports: something must
    /// forward them to the nodes from the start.
    pub fn start_announcing(
        masters: usize,
        mut announce: impl FnMut(usize, u16) -> u16,
    ) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let dir = temp_dir("redis-cluster");
        let mut nodes = Vec::with_capacity(masters);
        for i in 0..masters {
            let port = free_port();
            let bus = free_port();
            let node_dir = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", node_dir.display()));
            let mut node = Node {
                port,
                dir: node_dir.clone(),
                name: format!("redis-cluster-{i}"),
                extra: [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                    "--cluster-config-file",
                    &node_dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    "5000",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
                proc: None,
            };
            let announced = announce(i, port);
            if announced != port {
                node.extra.extend([
                    "--cluster-announce-ip".to_string(),
                    "127.0.0.1".to_string(),
                    "--cluster-announce-port".to_string(),
                    announced.to_string(),
                    "--cluster-announce-bus-port".to_string(),
                    bus.to_string(),
                ]);
            }
            node.spawn();
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = nodes[0].cli(&args);
        let cluster = RedisCluster { nodes, dir };
        wait_for(
            "every cluster node to say cluster_state:ok",
            READY_TIMEOUT,
            || {
                cluster
                    .nodes
                    .iter()
                    .all(|n| {
                        let info = n.cli(&["CLUSTER", "INFO"]);
                        info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
                    })
                    .then_some(())
            },
        );
        assert!(
            out.contains("All 16384 slots covered"),
            "redis-cli --cluster create:\n{out}"
        );
        cluster
    }

    /// One 3-master cluster for the whole test process (see [`RedisServer::shared`]).
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<&'static RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| {
            let cluster = keep_forever(|| RedisCluster::start(3));
            at_exit(
                cluster
                    .nodes
                    .iter()
                    .filter_map(|n| n.proc.as_ref().and_then(Proc::pid))
                    .collect(),
                cluster.dir.path(),
            );
            cluster
        })
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`, the form `RedisStore` takes.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Runs `redis-cli` against node `i`.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        self.nodes[i].cli(args)
    }

    /// Runs `commands` through one `redis-cli` (stdin) against node `i`.
    pub fn cli_batch(&self, i: usize, commands: &[String]) -> Vec<String> {
        cli_batch(self.nodes[i].port, commands)
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_port_for_key(&self, key: &str) -> u16 {
        let slot: u16 = self
            .cli(0, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {e}"));
        let nodes = self.cli(0, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap_or_default();
                let port = addr.rsplit(':').next().unwrap_or_default();
                return port
                    .parse()
                    .unwrap_or_else(|e| panic!("port of {addr:?}: {e}"));
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }
}

/// Runs `start` on a thread that never exits, and leaks what it returns.
/// Children die with the thread that spawned them (`PR_SET_PDEATHSIG` fires
/// on the spawning *thread's* exit), so a server shared by several tests must
/// not be started on one test's thread.
fn keep_forever<T: Send + Sync + 'static>(start: fn() -> T) -> &'static T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("redis-keeper".to_string())
        .spawn(move || {
            let value: &'static T = Box::leak(Box::new(start()));
            let _ = tx.send(value);
            loop {
                std::thread::park();
            }
        })
        .expect("spawn the redis keeper thread");
    rx.recv()
        .expect("the shared Redis failed to start (see the panic above)")
}

static CLEANUP: Mutex<Vec<(Vec<u32>, PathBuf)>> = Mutex::new(Vec::new());

/// At process exit: kill `pids` and remove `dir` (shared servers are never dropped).
fn at_exit(pids: Vec<u32>, dir: &Path) {
    extern "C" fn cleanup() {
        let entries = std::mem::take(&mut *CLEANUP.lock().unwrap_or_else(|p| p.into_inner()));
        for (pids, dir) in entries {
            for pid in pids {
                // SAFETY: plain syscall on a child we started.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            if std::env::var_os("SIGNALGATE_KEEP_TMP").is_none() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: registers a plain extern "C" function.
        unsafe {
            libc::atexit(cleanup);
        }
    });
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((pids, dir.to_path_buf()));
}
