//! What the memory store keeps: one record per fingerprint, per namespace
//! and per storm, each with its expiry, and the settings in store-clock
//! milliseconds.

use std::collections::{BTreeSet, HashMap};

use crate::clock::ms;
use crate::store::{
    Counted, Owner, Resolution, Settings, Snapshot, StormSnapshot, Write, WARM_MARKER_TTL,
};

/// The settings in milliseconds (and counts as `usize`).
pub(super) struct Params {
    pub dedup: i64,
    pub incident: i64,
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
            incident: ms(s.incident_ttl),
            threshold: s.storm_threshold as usize,
            window: ms(s.storm_window),
            max_duration: ms(s.storm_max_duration),
            max_affected: s.storm_max_affected as usize,
            lease: ms(s.claim_lease),
            warm_marker: ms(s.dedup_ttl.max(WARM_MARKER_TTL)),
        }
    }

    /// How long a storm member's record lives after a signal of instance
    /// `instance_ms` (0: unknown): an open incident's TTL if it has one.
    pub fn member_ttl(&self, instance_ms: i64) -> i64 {
        if instance_ms != 0 {
            self.incident
        } else {
            self.dedup
        }
    }

    /// How long a storm record outlives its latest touch: as long as its
    /// members may.
    pub fn storm_keep(&self) -> i64 {
        self.dedup.max(self.incident)
    }
}

pub(super) struct FpEntry {
    pub kind: FpKind,
    /// Gone at and after this store-clock millisecond.
    pub expires_ms: i64,
    /// Who made the last two counts (see [`Counted::count`]).
    pub counted: Counted,
}

pub(super) enum FpKind {
    /// The fingerprint has its own resource.
    Own(Own),
    /// The fingerprint was aggregated into this storm resource (`resolved`:
    /// its resolution was counted in the storm).
    Member { storm: String, resolved: bool },
}

pub(super) struct Own {
    pub resource: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u64,
    pub pending: bool,
    pub lease_until_ms: i64,
    /// Who holds the pending claim.
    pub owner: Owner,
    pub moved_to: Option<String>,
    /// The latest firing instance counted (0: unknown).
    pub instance_ms: i64,
    pub firings: u64,
    pub resolution: Option<Resolution>,
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
            instance_ms: self.instance_ms,
            firings: self.firings,
            resolution: self.resolution,
            unwritten: false,
            pending: false,
        }
    }

    /// Whether a signal of instance `instance_ms` is of this record's incident.
    pub fn same_incident(&self, instance_ms: i64) -> bool {
        instance_ms == 0 || self.instance_ms == 0 || self.instance_ms == instance_ms
    }

    /// Until when a record no longer kept by a lease or by the index of
    /// unwritten changes lives: its TTL from its last sighting, or from its
    /// resolution if that came later (never before `now` + 1 ms).
    pub fn expiry_after_last_sighting(&self, p: &Params, now: i64) -> i64 {
        let from = self
            .resolution
            .map_or(self.last_ms, |r| r.received_ms.max(self.last_ms));
        (from + self.ttl(p)).max(now + 1)
    }

    /// How long the record lives after its last signal: an open incident
    /// with a firing instance the incident TTL, else the dedup window.
    pub fn ttl(&self, p: &Params) -> i64 {
        if self.instance_ms != 0 && self.resolution.is_none() {
            p.incident
        } else {
            p.dedup
        }
    }

    /// Until when the record lives after a signal at `now`: its TTL, and a
    /// pending claim at least until its lease ends.
    pub fn expiry(&self, p: &Params, now: i64) -> i64 {
        let at = now + self.ttl(p);
        if self.pending {
            at.max(self.lease_until_ms)
        } else {
            at
        }
    }

    /// Counts one more signal of its incident and settles its claim for `owner`.
    pub fn count_signal(&mut self, p: &Params, now: i64, owner: Owner) -> Write {
        self.count += 1;
        self.last_ms = now;
        self.settle(p, now, owner)
    }

    /// What `owner` must do with the claim (see [`claim_write`]).
    pub fn settle(&mut self, p: &Params, now: i64, owner: Owner) -> Write {
        claim_write(
            self.pending,
            &mut self.lease_until_ms,
            &mut self.owner,
            owner,
            now,
            p.lease,
        )
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
    /// Who holds the pending claim.
    pub owner: Owner,
    pub overflow: u64,
    pub affected: BTreeSet<String>,
    /// The record is kept until then (members, lease, the storm itself).
    pub keep_until_ms: i64,
    pub moved_to: Option<String>,
    /// When the latest new member joined (the namespace storms until a
    /// window after it).
    pub joined_ms: i64,
    /// Members whose resolution was counted.
    pub resolved: u64,
    /// Once every member it knows resolved.
    pub resolution: Option<Resolution>,
    /// The storm this one continues.
    pub previous: Option<String>,
    /// Made from the storm resource a lookup found, not by decide.
    pub adopted: bool,
}

impl Storm {
    /// A storm started at `now` by its first member, claimed by `owner`.
    pub fn start(now: i64, p: &Params, previous: Option<String>, owner: Owner) -> Storm {
        Storm {
            started_ms: now,
            last_ms: now,
            count: 1,
            alerts: 1,
            ends_ms: (now + p.window).min(now + p.max_duration),
            pending: true,
            lease_until_ms: now + p.lease,
            owner,
            overflow: 0,
            affected: BTreeSet::new(),
            keep_until_ms: 0,
            moved_to: None,
            joined_ms: now,
            resolved: 0,
            resolution: None,
            previous,
            adopted: false,
        }
    }

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
                resolved_count: self.resolved,
                previous: self.previous.clone(),
            }),
            moved_to: self.moved_to.clone(),
            instance_ms: 0,
            firings: 1,
            resolution: self.resolution,
            unwritten: false,
            pending: false,
        }
    }

    /// Keeps the record while it may still be needed: its members' records
    /// from `now`, the storm's end, its lease.
    pub fn keep(&mut self, now: i64, p: &Params) {
        self.keep_until_ms = self
            .keep_until_ms
            .max(now + p.storm_keep())
            .max(self.ends_ms)
            .max(self.lease_until_ms);
    }

    /// Counts one more signal in the storm and settles its claim for `owner`.
    pub fn count_signal(&mut self, p: &Params, now: i64, owner: Owner) -> Write {
        self.count += 1;
        self.last_ms = now;
        self.settle(p, now, owner)
    }

    /// What `owner` must do with the storm's claim (see [`claim_write`]).
    pub fn settle(&mut self, p: &Params, now: i64, owner: Owner) -> Write {
        claim_write(
            self.pending,
            &mut self.lease_until_ms,
            &mut self.owner,
            owner,
            now,
            p.lease,
        )
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

/// What request `owner` must do with a claim (as `claim_write` in
/// `common.lua`). A pending claim under a live lease is its holder's to
/// create (the holder's decide ran again after a lost reply), every other
/// request's to await; an expired lease is taken over: a fresh lease, and
/// `owner` its holder.
fn claim_write(
    pending: bool,
    lease_until_ms: &mut i64,
    holder: &mut Owner,
    owner: Owner,
    now: i64,
    lease: i64,
) -> Write {
    if !pending {
        Write::Update
    } else if *lease_until_ms > now {
        if owner.holds(*holder) {
            Write::Create
        } else {
            Write::Await
        }
    } else {
        *lease_until_ms = now + lease;
        *holder = owner;
        Write::Create
    }
}
