//! The memory store's map and its decision, step by step, under one lock.

use std::collections::{BTreeSet, HashMap};

use super::records::{claim_write, FpEntry, FpKind, Namespace, Own, Params, Storm};
use crate::store::{Adopted, Claim, ClaimKey, Decision, Outcome, Snapshot, Write};
use signalgate_resource::naming::{fingerprint_resource, storm_resource};

/// Everything the store holds; behind the store's mutex.
#[derive(Default)]
pub(super) struct State {
    /// Keyed by (namespace, fingerprint).
    pub fingerprints: HashMap<(String, String), FpEntry>,
    pub namespaces: HashMap<String, Namespace>,
    /// Namespace → (when the memory of it began, until when it lasts: the
    /// warm-marker TTL after its last decide); see
    /// [`WARM_MARKER_TTL`](crate::store::WARM_MARKER_TTL).
    pub warm: HashMap<String, (i64, i64)>,
    pub last_sweep_ms: i64,
}

impl State {
    /// Drops every expired entry.
    pub fn sweep(&mut self, now: i64, window: i64) {
        self.last_sweep_ms = now;
        self.fingerprints.retain(|_, e| e.expires_ms > now);
        self.warm.retain(|_, (_, until)| *until > now);
        self.namespaces.retain(|_, ns| {
            ns.window.retain(|(_, at)| *at > now - window);
            ns.storms.retain(|_, s| s.keep_until_ms > now);
            if let Some(cur) = &ns.current {
                if !ns.storms.contains_key(cur) {
                    ns.current = None;
                }
            }
            !ns.window.is_empty() || !ns.storms.is_empty()
        });
    }

    /// The live fingerprint entry, removing it when expired.
    pub fn fingerprint(&mut self, key: &(String, String), now: i64) -> Option<&mut FpEntry> {
        if self
            .fingerprints
            .get(key)
            .is_some_and(|e| e.expires_ms <= now)
        {
            self.fingerprints.remove(key);
        }
        self.fingerprints.get_mut(key)
    }

    /// The live storm record, removing it when its time is up.
    pub fn storm(&mut self, namespace: &str, name: &str, now: i64) -> Option<&mut Storm> {
        let ns = self.namespaces.get_mut(namespace)?;
        if ns.storms.get(name).is_some_and(|s| s.keep_until_ms <= now) {
            ns.drop_storm(name);
        }
        ns.storms.get_mut(name)
    }

    /// Decides `claim`; `cold`: the memory of its namespace is younger than
    /// a dedup window (see [`WARM_MARKER_TTL`](crate::store::WARM_MARKER_TTL)).
    pub fn decide_one(&mut self, claim: &Claim, p: &Params, now: i64, cold: bool) -> Decision {
        if let Some(repeat) = self.repeat(claim, p, now) {
            return repeat;
        }
        // A new fingerprint. Look in the sink first if the store may have lost it.
        if cold && !claim.absent {
            return Decision {
                outcome: Outcome::Created,
                write: Write::Lookup,
                key: fp_key(claim),
                snapshot: Snapshot::default(),
            };
        }
        if let Some(joined) = self.join_running_storm(claim, p, now) {
            return joined;
        }
        if let Some(created) = self.create_own(claim, p, now) {
            return created;
        }
        self.start_storm(claim, p, now)
    }

    /// A known fingerprint: a duplicate of its own resource or of its
    /// storm. `None` if it is new (a member whose storm is gone is new again).
    fn repeat(&mut self, claim: &Claim, p: &Params, now: i64) -> Option<Decision> {
        let key = entry_key(claim);
        let entry = self.fingerprint(&key, now)?;
        let name = match &entry.kind {
            FpKind::Member(name) => name.clone(),
            FpKind::Own(_) => return repeat_own(entry, claim, p, now),
        };
        let Some(storm) = self.storm(&claim.namespace, &name, now) else {
            // The storm record is gone: the signal is new again.
            self.fingerprints.remove(&key);
            return None;
        };
        let write = storm.count_signal(p, now);
        storm.keep(now, p.dedup);
        let snapshot = storm.snapshot(&name, false);
        if let Some(entry) = self.fingerprints.get_mut(&key) {
            entry.expires_ms = now + p.dedup;
        }
        Some(Decision {
            outcome: Outcome::Duplicate,
            write,
            key: storm_key(claim, &name),
            snapshot,
        })
    }

    /// A new fingerprint while a storm runs in its namespace: aggregated
    /// into it (`None` if none runs).
    fn join_running_storm(&mut self, claim: &Claim, p: &Params, now: i64) -> Option<Decision> {
        let name = self.namespaces.get(&claim.namespace)?.current.clone()?;
        let storm = self.storm(&claim.namespace, &name, now)?;
        if storm.ends_ms <= now {
            return None;
        }
        storm.alerts += 1;
        let write = storm.count_signal(p, now);
        storm.ends_ms = storm
            .ends_ms
            .max((now + p.window).min(storm.started_ms + p.max_duration));
        storm.add_affected(&claim.affected, p);
        storm.keep(now, p.dedup);
        let snapshot = storm.snapshot(&name, false);
        self.join_storm(entry_key(claim), &name, now + p.dedup);
        Some(Decision {
            outcome: Outcome::StormAggregated,
            write,
            key: storm_key(claim, &name),
            snapshot,
        })
    }

    /// Counts a new fingerprint in its namespace's storm window: the first
    /// `threshold` get their own resource, claimed by this caller (`None`
    /// once the window is full).
    fn create_own(&mut self, claim: &Claim, p: &Params, now: i64) -> Option<Decision> {
        let ns = self.namespaces.entry(claim.namespace.clone()).or_default();
        ns.window.retain(|(_, at)| *at > now - p.window);
        if ns.window.len() >= p.threshold {
            return None;
        }
        ns.window.retain(|(fp, _)| fp != &claim.fingerprint);
        ns.window.push((claim.fingerprint.clone(), now));
        let own = Own {
            resource: fingerprint_resource(&claim.fingerprint, now),
            first_ms: now,
            last_ms: now,
            count: 1,
            pending: true,
            lease_until_ms: now + p.lease,
            moved_to: None,
        };
        let snapshot = own.snapshot();
        self.fingerprints.insert(
            entry_key(claim),
            FpEntry {
                kind: FpKind::Own(own),
                expires_ms: now + p.dedup.max(p.lease),
            },
        );
        Some(Decision {
            outcome: Outcome::Created,
            write: Write::Create,
            key: fp_key(claim),
            snapshot,
        })
    }

    /// The (threshold+1)-th new fingerprint in the window: a new storm, ONE
    /// resource, claimed by this caller.
    fn start_storm(&mut self, claim: &Claim, p: &Params, now: i64) -> Decision {
        let name = storm_resource(&claim.namespace, now);
        let mut storm = Storm {
            started_ms: now,
            last_ms: now,
            count: 1,
            alerts: 1,
            ends_ms: (now + p.window).min(now + p.max_duration),
            pending: true,
            lease_until_ms: now + p.lease,
            overflow: 0,
            affected: BTreeSet::new(),
            keep_until_ms: 0,
            moved_to: None,
        };
        storm.add_affected(&claim.affected, p);
        storm.keep(now, p.dedup);
        let snapshot = storm.snapshot(&name, false);
        let ns = self.namespaces.entry(claim.namespace.clone()).or_default();
        ns.storms.insert(name.clone(), storm);
        ns.current = Some(name.clone());
        self.join_storm(entry_key(claim), &name, now + p.dedup);
        Decision {
            outcome: Outcome::StormStarted,
            write: Write::Create,
            key: storm_key(claim, &name),
            snapshot,
        }
    }

    fn join_storm(&mut self, key: (String, String), name: &str, expires_ms: i64) {
        self.fingerprints.insert(
            key,
            FpEntry {
                kind: FpKind::Member(name.to_string()),
                expires_ms,
            },
        );
    }

    /// [`Store::adopt`](crate::store::Store::adopt): `existing` becomes the
    /// fingerprint's committed resource, unless the store knows the
    /// fingerprint by now (then the signal counts in what it holds).
    pub fn adopt(
        &mut self,
        key: (String, String),
        existing: &Snapshot,
        p: &Params,
        now: i64,
    ) -> Option<Adopted> {
        if let Some(entry) = self.fingerprint(&key, now) {
            // Known by now: count the signal in what the store holds, and
            // settle another request's claim as decide would.
            let FpKind::Own(own) = &mut entry.kind else {
                return None;
            };
            own.count += 1;
            own.last_ms = now;
            let (write, lease_until) = claim_write(own.pending, own.lease_until_ms, now, p.lease);
            own.lease_until_ms = lease_until;
            let keep = if own.pending {
                lease_until.max(now + p.dedup)
            } else {
                now + p.dedup
            };
            entry.expires_ms = entry.expires_ms.max(keep);
            return Some(Adopted {
                snapshot: own.snapshot(),
                write,
            });
        }
        let own = Own {
            resource: existing.resource.clone(),
            first_ms: existing.first_seen_ms,
            last_ms: now,
            count: existing.occurrence_count + 1,
            pending: false,
            lease_until_ms: 0,
            moved_to: existing.moved_to.clone(),
        };
        let snapshot = own.snapshot();
        self.fingerprints.insert(
            key,
            FpEntry {
                kind: FpKind::Own(own),
                expires_ms: now + p.dedup,
            },
        );
        Some(Adopted {
            snapshot,
            write: Write::Update,
        })
    }

    /// [`Store::adopt_storm`](crate::store::Store::adopt_storm): `existing`
    /// becomes the namespace's running storm unless it has ended or another
    /// storm runs; what the store still holds of it (unless its time is up)
    /// is merged (each counter and its end: the larger), as `claim.lua` does.
    pub fn adopt_storm(
        &mut self,
        namespace: &str,
        existing: &Snapshot,
        p: &Params,
        now: i64,
    ) -> bool {
        let Some(found) = existing.storm.as_ref() else {
            return false;
        };
        let name = existing.resource.as_str();
        if found.ends_ms <= now {
            return false;
        }
        let current = self
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.current.clone());
        if let Some(cur) = current.filter(|cur| cur != name) {
            if self
                .storm(namespace, &cur, now)
                .is_some_and(|st| st.ends_ms > now)
            {
                return false;
            }
        }
        let fresh = || Storm {
            started_ms: found.started_ms,
            last_ms: 0,
            count: 0,
            alerts: 0,
            ends_ms: 0,
            pending: false,
            lease_until_ms: 0,
            overflow: 0,
            affected: BTreeSet::new(),
            keep_until_ms: 0,
            moved_to: None,
        };
        // A record whose time is up is dropped first (as `storm_live` in Lua).
        self.storm(namespace, name, now);
        let ns = self.namespaces.entry(namespace.to_string()).or_default();
        let storm = ns.storms.entry(name.to_string()).or_insert_with(fresh);
        storm.last_ms = storm.last_ms.max(existing.last_seen_ms);
        storm.count = storm.count.max(existing.occurrence_count);
        storm.alerts = storm.alerts.max(found.alert_count);
        storm.overflow = storm.overflow.max(found.affected_overflow);
        storm.ends_ms = storm.ends_ms.max(found.ends_ms);
        storm.pending = false;
        storm.lease_until_ms = 0;
        if existing.moved_to.is_some() {
            storm.moved_to.clone_from(&existing.moved_to);
        }
        for a in &found.affected {
            if storm.affected.len() >= p.max_affected {
                break;
            }
            storm.affected.insert(a.clone());
        }
        storm.keep(now, p.dedup);
        ns.current = Some(name.to_string());
        true
    }
}

/// A signal seen again: counted in its own resource, its claim settled.
/// `None` if the entry is a storm member's.
fn repeat_own(entry: &mut FpEntry, claim: &Claim, p: &Params, now: i64) -> Option<Decision> {
    let FpKind::Own(own) = &mut entry.kind else {
        return None;
    };
    own.count += 1;
    own.last_ms = now;
    let (write, lease_until) = claim_write(own.pending, own.lease_until_ms, now, p.lease);
    own.lease_until_ms = lease_until;
    let mut ttl = p.dedup;
    if own.pending && lease_until - now > ttl {
        ttl = lease_until - now;
    }
    entry.expires_ms = now + ttl;
    Some(Decision {
        outcome: Outcome::Duplicate,
        write,
        key: fp_key(claim),
        snapshot: own.snapshot(),
    })
}

/// The map key of `claim`'s fingerprint record.
fn entry_key(claim: &Claim) -> (String, String) {
    (claim.namespace.clone(), claim.fingerprint.clone())
}

fn fp_key(claim: &Claim) -> ClaimKey {
    ClaimKey::Fingerprint {
        namespace: claim.namespace.clone(),
        fingerprint: claim.fingerprint.clone(),
    }
}

fn storm_key(claim: &Claim, name: &str) -> ClaimKey {
    ClaimKey::Storm {
        namespace: claim.namespace.clone(),
        name: name.to_string(),
    }
}
