//! Part 2 of the report: the sidecar alone on a real Redis, next to
//! `redis-benchmark` on the same redis-server.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::parts::Parts;
use super::target::Target;
use crate::figures::{cell, num, ratio_cell};
use crate::stats::{find, Group, Stat};

/// The chapter `## 2. Sidecar alone`; adds its targets and its ratios.
pub fn chapter(
    parts: &Parts,
    targets: &mut Vec<Target>,
    ratios: &mut Map<String, Value>,
) -> String {
    let sc_md = paths(parts, targets, ratios) + &redis_benchmark(&parts.redis_bench);
    let mut md = String::new();
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
        if find(&parts.sidecar, &[("sink", "kube")]).is_some() { "; and the kube sink against a real kube-apiserver" } else { "" }
    );
    md
}

/// One row per path and sink, with its Redis cost, and the round-trip targets.
fn paths(parts: &Parts, targets: &mut Vec<Target>, ratios: &mut Map<String, Value>) -> String {
    let mut sc_md = String::new();
    let evalsha = find(&parts.redis_bench, &[("config", "evalsha")]);
    if !parts.sidecar.is_empty() {
        let _ = writeln!(
            sc_md,
            "\n\n| path | sink | signals/s | req/s | p50 ms | p99 ms | sidecar CPU µs/signal | Redis CPU µs/signal | Redis commands/req | store round trips/req | Redis µs/call (EVALSHA) | signals/s vs EVALSHA/s | resources in the sink before the run |"
        );
        let _ = writeln!(
            sc_md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        let mut sc_ratios = Vec::new();
        for g in &parts.sidecar {
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
        ratios.insert("sidecar".into(), Value::Array(sc_ratios));
    }
    sc_md
}

/// The `redis-benchmark` figures: the practical ceiling of a script call.
fn redis_benchmark(redis_bench: &[Group]) -> String {
    let mut bench_md = String::new();
    if !redis_bench.is_empty() {
        let _ = writeln!(
            bench_md,
            "`redis-benchmark` in the same run, on the same redis-server (50 clients; the practical ceiling):\n"
        );
        let _ = writeln!(
            bench_md,
            "| script | calls/s | Redis µs inside the script per call |"
        );
        let _ = writeln!(bench_md, "|---|---|---|");
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
            if let Some(g) = find(redis_bench, &[("config", config)]) {
                let _ = writeln!(
                    bench_md,
                    "| {what} | {} | {} |",
                    cell(g.stat("rps")),
                    cell(g.stat("usec_per_call"))
                );
            }
        }
        let _ = writeln!(bench_md);
    }
    bench_md
}
