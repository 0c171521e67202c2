//! Part 3 of the report: Alertmanager's own ingestion of the same alerts,
//! next to the sidecar's.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::parts::Parts;
use super::target::Target;
use crate::figures::{cell, num, ratio_cell};
use crate::stats::{find, ratio_of_medians};

/// The chapter `## 3. Peer`; adds its target and its ratios.
pub fn chapter(
    parts: &Parts,
    targets: &mut Vec<Target>,
    ratios: &mut Map<String, Value>,
) -> String {
    let mut peer_md = String::new();
    let sc_dup = find(&parts.sidecar, &[("path", "duplicate"), ("sink", "dir")]);
    let sc_new = find(&parts.sidecar, &[("path", "created"), ("sink", "dir")]);
    let sc_storm = find(&parts.sidecar, &[("path", "storm"), ("sink", "dir")]);
    let am_same = find(&parts.peer, &[("mode", "identical")]);
    let am_new = find(&parts.peer, &[("mode", "distinct")]);
    if !parts.peer.is_empty() {
        let _ = writeln!(
            peer_md,
            "\n\n| Alertmanager `POST /api/v2/alerts` | alerts/s | req/s | p50 ms | p99 ms | Alertmanager CPU µs/alert | sidecar signals/s, same alerts | sidecar vs Alertmanager |"
        );
        let _ = writeln!(peer_md, "|---|---|---|---|---|---|---|---|");
        let mut peer_ratios = Vec::new();
        for (g, sc, what) in [
            (am_same, sc_dup, "repeated alerts (sidecar: duplicate path)"),
            (am_new, sc_new, "new alerts (sidecar: created path)"),
            (
                am_new,
                sc_storm,
                "new alerts, default storm threshold (sidecar: storm path)",
            ),
        ] {
            let Some(g) = g else { continue };
            let alerts = g.median("alerts_per_request").unwrap_or(1.0).max(1.0);
            let r = sc.and_then(|s| ratio_of_medians(s, g, "alerts_per_s"));
            let _ = writeln!(
                peer_md,
                "| {what} | {} | {} | {} | {} | {} | {} | {} |",
                cell(g.stat("alerts_per_s")),
                cell(g.stat("rps")),
                cell(g.stat("p50_ms")),
                cell(g.stat("p99_ms")),
                g.median("cpu_us_per_req.alertmanager")
                    .map_or("n/a".into(), |c| num(c / alerts)),
                cell(sc.and_then(|s| s.stat("alerts_per_s"))),
                ratio_cell(r),
            );
            peer_ratios.push(
                json!({"mode": g.label("mode"), "sidecar_path": sc.map(|s| s.label("path")),
                       "sidecar_vs_alertmanager": r.map(|s| s.json())}),
            );
        }
        if let (Some(s), Some(a)) = (sc_dup, am_same) {
            let r = ratio_of_medians(s, a, "alerts_per_s");
            targets.push(Target {
                name: "sidecar duplicate path vs Alertmanager ingestion".into(),
                goal: ">= 5x Alertmanager's alerts/s".into(),
                measured: format!(
                    "{} ({} vs {} alerts/s)",
                    ratio_cell(r),
                    num(s.median("alerts_per_s").unwrap_or(f64::NAN)),
                    num(a.median("alerts_per_s").unwrap_or(f64::NAN))
                ),
                met: r.map(|s| s.median >= 5.0),
            });
        }
        ratios.insert("peer".into(), Value::Array(peer_ratios));
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## 3. Peer: Alertmanager's own ingestion\n\nThe same alerts, posted to {}'s \
         `POST /api/v2/alerts` (in memory, no cluster, a null receiver), next to the sidecar's signals/s.{peer_md}",
        parts.meta("alertmanager")
    );
    md
}
