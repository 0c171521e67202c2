//! `signalgate-bench`: the tools behind `make bench` (scripts/bench.sh).
//!
//! ```text
//! signalgate-bench load URL [options]     load generator; appends one JSON record
//! signalgate-bench upstream ADDR          body-reading HTTP upstream for the edge runs
//! signalgate-bench body [options]         writes one request body to stdout
//! signalgate-bench record [options]       appends a record of given figures
//! signalgate-bench report RESULTS OUTDIR  report.md, report.json and chart.png
//! signalgate-bench micro [options]        the model's per-body work, natively (for profiling)
//! ```
//! Run a subcommand with `--help` for its options.

mod chart;
mod figures;
mod load;
mod micro;
mod payload;
mod probe;
mod procstat;
mod record;
mod report;
mod stats;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use payload::{BodyGen, Kind};
use record::{key_value, Record};

const LOAD_HELP: &str = "\
signalgate-bench load URL [options]
  --connections N        concurrent keep-alive connections (16)
  --duration S           measured seconds (5), after --warmup S (1)
  --requests N           send exactly N requests instead (all measured)
  --body KIND            webhook | am-v2 | empty (webhook)
  --size BYTES           webhook size; am-v2: the same alerts as that webhook (4096)
  --alerts N             N alerts instead of --size
  --mode MODE            identical | distinct (every request new alerts) (identical)
  --content-type CT      (application/json); 'none' sends no Content-Type
  --header NAME:VALUE    extra header (repeatable)
  --source-header NAME   set NAME to <prefix><request number> (distinct sources)
  --source-prefix P      (s)
  --counter-start N      first request number (default: from the clock, so runs never repeat)
  --expect CODES         2xx or a comma list of codes counted as success (2xx)
  --max-unexpected F     fail when more than this fraction is unexpected (0.01)
  --pid NAME=PID         charge NAME's CPU time per request (repeatable)
  --redis HOST:PORT      Redis commandstats deltas over the window
  --sidecar-metrics URL  sidecar store round trips over the window
  --threads N            load generator threads (1)
  --label K=V            record label (repeatable)
  --metric K=NUMBER      a figure known beforehand, added to the record (repeatable)
  --out FILE             append the record to FILE (JSON lines)
";

const BODY_HELP: &str = "\
signalgate-bench body [--body webhook|am-v2] [--size BYTES | --alerts N] [--distinct N]
  writes one body to stdout (--distinct N: the distinct body of request N)
";

const RECORD_HELP: &str = "\
signalgate-bench record --out FILE --label K=V... [--metric K=NUMBER...] [--info K=TEXT...] [--rss PID]
  (--rss PID: metric rss_kib, the resident memory of PID)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("load") => cmd_load(&args[1..]),
        Some("upstream") => cmd_upstream(&args[1..]),
        Some("body") => cmd_body(&args[1..]),
        Some("record") => cmd_record(&args[1..]),
        Some("report") => cmd_report(&args[1..]),
        Some("micro") => cmd_micro(&args[1..]),
        _ => Err(format!(
            "usage: signalgate-bench load|upstream|body|record|report ...\n\n{LOAD_HELP}\n{BODY_HELP}\n{RECORD_HELP}\
             signalgate-bench report RESULTS.jsonl OUTDIR\nsignalgate-bench upstream 127.0.0.1:PORT\n"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signalgate-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Flags of one subcommand: `--name value` pairs and positional arguments.
struct Flags {
    pairs: Vec<(String, String)>,
    positional: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], help: &str) -> Result<Flags, String> {
        let mut pairs = Vec::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                return Err(help.to_string());
            }
            match a.strip_prefix("--") {
                Some(name) => {
                    let value = it
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value\n{help}"))?;
                    pairs.push((name.to_string(), value.clone()));
                }
                None => positional.push(a.clone()),
            }
        }
        Ok(Flags { pairs, positional })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}")),
        }
    }

    fn check_known(&self, known: &[&str], help: &str) -> Result<(), String> {
        for (n, _) in &self.pairs {
            if !known.contains(&n.as_str()) {
                return Err(format!("unknown option --{n}\n{help}"));
            }
        }
        Ok(())
    }
}

fn body_gen(f: &Flags, distinct: bool) -> Result<BodyGen, String> {
    let kind_name = f.get("body").unwrap_or("webhook");
    let kind =
        Kind::parse(kind_name).ok_or_else(|| format!("--body: unknown kind {kind_name:?}"))?;
    let size = f.num("size", 4096usize)?;
    let alerts = match f.get("alerts") {
        Some(_) => Some(f.num("alerts", 1usize)?),
        None => None,
    };
    Ok(BodyGen::new(
        kind,
        size,
        alerts,
        distinct,
        &payload::now_rfc3339(),
    ))
}

fn cmd_load(args: &[String]) -> Result<(), String> {
    let f = Flags::parse(args, LOAD_HELP)?;
    f.check_known(
        &[
            "connections",
            "duration",
            "warmup",
            "requests",
            "body",
            "size",
            "alerts",
            "mode",
            "content-type",
            "header",
            "source-header",
            "source-prefix",
            "counter-start",
            "expect",
            "max-unexpected",
            "pid",
            "redis",
            "sidecar-metrics",
            "threads",
            "label",
            "metric",
            "out",
        ],
        LOAD_HELP,
    )?;
    let url = f
        .positional
        .first()
        .ok_or_else(|| format!("load needs a URL\n{LOAD_HELP}"))?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    let distinct = match f.get("mode").unwrap_or("identical") {
        "identical" => false,
        "distinct" => true,
        m => return Err(format!("--mode: {m:?} is not identical or distinct")),
    };
    let amount = match f.get("requests") {
        Some(_) => load::Amount::Count(f.num("requests", 0u64)?),
        None => load::Amount::Time {
            warmup: Duration::from_secs_f64(f.num("warmup", 1.0f64)?),
            measure: Duration::from_secs_f64(f.num("duration", 5.0f64)?),
        },
    };
    let default_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() % 100_000) * 10_000_000)
        .unwrap_or(0);
    let headers = f
        .all("header")
        .into_iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("--header: expected NAME:VALUE, got {h:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pids = f
        .all("pid")
        .into_iter()
        .map(|p| {
            let (n, v) = key_value(p)?;
            let pid = v.parse().map_err(|_| format!("--pid {p}: not a pid"))?;
            Ok((n, pid))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let spec = load::Spec {
        authority,
        path,
        connections: f.num("connections", 16usize)?.max(1),
        amount,
        body: body_gen(&f, distinct)?,
        content_type: match f.get("content-type").unwrap_or("application/json") {
            "none" => None,
            ct => Some(ct.to_string()),
        },
        headers,
        source_header: f.get("source-header").map(|h| {
            (
                h.to_string(),
                f.get("source-prefix").unwrap_or("s").to_string(),
            )
        }),
        counter_start: f.num("counter-start", default_start)?,
        expect: load::Expect::parse(f.get("expect").unwrap_or("2xx"))?,
        pids,
        redis: f.get("redis").map(str::to_string),
        sidecar_metrics: f.get("sidecar-metrics").map(str::to_string),
    };
    let runtime = runtime(f.num("threads", 1usize)?)?;
    let mut rec = runtime.block_on(load::run(spec))?;
    for l in f.all("label") {
        let (k, v) = key_value(l)?;
        rec.labels.insert(k, v);
    }
    for l in f.all("metric") {
        let (k, v) = key_value(l)?;
        let n: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("--metric {l}: not a number"))?;
        rec.metrics.insert(k, n);
    }
    let m = |k: &str| rec.metrics.get(k).copied().unwrap_or(0.0);
    eprintln!(
        "signalgate-bench: {labels} {rps:.0} req/s ({alerts:.0} alerts/s) p50 {p50:.2} ms p99 {p99:.2} ms \
         [{statuses}] errors {errors}",
        labels = rec
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        rps = m("rps"),
        alerts = m("alerts_per_s"),
        p50 = m("p50_ms"),
        p99 = m("p99_ms"),
        statuses = rec.info.get("statuses").map(String::as_str).unwrap_or(""),
        errors = m("transport_errors"),
    );
    match f.get("out") {
        Some(out) => rec.append_to(&PathBuf::from(out))?,
        None => println!(
            "{}",
            serde_json::to_string(&rec).map_err(|e| e.to_string())?
        ),
    }
    let requests = m("requests");
    let unexpected = m("unexpected");
    let max_unexpected = f.num("max-unexpected", 0.01f64)?;
    if requests <= 0.0 {
        return Err(format!("no request completed against {url}"));
    }
    if unexpected / requests > max_unexpected {
        return Err(format!(
            "{unexpected} of {requests} answers were unexpected ({}) from {url}",
            rec.info.get("statuses").map(String::as_str).unwrap_or("")
        ));
    }
    Ok(())
}

fn cmd_upstream(args: &[String]) -> Result<(), String> {
    let f = Flags::parse(
        args,
        "signalgate-bench upstream 127.0.0.1:PORT [--threads N]",
    )?;
    let listen = f
        .positional
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let runtime = runtime(f.num("threads", 1usize)?)?;
    runtime.block_on(upstream::serve(&listen))
}

fn cmd_body(args: &[String]) -> Result<(), String> {
    use std::io::Write;
    let f = Flags::parse(args, BODY_HELP)?;
    f.check_known(&["body", "size", "alerts", "distinct"], BODY_HELP)?;
    let distinct = f.get("distinct").is_some();
    let gen = body_gen(&f, distinct)?;
    let body = gen.body(f.num("distinct", 0u64)?);
    std::io::stdout()
        .write_all(&body)
        .map_err(|e| e.to_string())
}

fn cmd_record(args: &[String]) -> Result<(), String> {
    let f = Flags::parse(args, RECORD_HELP)?;
    f.check_known(&["out", "label", "metric", "info", "rss"], RECORD_HELP)?;
    let out = f
        .get("out")
        .ok_or_else(|| format!("record needs --out\n{RECORD_HELP}"))?;
    let mut r = Record::default();
    for l in f.all("label") {
        let (k, v) = key_value(l)?;
        r.labels.insert(k, v);
    }
    for m in f.all("metric") {
        let (k, v) = key_value(m)?;
        let n: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("--metric {m}: not a number"))?;
        r.metrics.insert(k, n);
    }
    for i in f.all("info") {
        let (k, v) = key_value(i)?;
        r.info.insert(k, v);
    }
    if let Some(pid) = f.get("rss") {
        let pid: u32 = pid.parse().map_err(|_| format!("--rss {pid}: not a pid"))?;
        let kib = procstat::rss_kib(pid).ok_or_else(|| format!("--rss {pid}: no such process"))?;
        r.metrics.insert("rss_kib".into(), kib as f64);
    }
    r.append_to(&PathBuf::from(out))
}

fn cmd_micro(args: &[String]) -> Result<(), String> {
    let usage = "signalgate-bench micro [--size BYTES (4096)] [--iterations N (20000)] \
                 [--only value|validate|signals|identities]";
    let f = Flags::parse(args, usage)?;
    f.check_known(&["size", "iterations", "only"], usage)?;
    let size = f.num("size", 4096usize)?;
    let steps = micro::run(size, f.num("iterations", 20_000u64)?, f.get("only"))?;
    for s in steps {
        println!(
            "{:<13} {:>9.0} ns/body  {:>7.1} ns/KB",
            s.name,
            s.ns_per_call,
            s.ns_per_call * 1024.0 / size as f64
        );
    }
    Ok(())
}

fn cmd_report(args: &[String]) -> Result<(), String> {
    let usage = "signalgate-bench report RESULTS.jsonl OUTDIR";
    let f = Flags::parse(args, usage)?;
    let (Some(results), Some(out)) = (f.positional.first(), f.positional.get(1)) else {
        return Err(usage.to_string());
    };
    let records = Record::read_all(&PathBuf::from(results))?;
    let written = report::write(&records, &PathBuf::from(out))?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// A tokio runtime with `threads` workers (a current-thread one for 1).
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))
}
