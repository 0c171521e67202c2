//! Waiting on conditions of the chain with deadlines, and its logs for
//! failure messages.

use std::time::{Duration, Instant};

use super::edge::Edge;
use crate::alertmanager::{sum_samples, Alertmanager, Notifications};
use crate::sidecar::Sidecar;

/// Why a condition does not hold (yet).
pub enum Wait {
    /// Not yet: look again.
    Retry(String),
    /// Never will (e.g. a resource too many): stop waiting.
    Fail(String),
}

impl From<String> for Wait {
    fn from(s: String) -> Wait {
        Wait::Retry(s)
    }
}

/// Polls `cond` every 200 ms until `Ok`; the last reason after `timeout`,
/// or at once when `cond` says it can never hold.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, Wait>,
) -> Result<T, String> {
    let started = Instant::now();
    loop {
        let why = match cond() {
            Ok(v) => return Ok(v),
            Err(Wait::Fail(why)) => {
                return Err(format!(
                    "{what}: failed after {:.1}s: {why}",
                    started.elapsed().as_secs_f64()
                ))
            }
            Err(Wait::Retry(why)) => why,
        };
        if started.elapsed() >= timeout {
            return Err(format!(
                "timed out after {timeout:?} waiting for {what}: {why}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Logs of the chain for failure messages.
pub fn diag(sidecars: &[&Sidecar], am: Option<&Alertmanager>, edge: Option<&Edge>) -> String {
    let mut out = String::new();
    for s in sidecars {
        out.push_str(&format!("--- sidecar log ---\n{}\n", s.log_tail(10)));
    }
    if let Some(am) = am {
        out.push_str(&format!(
            "--- alertmanager {:?} ---\n{}\n",
            am.notifications(),
            am.log_tail(10)
        ));
    }
    if let Some(e) = edge {
        out.push_str(&format!("--- envoy log ---\n{}\n", e.log_tail(5)));
    }
    out
}

pub fn check<T>(r: Result<T, String>, diag: impl FnOnce() -> String) -> T {
    r.unwrap_or_else(|e| panic!("{e}\n{}", diag()))
}

/// A sample summed over the sidecar's `/metrics` (labels containing `label`).
pub fn sidecar_metric(s: &Sidecar, name: &str, label: &str) -> f64 {
    sum_samples(&s.admin_get("/metrics").body, name, label)
}

/// Firing signals the sidecar counted (every outcome but `resolved` and
/// `resolved_unknown`).
pub fn firing_signals(s: &Sidecar) -> u64 {
    let text = s.admin_get("/metrics").body;
    let all = sum_samples(&text, "signalgate_signals_total", "");
    let resolved = sum_samples(&text, "signalgate_signals_total", "outcome=\"resolved\"")
        + sum_samples(
            &text,
            "signalgate_signals_total",
            "outcome=\"resolved_unknown\"",
        );
    (all - resolved) as u64
}

/// Requests the sidecar answered 503.
pub fn sidecar_503s(s: &Sidecar) -> f64 {
    sidecar_metric(
        s,
        "signalgate_request_duration_seconds_count",
        "status=\"503\"",
    )
}

/// Waits until Alertmanager has made at least `n` more notification
/// requests that failed than `before` (its retries under a fault).
pub fn wait_failed_requests(am: &Alertmanager, before: f64, n: f64, what: &str) -> f64 {
    check(
        eventually(what, Duration::from_secs(30), || {
            let now = am.notifications().requests_failed;
            if now >= before + n {
                Ok(now)
            } else {
                Err(Wait::Retry(format!(
                    "{} failed requests so far",
                    now - before
                )))
            }
        }),
        || diag(&[], Some(am), None),
    )
}

/// Waits until Alertmanager has sent `n` more notifications than now:
/// every group was re-sent after the state checked so far.
pub fn wait_more_notifications(am: &Alertmanager, n: f64) {
    let start = am.notifications().total;
    check(
        eventually(
            &format!("{n} more notifications from Alertmanager"),
            Duration::from_secs(60),
            || {
                let now = am.notifications().total;
                if now >= start + n {
                    Ok(())
                } else {
                    Err(Wait::Retry(format!("{} so far", now - start)))
                }
            },
        ),
        || diag(&[], Some(am), None),
    );
}

/// Once Alertmanager sends nothing more (e.g. after [`Alertmanager::silence_all`]):
/// no notification in flight (each notification made exactly one request)
/// and the counters unchanged over two group intervals. Returns them.
pub fn wait_quiet(am: &Alertmanager) -> Notifications {
    let interval = am.receiver().group_interval * 2;
    let mut last = am.notifications();
    let mut since = Instant::now();
    check(
        eventually("Alertmanager to go quiet", Duration::from_secs(60), || {
            let now = am.notifications();
            if now != last {
                last = now;
                since = Instant::now();
            }
            if now.total == now.requests && since.elapsed() >= interval {
                Ok(now)
            } else {
                Err(Wait::Retry(format!("still sending: {now:?}")))
            }
        }),
        || diag(&[], Some(am), None),
    )
}
