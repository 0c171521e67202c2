//! What happened in a run: every delivery with every attempt and answer,
//! and every fault, timed from the run's start; and how an incident's or a
//! resource's part of it is printed.

use std::fmt::Write as _;

use super::plan::{FaultKind, Incident, Status, NAMESPACES};

/// One signal of a 2xx answer (`{"fingerprint","outcome","resource"}`).
#[derive(Debug, Clone)]
pub struct SignalAnswer {
    pub fingerprint: String,
    pub outcome: String,
    pub resource: Option<String>,
}

#[derive(Debug, Clone)]
pub enum AttemptResult {
    Answer {
        status: u16,
        /// The sidecar Envoy forwarded it to, when Envoy got that far.
        upstream: Option<String>,
        /// The signals of a 2xx answer, in the order of the alerts.
        signals: Vec<SignalAnswer>,
        /// A problem's type slug, or the start of another body.
        problem: Option<String>,
    },
    Transport(String),
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub at_ms: u64,
    pub took_ms: u64,
    pub result: AttemptResult,
}

impl Attempt {
    pub fn status(&self) -> Option<u16> {
        match &self.result {
            AttemptResult::Answer { status, .. } => Some(*status),
            AttemptResult::Transport(_) => None,
        }
    }

    pub fn acked(&self) -> bool {
        self.status().is_some_and(|s| (200..300).contains(&s))
    }
}

/// One delivery: a webhook body sent by one sender (`a`, or `b` for the HA
/// pair's second member), retried as Alertmanager retries.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub lane: usize,
    pub step: usize,
    pub replica: char,
    pub what: &'static str,
    pub alerts: Vec<(usize, Status)>,
    pub attempts: Vec<Attempt>,
}

impl Delivery {
    pub fn id(&self) -> String {
        format!("d{}.{}{}", self.lane, self.step, self.replica)
    }

    /// The 2xx attempt, if the delivery was acknowledged (it is the last).
    pub fn ack(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.acked())
    }

    /// The acknowledged answer to alert `k`.
    pub fn acked_signal(&self, k: usize) -> Option<&SignalAnswer> {
        match &self.ack()?.result {
            AttemptResult::Answer { signals, .. } => signals.get(k),
            AttemptResult::Transport(_) => None,
        }
    }

    pub fn started_ms(&self) -> u64 {
        self.attempts.first().map_or(0, |a| a.at_ms)
    }

    pub fn ended_ms(&self) -> u64 {
        self.attempts.last().map_or(0, |a| a.at_ms + a.took_ms)
    }
}

/// One injected fault, as it happened.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub n: usize,
    pub kind: FaultKind,
    pub target: String,
    pub detail: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl std::fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "F{} {} {} {}..{}{}{}",
            self.n,
            self.kind.name(),
            self.target,
            secs(self.start_ms),
            secs(self.end_ms),
            if self.detail.is_empty() { "" } else { ": " },
            self.detail
        )
    }
}

pub fn secs(ms: u64) -> String {
    format!("+{}.{:03}s", ms / 1000, ms % 1000)
}

/// One attempt, and what it answered for alert `k` (all alerts: `None`).
pub fn attempt_line(a: &Attempt, k: Option<usize>) -> String {
    let mut out = format!("{} ", secs(a.at_ms));
    match &a.result {
        AttemptResult::Transport(e) => {
            let _ = write!(out, "transport error after {}ms ({e})", a.took_ms);
        }
        AttemptResult::Answer {
            status,
            upstream,
            signals,
            problem,
        } => {
            let _ = write!(out, "{status}");
            if let Some(u) = upstream {
                let _ = write!(out, " via {u}");
            }
            let _ = write!(out, " in {}ms", a.took_ms);
            if let Some(p) = problem {
                let _ = write!(out, " {p}");
            }
            let shown: Vec<&SignalAnswer> = match k {
                Some(k) => signals.get(k).into_iter().collect(),
                None => signals.iter().collect(),
            };
            for s in shown {
                let _ = write!(
                    out,
                    " [{} {}]",
                    s.outcome,
                    s.resource.as_deref().unwrap_or("-")
                );
            }
        }
    }
    out
}

/// A delivery as one line per attempt, with what each answered for
/// `incident` when given.
pub fn delivery_lines(d: &Delivery, incident: Option<usize>) -> String {
    let k = incident.and_then(|i| d.alerts.iter().position(|(a, _)| *a == i));
    let alerts: Vec<String> = d
        .alerts
        .iter()
        .map(|(i, s)| format!("I{i} {}", s.as_str()))
        .collect();
    let mut out = format!(
        "    {} ({} from {}, {} alerts: {}){}\n",
        d.id(),
        d.what,
        NAMESPACES[d.lane],
        d.alerts.len(),
        alerts.join(", "),
        match (d.ack(), d.attempts.len()) {
            (Some(_), 1) => String::new(),
            (Some(_), n) => format!(" acknowledged at attempt {n}"),
            (None, n) => format!(" NOT acknowledged after {n} attempts"),
        }
    );
    for (n, a) in d.attempts.iter().enumerate() {
        let _ = writeln!(out, "      #{} {}", n + 1, attempt_line(a, k));
    }
    out
}

/// Everything recorded in a run.
#[derive(Default)]
pub struct History {
    pub deliveries: Vec<Delivery>,
    pub faults: Vec<FaultRecord>,
}

impl History {
    /// The deliveries carrying `incident`, by start.
    pub fn of_incident(&self, incident: usize) -> Vec<&Delivery> {
        let mut v: Vec<&Delivery> = self
            .deliveries
            .iter()
            .filter(|d| d.alerts.iter().any(|(i, _)| *i == incident))
            .collect();
        v.sort_by_key(|d| d.started_ms());
        v
    }

    /// Faults that overlap `from..=to` (ms), widened by 3 s each way.
    pub fn faults_between(&self, from: u64, to: u64) -> Vec<&FaultRecord> {
        self.faults
            .iter()
            .filter(|f| f.end_ms + 3000 >= from && f.start_ms <= to + 3000)
            .collect()
    }

    /// An incident's whole history: every delivery carrying it (each
    /// attempt, with what it answered for the incident) and the faults
    /// around them.
    pub fn incident_story(&self, incident: &Incident) -> String {
        let mut out = format!("  history of {incident}:\n");
        let ds = self.of_incident(incident.id);
        for d in &ds {
            out.push_str(&delivery_lines(d, Some(incident.id)));
        }
        let (from, to) = span(&ds);
        for f in self.faults_between(from, to) {
            let _ = writeln!(out, "    fault {f}");
        }
        out
    }
}

/// First start and last end of `ds` (0..0 if none).
pub fn span(ds: &[&Delivery]) -> (u64, u64) {
    let from = ds.iter().map(|d| d.started_ms()).min().unwrap_or(0);
    let to = ds.iter().map(|d| d.ended_ms()).max().unwrap_or(0);
    (from, to)
}
