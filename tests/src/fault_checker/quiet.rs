//! When a system the checker sent to is quiet, so its resources can be
//! checked: nothing pending, and nothing the invariants read changing.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a system may take to go quiet after the workload.
pub const QUIET_DEADLINE: Duration = Duration::from_secs(90);
/// Quiet: no resource changed for this long, and nothing pending.
pub const QUIET_FOR: Duration = Duration::from_secs(3);

/// Polls `list` (the resources) every 250 ms until its listing has not
/// changed for [`QUIET_FOR`] and `pending` (updates a sidecar holds or the
/// store's index of unwritten changes lists) is 0; that listing. `Err`
/// with why and the last listing after [`QUIET_DEADLINE`].
pub fn until_quiet(
    mut list: impl FnMut() -> Result<Vec<Value>, String>,
    mut pending: impl FnMut() -> f64,
) -> Result<Vec<Value>, (String, Vec<Value>)> {
    let deadline = Instant::now() + QUIET_DEADLINE;
    let mut last: Option<(String, Vec<Value>)> = None;
    let mut since = Instant::now();
    loop {
        if let Ok(items) = list() {
            let digest = digest(&items);
            let changed = last.as_ref().is_none_or(|(d, _)| *d != digest);
            if changed {
                since = Instant::now();
            }
            last = Some((digest, items));
            if !changed && since.elapsed() >= QUIET_FOR && pending() == 0.0 {
                return Ok(last.map(|(_, i)| i).unwrap_or_default());
            }
        }
        if Instant::now() >= deadline {
            let why = format!(
                "not quiet after {QUIET_DEADLINE:?}: {} updates pending, last change {:?} ago",
                pending(),
                since.elapsed()
            );
            return Err((why, last.map(|(_, i)| i).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What of a listing matters to the checks, to see it stop changing.
fn digest(items: &[Value]) -> String {
    let mut out = String::new();
    for rr in items {
        let spec = &rr["spec"];
        let storm = &spec["storm"];
        let _ = writeln!(
            out,
            "{}/{} {} {} {} {} {} {}",
            rr["metadata"]["namespace"],
            rr["metadata"]["name"],
            spec["deduplication"]["occurrenceCount"],
            storm["alertCount"],
            storm["resolvedCount"],
            storm["affectedResources"],
            storm["affectedResourcesOverflow"],
            spec["resolution"].is_object()
        );
    }
    out
}
