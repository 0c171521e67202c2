//! Part 4 of the report: the full chain (Envoy, filter, sidecar, Redis) and
//! where its time goes.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::parts::Parts;
use crate::figures::{cell, num, ratio_cell};
use crate::stats::{find, ratio_of_medians, round};

/// The chapter `## 4. Full chain`; adds its stage figures to the ratios.
pub fn chapter(parts: &Parts, ratios: &mut Map<String, Value>) -> String {
    let mut chain_md = String::new();
    let mut stages_json = Vec::new();
    if !parts.chain.is_empty() {
        let _ = writeln!(
            chain_md,
            "\n\n| path | alerts/s | req/s | p50 ms | p99 ms | vs sidecar alone | resources in the sink before the run |"
        );
        let _ = writeln!(chain_md, "|---|---|---|---|---|---|---|");
        for g in &parts.chain {
            let alone = find(
                &parts.sidecar,
                &[("path", g.label("path")), ("sink", "dir")],
            );
            let r = alone.and_then(|a| ratio_of_medians(g, a, "alerts_per_s"));
            let _ = writeln!(
                chain_md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                g.label("path"),
                cell(g.stat("alerts_per_s")),
                cell(g.stat("rps")),
                cell(g.stat("p50_ms")),
                cell(g.stat("p99_ms")),
                ratio_cell(r),
                cell(g.stat("resources_before")),
            );
        }
        let _ = writeln!(
            chain_md,
            "\n**Where the time goes** — CPU per request of each process, measured in the chain run itself \
             (/proc utime+stime over the window; the 2 cores are the bottleneck, so these add up to the throughput), \
             next to the stage figures of parts 1 and 2:\n"
        );
        let _ = writeln!(
            chain_md,
            "| path | Envoy (filter) µs/req | sidecar µs/req | redis-server µs/req | load generator µs/req | total µs/req | Redis µs inside commands/req | edge overhead of the filter (part 1, 4 KB, 1 worker) µs/req |"
        );
        let _ = writeln!(chain_md, "|---|---|---|---|---|---|---|---|");
        let edge_extra = match (
            find(
                &parts.edge,
                &[("workers", "1"), ("payload", "4k"), ("config", "filter")],
            )
            .and_then(|g| g.median("cpu_us_per_req.envoy")),
            find(
                &parts.edge,
                &[("workers", "1"), ("payload", "4k"), ("config", "nofilter")],
            )
            .and_then(|g| g.median("cpu_us_per_req.envoy")),
        ) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        for g in &parts.chain {
            let parts = ["envoy", "sidecar", "redis", "loadgen"];
            let values: Vec<Option<f64>> = parts
                .iter()
                .map(|p| g.median(&format!("cpu_us_per_req.{p}")))
                .collect();
            let total: f64 = values.iter().flatten().sum();
            let _ = writeln!(
                chain_md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                g.label("path"),
                values[0].map_or("n/a".into(), num),
                values[1].map_or("n/a".into(), num),
                values[2].map_or("n/a".into(), num),
                values[3].map_or("n/a".into(), num),
                num(total),
                g.median("redis_usec_per_req").map_or("n/a".into(), num),
                edge_extra.map_or("n/a".into(), num),
            );
            let share = |v: Option<f64>| v.map(|x| round(100.0 * x / total.max(1e-9)));
            stages_json.push(json!({
                "path": g.label("path"),
                "cpu_us_per_req": {"envoy": values[0].map(round), "sidecar": values[1].map(round), "redis": values[2].map(round), "loadgen": values[3].map(round), "total": round(total)},
                "share_percent": {"envoy": share(values[0]), "sidecar": share(values[1]), "redis": share(values[2]), "loadgen": share(values[3])},
                "redis_usec_inside_commands_per_req": g.median("redis_usec_per_req").map(round),
                "edge_filter_overhead_us_per_req": edge_extra.map(round),
            }));
        }
        ratios.insert("stages".into(), Value::Array(stages_json));
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## 4. Full chain: Envoy + filter + sidecar + Redis\n\nLoad generator → Envoy (signalgate filter, 1 worker) → \
         sidecar → Redis, same 4 KB webhook.{chain_md}"
    );
    md
}
