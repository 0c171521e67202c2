//! The kube sink when the API server is down or the sidecar is killed between
//! its claim and its create: 503, then the retry creates exactly one; what
//! was answered 202 while it was down reaches the resource once it is back,
//! however long it was down.

use std::time::Duration;

use signalgate_tests::payloads::{alert, resolved, webhook};
use signalgate_tests::process::wait_for;
use signalgate_tests::redis::RedisServer;
use signalgate_tests::remediation::{count, kube_sidecar, private_api_server, wait_list};

#[test]
fn api_server_down_answers_503_and_the_retry_creates_exactly_one() {
    let mut k = private_api_server();
    k.create_namespace("outage");
    let redis = RedisServer::start();
    let url = redis.url();
    let s = kube_sidecar(
        &k,
        "sidecar",
        &[
            ("SIGNALGATE_REDIS_URL", &url),
            ("SIGNALGATE_REQUEST_DEADLINE", "2s"),
            ("SIGNALGATE_CLAIM_LEASE", "3s"),
        ],
    );
    let hook = webhook(vec![alert("ApiOutage", "outage", "p")]);
    k.stop();
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.header("retry-after").is_some());
    k.restart();
    // The sender's retry (Alertmanager retries 5xx) creates it, once.
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 201, "{}\n{}", a.body, s.log_tail(20));
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 202, "{}", a.body);
    let items = wait_list(&k, "outage", "exactly one resource", |r| {
        r.len() == 1 && count(&r[0]) >= 2
    });
    assert_eq!(items.len(), 1);
}

/// A resolution answered 202 while the API server is down: the store keeps
/// the resolved incident's record (normally a dedup window after the
/// resolve) until its update is written, past the dedup window.
#[test]
fn a_resolution_answered_during_an_outage_longer_than_the_dedup_window_is_written() {
    let mut k = private_api_server();
    k.create_namespace("long-outage");
    let redis = RedisServer::start();
    let url = redis.url();
    // Longer than one failed update (the sink retries it for about 4 s).
    let dedup = Duration::from_secs(6);
    let s = kube_sidecar(
        &k,
        "sidecar",
        &[
            ("SIGNALGATE_REDIS_URL", &url),
            ("SIGNALGATE_DEDUP_TTL", "6s"),
            ("SIGNALGATE_REQUEST_DEADLINE", "2s"),
            ("SIGNALGATE_CLAIM_LEASE", "3s"),
        ],
    );
    let a = s.post_alerts(&webhook(vec![alert("LongOutage", "long-outage", "p")]));
    assert_eq!(a.status, 201, "{}", a.body);
    k.stop();
    let gone = s.post_alerts(&webhook(vec![resolved("LongOutage", "long-outage", "p")]));
    assert_eq!(gone.status, 202, "{}", gone.body);
    assert_eq!(gone.json()["signals"][0]["outcome"], "resolved");
    // The outage outlasts the dedup window the resolved record would live.
    std::thread::sleep(dedup * 2);
    k.restart();
    let items = wait_list(&k, "long-outage", "the resolution written", |r| {
        r.len() == 1 && !r[0]["spec"]["resolution"].is_null()
    });
    assert_eq!(
        items[0]["spec"]["resolution"]["resolvedAt"],
        "2026-11-26T21:07:15.000Z"
    );
}

#[test]
fn sidecar_killed_between_claim_and_create_then_the_retry_creates_exactly_one() {
    let mut k = private_api_server();
    k.create_namespace("killed");
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("SIGNALGATE_REDIS_URL", url.as_str()),
        ("SIGNALGATE_REQUEST_DEADLINE", "6s"),
        ("SIGNALGATE_CLAIM_LEASE", "7s"),
    ];
    let mut s = kube_sidecar(&k, "sidecar", &env);
    let hook = webhook(vec![alert("Killed", "killed", "p")]);
    let body = serde_json::to_vec(&hook).unwrap();
    // With the API server down the create keeps retrying: the claim is made, the resource is not.
    k.stop();
    std::thread::scope(|scope| {
        let api = s.api;
        let sent = scope.spawn(move || {
            signalgate_tests::client::post_json(
                &format!("http://{api}/api/v1/signals/prometheus"),
                &body,
                &[],
            )
        });
        wait_for(
            "the sidecar to be retrying the create",
            Duration::from_secs(15),
            || s.log().contains("retrying").then_some(()),
        );
        s.kill();
        assert!(
            sent.join().unwrap().is_err(),
            "the killed sidecar cannot have answered"
        );
    });
    k.restart();
    s.restart();
    let a = s.post_alerts(&hook);
    assert_eq!(a.status, 201, "{}\n{}", a.body, s.log_tail(20));
    let items = wait_list(&k, "killed", "exactly one resource", |r| r.len() == 1);
    assert_eq!(items.len(), 1);
    assert_eq!(s.post_alerts(&hook).status, 202);
}
