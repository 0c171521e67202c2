//! What a run does, drawn from its seed before anything starts: the
//! incidents, each namespace's deliveries (one Alertmanager aggregation
//! group per namespace, so one delivery at a time per namespace, as
//! Alertmanager sends a group's notifications) and the fault schedule. The
//! same seed, fault menu and duration give the same plan; only the timing of
//! the real processes differs between replays.

use std::fmt;

use crate::rng::Rng;

/// The namespaces of a run, one sender lane (aggregation group) each.
pub const NAMESPACES: [&str; 4] = ["chk-a", "chk-b", "chk-c", "chk-d"];

/// `SIGNALGATE_STORM_THRESHOLD` the sidecars run with.
pub const STORM_THRESHOLD: u64 = 3;

/// 2026-12-01T00:00:00Z: the firing instances (`startsAt`) are this plus
/// the planned time, so a replay sends the same bodies.
pub const BASE_MS: i64 = 1_796_083_200_000;

/// A resolved incident's fingerprint fires again (a new incident) only this
/// long after its resolve was planned: longer than a delivery's retries, the
/// dedup window and a storm's maximum duration together, so a resolved storm
/// member never fires again into the storm it was counted in (whose
/// membership is by fingerprint).
const REFIRE_AFTER_MS: u64 = 40_000;

/// A firing namespace with this many firing incidents resolves more.
const CROWDED: usize = 14;

const ALERT_NAMES: [&str; 4] = [
    "KubePodCrashLooping",
    "KubePodNotReady",
    "HighRequestLatency",
    "KubeletDiskPressure",
];

/// One incident: a fingerprint (namespace, alertname, pod) and a firing
/// instance (`startsAt`).
#[derive(Debug, Clone)]
pub struct Incident {
    pub id: usize,
    pub lane: usize,
    pub namespace: &'static str,
    pub alertname: &'static str,
    pub pod: String,
    pub starts_ms: i64,
    /// `endsAt` of its resolve, once planned.
    pub ends_ms: Option<i64>,
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "I{} {}/{}:{}@+{}ms",
            self.id,
            self.namespace,
            self.pod,
            self.alertname,
            self.starts_ms - BASE_MS
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// One planned delivery of a lane (twice, concurrently, when `twin`: both
/// members of an Alertmanager HA pair send it).
#[derive(Debug, Clone)]
pub struct Step {
    pub at_ms: u64,
    pub what: &'static str,
    pub alerts: Vec<(usize, Status)>,
    pub twin: bool,
}

/// The faults the checker can inject (`CHECKER_FAULTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A sidecar SIGKILLed, restarted after the hold.
    Kill,
    /// A sidecar SIGTERMed (graceful: final flush), restarted after the hold.
    Term,
    /// A sidecar SIGSTOPped for the hold, then SIGCONT.
    Stop,
    /// The reply to the next store call through one Redis node's proxy is
    /// lost after Redis ran it (the connection reset instead).
    RedisDrop,
    /// One Redis node's proxy delays every request (20-100 ms, well under
    /// the sidecars' 500 ms store timeout) for the hold.
    RedisSlow,
    /// One Redis node's proxy delays every request past the store timeout
    /// (600 ms to 1.5 s) for the hold: the calls time out, and run late.
    RedisDelay,
    /// One Redis node's proxy holds all traffic for the hold (a partition
    /// that heals: what was held is delivered then).
    RedisBlackhole,
    /// One Redis node loses its data (`FLUSHALL`).
    RedisFlush,
    /// The kube-apiserver stopped for the hold, then restarted.
    ApiDown,
    /// The proxy between the sidecars and the API server delays every
    /// request (50-400 ms) for the hold.
    ApiSlow,
    /// The proxy between the sidecars and the API server holds all traffic
    /// for the hold.
    ApiBlackhole,
}

impl FaultKind {
    pub const ALL: [FaultKind; 11] = [
        FaultKind::Kill,
        FaultKind::Term,
        FaultKind::Stop,
        FaultKind::RedisDrop,
        FaultKind::RedisSlow,
        FaultKind::RedisDelay,
        FaultKind::RedisBlackhole,
        FaultKind::RedisFlush,
        FaultKind::ApiDown,
        FaultKind::ApiSlow,
        FaultKind::ApiBlackhole,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Term => "term",
            FaultKind::Stop => "stop",
            FaultKind::RedisDrop => "redis-drop",
            FaultKind::RedisSlow => "redis-slow",
            FaultKind::RedisDelay => "redis-delay",
            FaultKind::RedisBlackhole => "redis-blackhole",
            FaultKind::RedisFlush => "redis-flush",
            FaultKind::ApiDown => "api-down",
            FaultKind::ApiSlow => "api-slow",
            FaultKind::ApiBlackhole => "api-blackhole",
        }
    }

    /// A comma-separated menu: names, `all` or `none`.
    pub fn parse_menu(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut menu = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "all" => menu.extend(FaultKind::ALL),
                "none" => {}
                _ => menu.push(
                    FaultKind::ALL
                        .into_iter()
                        .find(|k| k.name() == word)
                        .ok_or_else(|| {
                            let names: Vec<&str> =
                                FaultKind::ALL.iter().map(|k| k.name()).collect();
                            format!(
                                "unknown fault {word:?} (known: {}, all, none)",
                                names.join(",")
                            )
                        })?,
                ),
            }
        }
        menu.sort();
        menu.dedup();
        Ok(menu)
    }

    pub fn menu_text(menu: &[FaultKind]) -> String {
        if menu.is_empty() {
            return "none".to_string();
        }
        menu.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    }
}

/// One planned fault: `kind` on `target` (a sidecar or Redis node index),
/// held `hold_ms`; `param_ms` is the delay of `redis-slow`, `redis-delay`
/// and `api-slow`. It starts at `at_ms`, or `gap_ms` after the fault
/// before it ended if that one took longer than planned (restarts do): the
/// system gets its quiet time between two faults whatever happens.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub at_ms: u64,
    pub gap_ms: u64,
    pub kind: FaultKind,
    pub target: usize,
    pub hold_ms: u64,
    pub param_ms: u64,
}

pub struct Plan {
    pub incidents: Vec<Incident>,
    pub lanes: Vec<Vec<Step>>,
    pub faults: Vec<FaultPlan>,
}

impl Plan {
    /// The plan for `seed`: `duration_ms` of workload on every lane, and
    /// faults of `menu` between 2.5 s and the end, one at a time.
    pub fn generate(seed: u64, duration_ms: u64, menu: &[FaultKind]) -> Plan {
        let mut incidents = Vec::new();
        let lanes = (0..NAMESPACES.len())
            .map(|lane| plan_lane(seed, lane, duration_ms, &mut incidents))
            .collect();
        Plan {
            incidents,
            lanes,
            faults: plan_faults(seed, duration_ms, menu),
        }
    }

    pub fn deliveries(&self) -> usize {
        self.lanes
            .iter()
            .flatten()
            .map(|s| if s.twin { 2 } else { 1 })
            .sum()
    }
}

struct Lane<'a> {
    rng: Rng,
    lane: usize,
    incidents: &'a mut Vec<Incident>,
    firing: Vec<usize>,
    /// Resolved incidents whose fingerprint may fire again: (incident, when).
    resolved: Vec<(usize, u64)>,
    pods: usize,
}

impl Lane<'_> {
    fn new_incident(&mut self, at_ms: u64, alertname: &'static str, pod: String) -> usize {
        let id = self.incidents.len();
        self.incidents.push(Incident {
            id,
            lane: self.lane,
            namespace: NAMESPACES[self.lane],
            alertname,
            pod,
            starts_ms: BASE_MS + at_ms as i64,
            ends_ms: None,
        });
        self.firing.push(id);
        id
    }

    fn new_pod(&mut self) -> String {
        self.pods += 1;
        format!("pod-{}-{}", self.lane, self.pods)
    }

    /// Up to `n` firing incidents other than `except`, as repeats.
    fn others(&mut self, n: u64, except: &[usize]) -> Vec<(usize, Status)> {
        let mut pool: Vec<usize> = self
            .firing
            .iter()
            .copied()
            .filter(|i| !except.contains(i))
            .collect();
        let n = self.rng.range(0, n) as usize;
        let mut out = Vec::new();
        while out.len() < n && !pool.is_empty() {
            let i = pool.swap_remove(self.rng.index(pool.len()));
            out.push((i, Status::Firing));
        }
        out
    }
}

fn plan_lane(seed: u64, lane: usize, duration_ms: u64, incidents: &mut Vec<Incident>) -> Vec<Step> {
    let mut l = Lane {
        rng: Rng::fork(seed, 100 + lane as u64),
        lane,
        incidents,
        firing: Vec::new(),
        resolved: Vec::new(),
        pods: 0,
    };
    let mut steps = Vec::new();
    let mut t = l.rng.range(300, 1200);
    while t < duration_ms {
        let crowded = l.firing.len() >= CROWDED;
        let refirable = l.resolved.iter().any(|(_, at)| t >= at + REFIRE_AFTER_MS);
        let weights = [
            if crowded { 5 } else { 25 },             // fire
            if l.firing.is_empty() { 0 } else { 30 }, // repeat
            match l.firing.len() {
                0 => 0,
                n if n >= CROWDED => 40,
                _ => 14,
            }, // resolve
            if crowded { 0 } else { 7 },              // burst
            if refirable { 8 } else { 0 },            // fire again
        ];
        let twin = l.rng.chance(15);
        match l.rng.weighted(&weights) {
            0 => {
                let name = ALERT_NAMES[l.rng.index(ALERT_NAMES.len())];
                let pod = l.new_pod();
                let id = l.new_incident(t, name, pod);
                let mut alerts = vec![(id, Status::Firing)];
                alerts.extend(l.others(3, &[id]));
                steps.push(step(t, "fire", alerts, twin));
            }
            1 => {
                let alerts = l.others(5, &[]);
                let alerts = if alerts.is_empty() {
                    vec![(l.firing[0], Status::Firing)]
                } else {
                    alerts
                };
                steps.push(step(t, "repeat", alerts, twin));
            }
            2 => {
                let n = l.rng.range(1, 3.min(l.firing.len() as u64));
                let mut alerts = Vec::new();
                for _ in 0..n {
                    let id = l.firing.swap_remove(l.rng.index(l.firing.len()));
                    l.incidents[id].ends_ms = Some(BASE_MS + t as i64);
                    l.resolved.push((id, t));
                    alerts.push((id, Status::Resolved));
                }
                let resolving: Vec<usize> = alerts.iter().map(|(i, _)| *i).collect();
                alerts.extend(l.others(2, &resolving));
                // The pair's second member would re-send a resolve too: no twin.
                steps.push(step(t, "resolve", alerts, false));
            }
            3 => {
                // A burst of new incidents in a few quick deliveries: a storm.
                let n = l.rng.range(STORM_THRESHOLD + 1, STORM_THRESHOLD + 7);
                let parts = l.rng.range(1, 3);
                let name = "KubePodEvicted";
                let mut ids = Vec::new();
                for _ in 0..n {
                    let pod = l.new_pod();
                    ids.push(l.new_incident(t, name, pod));
                }
                let per = ids.len().div_ceil(parts as usize);
                for (k, chunk) in ids.chunks(per).enumerate() {
                    if k > 0 {
                        t += l.rng.range(200, 1500);
                    }
                    let alerts = chunk.iter().map(|i| (*i, Status::Firing)).collect();
                    let twin = l.rng.chance(15);
                    steps.push(step(t, "burst", alerts, twin));
                }
            }
            _ => {
                let ready: Vec<usize> = (0..l.resolved.len())
                    .filter(|k| t >= l.resolved[*k].1 + REFIRE_AFTER_MS)
                    .collect();
                let (old, _) = l.resolved.swap_remove(ready[l.rng.index(ready.len())]);
                let (name, pod) = (l.incidents[old].alertname, l.incidents[old].pod.clone());
                let id = l.new_incident(t, name, pod);
                let mut alerts = vec![(id, Status::Firing)];
                alerts.extend(l.others(2, &[id]));
                steps.push(step(t, "fire-again", alerts, twin));
            }
        }
        t += l.rng.range(150, 1100);
    }
    steps
}

fn step(at_ms: u64, what: &'static str, mut alerts: Vec<(usize, Status)>, twin: bool) -> Step {
    alerts.sort_by_key(|(i, _)| *i);
    Step {
        at_ms,
        what,
        alerts,
        twin,
    }
}

/// How many sidecars and Redis nodes a fault may target.
pub const SIDECARS: usize = 3;
pub const REDIS_NODES: usize = 3;

fn plan_faults(seed: u64, duration_ms: u64, menu: &[FaultKind]) -> Vec<FaultPlan> {
    let mut rng = Rng::fork(seed, 7);
    let mut faults = Vec::new();
    if menu.is_empty() {
        return faults;
    }
    let mut t = 2500;
    let mut gap = t;
    while t + 1500 < duration_ms {
        let kind = menu[rng.index(menu.len())];
        let (target, hold_ms, param_ms) = match kind {
            FaultKind::Kill | FaultKind::Term => (rng.index(SIDECARS), rng.range(200, 2000), 0),
            FaultKind::Stop => (rng.index(SIDECARS), rng.range(500, 9000), 0),
            FaultKind::RedisDrop => (rng.index(REDIS_NODES), 3000, 0),
            FaultKind::RedisSlow => (
                rng.index(REDIS_NODES),
                rng.range(1000, 4000),
                rng.range(20, 100),
            ),
            FaultKind::RedisDelay => (
                rng.index(REDIS_NODES),
                rng.range(1000, 4000),
                [600, 1000, 1500][rng.index(3)],
            ),
            FaultKind::RedisBlackhole => (rng.index(REDIS_NODES), rng.range(300, 3000), 0),
            FaultKind::RedisFlush => (rng.index(REDIS_NODES), 0, 0),
            FaultKind::ApiDown => (0, rng.range(300, 3000), 0),
            FaultKind::ApiSlow => (0, rng.range(1000, 4000), rng.range(50, 400)),
            FaultKind::ApiBlackhole => (0, rng.range(500, 5000), 0),
        };
        faults.push(FaultPlan {
            at_ms: t,
            gap_ms: gap,
            kind,
            target,
            hold_ms,
            param_ms,
        });
        gap = rng.range(1000, 4000);
        t += hold_ms + gap;
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_plans_the_same_run_and_lanes_never_fire_a_resolved_incident() {
        let menu = FaultKind::parse_menu("all").unwrap();
        let a = Plan::generate(99, 120_000, &menu);
        let b = Plan::generate(99, 120_000, &menu);
        assert_eq!(a.deliveries(), b.deliveries());
        assert_eq!(a.incidents.len(), b.incidents.len());
        assert_eq!(format!("{:?}", a.faults), format!("{:?}", b.faults));
        for steps in &a.lanes {
            let mut resolved = std::collections::HashSet::new();
            for s in steps {
                for (i, status) in &s.alerts {
                    assert!(!resolved.contains(i), "I{i} sent after its resolve");
                    if *status == Status::Resolved {
                        resolved.insert(*i);
                    }
                }
            }
            assert!(steps.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        }
        assert!(a.lanes.iter().flatten().any(|s| s.what == "burst"));
        assert!(a.lanes.iter().flatten().any(|s| s.what == "fire-again"));
        assert_eq!(
            FaultKind::parse_menu("kill,none,kill").unwrap(),
            [FaultKind::Kill]
        );
        assert!(FaultKind::parse_menu("nope").is_err());
    }
}
