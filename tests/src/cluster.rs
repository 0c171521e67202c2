//! The local single-node cluster (`scripts/cluster.sh`) with the shipped
//! manifests applied through the test overlay
//! (`tests/fixtures/cluster/overlay`), for `tests/tests/cluster.rs`.
//!
//! The cluster is one per machine (a fixed network namespace and
//! addresses), so the tests of a process take turns ([`Cluster::lease`]):
//! the first brings it up (or finds it up: then it is left up), the last
//! one out takes down a cluster this process started (unless
//! `SIGNALGATE_CLUSTER_KEEP=1`, for looking around afterwards).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client;
use crate::remediation::items_by_name;
use crate::workspace;

/// Where the manifests put signalgate.
pub const NAMESPACE: &str = "signalgate-system";
/// The images the overlay names, as `make images` writes them.
const IMAGES: [&str; 4] = [
    "signalgate-sidecar.tar",
    "signalgate-filter-init.tar",
    "envoy.tar",
    "redis.tar",
];
/// The in-cluster Redis (the overlay's fixed ClusterIP), reached from the
/// host through the route `scripts/cluster.sh` adds.
pub const REDIS_HOST: &str = "10.96.0.50";
/// Every pod of the overlay Ready, from `kubectl apply` on.
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The edge pods' labels (the Deployment's selector).
pub const EDGE_SELECTOR: &str =
    "app.kubernetes.io/name=signalgate,app.kubernetes.io/component=edge";

/// What the tests change in the overlay as `scripts/cluster.sh render`
/// gives it, and why: the filter's rate limit. Every test sender reaches
/// the Service from the node, so kube-proxy's masquerade makes them all one
/// source, and the load test sends several hundred requests a minute
/// (docs/deploying.md, "Rate limits behind NAT"). The Envoy ConfigMap is
/// renamed with it, so pods deployed without it roll.
const REWRITES: [(&str, &str); 1] = [(
    r#""requests_per_minute": 100, "burst": 100,"#,
    r#""requests_per_minute": 100000, "burst": 100000,"#,
)];
/// The suffix of the rewritten Envoy ConfigMap's name.
const REWRITTEN: &str = "-tests";

/// The tests of this process on the cluster.
struct Shared {
    /// Tests that hold or wait for a lease.
    users: usize,
    /// This process started the cluster (and so takes it down).
    started_here: bool,
    /// The images are imported into the running cluster.
    imported: bool,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    users: 0,
    started_here: false,
    imported: false,
});
/// One test at a time changes the cluster.
static TURN: Mutex<()> = Mutex::new(());

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn script() -> PathBuf {
    workspace::root().join("scripts/cluster.sh")
}

/// `cmd`'s output; panics with its error output unless it succeeded.
fn succeeded(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `scripts/cluster.sh ARGS`' standard output and error; panics with its
/// error output when it fails.
fn cluster_sh<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (String, String) {
    let out = succeeded(Command::new("bash").arg(script()).args(args));
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Counts a test in while it lives; the last one out takes down a cluster
/// this process started. Made before anything can panic, so a failed start
/// is counted out.
struct User;

impl User {
    fn enter() -> User {
        lock(&SHARED).users += 1;
        User
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let mut shared = lock(&SHARED);
        shared.users -= 1;
        let keep = std::env::var("SIGNALGATE_CLUSTER_KEEP").as_deref() == Ok("1");
        if shared.users == 0 && shared.started_here && !keep {
            let _ = Command::new("bash").arg(script()).arg("down").output();
            shared.started_here = false;
            shared.imported = false;
        }
    }
}

/// This test's turn on the cluster, with the overlay applied and rolled out.
pub struct Cluster {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    state: PathBuf,
    // Field order is drop order: the turn goes before the count.
    _turn: MutexGuard<'static, ()>,
    _user: User,
}

impl Cluster {
    /// Waits for this test's turn; brings the cluster up if it is not,
    /// imports the images, applies the overlay and waits until every pod
    /// is Ready (panics with the cluster's state otherwise).
    pub fn lease() -> Cluster {
        let user = User::enter();
        let turn = lock(&TURN);
        let (env, log) = cluster_sh(&["up"]);
        let import = {
            let mut shared = lock(&SHARED);
            if !log.contains("already up") {
                shared.started_here = true;
                shared.imported = false;
            }
            !shared.imported
        };
        let var = |name: &str| -> PathBuf {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("scripts/cluster.sh up printed no {name}: {env}"))
                .into()
        };
        let cluster = Cluster {
            kubectl: var("SIGNALGATE_CLUSTER_KUBECTL"),
            kubeconfig: var("KUBECONFIG"),
            state: var("SIGNALGATE_CLUSTER_STATE"),
            _turn: turn,
            _user: user,
        };
        if import {
            cluster.import_images();
            lock(&SHARED).imported = true;
        }
        // A test that ended mid-drain may have left it cordoned.
        cluster.kubectl_ok(&["uncordon", &cluster.node()]);
        cluster.apply_overlay();
        cluster.wait_rolled_out();
        cluster
    }

    fn import_images(&self) {
        // Where scripts/images.sh writes them.
        let dir = workspace::root().join("target/images");
        let mut args: Vec<PathBuf> = vec!["import".into()];
        for image in IMAGES {
            let tar = dir.join(image);
            assert!(
                tar.exists(),
                "{} is missing: run `make images`",
                tar.display()
            );
            args.push(tar);
        }
        cluster_sh(&args);
    }

    /// The overlay as `scripts/cluster.sh render` gives it, with
    /// [`REWRITES`], applied.
    fn apply_overlay(&self) {
        let (mut rendered, _) = cluster_sh(&["render"]);
        for (from, to) in REWRITES {
            assert!(
                rendered.contains(from),
                "the rendered overlay no longer holds {from:?}: update REWRITES"
            );
            rendered = rendered.replace(from, to);
        }
        let envoy_config = rendered
            .lines()
            .find_map(|l| l.trim().strip_prefix("name: signalgate-envoy-"))
            .map(|hash| format!("signalgate-envoy-{hash}"))
            .expect("the rendered overlay names the Envoy ConfigMap");
        rendered = rendered.replace(&envoy_config, &format!("{envoy_config}{REWRITTEN}"));
        let file = self.state.join("overlay.yaml");
        std::fs::write(&file, rendered).expect("write the rendered overlay");
        self.kubectl_ok(&["apply", "-f", &file.to_string_lossy()]);
    }

    /// Both Deployments rolled out, and the edge pods are the Deployment's
    /// replicas, all Ready: none left shutting down from an earlier test.
    pub fn wait_rolled_out(&self) {
        self.wait_rollout_status();
        let replicas = self.get_json(&["-n", NAMESPACE, "deployment", "signalgate"])["spec"]
            ["replicas"]
            .as_u64()
            .unwrap_or(0) as usize;
        self.wait_pods(
            "the Deployment's replicas only, all Ready",
            READY_TIMEOUT,
            |pods| {
                pods.len() == replicas
                    && pods
                        .iter()
                        .all(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p))
            },
        );
    }

    /// `kubectl rollout status` of both Deployments (pods of an old
    /// ReplicaSet may still be shutting down).
    pub fn wait_rollout_status(&self) {
        for deploy in ["deployment/redis", "deployment/signalgate"] {
            let timeout = format!("--timeout={}s", READY_TIMEOUT.as_secs());
            let out = self.kubectl(&["-n", NAMESPACE, "rollout", "status", deploy, &timeout]);
            assert!(
                out.status.success(),
                "{deploy} not rolled out within {READY_TIMEOUT:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
    }

    /// kubectl as the cluster's admin.
    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        cmd
    }

    /// Runs kubectl as the cluster's admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        let mut cmd = self.kubectl_command(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
    }

    /// kubectl's output; panics with its error when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = succeeded(&mut self.kubectl_command(args));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let text = self.kubectl_ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {all:?}: {e}: {text}"))
    }

    /// The node's name.
    pub fn node(&self) -> String {
        self.kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])
    }

    pub fn create_namespace(&self, ns: &str) {
        let out = self.kubectl(&["create", "namespace", ns]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("AlreadyExists"),
            "creating namespace {ns}: {err}"
        );
    }

    /// `namespaces` (with their resources) and the store's records of them
    /// deleted, then created empty: a test whose senders replay fixed
    /// bodies starts from nothing, also on a cluster kept from a run before.
    pub fn fresh_namespaces(&self, namespaces: &[&str]) {
        let mut args = vec![
            "delete",
            "namespace",
            "--ignore-not-found",
            "--timeout=120s",
        ];
        args.extend_from_slice(namespaces);
        self.kubectl_ok(&args);
        for ns in namespaces {
            let pattern = format!("sg:{{{ns}}}:*");
            let keys = self.redis_cli(&["--scan", "--pattern", &pattern]);
            for key in keys.lines().filter(|k| !k.is_empty()) {
                self.redis_cli(&["DEL", key]);
            }
            self.create_namespace(ns);
        }
    }

    /// `http://<the signalgate Service's ClusterIP>:8080<path>`: through
    /// kube-proxy, as a sender in the cluster reaches it.
    pub fn service_url(&self, path: &str) -> String {
        let svc = self.get_json(&["-n", NAMESPACE, "service", "signalgate"]);
        let ip = svc["spec"]["clusterIP"].as_str().expect("a ClusterIP");
        format!("http://{ip}:8080{path}")
    }

    /// The edge pods (name, IP, phase, conditions, containers).
    pub fn edge_pods(&self) -> Vec<Value> {
        self.get_json(&["-n", NAMESPACE, "pods", "-l", EDGE_SELECTOR])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The addresses the signalgate Service sends to (Ready pods).
    pub fn ready_endpoints(&self) -> Vec<String> {
        let ep = self.get_json(&["-n", NAMESPACE, "endpoints", "signalgate"]);
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(str::to_string))
            .collect()
    }

    /// The RemediationRequests in `ns`, sorted by name.
    pub fn remediation_requests(&self, ns: &str) -> Result<Vec<Value>, String> {
        let out = self.kubectl(&["-n", ns, "get", "remediationrequests", "-o", "json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).to_string());
        }
        items_by_name(ns, &String::from_utf8_lossy(&out.stdout))
    }

    /// The API server's audit events (RemediationRequests only: see the
    /// policy in `scripts/cluster.sh`).
    pub fn audit_events(&self) -> Vec<Value> {
        let path = self.state.join("audit.log");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `redis-cli` against the in-cluster Redis.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = succeeded(
            Command::new("redis-cli")
                .args(["-h", REDIS_HOST, "-p", "6379"])
                .args(args),
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `GET http://<pod IP>:<port><path>` from the host (the pod network is
    /// routed through the node): the status, or why none.
    pub fn pod_get(pod: &Value, port: u16, path: &str) -> Result<client::Answer, String> {
        let ip = pod["status"]["podIP"].as_str().ok_or("no pod IP")?;
        client::get(&format!("http://{ip}:{port}{path}"))
    }

    /// SIGKILLs `container` of `pod` through containerd, as the kernel's OOM
    /// killer or a crash would end it (kubelet then restarts it).
    pub fn kill_container(&self, pod: &Value, container: &str) {
        let id = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == container)
            .and_then(|c| c["containerID"].as_str())
            .and_then(|id| id.strip_prefix("containerd://"))
            .unwrap_or_else(|| panic!("no running {container} in {}", pod["metadata"]["name"]))
            .to_string();
        let socket = self.state.join("containerd/containerd.sock");
        succeeded(Command::new("ctr").arg("--address").arg(&socket).args([
            "--namespace",
            "k8s.io",
            "task",
            "kill",
            "--signal",
            "SIGKILL",
            &id,
        ]));
    }

    /// Waits until `cond` holds for the edge pods (panics with the cluster's
    /// state after `timeout`).
    pub fn wait_pods(&self, what: &str, timeout: Duration, cond: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(&self.edge_pods()) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.diagnostics()
            );
            // Each look is a kubectl process: not back to back on 2 cores.
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Pods, recent events and the tail of every component's and edge
    /// container's log: what a failed test prints.
    pub fn diagnostics(&self) -> String {
        let run = |args: &[&str]| {
            let out = self.kubectl(args);
            format!(
                "$ kubectl {}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let mut out = run(&["get", "pods", "-A", "-o", "wide"]);
        out.push_str(&run(&["get", "events", "-A", "--sort-by=.lastTimestamp"]));
        for c in ["envoy", "sidecar"] {
            out.push_str(&run(&[
                "-n",
                NAMESPACE,
                "logs",
                "-l",
                EDGE_SELECTOR,
                "-c",
                c,
                "--tail=20",
            ]));
        }
        for name in ["kubelet", "kube-proxy", "containerd"] {
            let log =
                std::fs::read_to_string(self.state.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}.log (last lines)\n"));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A panic's message.
pub fn panic_text(e: &Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Whether `pod` is Ready (its Ready condition).
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
