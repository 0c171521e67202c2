//! `make demo` (`scripts/demo.sh`) end to end.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use signalgate_tests::e2e::report::report;
use signalgate_tests::envoy::{envoy_bin, wasm_path};
use signalgate_tests::process::{free_port, temp_dir};
use signalgate_tests::remediation::is_storm;
use signalgate_tests::sidecar;
use signalgate_tests::workspace;

/// `scripts/demo.sh` with `DEMO_EXIT=1` on free ports: it starts the chain
/// (Alertmanager, Envoy + filter, sidecar on the in-memory store and the
/// directory sink), fires its storm, and leaves the expected resources.
#[test]
fn demo_script_starts_the_chain_and_writes_the_storm() {
    use std::os::unix::process::CommandExt;

    let started = Instant::now();
    let out = temp_dir("e2e-demo");
    let mut cmd = Command::new("bash");
    cmd.arg(workspace::root().join("scripts/demo.sh"))
        .env("DEMO_EXIT", "1")
        .env("DEMO_DIR", out.path())
        .env("DEMO_LISTEN_PORT", free_port().to_string())
        .env("DEMO_ENVOY_ADMIN_PORT", free_port().to_string())
        .env("DEMO_SIDECAR_PORT", free_port().to_string())
        .env("DEMO_SIDECAR_ADMIN_PORT", free_port().to_string())
        .env("DEMO_ALERTMANAGER_PORT", free_port().to_string())
        .env("SIGNALGATE_SIDECAR_BIN", sidecar::binary())
        .env("SIGNALGATE_FILTER_WASM", wasm_path())
        .env("ENVOY_BIN", envoy_bin())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a hung demo is killed with its children.
        .process_group(0);
    let mut child = cmd.spawn().expect("run scripts/demo.sh");
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for demo.sh") {
            break status;
        }
        if Instant::now() >= deadline {
            // SAFETY: signals the process group we created above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = child.wait();
            panic!("scripts/demo.sh did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().expect("demo.sh output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let logs = || {
        ["sidecar.log", "envoy.log", "alertmanager.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(out.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                format!(
                    "--- {f} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        status.success(),
        "demo.sh exited {status}\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        logs()
    );
    assert!(stdout.contains("signalgate demo is running"), "{stdout}");

    let resources = sidecar::read_resources(&out.path().join("remediationrequests"));
    let by_ns = |ns: &str| -> Vec<&Value> {
        resources
            .iter()
            .filter(|r| r["metadata"]["namespace"] == ns)
            .collect()
    };
    let shop = by_ns("shop");
    let storms: Vec<&&Value> = shop.iter().filter(|r| is_storm(r)).collect();
    assert_eq!(
        (
            shop.len(),
            storms.len(),
            by_ns("payments").len(),
            by_ns("search").len()
        ),
        (11, 1, 2, 1),
        "expected shop 10 + 1 storm, payments 2, search 1: {resources:?}"
    );
    assert_eq!(storms[0]["spec"]["storm"]["alertCount"], 5, "{}", storms[0]);
    report(
        "demo (scripts/demo.sh, DEMO_EXIT=1)",
        18,
        14,
        resources.len(),
        started,
        "",
    );
}
