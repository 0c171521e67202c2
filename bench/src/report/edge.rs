//! Part 1 of the report: the same Envoy in five configurations, and Envoy's
//! memory while distinct sources are rate-limited.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::module;
use super::parts::Parts;
use super::target::Target;
use crate::figures::{cell, num, ratio_cell};
use crate::stats::{distinct_values, find, paired_ratio, round, Group};

const EDGE_CONFIGS: [&str; 5] = ["nofilter", "native", "floor", "filter", "module"];
const CONFIG_NAMES: [(&str, &str); 5] = [
    ("nofilter", "no filter (router only)"),
    ("native", "native local_ratelimit per source"),
    ("floor", "wasm floor (empty filter that reads the body)"),
    ("filter", "signalgate filter (limit + validation)"),
    ("module", "signalgate native module (limit + validation)"),
];

fn config_name(c: &str) -> &str {
    CONFIG_NAMES
        .iter()
        .find(|(k, _)| *k == c)
        .map(|(_, v)| *v)
        .unwrap_or(c)
}

/// The chapter `## 1. Edge`; adds its targets and its ratios.
pub fn chapter(
    parts: &Parts,
    targets: &mut Vec<Target>,
    ratios: &mut Map<String, Value>,
) -> Result<String, String> {
    let mut edge_md = configurations(&parts.edge, targets, ratios);
    edge_md.push_str(&module::comparison(&parts.edge, targets));
    let mem_md = memory(parts, targets, ratios)?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## 1. Edge: the same Envoy, five configurations\n\nLoad generator → Envoy → a body-reading upstream \
         (`signalgate-bench upstream`: reads every body, answers 200) so the edge is measured without \
         a direct_response shortcut. Limits are high enough that nothing is refused; every answer was checked. \
         The wasm floor (`bench/wasm-floor`) is a proxy-wasm module that only waits for the whole body, copies \
         it into the VM and lets the request through: the least any filter that checks bodies in Envoy's wasm \
         VM costs, so the gap between it and the signalgate filter is the filter's own work. The native module \
         (`edge-native/`) is the same filter core as an Envoy dynamic module, run in-process without a VM.{edge_md}{mem_md}"
    );
    Ok(md)
}

/// A table per number of Envoy workers, every payload in every configuration.
fn configurations(
    edge: &[Group],
    targets: &mut Vec<Target>,
    ratios: &mut Map<String, Value>,
) -> String {
    let mut edge_md = String::new();
    let mut edge_ratios = Vec::new();
    let payloads = distinct_values(edge, "payload");
    let workers = distinct_values(edge, "workers");
    for w in &workers {
        let _ = writeln!(
            edge_md,
            "\n\n**Envoy with {w} worker{}** (Envoy CPU per request from /proc utime+stime over the window):\n",
            if w == "1" { "" } else { "s" }
        );
        let _ = writeln!(
            edge_md,
            "| payload | configuration | req/s | p50 ms | p99 ms | Envoy CPU µs/req | req/s vs native | req/s vs no filter |"
        );
        let _ = writeln!(edge_md, "|---|---|---|---|---|---|---|---|");
        for p in &payloads {
            let native = find(
                edge,
                &[("workers", w), ("payload", p), ("config", "native")],
            );
            let nofilter = find(
                edge,
                &[("workers", w), ("payload", p), ("config", "nofilter")],
            );
            for c in EDGE_CONFIGS {
                let Some(g) = find(edge, &[("workers", w), ("payload", p), ("config", c)]) else {
                    continue;
                };
                let vs_native = native.and_then(|n| paired_ratio(g, n, "rps"));
                let vs_nofilter = nofilter.and_then(|n| paired_ratio(g, n, "rps"));
                let _ = writeln!(
                    edge_md,
                    "| {p} ({} B) | {} | {} | {} | {} | {} | {} | {} |",
                    g.median("body_bytes")
                        .map_or("?".into(), |b| format!("{b:.0}")),
                    config_name(c),
                    cell(g.stat("rps")),
                    cell(g.stat("p50_ms")),
                    cell(g.stat("p99_ms")),
                    cell(g.stat("cpu_us_per_req.envoy")),
                    if c == "native" {
                        "1.00x".into()
                    } else {
                        ratio_cell(vs_native)
                    },
                    if c == "nofilter" {
                        "1.00x".into()
                    } else {
                        ratio_cell(vs_nofilter)
                    },
                );
                if c != "nofilter" {
                    let p99_native = native.and_then(|n| paired_ratio(g, n, "p99_ms"));
                    let cpu_native =
                        native.and_then(|n| paired_ratio(g, n, "cpu_us_per_req.envoy"));
                    let cpu_extra = match (
                        g.median("cpu_us_per_req.envoy"),
                        nofilter.and_then(|n| n.median("cpu_us_per_req.envoy")),
                    ) {
                        (Some(a), Some(b)) => Some(a - b),
                        _ => None,
                    };
                    edge_ratios.push(json!({
                        "workers": w, "payload": p, "config": c,
                        "rps_vs_native": vs_native.map(|s| s.json()),
                        "rps_vs_nofilter": vs_nofilter.map(|s| s.json()),
                        "p99_vs_native": p99_native.map(|s| s.json()),
                        "cpu_vs_native": cpu_native.map(|s| s.json()),
                        "cpu_us_over_nofilter": cpu_extra.map(round),
                    }));
                }
            }
        }
    }
    ratios.insert("edge".into(), Value::Array(edge_ratios));
    // The target (the filter vs native), then the floor vs native for reference.
    let edge_targets: [(&str, &str, &str, Option<f64>); 2] = [
        (
            "filter",
            "edge: filter vs native local_ratelimit",
            "throughput within 25% (>= 0.75x) while also validating",
            Some(0.75),
        ),
        (
            "floor",
            "reference: wasm floor vs native local_ratelimit",
            "none: the ceiling of any body-reading proxy-wasm filter here",
            None,
        ),
    ];
    for (config, name, goal, at_least) in edge_targets {
        for w in &workers {
            let f = find(
                edge,
                &[("workers", w), ("payload", "4k"), ("config", config)],
            );
            let n = find(
                edge,
                &[("workers", w), ("payload", "4k"), ("config", "native")],
            );
            if let (Some(f), Some(n)) = (f, n) {
                let r = paired_ratio(f, n, "rps");
                targets.push(Target {
                    name: format!("{name}, 4 KB, {w} worker(s)"),
                    goal: goal.into(),
                    measured: format!(
                        "{} ({} vs {} req/s)",
                        ratio_cell(r),
                        num(f.median("rps").unwrap_or(f64::NAN)),
                        num(n.median("rps").unwrap_or(f64::NAN))
                    ),
                    met: at_least.and_then(|min| r.map(|s| s.median >= min)),
                });
            }
        }
    }
    edge_md
}

/// Envoy's memory at each number of distinct sources, and whether it stays bounded.
fn memory(
    parts: &Parts,
    targets: &mut Vec<Target>,
    ratios: &mut Map<String, Value>,
) -> Result<String, String> {
    let mut mem_md = String::new();
    if !parts.memory.is_empty() {
        let bound_kib = parts
            .meta
            .get("table_bound_kib")
            .and_then(|v| v.parse::<f64>().ok());
        let _ = writeln!(
            mem_md,
            "\n\n**Envoy memory while distinct sources are rate-limited** (signalgate filter, `source: \"header:x-source\"`, \
             one new source value per request; each request is counted against its source's bucket, then answered 415 \
             without a body, so only the limiter's state grows):\n"
        );
        let _ = writeln!(mem_md, "| distinct sources so far | Envoy RSS MiB | growth since start MiB | req/s of that step |");
        let _ = writeln!(mem_md, "|---|---|---|---|");
        let mut sorted: Vec<&Group> = parts.memory.iter().collect();
        sorted.sort_by_key(|g| g.label("sources").parse::<u64>().unwrap_or(0));
        let start = sorted.first().and_then(|g| g.median("rss_kib"));
        for g in &sorted {
            let rss = g.median("rss_kib").unwrap_or(f64::NAN);
            let _ = writeln!(
                mem_md,
                "| {} | {:.1} | {:+.1} | {} |",
                g.label("sources"),
                rss / 1024.0,
                (rss - start.unwrap_or(rss)) / 1024.0,
                g.median("rps").map_or("–".into(), num)
            );
        }
        // Bounded: past the table's capacity (the second checkpoint), more
        // sources must not add more than the table's own size.
        if sorted.len() >= 3 {
            let (Some(mid), Some(last)) = (
                sorted.get(1).and_then(|g| g.median("rss_kib")),
                sorted.last().and_then(|g| g.median("rss_kib")),
            ) else {
                return Err("edge_memory records without rss_kib".into());
            };
            let total = last - start.unwrap_or(last);
            let late = last - mid;
            let bound = bound_kib.unwrap_or(1024.0);
            let _ = writeln!(
                mem_md,
                "\nTable bound (filter/src/table.rs): {} sources tracked at most, about {:.1} MiB of shared data. \
                 Growth from start to {} sources: {:+.1} MiB; growth over the last {} sources (after the table was full): {:+.1} MiB.",
                parts.meta("table_capacity"),
                bound / 1024.0,
                sorted.last().map(|g| g.label("sources")).unwrap_or("?"),
                total / 1024.0,
                sorted
                    .last()
                    .and_then(|g| g.label("sources").parse::<u64>().ok())
                    .zip(sorted.get(1).and_then(|g| g.label("sources").parse::<u64>().ok()))
                    .map_or(0, |(a, b)| a - b),
                late / 1024.0
            );
            targets.push(Target {
                name: format!(
                    "edge: Envoy memory after {} distinct sources",
                    sorted.last().map(|g| g.label("sources")).unwrap_or("?")
                ),
                goal: format!(
                    "bounded: total growth within 2x the table bound ({:.1} MiB) and flat once the table is full",
                    bound / 1024.0
                ),
                measured: format!("{:+.1} MiB total, {:+.1} MiB after the table filled", total / 1024.0, late / 1024.0),
                met: Some(total <= 2.0 * bound + 1024.0 && late <= bound),
            });
            ratios.insert(
                "edge_memory".into(),
                json!({"growth_kib": round(total), "growth_after_full_kib": round(late), "table_bound_kib": round(bound)}),
            );
        }
    }
    Ok(mem_md)
}
