//! The load generator: N keep-alive HTTP/1.1 connections (hyper client), each
//! sending its next request as soon as the previous answer is read (closed
//! loop), for a fixed time after a warm-up or for a fixed number of requests.
//! Latencies go into HDR histograms (microseconds); the CPU time of the
//! processes under test and Redis/sidecar counters are read at the edges of
//! the measured window, so every per-request figure covers the same requests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::payload::BodyGen;
use crate::probe::{RedisStats, SidecarStats};
use crate::procstat;
use crate::record::Record;

/// Which answers count as success.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Any 2xx.
    Success,
    /// Exactly these codes.
    Codes(Vec<u16>),
}

impl Expect {
    pub fn parse(s: &str) -> Result<Expect, String> {
        if s == "2xx" {
            return Ok(Expect::Success);
        }
        s.split(',')
            .map(|c| {
                c.trim()
                    .parse::<u16>()
                    .map_err(|_| format!("bad status {c:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Expect::Codes)
    }

    fn accepts(&self, status: u16) -> bool {
        match self {
            Expect::Success => (200..300).contains(&status),
            Expect::Codes(c) => c.contains(&status),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Amount {
    /// Warm up, then measure for a while.
    Time { warmup: Duration, measure: Duration },
    /// Exactly this many requests, all measured.
    Count(u64),
}

#[derive(Debug, Clone)]
pub struct Spec {
    /// `host:port`
    pub authority: String,
    pub path: String,
    pub connections: usize,
    pub amount: Amount,
    pub body: BodyGen,
    /// `None`: no Content-Type header.
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
    /// A header set to `<prefix><n>` on request n (distinct sources).
    pub source_header: Option<(String, String)>,
    /// First request number (distinct bodies and sources).
    pub counter_start: u64,
    pub expect: Expect,
    /// Processes whose CPU time is charged per request, by name.
    pub pids: Vec<(String, u32)>,
    /// `host:port` of a Redis whose commandstats are read around the window.
    pub redis: Option<String>,
    /// A sidecar `/metrics` URL whose store round trips are read around the window.
    pub sidecar_metrics: Option<String>,
}

/// What the connections collect.
struct Shared {
    next: AtomicU64,
    end: u64,
    recording: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
}

#[derive(Default)]
struct ConnStats {
    hist: Option<Histogram<u64>>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
}

/// Counters at one edge of the window.
struct Snapshot {
    at: Instant,
    cpu: Vec<Option<Duration>>,
    own_cpu: Option<Duration>,
    redis: Option<RedisStats>,
    sidecar: Option<SidecarStats>,
}

/// Which edge of the window a snapshot is taken at: the slow probes (Redis,
/// sidecar metrics) go outside the window, the clock and CPU times at its edge.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge {
    Start,
    End,
}

fn snapshot(spec: &Spec, edge: Edge) -> Snapshot {
    let mut s = Snapshot {
        at: Instant::now(),
        cpu: Vec::new(),
        own_cpu: None,
        redis: None,
        sidecar: None,
    };
    let clock = |s: &mut Snapshot| {
        s.cpu = spec
            .pids
            .iter()
            .map(|(_, pid)| procstat::cpu_time(*pid))
            .collect();
        s.own_cpu = procstat::own_cpu_time();
        s.at = Instant::now();
    };
    if edge == Edge::End {
        clock(&mut s);
    }
    s.redis = spec
        .redis
        .as_deref()
        .and_then(|a| match RedisStats::fetch(a) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("signalgate-bench: {e}");
                None
            }
        });
    s.sidecar = spec
        .sidecar_metrics
        .as_deref()
        .and_then(|u| match SidecarStats::fetch(u) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("signalgate-bench: {e}");
                None
            }
        });
    if edge == Edge::Start {
        clock(&mut s);
    }
    s
}

fn new_histogram() -> Option<Histogram<u64>> {
    // 1 us .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

/// Runs the load described by `spec` and returns its figures.
pub async fn run(spec: Spec) -> Result<Record, String> {
    let shared = Arc::new(Shared {
        next: AtomicU64::new(spec.counter_start),
        end: match spec.amount {
            Amount::Count(n) => spec.counter_start.saturating_add(n),
            Amount::Time { .. } => u64::MAX,
        },
        recording: AtomicBool::new(matches!(spec.amount, Amount::Count(_))),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
    });
    let base = Arc::new(base_headers(&spec)?);
    let spec = Arc::new(spec);
    let collected: Arc<Mutex<Vec<ConnStats>>> = Arc::new(Mutex::new(Vec::new()));

    let before;
    let mut tasks = Vec::with_capacity(spec.connections);
    match spec.amount {
        Amount::Count(_) => {
            before = snapshot(&spec, Edge::Start);
            for _ in 0..spec.connections {
                tasks.push(tokio::spawn(connection(
                    spec.clone(),
                    base.clone(),
                    shared.clone(),
                    collected.clone(),
                )));
            }
            for t in tasks.drain(..) {
                let _ = t.await;
            }
        }
        Amount::Time { warmup, measure } => {
            for _ in 0..spec.connections {
                tasks.push(tokio::spawn(connection(
                    spec.clone(),
                    base.clone(),
                    shared.clone(),
                    collected.clone(),
                )));
            }
            tokio::time::sleep(warmup).await;
            before = snapshot(&spec, Edge::Start);
            shared.recording.store(true, Ordering::SeqCst);
            tokio::time::sleep(measure).await;
            shared.recording.store(false, Ordering::SeqCst);
        }
    }
    let after = snapshot(&spec, Edge::End);
    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        // A connection stuck on a slow answer must not hold the run.
        if tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .is_err()
        {
            eprintln!("signalgate-bench: a connection did not finish within 10 s");
        }
    }

    let conns = std::mem::take(&mut *collected.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(summarise(&spec, &shared, &before, &after, conns))
}

fn base_headers(spec: &Spec) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    let v = |s: &str| HeaderValue::from_str(s).map_err(|e| format!("header value {s:?}: {e}"));
    h.insert(HOST, v(&spec.authority)?);
    if let Some(ct) = &spec.content_type {
        h.insert(CONTENT_TYPE, v(ct)?);
    }
    for (name, value) in &spec.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("header name {name:?}: {e}"))?;
        h.append(name, v(value)?);
    }
    Ok(h)
}

async fn connection(
    spec: Arc<Spec>,
    base: Arc<HeaderMap>,
    shared: Arc<Shared>,
    out: Arc<Mutex<Vec<ConnStats>>>,
) {
    let mut stats = ConnStats {
        hist: new_histogram(),
        ..ConnStats::default()
    };
    let source_name = spec
        .source_header
        .as_ref()
        .and_then(|(n, _)| HeaderName::from_bytes(n.as_bytes()).ok());
    'connect: while !shared.stop.load(Ordering::Relaxed) {
        let stream = match TcpStream::connect(&spec.authority).await {
            Ok(s) => s,
            Err(_) => {
                stats.transport_errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
            {
                Ok(pair) => pair,
                Err(_) => {
                    stats.transport_errors += 1;
                    continue;
                }
            };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                break 'connect;
            }
            let n = shared.next.fetch_add(1, Ordering::Relaxed);
            if n >= shared.end {
                break 'connect;
            }
            let mut req = Request::new(Full::new(spec.body.body(n)));
            *req.method_mut() = Method::POST;
            *req.uri_mut() = match spec.path.parse() {
                Ok(u) => u,
                Err(_) => break 'connect,
            };
            *req.headers_mut() = (*base).clone();
            if let (Some(name), Some((_, prefix))) = (&source_name, &spec.source_header) {
                if let Ok(v) = HeaderValue::from_str(&format!("{prefix}{n}")) {
                    req.headers_mut().insert(name.clone(), v);
                }
            }
            if sender.ready().await.is_err() {
                stats.transport_errors += 1;
                continue 'connect;
            }
            let started = Instant::now();
            let status = match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if resp.into_body().collect().await.is_err() {
                        stats.transport_errors += 1;
                        continue 'connect;
                    }
                    status
                }
                Err(_) => {
                    stats.transport_errors += 1;
                    continue 'connect;
                }
            };
            if shared.recording.load(Ordering::Relaxed) {
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Some(h) = stats.hist.as_mut() {
                    h.saturating_record(us.max(1));
                }
                *stats.statuses.entry(status).or_default() += 1;
                shared.completed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    out.lock().unwrap_or_else(|e| e.into_inner()).push(stats);
}

fn summarise(
    spec: &Spec,
    shared: &Shared,
    before: &Snapshot,
    after: &Snapshot,
    conns: Vec<ConnStats>,
) -> Record {
    let elapsed = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let mut hist = new_histogram();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut transport_errors = 0;
    for c in conns {
        if let (Some(all), Some(h)) = (hist.as_mut(), c.hist.as_ref()) {
            let _ = all.add(h);
        }
        for (s, n) in c.statuses {
            *statuses.entry(s).or_default() += n;
        }
        transport_errors += c.transport_errors;
    }
    let completed = shared.completed.load(Ordering::Relaxed);
    let unexpected: u64 = statuses
        .iter()
        .filter(|(s, _)| !spec.expect.accepts(**s))
        .map(|(_, n)| n)
        .sum();
    let ok = completed.saturating_sub(unexpected);
    let per_req = |x: f64| {
        if completed > 0 {
            x / completed as f64
        } else {
            0.0
        }
    };

    let mut r = Record::default();
    let m = &mut r.metrics;
    m.insert("requests".into(), completed as f64);
    m.insert("seconds".into(), elapsed);
    m.insert("rps".into(), completed as f64 / elapsed);
    m.insert("ok_rps".into(), ok as f64 / elapsed);
    m.insert(
        "alerts_per_s".into(),
        ok as f64 * spec.body.alerts as f64 / elapsed,
    );
    m.insert("alerts_per_request".into(), spec.body.alerts as f64);
    m.insert("body_bytes".into(), spec.body.len as f64);
    m.insert("unexpected".into(), unexpected as f64);
    m.insert("transport_errors".into(), transport_errors as f64);
    if let Some(h) = hist.as_ref().filter(|h| !h.is_empty()) {
        let ms = |us: u64| us as f64 / 1000.0;
        m.insert("p50_ms".into(), ms(h.value_at_quantile(0.50)));
        m.insert("p90_ms".into(), ms(h.value_at_quantile(0.90)));
        m.insert("p99_ms".into(), ms(h.value_at_quantile(0.99)));
        m.insert("p999_ms".into(), ms(h.value_at_quantile(0.999)));
        m.insert("max_ms".into(), ms(h.max()));
        m.insert("mean_ms".into(), h.mean() / 1000.0);
    }
    for (i, (name, _)) in spec.pids.iter().enumerate() {
        if let (Some(Some(a)), Some(Some(b))) = (before.cpu.get(i), after.cpu.get(i)) {
            let us = b.saturating_sub(*a).as_secs_f64() * 1e6;
            m.insert(format!("cpu_us_per_req.{name}"), per_req(us));
            m.insert(format!("cpu_share.{name}"), us / 1e6 / elapsed);
        }
    }
    if let (Some(a), Some(b)) = (before.own_cpu, after.own_cpu) {
        let us = b.saturating_sub(a).as_secs_f64() * 1e6;
        m.insert("cpu_us_per_req.loadgen".into(), per_req(us));
    }
    if let (Some(a), Some(b)) = (&before.redis, &after.redis) {
        let delta = a.delta(b);
        let (mut calls, mut usec) = (0u64, 0u64);
        for (cmd, (c, u)) in &delta {
            calls += c;
            usec += u;
            m.insert(format!("redis_calls_per_req.{cmd}"), per_req(*c as f64));
            m.insert(format!("redis_usec_per_call.{cmd}"), *u as f64 / *c as f64);
        }
        m.insert("redis_calls_per_req".into(), per_req(calls as f64));
        m.insert("redis_usec_per_req".into(), per_req(usec as f64));
        m.insert(
            "redis_reads_per_req".into(),
            per_req(b.reads_processed.saturating_sub(a.reads_processed) as f64),
        );
    }
    if let (Some(a), Some(b)) = (&before.sidecar, &after.sidecar) {
        let delta = a.delta(b);
        let total: u64 = delta.values().sum();
        for (op, n) in &delta {
            m.insert(format!("round_trips_per_req.{op}"), per_req(*n as f64));
        }
        m.insert("round_trips_per_req".into(), per_req(total as f64));
    }
    r.info.insert(
        "statuses".into(),
        statuses
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    r.info
        .insert("connections".into(), spec.connections.to_string());
    r.info.insert(
        "url".into(),
        format!("http://{}{}", spec.authority, spec.path),
    );
    r
}
