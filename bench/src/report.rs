//! The report: every figure as the median of its runs with min/max, ratios
//! against the baselines of the same invocation (paired run by run, since the
//! runs of the configurations are interleaved), the targets stated as
//! met or not, and where the time goes. Written as `report.md`, `report.json`
//! and `chart.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::chart;
use crate::figures::{cell, num, ratio_cell};
use crate::record::Record;
use crate::stats::{
    distinct_values, find, groups, paired_ratio, ratio_of_medians, round, Group, Stat,
};

/// One target of the issue.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

const EDGE_CONFIGS: [&str; 4] = ["nofilter", "native", "floor", "filter"];
const CONFIG_NAMES: [(&str, &str); 4] = [
    ("nofilter", "no filter (router only)"),
    ("native", "native local_ratelimit per source"),
    ("floor", "wasm floor (empty filter that reads the body)"),
    ("filter", "signalgate filter (limit + validation)"),
];

fn config_name(c: &str) -> &str {
    CONFIG_NAMES
        .iter()
        .find(|(k, _)| *k == c)
        .map(|(_, v)| *v)
        .unwrap_or(c)
}

/// Writes report.md, report.json and chart.png into `out`; returns their paths.
pub fn write(records: &[Record], out: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let meta: BTreeMap<String, String> = records
        .iter()
        .filter(|r| r.label("part") == "meta")
        .flat_map(|r| r.info.clone())
        .collect();
    let edge = groups(records, "edge");
    let memory = groups(records, "edge_memory");
    let sidecar = groups(records, "sidecar");
    let redis_bench = groups(records, "redis_benchmark");
    let peer = groups(records, "peer");
    let chain = groups(records, "chain");

    let mut md = String::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut ratios_json = Map::new();
    let m = |k: &str| meta.get(k).cloned().unwrap_or_else(|| "?".into());

    let _ = writeln!(md, "# signalgate benchmark report\n");
    let _ = writeln!(
        md,
        "Run {} ({} mode, {} runs per figure, {} s measured per run after {} s warm-up, \
         {} connections, closed loop). Every figure is the median of its runs with (min–max); \
         ratios are taken run by run against the baseline measured in the same round, then \
         the median (min–max) of those. Only ratios within this run compare: the machine is \
         shared and absolute numbers move with its load.\n",
        m("date"),
        m("mode"),
        m("runs"),
        m("duration_s"),
        m("warmup_s"),
        m("connections")
    );
    let _ = writeln!(
        md,
        "Machine: {} ({} cores), {}. Versions: {}; {}; {}; {}; signalgate {} (wasm {} bytes).\n",
        m("cpu"),
        m("cores"),
        m("kernel"),
        m("envoy"),
        m("redis"),
        m("alertmanager"),
        m("rustc"),
        m("git"),
        m("wasm_bytes")
    );

    // ------------------------------------------------------------ edge
    let mut edge_md = String::new();
    let mut edge_ratios = Vec::new();
    let payloads = distinct_values(&edge, "payload");
    let workers = distinct_values(&edge, "workers");
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
                &edge,
                &[("workers", w), ("payload", p), ("config", "native")],
            );
            let nofilter = find(
                &edge,
                &[("workers", w), ("payload", p), ("config", "nofilter")],
            );
            for c in EDGE_CONFIGS {
                let Some(g) = find(&edge, &[("workers", w), ("payload", p), ("config", c)]) else {
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
    ratios_json.insert("edge".into(), Value::Array(edge_ratios));
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
                &edge,
                &[("workers", w), ("payload", "4k"), ("config", config)],
            );
            let n = find(
                &edge,
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

    // ------------------------------------------------------------ memory
    let mut mem_md = String::new();
    if !memory.is_empty() {
        let bound_kib = meta
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
        let mut sorted: Vec<&Group> = memory.iter().collect();
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
                m("table_capacity"),
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
            ratios_json.insert(
                "edge_memory".into(),
                json!({"growth_kib": round(total), "growth_after_full_kib": round(late), "table_bound_kib": round(bound)}),
            );
        }
    }

    // ------------------------------------------------------------ sidecar
    let mut sc_md = String::new();
    let evalsha = find(&redis_bench, &[("config", "evalsha")]);
    if !sidecar.is_empty() {
        let _ = writeln!(
            sc_md,
            "\n\n| path | sink | signals/s | req/s | p50 ms | p99 ms | sidecar CPU µs/signal | Redis CPU µs/signal | Redis commands/req | store round trips/req | Redis µs/call (EVALSHA) | signals/s vs EVALSHA/s | resources in the sink before the run |"
        );
        let _ = writeln!(
            sc_md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let mut sc_ratios = Vec::new();
        for g in &sidecar {
            let alerts = g.median("alerts_per_request").unwrap_or(1.0).max(1.0);
            let per_signal = |k: &str| {
                g.stat(k).map(|s| Stat {
                    median: s.median / alerts,
                    min: s.min / alerts,
                    max: s.max / alerts,
                    n: s.n,
                })
            };
            let vs_evalsha = evalsha.and_then(|e| {
                let ev = e.median("rps")?;
                g.stat("alerts_per_s").map(|s| Stat {
                    median: s.median / ev,
                    min: s.min / ev,
                    max: s.max / ev,
                    n: s.n,
                })
            });
            let _ = writeln!(
                sc_md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                g.label("path"),
                g.label("sink"),
                cell(g.stat("alerts_per_s")),
                cell(g.stat("rps")),
                cell(g.stat("p50_ms")),
                cell(g.stat("p99_ms")),
                cell(per_signal("cpu_us_per_req.sidecar")),
                cell(per_signal("cpu_us_per_req.redis")),
                cell(g.stat("redis_calls_per_req")),
                cell(g.stat("round_trips_per_req")),
                cell(g.stat("redis_usec_per_call.evalsha")),
                ratio_cell(vs_evalsha),
                cell(g.stat("resources_before")),
            );
            let mut ops = String::new();
            for (k, _) in g.runs.last().map(|r| r.metrics.clone()).unwrap_or_default() {
                if let Some(op) = k.strip_prefix("round_trips_per_req.") {
                    let _ = write!(ops, "{op} {}, ", num(g.median(&k).unwrap_or(0.0)));
                }
                if let Some(cmd) = k.strip_prefix("redis_calls_per_req.") {
                    let _ = write!(ops, "`{cmd}` {}/req, ", num(g.median(&k).unwrap_or(0.0)));
                }
            }
            sc_ratios.push(json!({
                "path": g.label("path"), "sink": g.label("sink"),
                "signals_per_s_vs_evalsha_per_s": vs_evalsha.map(|s| s.json()),
                "breakdown": ops.trim_end_matches(", "),
            }));
            if g.label("path") == "duplicate" && g.label("sink") == "dir" {
                let rt = g.stat("round_trips_per_req");
                targets.push(Target {
                    name: "sidecar: Redis round trips per request, duplicate path".into(),
                    goal: "one round trip per request".into(),
                    measured: format!(
                        "{} store round trips/req ({} Redis commands/req, {} of them EVALSHA, for {alerts:.0} signals/req)",
                        cell(rt),
                        cell(g.stat("redis_calls_per_req")),
                        cell(g.stat("redis_calls_per_req.evalsha"))
                    ),
                    met: rt.map(|s| s.median <= 1.05),
                });
            }
            if g.label("path") == "created" && g.label("sink") == "dir" {
                let rt = g.stat("round_trips_per_req");
                targets.push(Target {
                    name: "sidecar: Redis round trips per request, created path".into(),
                    goal: "one round trip per request".into(),
                    measured: format!("{} store round trips/req", cell(rt)),
                    met: rt.map(|s| s.median <= 1.05),
                });
            }
        }
        let _ = writeln!(
            sc_md,
            "\nRedis commands and round trips per request: {}\n",
            sc_ratios
                .iter()
                .map(|r| format!(
                    "{} ({}): {}",
                    r["path"].as_str().unwrap_or(""),
                    r["sink"].as_str().unwrap_or(""),
                    r["breakdown"].as_str().unwrap_or("")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        ratios_json.insert("sidecar".into(), Value::Array(sc_ratios));
    }
    if !redis_bench.is_empty() {
        let _ = writeln!(
            sc_md,
            "`redis-benchmark` in the same run, on the same redis-server (50 clients; the practical ceiling):\n"
        );
        let _ = writeln!(
            sc_md,
            "| script | calls/s | Redis µs inside the script per call |"
        );
        let _ = writeln!(sc_md, "|---|---|---|");
        for (config, what) in [
            ("evalsha", "small script (INCR + PEXPIRE), unpipelined"),
            ("evalsha_p16", "small script, pipelined 16 deep"),
            (
                "decide",
                "the sidecar's common.lua + decide.lua, duplicate path, unpipelined",
            ),
            (
                "decide_p16",
                "the sidecar's decide script, duplicate path, pipelined 16 deep",
            ),
        ] {
            if let Some(g) = find(&redis_bench, &[("config", config)]) {
                let _ = writeln!(
                    sc_md,
                    "| {what} | {} | {} |",
                    cell(g.stat("rps")),
                    cell(g.stat("usec_per_call"))
                );
            }
        }
        let _ = writeln!(sc_md);
    }

    // ------------------------------------------------------------ peer
    let mut peer_md = String::new();
    let sc_dup = find(&sidecar, &[("path", "duplicate"), ("sink", "dir")]);
    let sc_new = find(&sidecar, &[("path", "created"), ("sink", "dir")]);
    let sc_storm = find(&sidecar, &[("path", "storm"), ("sink", "dir")]);
    let am_same = find(&peer, &[("mode", "identical")]);
    let am_new = find(&peer, &[("mode", "distinct")]);
    if !peer.is_empty() {
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
        ratios_json.insert("peer".into(), Value::Array(peer_ratios));
    }

    // ------------------------------------------------------------ chain
    let mut chain_md = String::new();
    let mut stages_json = Vec::new();
    if !chain.is_empty() {
        let _ = writeln!(
            chain_md,
            "\n\n| path | alerts/s | req/s | p50 ms | p99 ms | vs sidecar alone | resources in the sink before the run |"
        );
        let _ = writeln!(chain_md, "|---|---|---|---|---|---|---|");
        for g in &chain {
            let alone = find(&sidecar, &[("path", g.label("path")), ("sink", "dir")]);
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
                &edge,
                &[("workers", "1"), ("payload", "4k"), ("config", "filter")],
            )
            .and_then(|g| g.median("cpu_us_per_req.envoy")),
            find(
                &edge,
                &[("workers", "1"), ("payload", "4k"), ("config", "nofilter")],
            )
            .and_then(|g| g.median("cpu_us_per_req.envoy")),
        ) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        for g in &chain {
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
        ratios_json.insert("stages".into(), Value::Array(stages_json.clone()));
    }

    // ------------------------------------------------------------ assemble
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| target | goal | measured | met |");
    let _ = writeln!(md, "|---|---|---|---|");
    for t in &targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.name,
            t.goal,
            t.measured,
            match t.met {
                Some(true) => "**met**",
                Some(false) => "**not met**",
                None => "n/a",
            }
        );
    }
    let _ = writeln!(md, "\n![throughput and p99 per configuration](chart.png)\n");
    let _ = writeln!(md, "{}\n", chart::LEGEND);
    let _ = writeln!(
        md,
        "## 1. Edge: the same Envoy, four configurations\n\nLoad generator → Envoy → a body-reading upstream \
         (`signalgate-bench upstream`: reads every body, answers 200) so the edge is measured without \
         a direct_response shortcut. Limits are high enough that nothing is refused; every answer was checked. \
         The wasm floor (`bench/wasm-floor`) is a proxy-wasm module that only waits for the whole body, copies \
         it into the VM and lets the request through: the least any filter that checks bodies in Envoy's wasm \
         VM costs, so the gap between it and the signalgate filter is the filter's own work.{edge_md}{mem_md}"
    );
    let _ = writeln!(
        md,
        "## 2. Sidecar alone, real Redis\n\nLoad generator → sidecar (Redis store on a private redis-server, \
         directory sink{}) with `x-signalgate-source` set as Envoy would. Duplicate path: the same webhook \
         every time; created path: new alerts in every request (storm threshold raised so every new alert \
         creates its own resource); storm path: new alerts in every request at the default storm threshold \
         (a second sidecar on its own Redis database: after the first ten, every alert is aggregated into \
         the namespace's one storm resource, as in a real alert storm). The namespace is warm, as in steady \
         state: the sidecars run with a 2 s dedup window, and one alert and a 2 s wait make the store know \
         the namespace for a whole window before anything is measured (in a cold one every new alert is \
         first looked up in the sink). Redis figures are `INFO commandstats` deltas over the window; round trips \
         are the sidecar's own store calls (`signalgate_store_duration_seconds_count`).{sc_md}",
        if find(&sidecar, &[("sink", "kube")]).is_some() { "; and the kube sink against a real kube-apiserver" } else { "" }
    );
    let _ = writeln!(
        md,
        "## 3. Peer: Alertmanager's own ingestion\n\nThe same alerts, posted to {}'s \
         `POST /api/v2/alerts` (in memory, no cluster, a null receiver), next to the sidecar's signals/s.{peer_md}",
        m("alertmanager")
    );
    let _ = writeln!(
        md,
        "## 4. Full chain: Envoy + filter + sidecar + Redis\n\nLoad generator → Envoy (signalgate filter, 1 worker) → \
         sidecar → Redis, same 4 KB webhook.{chain_md}"
    );
    let _ = writeln!(
        md,
        "## Parameters\n\n{}\n",
        meta.iter()
            .map(|(k, v)| format!("- `{k}`: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let section = |gs: &[Group]| Value::Array(gs.iter().map(Group::json).collect());
    let report = json!({
        "meta": meta,
        "targets": targets.iter().map(|t| json!({"name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met})).collect::<Vec<_>>(),
        "edge": section(&edge),
        "edge_memory": section(&memory),
        "sidecar": section(&sidecar),
        "redis_benchmark": section(&redis_bench),
        "peer": section(&peer),
        "chain": section(&chain),
        "ratios": ratios_json,
    });

    let md_path = out.join("report.md");
    let json_path = out.join("report.json");
    let png_path = out.join("chart.png");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    chart::draw(&png_path, &edge, &sidecar, &peer, &chain)?;
    Ok(vec![md_path, json_path, png_path])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(labels: &[(&str, &str)], metrics: &[(&str, f64)]) -> Record {
        Record {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            info: BTreeMap::new(),
        }
    }

    #[test]
    fn a_report_from_every_part() {
        let mut recs = vec![Record {
            labels: [("part".to_string(), "meta".to_string())].into(),
            metrics: BTreeMap::new(),
            info: [("mode".to_string(), "quick".to_string())].into(),
        }];
        for run in ["1", "2"] {
            for w in ["1", "2"] {
                for p in ["1k", "4k"] {
                    for (c, rps) in [("nofilter", 100.0), ("native", 95.0), ("filter", 80.0)] {
                        recs.push(rec(
                            &[
                                ("part", "edge"),
                                ("config", c),
                                ("payload", p),
                                ("workers", w),
                                ("run", run),
                            ],
                            &[
                                ("rps", rps),
                                ("p50_ms", 1.0),
                                ("p99_ms", 2.0),
                                ("cpu_us_per_req.envoy", 100.0),
                                ("body_bytes", 4096.0),
                            ],
                        ));
                    }
                }
            }
            for (path, a) in [("duplicate", 5000.0), ("created", 1000.0)] {
                recs.push(rec(
                    &[
                        ("part", "sidecar"),
                        ("path", path),
                        ("sink", "dir"),
                        ("run", run),
                    ],
                    &[
                        ("alerts_per_s", a),
                        ("rps", a / 5.0),
                        ("alerts_per_request", 5.0),
                        ("round_trips_per_req", 1.0),
                        ("redis_calls_per_req", 5.0),
                    ],
                ));
                recs.push(rec(
                    &[("part", "chain"), ("path", path), ("run", run)],
                    &[
                        ("alerts_per_s", a / 2.0),
                        ("rps", a / 10.0),
                        ("cpu_us_per_req.envoy", 200.0),
                        ("cpu_us_per_req.sidecar", 300.0),
                    ],
                ));
            }
            recs.push(rec(
                &[
                    ("part", "redis_benchmark"),
                    ("config", "evalsha"),
                    ("run", run),
                ],
                &[("rps", 70000.0)],
            ));
            recs.push(rec(
                &[("part", "peer"), ("mode", "identical"), ("run", run)],
                &[("alerts_per_s", 800.0), ("alerts_per_request", 5.0)],
            ));
        }
        for (s, rss) in [("0", 40000.0), ("20000", 41000.0), ("100000", 41100.0)] {
            recs.push(rec(
                &[("part", "edge_memory"), ("sources", s)],
                &[("rss_kib", rss)],
            ));
        }
        let dir = std::env::temp_dir().join(format!("sg-bench-report-{}", std::process::id()));
        let written = write(&recs, &dir).unwrap_or_default();
        assert_eq!(written.len(), 3);
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap_or_default();
        assert!(
            md.contains("signalgate filter (limit + validation)"),
            "{md}"
        );
        assert!(md.contains("0.84x"), "{md}");
        assert!(md.contains("**met**"), "{md}");
        let json: Value = std::fs::read_to_string(dir.join("report.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        assert_eq!(json["edge"].as_array().map(Vec::len), Some(12));
        assert!(json["targets"].as_array().is_some_and(|t| t.len() >= 4));
        assert!(
            std::fs::metadata(dir.join("chart.png"))
                .map(|m| m.len())
                .unwrap_or(0)
                > 1000
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
