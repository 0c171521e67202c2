//! The memory store's map and its decision, step by step, under one lock.

use std::collections::HashMap;

use super::index::Unwritten;
use super::records::{FpEntry, FpKind, Namespace, Own, Params, Storm};
use crate::store::{
    Adopted, Claim, ClaimKey, Counted, Decision, Outcome, Owner, Resolution, Snapshot, Write,
};
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
    pub unwritten: Unwritten,
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
        let (fingerprints, namespaces) = (&self.fingerprints, &self.namespaces);
        self.unwritten.retain(|key| match key {
            ClaimKey::Fingerprint {
                namespace,
                fingerprint,
            } => fingerprints
                .get(&(namespace.clone(), fingerprint.clone()))
                .is_some_and(|e| matches!(e.kind, FpKind::Own(_))),
            ClaimKey::Storm { namespace, name } => namespaces
                .get(namespace)
                .is_some_and(|ns| ns.storms.contains_key(name)),
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

    /// A change of `key`'s counters: into the index of unwritten changes;
    /// a signal's own record then lives at least the longer of the dedup
    /// window and the incident TTL, until it is written ([`State::unindex`]).
    pub fn index(&mut self, key: &ClaimKey, p: &Params, now: i64) {
        self.unwritten.change(key, now);
        if let ClaimKey::Fingerprint {
            namespace,
            fingerprint,
        } = key
        {
            let k = (namespace.clone(), fingerprint.clone());
            if let Some(entry) = self.fingerprint(&k, now) {
                if matches!(entry.kind, FpKind::Own(_)) {
                    entry.expires_ms = entry.expires_ms.max(now + p.dedup.max(p.incident));
                }
            }
        }
    }

    /// `key` was written (`same`: the store still holds what was written,
    /// or it is gone): out of the index, its own record's TTL as after its
    /// last sighting again; else in the index as of now.
    pub fn unindex(&mut self, key: &ClaimKey, same: bool, p: &Params, now: i64) {
        self.unwritten.written(key, same, now);
        let ClaimKey::Fingerprint {
            namespace,
            fingerprint,
        } = key
        else {
            return;
        };
        if !same {
            return;
        }
        let k = (namespace.clone(), fingerprint.clone());
        if let Some(entry) = self.fingerprint(&k, now) {
            if let FpKind::Own(own) = &entry.kind {
                let mut at = own.expiry_after_last_sighting(p, now);
                if own.pending {
                    at = at.max(own.lease_until_ms);
                }
                entry.expires_ms = at;
            }
        }
    }

    /// The counters of `key`'s live resource (a fingerprint with its own
    /// resource, or a storm), its claim's pending flag filled in.
    pub fn snapshot_of(&mut self, key: &ClaimKey, now: i64) -> Option<Snapshot> {
        let (mut snapshot, pending) = match key {
            ClaimKey::Fingerprint {
                namespace,
                fingerprint,
            } => {
                let k = (namespace.clone(), fingerprint.clone());
                match self.fingerprint(&k, now) {
                    Some(FpEntry {
                        kind: FpKind::Own(own),
                        ..
                    }) => (own.snapshot(), own.pending),
                    _ => return None,
                }
            }
            ClaimKey::Storm { namespace, name } => {
                let s = self.storm(namespace, name, now)?;
                (s.snapshot(name, true), s.pending)
            }
        };
        snapshot.pending = pending;
        Some(snapshot)
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
        if let Some(resolved_ms) = claim.resolved_ms {
            return self.resolve(claim, resolved_ms, p, now);
        }
        if let Some(repeat) = self.repeat(claim, p, now) {
            return repeat;
        }
        // A new incident. Look in the sink first if the store may have lost it.
        if cold && !claim.absent {
            return ask_sink(claim, Write::Lookup);
        }
        if let Some(joined) = self.join_running_storm(claim, p, now) {
            return joined;
        }
        if let Some(continued) = self.continue_storm(claim, p, now) {
            return continued;
        }
        if claim.instance_ms != 0 && !claim.absent {
            // A firing the store does not hold: the sink may show an earlier
            // firing of it that its controller still works on.
            return ask_sink(claim, Write::Review);
        }
        if let Some(created) = self.create_own(claim, p, now) {
            return created;
        }
        self.start_storm(claim, p, now, None)
    }

    /// A known incident: a duplicate of its own resource or of its storm.
    /// `None` if it is new (a member whose storm is gone is new again; so is
    /// a firing of another instance once the sink has nothing: `absent`).
    fn repeat(&mut self, claim: &Claim, p: &Params, now: i64) -> Option<Decision> {
        let key = entry_key(claim);
        let entry = self.fingerprint(&key, now)?;
        let (name, reopened, counts) = match &mut entry.kind {
            FpKind::Member { storm, resolved } => {
                let counts = entry.counted.count(claim.owner, claim.delivery);
                (storm.clone(), std::mem::take(resolved), counts)
            }
            FpKind::Own(own) if own.same_incident(claim.instance_ms) => {
                let counts = entry.counted.count(claim.owner, claim.delivery);
                let write = if counts {
                    own.count_signal(p, now, claim.owner)
                } else {
                    own.settle(p, now, claim.owner)
                };
                entry.expires_ms = own.expiry(p, now);
                return Some(Decision {
                    outcome: Outcome::Duplicate,
                    write,
                    key: fp_key(claim),
                    snapshot: own.snapshot(),
                });
            }
            FpKind::Own(own) => {
                if claim.absent {
                    // Another firing, and the sink holds nothing of it: new.
                    self.fingerprints.remove(&key);
                    return None;
                }
                let mut review = ask_sink(claim, Write::Review);
                review.snapshot = own.snapshot();
                return Some(review);
            }
        };
        let Some(storm) = self.storm(&claim.namespace, &name, now) else {
            // The storm record is gone: the signal is new again.
            self.fingerprints.remove(&key);
            return None;
        };
        if reopened {
            // A resolved member fires again: its storm is open again.
            storm.resolved = storm.resolved.saturating_sub(1);
            storm.resolution = None;
        }
        let write = if counts {
            storm.count_signal(p, now, claim.owner)
        } else {
            storm.settle(p, now, claim.owner)
        };
        storm.keep(now, p);
        let snapshot = storm.snapshot(&name, false);
        if let Some(entry) = self.fingerprints.get_mut(&key) {
            entry.expires_ms = now + p.member_ttl(claim.instance_ms);
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
        storm.joined_ms = now;
        storm.resolution = None;
        let write = storm.count_signal(p, now, claim.owner);
        storm.ends_ms = storm
            .ends_ms
            .max((now + p.window).min(storm.started_ms + p.max_duration));
        storm.add_affected(&claim.affected, p);
        storm.keep(now, p);
        let snapshot = storm.snapshot(&name, false);
        self.join_storm(claim, &name, now + p.member_ttl(claim.instance_ms));
        Some(Decision {
            outcome: Outcome::StormAggregated,
            write,
            key: storm_key(claim, &name),
            snapshot,
        })
    }

    /// A new fingerprint right after the namespace's storm reached its
    /// maximum duration while members still joined (less than a storm
    /// window ago): a new storm at once, continuing it.
    fn continue_storm(&mut self, claim: &Claim, p: &Params, now: i64) -> Option<Decision> {
        let name = self.namespaces.get(&claim.namespace)?.current.clone()?;
        let storm = self.storm(&claim.namespace, &name, now)?;
        if storm.ends_ms > now || now >= storm.joined_ms + p.window {
            return None;
        }
        Some(self.start_storm(claim, p, now, Some(name)))
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
            owner: claim.owner,
            moved_to: None,
            instance_ms: claim.instance_ms,
            firings: 1,
            resolution: None,
        };
        let snapshot = own.snapshot();
        let expires_ms = own.expiry(p, now);
        self.fingerprints.insert(
            entry_key(claim),
            FpEntry {
                kind: FpKind::Own(own),
                expires_ms,
                counted: Counted::first(claim.owner, claim.delivery),
            },
        );
        Some(Decision {
            outcome: Outcome::Created,
            write: Write::Create,
            key: fp_key(claim),
            snapshot,
        })
    }

    /// The (threshold+1)-th new fingerprint in the window, or the first
    /// after a storm that reached its maximum duration (`previous`): a new
    /// storm, ONE resource, claimed by this caller.
    fn start_storm(
        &mut self,
        claim: &Claim,
        p: &Params,
        now: i64,
        previous: Option<String>,
    ) -> Decision {
        let name = storm_resource(&claim.namespace, now);
        let mut storm = Storm::start(now, p, previous, claim.owner);
        storm.add_affected(&claim.affected, p);
        storm.keep(now, p);
        let snapshot = storm.snapshot(&name, false);
        let ns = self.namespaces.entry(claim.namespace.clone()).or_default();
        ns.storms.insert(name.clone(), storm);
        ns.current = Some(name.clone());
        self.join_storm(claim, &name, now + p.member_ttl(claim.instance_ms));
        Decision {
            outcome: Outcome::StormStarted,
            write: Write::Create,
            key: storm_key(claim, &name),
            snapshot,
        }
    }

    /// A resolution: recorded on its open incident's record, or counted in
    /// its storm (which records its own once every member it knows resolved).
    fn resolve(&mut self, claim: &Claim, resolved_ms: i64, p: &Params, now: i64) -> Decision {
        let key = entry_key(claim);
        let resolution = Resolution {
            resolved_ms,
            received_ms: now,
        };
        let Some(entry) = self.fingerprint(&key, now) else {
            return skip(claim, Outcome::ResolvedUnknown);
        };
        let name = match &mut entry.kind {
            FpKind::Own(own) if !own.same_incident(claim.instance_ms) => {
                return skip(claim, Outcome::ResolvedUnknown)
            }
            FpKind::Own(own) if own.resolution.is_some() => {
                let mut d = skip(claim, Outcome::Resolved);
                d.snapshot = own.snapshot();
                return d;
            }
            FpKind::Own(own) => {
                own.resolution = Some(resolution);
                let write = own.settle(p, now, claim.owner);
                // Resolved: it lives one dedup window (or its lease) from now.
                entry.expires_ms = own.expiry(p, now);
                return Decision {
                    outcome: Outcome::Resolved,
                    write,
                    key: fp_key(claim),
                    snapshot: own.snapshot(),
                };
            }
            FpKind::Member { storm, resolved } => {
                (storm.clone(), std::mem::replace(resolved, true))
            }
        };
        let (name, already) = name;
        entry.expires_ms = now + p.dedup;
        let Some(storm) = self.storm(&claim.namespace, &name, now) else {
            self.fingerprints.remove(&key);
            return skip(claim, Outcome::ResolvedUnknown);
        };
        if already {
            // Counted before: the first resolution stands.
            return Decision {
                outcome: Outcome::Resolved,
                write: Write::Skip,
                key: storm_key(claim, &name),
                snapshot: storm.snapshot(&name, false),
            };
        }
        storm.resolved += 1;
        if storm.resolved >= storm.alerts && storm.resolution.is_none() {
            storm.resolution = Some(resolution);
        }
        let write = storm.settle(p, now, claim.owner);
        storm.keep(now, p);
        Decision {
            outcome: Outcome::Resolved,
            write,
            key: storm_key(claim, &name),
            snapshot: storm.snapshot(&name, false),
        }
    }

    fn join_storm(&mut self, claim: &Claim, name: &str, expires_ms: i64) {
        self.fingerprints.insert(
            entry_key(claim),
            FpEntry {
                kind: FpKind::Member {
                    storm: name.to_string(),
                    resolved: false,
                },
                expires_ms,
                counted: Counted::first(claim.owner, claim.delivery),
            },
        );
    }

    /// [`Store::adopt`](crate::store::Store::adopt): `existing` becomes the
    /// fingerprint's committed resource (`absorb`: with the claim's firing
    /// counted as a new one), unless the store holds the claim's incident by
    /// now (then the signal counts in what it holds).
    pub fn adopt(
        &mut self,
        claim: &Claim,
        existing: &Snapshot,
        absorb: bool,
        p: &Params,
        now: i64,
    ) -> Option<Adopted> {
        let key = entry_key(claim);
        let mut base = None;
        if let Some(entry) = self.fingerprint(&key, now) {
            let FpKind::Own(own) = &mut entry.kind else {
                return None;
            };
            if own.same_incident(claim.instance_ms) {
                // Known by now: count the signal in what the store holds, and
                // settle another request's claim as decide would.
                let counts = entry.counted.count(claim.owner, claim.delivery);
                let write = if counts {
                    own.count_signal(p, now, claim.owner)
                } else {
                    own.settle(p, now, claim.owner)
                };
                entry.expires_ms = entry.expires_ms.max(own.expiry(p, now));
                return Some(Adopted {
                    snapshot: own.snapshot(),
                    write,
                });
            }
            if own.resource == existing.resource {
                // The store's counters of that resource are the fresher.
                base = Some((
                    own.first_ms,
                    own.count,
                    own.firings,
                    own.moved_to.clone(),
                    own.resolution,
                ));
            }
        }
        let (first_ms, count, firings, moved_to, resolution) = base.unwrap_or_else(|| {
            (
                existing.first_seen_ms,
                existing.occurrence_count,
                existing.firings,
                existing.moved_to.clone(),
                existing.resolution,
            )
        });
        let (instance_ms, firings, resolution) = if absorb {
            (claim.instance_ms, firings.max(1) + 1, None)
        } else {
            (existing.instance_ms, firings.max(1), resolution)
        };
        let own = Own {
            resource: existing.resource.clone(),
            first_ms,
            last_ms: now,
            count: count + 1,
            pending: false,
            lease_until_ms: 0,
            owner: claim.owner,
            moved_to,
            instance_ms,
            firings,
            resolution,
        };
        let snapshot = own.snapshot();
        let expires_ms = own.expiry(p, now);
        self.fingerprints.insert(
            key,
            FpEntry {
                kind: FpKind::Own(own),
                expires_ms,
                counted: Counted::first(claim.owner, claim.delivery),
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
        if found.ends_ms <= now || self.runs_another_storm(namespace, &existing.resource, now) {
            return false;
        }
        self.merge_storm(namespace, existing, p, now, true);
        true
    }

    /// Whether `namespace` runs a storm other than `name`.
    fn runs_another_storm(&mut self, namespace: &str, name: &str, now: i64) -> bool {
        let current = self
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.current.clone());
        current.filter(|cur| cur != name).is_some_and(|cur| {
            self.storm(namespace, &cur, now)
                .is_some_and(|st| st.ends_ms > now)
        })
    }

    /// [`Store::adopt_member`](crate::store::Store::adopt_member), as `claim.lua` does.
    pub fn adopt_member(
        &mut self,
        claim: &Claim,
        existing: &Snapshot,
        p: &Params,
        now: i64,
    ) -> Option<Decision> {
        existing.storm.as_ref()?;
        if self.fingerprint(&entry_key(claim), now).is_some() {
            return None;
        }
        let name = existing.resource.clone();
        // A storm the store made itself (not from a lookup) did not lose
        // its members: this firing was not one of them.
        if self
            .storm(&claim.namespace, &name, now)
            .is_some_and(|st| !st.adopted)
        {
            return None;
        }
        let current = !self.runs_another_storm(&claim.namespace, &name, now);
        let storm = self.merge_storm(&claim.namespace, existing, p, now, current);
        storm.count += 1;
        storm.last_ms = now;
        let snapshot = storm.snapshot(&name, false);
        self.join_storm(claim, &name, now + p.member_ttl(claim.instance_ms));
        Some(Decision {
            outcome: Outcome::Duplicate,
            write: Write::Update,
            key: storm_key(claim, &name),
            snapshot,
        })
    }

    /// Records the storm resource `existing` found in the sink, merged with
    /// what the store still holds of it (each counter and its end: the
    /// larger); the namespace's current storm if `current`.
    fn merge_storm(
        &mut self,
        namespace: &str,
        existing: &Snapshot,
        p: &Params,
        now: i64,
        current: bool,
    ) -> &mut Storm {
        let name = existing.resource.as_str();
        let found = existing.storm.clone().unwrap_or_default();
        let found = &found;
        let fresh = || {
            let mut st = Storm::start(
                found.started_ms,
                p,
                found.previous.clone(),
                Owner::default(),
            );
            (st.last_ms, st.count, st.alerts, st.ends_ms, st.joined_ms) = (0, 0, 0, 0, 0);
            st.adopted = true;
            st
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
        storm.resolved = storm.resolved.max(found.resolved_count);
        // An ended storm's last join is unknown (a window or more before its
        // end): its start, so that decide does not continue it.
        let joined = if storm.ends_ms > now {
            existing.last_seen_ms
        } else {
            storm.started_ms
        };
        storm.joined_ms = storm.joined_ms.max(joined);
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
        storm.keep(now, p);
        if current {
            ns.current = Some(name.to_string());
        }
        storm
    }
}

/// A decision that records nothing: the sink must be asked first.
fn ask_sink(claim: &Claim, write: Write) -> Decision {
    Decision {
        outcome: Outcome::Created,
        write,
        key: fp_key(claim),
        snapshot: Snapshot::default(),
    }
}

/// A resolution that changes nothing.
fn skip(claim: &Claim, outcome: Outcome) -> Decision {
    Decision {
        outcome,
        write: Write::Skip,
        key: fp_key(claim),
        snapshot: Snapshot::default(),
    }
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
