//! The report: every figure as the median of its runs with min/max, ratios
//! against the baselines of the same invocation (paired run by run, since the
//! runs of the configurations are interleaved), the targets stated as
//! met or not, and where the time goes. Written as `report.md`, `report.json`
//! and `chart.png`.

mod chain;
mod edge;
mod module;
mod parts;
mod peer;
mod sidecar;
mod target;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::chart;
use crate::record::Record;
use crate::stats::Group;
use parts::Parts;

/// Writes report.md, report.json and chart.png into `out`; returns their paths.
pub fn write(records: &[Record], out: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let parts = Parts::of(records);
    let mut targets = Vec::new();
    let mut ratios = Map::new();
    let chapters = [
        edge::chapter(&parts, &mut targets, &mut ratios)?,
        sidecar::chapter(&parts, &mut targets, &mut ratios),
        peer::chapter(&parts, &mut targets, &mut ratios),
        chain::chapter(&parts, &mut ratios),
    ];

    let mut md = header(&parts);
    md.push_str(&target::table(&targets));
    let _ = writeln!(md, "\n![throughput and p99 per configuration](chart.png)\n");
    let _ = writeln!(md, "{}\n", chart::LEGEND);
    for chapter in &chapters {
        md.push_str(chapter);
    }
    let _ = writeln!(
        md,
        "## Parameters\n\n{}\n",
        parts
            .meta
            .iter()
            .map(|(k, v)| format!("- `{k}`: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    let section = |gs: &[Group]| Value::Array(gs.iter().map(Group::json).collect());
    let report = json!({
        "meta": parts.meta,
        "targets": targets.iter().map(target::Target::json).collect::<Vec<_>>(),
        "edge": section(&parts.edge),
        "edge_memory": section(&parts.memory),
        "sidecar": section(&parts.sidecar),
        "redis_benchmark": section(&parts.redis_bench),
        "peer": section(&parts.peer),
        "chain": section(&parts.chain),
        "ratios": ratios,
    });

    let md_path = out.join("report.md");
    let json_path = out.join("report.json");
    let png_path = out.join("chart.png");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    chart::draw(
        &png_path,
        &parts.edge,
        &parts.sidecar,
        &parts.peer,
        &parts.chain,
    )?;
    Ok(vec![md_path, json_path, png_path])
}

/// The title, how the figures were taken, and the machine they were taken on.
fn header(parts: &Parts) -> String {
    let m = |k: &str| parts.meta(k);
    let mut md = String::new();
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
        "Machine: {} ({} cores), {}. Versions: {}; {}; {}; {}; signalgate {} (wasm {} bytes, \
         native module {} bytes).\n",
        m("cpu"),
        m("cores"),
        m("kernel"),
        m("envoy"),
        m("redis"),
        m("alertmanager"),
        m("rustc"),
        m("git"),
        m("wasm_bytes"),
        m("module_bytes")
    );
    md
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

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
                    for (c, rps) in [
                        ("nofilter", 100.0),
                        ("native", 95.0),
                        ("filter", 80.0),
                        ("module", 90.0),
                    ] {
                        recs.push(Record::of(
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
                recs.push(Record::of(
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
                recs.push(Record::of(
                    &[("part", "chain"), ("path", path), ("run", run)],
                    &[
                        ("alerts_per_s", a / 2.0),
                        ("rps", a / 10.0),
                        ("cpu_us_per_req.envoy", 200.0),
                        ("cpu_us_per_req.sidecar", 300.0),
                    ],
                ));
            }
            recs.push(Record::of(
                &[
                    ("part", "redis_benchmark"),
                    ("config", "evalsha"),
                    ("run", run),
                ],
                &[("rps", 70000.0)],
            ));
            recs.push(Record::of(
                &[("part", "peer"), ("mode", "identical"), ("run", run)],
                &[("alerts_per_s", 800.0), ("alerts_per_request", 5.0)],
            ));
        }
        for (s, rss) in [("0", 40000.0), ("20000", 41000.0), ("100000", 41100.0)] {
            recs.push(Record::of(
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
        assert!(
            md.contains("| edge: native module vs native local_ratelimit, 4 KB, 2 worker(s) | throughput >= 0.9x"),
            "{md}"
        );
        assert!(md.contains("**met**"), "{md}");
        let json: Value = std::fs::read_to_string(dir.join("report.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        assert_eq!(json["edge"].as_array().map(Vec::len), Some(16));
        assert!(json["targets"].as_array().is_some_and(|t| t.len() >= 6));
        assert!(
            std::fs::metadata(dir.join("chart.png"))
                .map(|m| m.len())
                .unwrap_or(0)
                > 1000
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
