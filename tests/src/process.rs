//! Child processes that die with the test, free ports, and polling.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// A child process that is killed (SIGKILL) when dropped, and also when the
/// test process itself dies (PR_SET_PDEATHSIG). Its stdout and stderr go to
/// `<log_dir>/<name>.log` so a failing test can show them.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, logging to `log_dir/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        let err = file.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        // SAFETY: prctl is async-signal-safe and touches no Rust state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain syscall on a pid we own.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics (showing the log tail) if the process has already exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!(
                "{} exited early ({status}); log tail:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A loopback TCP port that is free now and not handed out before by this
/// test process. Ports come from a range well above the usual services
/// (never 6379, 8080, 8081, 9090, 9901).
pub fn free_port() -> u16 {
    let _ = NEXT_PORT.compare_exchange(
        0,
        20_000 + (std::process::id() % 20_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let mut port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        if port >= 60_000 {
            NEXT_PORT.store(20_000, Ordering::SeqCst);
            port = 20_000;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// Polls `cond` every 20 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub fn wait_for<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    wait_for(&format!("{addr} to accept connections"), timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    });
}

/// The lock a temp dir's process holds on `<dir>/.lock` while it runs.
const LOCK_FILE: &str = ".lock";

/// Takes `dir`'s lock for the rest of this process (released by the kernel
/// when the process ends, however it ends).
fn hold_lock(dir: &Path) {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let file = std::fs::File::create(dir.join(LOCK_FILE)).expect("create the temp dir's lock");
    // SAFETY: flock on a file descriptor this process owns.
    let locked = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(locked, 0, "lock {}", dir.display());
    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
}

/// Whether nobody holds `dir`'s lock (taking it for a moment to see).
fn lock_is_free(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on a file descriptor this process owns.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes the temp dirs of test processes that are gone. A server shared by
/// a test binary's cases lives in a static, which is never dropped: its dir
/// (an API server's etcd data is about 128 MB) would outlive the run, and
/// every `make test` would leave more. Dirs are named with the pid of the
/// process that made them, which holds their lock while it runs: a dir goes
/// only if that pid is not running here and nobody holds the lock (a
/// process in another pid namespace sharing this temp dir still does).
fn sweep_dead_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("signalgate-")) else {
            continue;
        };
        let Some(pid) = rest
            .split_once('-')
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && lock_is_free(&entry.path()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A private temporary directory for one test's processes,
/// `signalgate-<pid>-<prefix>-…`, kept on failure when `SIGNALGATE_KEEP_TMP`
/// is set.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("SIGNALGATE_KEEP_TMP").is_some();
    if !keep {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_dead_temp_dirs);
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("signalgate-{}-{prefix}-", std::process::id()))
        .tempdir()
        .expect("create temp dir");
    hold_lock(dir.path());
    if keep {
        eprintln!("keeping {}", dir.path().display());
        let path = dir.keep();
        return tempfile::Builder::new()
            .prefix("kept-")
            .tempdir_in(path)
            .expect("create temp dir");
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temp_dirs_of_finished_test_processes_are_swept() {
        let mut child = Command::new("true").spawn().expect("run true");
        let dead = child.id();
        child.wait().expect("wait");
        let tmp = std::env::temp_dir();
        let left = tmp.join(format!("signalgate-{dead}-k8s-sweeptest"));
        let held = tmp.join(format!("signalgate-{dead}-redis-sweeptest"));
        let unlocked = tmp.join(format!("signalgate-{dead}-envoy-sweeptest"));
        let live = tmp.join(format!("signalgate-{}-k8s-sweeptest", std::process::id()));
        let other = tmp.join("signalgate-bench-sweeptest");
        for d in [&left, &held, &unlocked, &live, &other] {
            std::fs::create_dir_all(d.join("etcd-data")).expect("create");
        }
        for d in [&left, &held, &live, &other] {
            std::fs::File::create(d.join(LOCK_FILE)).expect("lock file");
        }
        // A process elsewhere (another pid namespace) holding its dir's lock.
        hold_lock(&held);
        sweep_dead_temp_dirs();
        let exists = |d: &Path| d.exists();
        assert!(!exists(&left), "a finished process's dir is removed");
        assert!(exists(&held), "a dir whose lock is held is kept");
        assert!(exists(&unlocked), "a dir not locked yet is kept");
        assert!(exists(&live), "a running process's dir is kept");
        assert!(exists(&other), "only pid-named dirs are swept");
        for d in [&held, &unlocked, &live, &other] {
            std::fs::remove_dir_all(d).expect("clean up");
        }
    }
}
