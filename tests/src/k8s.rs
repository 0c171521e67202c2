//! A private, real Kubernetes API server (kube-apiserver 1.20.2 + etcd, built
//! from Debian packages by `scripts/k8s.sh build`) for one test.
//!
//! ```no_run
//! use signalgate_tests::k8s::{ApiServer, Identity};
//! let mut k8s = ApiServer::start();
//! k8s.create_namespace("signalgate-system");
//! let (status, _body) = k8s.get(Identity::Sidecar, "/api/v1/namespaces");
//! assert_eq!(status, 403);
//! k8s.stop(); // the API server is gone (connection refused), etcd keeps the data
//! k8s.restart(); // same port, same data
//! ```
//!
//! Both processes die with the test process (PR_SET_PDEATHSIG) and are killed
//! when the `ApiServer` is dropped. TLS is verified against a CA generated per
//! instance; authentication is by static bearer tokens (`tokens.csv`),
//! authorization is RBAC.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::process::{free_port, temp_dir, wait_for, Proc};
use crate::workspace;

/// How long `start`/`restart` wait for `/readyz` to answer 200.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The user name the sidecar's token authenticates as.
pub const SIDECAR_USER: &str = "system:serviceaccount:signalgate-system:signalgate-sidecar";

/// Who a request, kubeconfig or kubectl call acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// `signalgate-admin`, group `system:masters`: may do anything.
    Admin,
    /// [`SIDECAR_USER`], groups `system:serviceaccounts`,
    /// `system:serviceaccounts:signalgate-system`, `system:authenticated`:
    /// may do only what RBAC grants it.
    Sidecar,
}

impl Identity {
    fn file_stem(self) -> &'static str {
        match self {
            Identity::Admin => "admin",
            Identity::Sidecar => "sidecar",
        }
    }
}

/// The cached bin dir with `kube-apiserver`, `etcd` and `kubectl`
/// (`SIGNALGATE_K8S_BIN_DIR` if set, else `scripts/k8s.sh bin-dir`).
/// Panics with instructions when they have not been built.
pub fn bin_dir() -> PathBuf {
    const HINT: &str = "kube-apiserver is not built: run `scripts/k8s.sh build` \
                        (or `make k8s-build`) once; it caches the binaries under \
                        ~/.cache/signalgate/k8s/ (about 5-10 minutes cold)";
    let dir = match std::env::var_os("SIGNALGATE_K8S_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let out = Command::new("bash")
                .arg(workspace::root().join("scripts/k8s.sh"))
                .arg("bin-dir")
                .output()
                .unwrap_or_else(|e| panic!("cannot run scripts/k8s.sh bin-dir: {e}"));
            if !out.status.success() {
                panic!("{HINT}\n{}", String::from_utf8_lossy(&out.stderr));
            }
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    for bin in ["kube-apiserver", "etcd", "kubectl"] {
        assert!(
            dir.join(bin).is_file(),
            "{} missing: {HINT}",
            dir.join(bin).display()
        );
    }
    dir
}

/// A running etcd + kube-apiserver pair on free loopback ports.
pub struct ApiServer {
    // Field order is drop order: the API server goes before etcd, both before
    // their directory is removed.
    apiserver: Option<Proc>,
    etcd: Proc,
    port: u16,
    etcd_url: String,
    bin_dir: PathBuf,
    admin_token: String,
    sidecar_token: String,
    http: ureq::Agent,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts a fresh, empty cluster and waits until `/readyz` answers 200.
    pub fn start() -> ApiServer {
        let bin_dir = bin_dir();
        let dir = temp_dir("k8s");
        let pki = dir.path().join("pki");
        let out = Command::new("bash")
            .arg(workspace::root().join("scripts/k8s.sh"))
            .arg("pki")
            .arg(&pki)
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/k8s.sh pki: {e}"));
        assert!(
            out.status.success(),
            "scripts/k8s.sh pki failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |name: &str| {
            let path = pki.join(name);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
                .trim()
                .to_string()
        };
        let admin_token = read("admin.token");
        let sidecar_token = read("sidecar.token");
        let ca_pem = std::fs::read(pki.join("ca.crt")).expect("read ca.crt");
        let http = http_agent(&ca_pem);

        let etcd_port = free_port();
        let peer_port = free_port();
        let mut etcd = Command::new(bin_dir.join("etcd"));
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        etcd.arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                dir.path().join("etcd-data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"));
        let mut etcd = spawn_kept("etcd", etcd, dir.path());
        let health = format!("{client_url}/health");
        wait_for("etcd /health", Duration::from_secs(30), || {
            etcd.assert_running();
            (status_of(&http, &health, None) == Some(200)).then_some(())
        });

        let mut server = ApiServer {
            apiserver: None,
            etcd,
            port: free_port(),
            etcd_url: client_url,
            bin_dir,
            admin_token,
            sidecar_token,
            http,
            dir,
        };
        server.restart();
        server
    }

    /// `https://127.0.0.1:PORT` (stays the same across `stop`/`restart`).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Bearer token of `signalgate-admin` (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Bearer token of [`SIDECAR_USER`].
    pub fn sidecar_token(&self) -> &str {
        &self.sidecar_token
    }

    pub fn token(&self, identity: Identity) -> &str {
        match identity {
            Identity::Admin => &self.admin_token,
            Identity::Sidecar => &self.sidecar_token,
        }
    }

    /// The PEM file of the CA that signed the API server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("pki/ca.crt")
    }

    /// This instance's private directory (logs, etcd data, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes (or rewrites) a kubeconfig for `identity` and returns its path:
    /// server `url()`, the generated CA, token authentication.
    pub fn kubeconfig(&self, identity: Identity) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("{}.kubeconfig", identity.file_stem()));
        let name = format!("signalgate-{}", identity.file_stem());
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "signalgate", "cluster": {
                "server": self.url(),
                "certificate-authority": self.ca_path(),
            }}],
            "users": [{"name": name, "user": {"token": self.token(identity)}}],
            "contexts": [{"name": name, "context": {"cluster": "signalgate", "user": name}}],
            "current-context": name,
        });
        // JSON is YAML: every kubeconfig reader accepts it.
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json"))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Runs Debian's `kubectl` (from the cached bin dir) as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(Identity::Admin, args)
    }

    /// Runs Debian's `kubectl` as `identity`.
    pub fn kubectl_as(&self, identity: Identity, args: &[&str]) -> Output {
        Command::new(self.bin_dir.join("kubectl"))
            .arg(format!(
                "--kubeconfig={}",
                self.kubeconfig(identity).display()
            ))
            .arg(format!(
                "--cache-dir={}",
                self.kubectl_cache_dir().display()
            ))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
    }

    fn kubectl_cache_dir(&self) -> PathBuf {
        self.dir.path().join("kubectl-cache")
    }

    /// `kubectl` as the admin, panicking (with its output) unless it succeeds;
    /// returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f path` (a file or a directory) as the admin; any
    /// CustomResourceDefinition among them is waited for until Established.
    pub fn apply_file(&self, path: &Path) {
        let path = path.to_str().expect("utf-8 path");
        let applied = self.kubectl_ok(&["apply", "-f", path, "-o", "name"]);
        for name in applied.lines().map(str::trim) {
            if let Some(crd) = name.strip_prefix("customresourcedefinition.apiextensions.k8s.io/") {
                self.wait_crd_established(crd);
            }
        }
    }

    /// Waits until the CRD `name` (e.g. `widgets.example.com`) is Established,
    /// then drops kubectl's discovery cache: kubectl keeps it for 10 minutes
    /// and expands short names (`rr`) only from it, so later calls would not
    /// know the new type's short names.
    pub fn wait_crd_established(&self, name: &str) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{name}"),
        ]);
        let cache = self.kubectl_cache_dir();
        match std::fs::remove_dir_all(&cache) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", cache.display()),
        }
    }

    /// Creates namespace `ns` (no error if it already exists).
    pub fn create_namespace(&self, ns: &str) {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}
        });
        let (status, text) =
            self.request(Identity::Admin, "POST", "/api/v1/namespaces", Some(&body));
        assert!(
            status == 201 || status == 409,
            "creating namespace {ns}: HTTP {status}: {text}"
        );
    }

    /// One HTTP request to the API server as `identity`: returns the status
    /// and the body. `path` starts with `/` (e.g. `/api/v1/namespaces`).
    /// JSON bodies go as `application/json`, except PATCH which goes as
    /// `application/merge-patch+json`. Panics only on transport errors.
    pub fn request(
        &self,
        identity: Identity,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, String) {
        let url = format!("{}{}", self.url(), path);
        self.try_request(identity, method, &url, body)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// `GET path` as `identity`.
    pub fn get(&self, identity: Identity, path: &str) -> (u16, String) {
        self.request(identity, "GET", path, None)
    }

    /// Like [`request`](Self::request), but transport errors (e.g. connection
    /// refused while the API server is stopped) come back as `Err`.
    pub fn try_request(
        &self,
        identity: Identity,
        method: &str,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String), ureq::Error> {
        let auth = format!("Bearer {}", self.token(identity));
        let json = body.map(|b| serde_json::to_vec(b).expect("json"));
        let content_type = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut response = match (method, json) {
            ("GET", _) => self.http.get(url).header("Authorization", &auth).call()?,
            ("DELETE", _) => self
                .http
                .delete(url)
                .header("Authorization", &auth)
                .call()?,
            ("POST", Some(j)) => self
                .http
                .post(url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(&j[..])?,
            ("PUT", Some(j)) => self
                .http
                .put(url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(&j[..])?,
            ("PATCH", Some(j)) => self
                .http
                .patch(url)
                .header("Authorization", &auth)
                .header("Content-Type", content_type)
                .send(&j[..])?,
            (m, b) => panic!("unsupported request: {m} with body {:?}", b.is_some()),
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, text))
    }

    /// `GET /readyz` as the admin: `Some(status)`, or `None` when nothing answers.
    pub fn readyz(&self) -> Option<u16> {
        status_of(
            &self.http,
            &format!("{}/readyz", self.url()),
            Some(&self.admin_token),
        )
    }

    /// Whether the kube-apiserver process is running (etcd always is).
    pub fn is_running(&self) -> bool {
        self.apiserver.is_some()
    }

    /// Writes the audit policy: only LISTs of RemediationRequests are logged
    /// (with their request URI), so that tests can see how they were read.
    fn audit_policy(&self) -> String {
        let path = self.dir.path().join("audit-policy.yaml");
        let policy = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
                      rules:\n\
                      - level: Metadata\n  verbs: [list]\n  resources:\n  \
                      - group: signalgate.io\n    resources: [remediationrequests]\n\
                      - level: None\n";
        std::fs::write(&path, policy).expect("write the audit policy");
        path.display().to_string()
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// The request URIs of the RemediationRequest LISTs served so far, in
    /// order (from the audit log; only its last line may be half written).
    pub fn remediation_request_lists(&self) -> Vec<String> {
        let path = self.audit_log();
        let log = match std::fs::read_to_string(&path) {
            Ok(log) => log,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => panic!("cannot read {}: {e}", path.display()),
        };
        let complete = log.ends_with('\n');
        let lines: Vec<&str> = log.lines().collect();
        lines
            .iter()
            .enumerate()
            .filter_map(
                |(i, line)| match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(event) => Some(event),
                    Err(_) if i + 1 == lines.len() && !complete => None,
                    Err(e) => panic!(
                        "{}: line {} is not JSON: {e}: {line}",
                        path.display(),
                        i + 1
                    ),
                },
            )
            .filter_map(|event| event["requestURI"].as_str().map(str::to_string))
            .collect()
    }

    /// Stops the kube-apiserver (SIGTERM, then SIGKILL after 10 s); etcd and
    /// all stored objects stay. Requests fail with "connection refused" until
    /// [`restart`](Self::restart). No-op when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.apiserver.take() {
            proc.signal(libc::SIGTERM);
            if proc.wait_exit(Duration::from_secs(10)).is_none() {
                proc.kill();
            }
        }
    }

    /// Starts the kube-apiserver again on the same port (stopping it first if
    /// it runs) and waits until `/readyz` answers 200.
    pub fn restart(&mut self) {
        self.stop();
        let pki = self.dir.path().join("pki");
        let cert_dir = self.dir.path().join("cert-dir");
        std::fs::create_dir_all(&cert_dir).expect("create cert-dir");
        let p = |name: &str| pki.join(name).display().to_string();
        let mut cmd = Command::new(self.bin_dir.join("kube-apiserver"));
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--insecure-port=0")
            .arg(format!("--secure-port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--cert-dir={}", cert_dir.display()))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--token-auth-file={}", p("tokens.csv")))
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--audit-policy-file={}", self.audit_policy()))
            .arg(format!("--audit-log-path={}", self.audit_log().display()));
        let started = Instant::now();
        let mut proc = spawn_kept("kube-apiserver", cmd, self.dir.path());
        let result = wait_until(READY_TIMEOUT, || {
            if let Some(status) = proc.try_wait() {
                return Err(format!("kube-apiserver exited ({status})"));
            }
            Ok(self.readyz() == Some(200))
        });
        if let Err(why) = result {
            let tail = proc.log_tail(40);
            proc.kill();
            panic!(
                "kube-apiserver on port {} not ready: {why}; log tail ({}):\n{tail}",
                self.port,
                proc.log_path().display()
            );
        }
        if std::env::var_os("SIGNALGATE_K8S_VERBOSE").is_some() {
            eprintln!(
                "kube-apiserver ready at {} in {:?}",
                self.url(),
                started.elapsed()
            );
        }
        self.apiserver = Some(proc);
    }

    /// The last `n` log lines of the kube-apiserver and etcd (for messages).
    pub fn log_tail(&self, n: usize) -> String {
        let api = self
            .apiserver
            .as_ref()
            .map(|p| p.log_tail(n))
            .unwrap_or_default();
        format!(
            "--- kube-apiserver ---\n{api}\n--- etcd ---\n{}",
            self.etcd.log_tail(n)
        )
    }
}

/// [`Proc::spawn`] on one thread that lives as long as the test process.
///
/// PR_SET_PDEATHSIG fires when the *thread* that spawned a child exits, and
/// libtest runs every test on its own thread: a server shared between tests
/// (e.g. in a `static OnceLock<ApiServer>`) would be killed as soon as the
/// test that started it returned. Spawning from a thread that never exits
/// keeps the children alive until the `ApiServer` is dropped or the whole
/// test process dies.
fn spawn_kept(name: &str, cmd: Command, log_dir: &Path) -> Proc {
    type Job = Box<dyn FnOnce() + Send>;
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("k8s-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("start the k8s spawner thread");
        tx
    });
    let (name, log_dir) = (name.to_string(), log_dir.to_path_buf());
    let (done_tx, done_rx) = mpsc::channel();
    spawner
        .send(Box::new(move || {
            let result =
                std::panic::catch_unwind(AssertUnwindSafe(|| Proc::spawn(&name, cmd, &log_dir)));
            let _ = done_tx.send(result);
        }))
        .expect("k8s spawner thread is gone");
    match done_rx.recv().expect("k8s spawner thread is gone") {
        Ok(proc) => proc,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Polls `cond` every 100 ms until `Ok(true)`, an `Err`, or the deadline.
fn wait_until(
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("deadline of {timeout:?} passed"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP agent that trusts the API server's CA `ca_pem` and returns
/// error statuses as answers.
pub(crate) fn http_agent(ca_pem: &[u8]) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let ca = Certificate::from_pem(ca_pem).expect("parse generated CA");
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// The HTTP status of `GET url`, or `None` on a transport error.
fn status_of(http: &ureq::Agent, url: &str, token: Option<&str>) -> Option<u16> {
    let mut req = http.get(url);
    if let Some(token) = token {
        req = req.header("Authorization", &format!("Bearer {token}"));
    }
    req.call().ok().map(|r| r.status().as_u16())
}
