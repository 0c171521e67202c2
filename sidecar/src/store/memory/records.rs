//! What the memory store keeps: one record per fingerprint, per namespace
//! and per storm, each with its expiry, and the settings in store-clock
//! milliseconds.

use std::collections::{BTreeSet, HashMap};

use crate::clock::ms;
use crate::store::{Settings, Snapshot, StormSnapshot, Write, WARM_MARKER_TTL};

/// The settings in milliseconds (and counts as `usize`).
pub(super) struct Params {
    pub dedup: i64,
    pub threshold: usize,
    pub window: i64,
    pub max_duration: i64,
    pub max_affected: usize,
    pub lease: i64,
    pub warm_marker: i64,
}

impl Params {
    pub fn new(s: &Settings) -> Params {
        Params {
            dedup: ms(s.dedup_ttl),
            threshold: s.storm_threshold as usize,
            window: ms(s.storm_window),
            max_duration: ms(s.storm_max_duration),
            max_affected: s.storm_max_affected as usize,
            lease: ms(s.claim_lease),
            warm_marker: ms(s.dedup_ttl.max(WARM_MARKER_TTL)),
        }
    }
}

pub(super) struct FpEntry {
    pub kind: FpKind,
    /// Gone at and after this store-clock millisecond.
    pub expires_ms: i64,
}

pub(super) enum FpKind {
    /// The fingerprint has its own resource.
    Own(Own),
    /// The fingerprint was aggregated into this storm resource.
    Member(String),
}

pub(super) struct Own {
    pub resource: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u64,
    pub pending: bool,
    pub lease_until_ms: i64,
    pub moved_to: Option<String>,
}

impl Own {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            resource: self.resource.clone(),
            first_seen_ms: self.first_ms,
            last_seen_ms: self.last_ms,
            occurrence_count: self.count,
            storm: None,
            moved_to: self.moved_to.clone(),
        }
    }
}

#[derive(Default)]
pub(super) struct Namespace {
    /// Distinct new fingerprints created individually, with their first
    /// sighting: at most `storm_threshold` of them.
    pub window: Vec<(String, i64)>,
    /// The latest storm's resource name.
    pub current: Option<String>,
    pub storms: HashMap<String, Storm>,
}

impl Namespace {
    /// Drops storm `name` (and its place as the current storm).
    pub fn drop_storm(&mut self, name: &str) {
        self.storms.remove(name);
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
    }
}

pub(super) struct Storm {
    pub started_ms: i64,
    pub last_ms: i64,
    pub count: u64,
    pub alerts: u64,
    /// The storm runs while now < ends_ms.
    pub ends_ms: i64,
    pub pending: bool,
    pub lease_until_ms: i64,
    pub overflow: u64,
    pub affected: BTreeSet<String>,
    /// The record is kept until then (members, lease, the storm itself).
    pub keep_until_ms: i64,
    pub moved_to: Option<String>,
}

impl Storm {
    pub fn snapshot(&self, name: &str, with_affected: bool) -> Snapshot {
        Snapshot {
            resource: name.to_string(),
            first_seen_ms: self.started_ms,
            last_seen_ms: self.last_ms,
            occurrence_count: self.count,
            storm: Some(StormSnapshot {
                alert_count: self.alerts,
                affected: if with_affected {
                    self.affected.iter().cloned().collect()
                } else {
                    Vec::new()
                },
                affected_overflow: self.overflow,
                started_ms: self.started_ms,
                ends_ms: self.ends_ms,
            }),
            moved_to: self.moved_to.clone(),
        }
    }

    /// Keeps the record while it may still be needed: a member's dedup
    /// window from `now`, the storm's end, its lease.
    pub fn keep(&mut self, now: i64, dedup: i64) {
        self.keep_until_ms = self
            .keep_until_ms
            .max(now + dedup)
            .max(self.ends_ms)
            .max(self.lease_until_ms);
    }

    /// Counts one more signal in the storm and settles its claim.
    pub fn count_signal(&mut self, p: &Params, now: i64) -> Write {
        self.count += 1;
        self.last_ms = now;
        let (write, lease_until) = claim_write(self.pending, self.lease_until_ms, now, p.lease);
        self.lease_until_ms = lease_until;
        write
    }

    /// Lists `affected` (if not listed yet), or counts it as overflow once
    /// the list is full.
    pub fn add_affected(&mut self, affected: &str, p: &Params) {
        if affected.is_empty() || self.affected.contains(affected) {
            return;
        }
        if self.affected.len() < p.max_affected {
            self.affected.insert(affected.to_string());
        } else {
            self.overflow += 1;
        }
    }
}

/// What the caller must do with a claim; takes over an expired lease.
/// Returns the write and the lease the claim now holds.
pub(super) fn claim_write(
    pending: bool,
    lease_until_ms: i64,
    now: i64,
    lease: i64,
) -> (Write, i64) {
    if !pending {
        (Write::Update, lease_until_ms)
    } else if lease_until_ms > now {
        (Write::Await, lease_until_ms)
    } else {
        (Write::Create, now + lease)
    }
}
