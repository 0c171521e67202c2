//! The sidecar's shutdown: unready for the shutdown delay while still
//! serving, and a final flush stuck on the sink does not keep it from exiting.

use std::time::Duration;

use signalgate_tests::payloads::{alert, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::sidecar::Sidecar;

#[test]
fn on_sigterm_it_keeps_serving_unready_for_the_shutdown_delay_then_exits() {
    let mut s = Sidecar::start(&[("SIGNALGATE_SHUTDOWN_DELAY", "3s")]);
    s.sigterm();
    wait_for("readiness false", Duration::from_secs(5), || {
        (s.admin_get("/readyz").status == 503).then_some(())
    });
    // Envoy may still be sending: served as usual.
    let a = s.post_alerts(&webhook(vec![alert("Late", "shop", "p1")]));
    assert_eq!(a.status, 201, "{}", a.body);
    let status = s
        .terminate(Duration::from_secs(15))
        .expect("exits after the delay");
    assert!(status.success(), "exit status {status}");
    assert_eq!(s.resources().len(), 1);
}

#[test]
fn a_final_flush_stuck_on_the_sink_does_not_keep_it_from_exiting() {
    // Only the shutdown flush writes counts; it gets SHUTDOWN_GRACE.
    let mut s = Sidecar::start(&[
        ("SIGNALGATE_FLUSH_INTERVAL", "1h"),
        ("SIGNALGATE_SHUTDOWN_GRACE", "1s"),
    ]);
    let hook = webhook(vec![alert("Hung", "shop", "p1")]);
    assert_eq!(s.post_alerts(&hook).status, 201);
    // The resource file becomes a FIFO nobody writes: reading it (the
    // directory sink's update) blocks for ever, like a hung volume.
    let file = s.resources_paths().pop().expect("one resource file");
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(s.post_alerts(&hook).status, 202);

    let status = s
        .terminate(Duration::from_secs(15))
        .expect("exits although its final flush hangs");
    assert!(status.success(), "exit status {status}");
    let log = s.log();
    assert!(log.contains("the final flush did not finish"), "{log}");
}
