//! [`MemoryStore`]: the embedded default store for a single sidecar process.
//!
//! The same decision as the Redis scripts (`decide.lua`, `claim.lua`,
//! `snapshot.lua`), entry for entry, in one mutex-protected map: every claim
//! is one critical section, a whole `decide` call one lock. Its clock is the
//! host's real time ([`crate::clock::now_ms`]).
//!
//! Memory stays bounded the way Redis keys do: every entry has an expiry
//! (a fingerprint the dedup window after its last sighting, a storm until
//! its last member's fingerprint could expire), expired entries are ignored
//! and removed when met, and a sweep over the whole map runs at most once a
//! second from `decide`. The storm window keeps at most `storm_threshold`
//! fingerprints per namespace, a storm at most `storm_max_affected` listed
//! targets.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::naming::{base36, fingerprint_resource, storm_prefix};
use super::{
    Adopted, Claim, ClaimKey, ClaimState, Decision, Outcome, Settings, Snapshot, Store, StoreError,
    StormSnapshot, Write, WARM_MARKER_TTL,
};
use crate::clock::{ms, now_ms};

/// How often `decide` sweeps the whole map for expired entries.
const SWEEP_INTERVAL_MS: i64 = 1_000;

/// The in-memory store. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    settings: Settings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Keyed by (namespace, fingerprint).
    fingerprints: HashMap<(String, String), FpEntry>,
    namespaces: HashMap<String, Namespace>,
    /// Namespace → (when the memory of it began, until when it lasts: the
    /// warm-marker TTL after its last decide); see [`WARM_MARKER_TTL`].
    warm: HashMap<String, (i64, i64)>,
    last_sweep_ms: i64,
}

struct FpEntry {
    kind: FpKind,
    /// Gone at and after this store-clock millisecond.
    expires_ms: i64,
}

enum FpKind {
    /// The fingerprint has its own resource.
    Own(Own),
    /// The fingerprint was aggregated into this storm resource.
    Member(String),
}

struct Own {
    resource: String,
    first_ms: i64,
    last_ms: i64,
    count: u64,
    pending: bool,
    lease_until_ms: i64,
    moved_to: Option<String>,
}

#[derive(Default)]
struct Namespace {
    /// Distinct new fingerprints created individually, with their first
    /// sighting: at most `storm_threshold` of them.
    window: Vec<(String, i64)>,
    /// The latest storm's resource name.
    current: Option<String>,
    storms: HashMap<String, Storm>,
}

struct Storm {
    started_ms: i64,
    last_ms: i64,
    count: u64,
    alerts: u64,
    /// The storm runs while now < ends_ms.
    ends_ms: i64,
    pending: bool,
    lease_until_ms: i64,
    overflow: u64,
    affected: BTreeSet<String>,
    /// The record is kept until then (members, lease, the storm itself).
    keep_until_ms: i64,
    moved_to: Option<String>,
}

impl Storm {
    fn snapshot(&self, name: &str, with_affected: bool) -> Snapshot {
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
}

impl Own {
    fn snapshot(&self) -> Snapshot {
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

/// What the caller must do with a claim; takes over an expired lease.
fn claim_write(pending: bool, lease_until_ms: i64, now: i64, lease: i64) -> (Write, i64) {
    if !pending {
        (Write::Update, lease_until_ms)
    } else if lease_until_ms > now {
        (Write::Await, lease_until_ms)
    } else {
        (Write::Create, now + lease)
    }
}

struct Params {
    dedup: i64,
    threshold: usize,
    window: i64,
    max_duration: i64,
    max_affected: usize,
    lease: i64,
    warm_marker: i64,
}

impl Params {
    fn new(s: &Settings) -> Params {
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

impl MemoryStore {
    pub fn new(settings: Settings) -> MemoryStore {
        MemoryStore {
            settings,
            state: Mutex::new(State::default()),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Live entries (fingerprints, namespaces with a window or storms, storms)
    /// after removing the expired ones: what bounds this store's memory.
    pub fn entry_count(&self) -> usize {
        let mut state = self.lock();
        let now = now_ms();
        state.sweep(now, Params::new(&self.settings).window);
        state.fingerprints.len()
            + state.namespaces.len()
            + state
                .namespaces
                .values()
                .map(|n| n.storms.len())
                .sum::<usize>()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Namespace {
    /// Drops storm `name` (and its place as the current storm).
    fn drop_storm(&mut self, name: &str) {
        self.storms.remove(name);
        if self.current.as_deref() == Some(name) {
            self.current = None;
        }
    }
}

impl State {
    /// Drops every expired entry.
    fn sweep(&mut self, now: i64, window: i64) {
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
    fn fingerprint(&mut self, key: &(String, String), now: i64) -> Option<&mut FpEntry> {
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
    fn storm(&mut self, namespace: &str, name: &str, now: i64) -> Option<&mut Storm> {
        let ns = self.namespaces.get_mut(namespace)?;
        if ns.storms.get(name).is_some_and(|s| s.keep_until_ms <= now) {
            ns.drop_storm(name);
        }
        ns.storms.get_mut(name)
    }

    /// Decides `claim`; `cold`: the memory of its namespace is younger than
    /// a dedup window (see [`WARM_MARKER_TTL`]).
    fn decide_one(&mut self, claim: &Claim, p: &Params, now: i64, cold: bool) -> Decision {
        let key = (claim.namespace.clone(), claim.fingerprint.clone());
        let storm_key = |name: &str| ClaimKey::Storm {
            namespace: claim.namespace.clone(),
            name: name.to_string(),
        };
        let fp_key = || ClaimKey::Fingerprint {
            namespace: claim.namespace.clone(),
            fingerprint: claim.fingerprint.clone(),
        };

        // A known fingerprint: a duplicate of its own resource or of its storm.
        let member_of = match self.fingerprint(&key, now) {
            Some(entry) => match &mut entry.kind {
                FpKind::Own(own) => {
                    own.count += 1;
                    own.last_ms = now;
                    let (write, lease_until) =
                        claim_write(own.pending, own.lease_until_ms, now, p.lease);
                    own.lease_until_ms = lease_until;
                    let mut ttl = p.dedup;
                    if own.pending && lease_until - now > ttl {
                        ttl = lease_until - now;
                    }
                    entry.expires_ms = now + ttl;
                    return Decision {
                        outcome: Outcome::Duplicate,
                        write,
                        key: fp_key(),
                        snapshot: own.snapshot(),
                    };
                }
                FpKind::Member(name) => Some(name.clone()),
            },
            None => None,
        };
        if let Some(name) = member_of {
            if let Some(storm) = self.storm(&claim.namespace, &name, now) {
                let write = count_in_storm(storm, p, now);
                storm.keep_until_ms = storm
                    .keep_until_ms
                    .max(now + p.dedup)
                    .max(storm.ends_ms)
                    .max(storm.lease_until_ms);
                let snapshot = storm.snapshot(&name, false);
                if let Some(entry) = self.fingerprints.get_mut(&key) {
                    entry.expires_ms = now + p.dedup;
                }
                return Decision {
                    outcome: Outcome::Duplicate,
                    write,
                    key: storm_key(&name),
                    snapshot,
                };
            }
            // The storm record is gone: the signal is new again.
            self.fingerprints.remove(&key);
        }

        // A new fingerprint. Look in the sink first if the store may have lost it.
        if cold && !claim.absent {
            return Decision {
                outcome: Outcome::Created,
                write: Write::Lookup,
                key: fp_key(),
                snapshot: Snapshot::default(),
            };
        }

        // Does a storm run in this namespace?
        let current = self
            .namespaces
            .get(&claim.namespace)
            .and_then(|ns| ns.current.clone());
        if let Some(name) = current {
            if let Some(storm) = self.storm(&claim.namespace, &name, now) {
                if storm.ends_ms > now {
                    storm.alerts += 1;
                    let write = count_in_storm(storm, p, now);
                    storm.ends_ms = storm
                        .ends_ms
                        .max((now + p.window).min(storm.started_ms + p.max_duration));
                    add_affected(storm, &claim.affected, p);
                    storm.keep_until_ms = storm
                        .keep_until_ms
                        .max(now + p.dedup)
                        .max(storm.ends_ms)
                        .max(storm.lease_until_ms);
                    let snapshot = storm.snapshot(&name, false);
                    self.join_storm(key, &name, now + p.dedup);
                    return Decision {
                        outcome: Outcome::StormAggregated,
                        write,
                        key: storm_key(&name),
                        snapshot,
                    };
                }
            }
        }

        // Count it in the window; the first `threshold` are created individually.
        let ns = self.namespaces.entry(claim.namespace.clone()).or_default();
        ns.window.retain(|(_, at)| *at > now - p.window);
        if ns.window.len() < p.threshold {
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
                key,
                FpEntry {
                    kind: FpKind::Own(own),
                    expires_ms: now + p.dedup.max(p.lease),
                },
            );
            return Decision {
                outcome: Outcome::Created,
                write: Write::Create,
                key: fp_key(),
                snapshot,
            };
        }

        // The (threshold+1)-th: a new storm, ONE resource.
        let name = format!("{}{}", storm_prefix(&claim.namespace), base36(now));
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
        add_affected(&mut storm, &claim.affected, p);
        storm.keep_until_ms = (now + p.dedup).max(storm.ends_ms).max(storm.lease_until_ms);
        let snapshot = storm.snapshot(&name, false);
        ns.storms.insert(name.clone(), storm);
        ns.current = Some(name.clone());
        self.join_storm(key, &name, now + p.dedup);
        Decision {
            outcome: Outcome::StormStarted,
            write: Write::Create,
            key: storm_key(&name),
            snapshot,
        }
    }

    /// [`Store::adopt_storm`]: `existing` becomes the namespace's
    /// running storm unless it has ended or another storm runs; what the
    /// store still holds of it (unless its time is up) is merged (each
    /// counter and its end: the larger), as `claim.lua` does.
    fn adopt_storm(&mut self, namespace: &str, existing: &Snapshot, p: &Params, now: i64) -> bool {
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
        storm.keep_until_ms = storm.keep_until_ms.max(now + p.dedup).max(storm.ends_ms);
        ns.current = Some(name.to_string());
        true
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
}

/// Counts one more signal in the storm and settles its claim.
fn count_in_storm(storm: &mut Storm, p: &Params, now: i64) -> Write {
    storm.count += 1;
    storm.last_ms = now;
    let (write, lease_until) = claim_write(storm.pending, storm.lease_until_ms, now, p.lease);
    storm.lease_until_ms = lease_until;
    write
}

fn add_affected(storm: &mut Storm, affected: &str, p: &Params) {
    if affected.is_empty() || storm.affected.contains(affected) {
        return;
    }
    if storm.affected.len() < p.max_affected {
        storm.affected.insert(affected.to_string());
    } else {
        storm.overflow += 1;
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn decide(&self, claims: &[Claim]) -> Result<Vec<Decision>, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        if now - state.last_sweep_ms >= SWEEP_INTERVAL_MS {
            state.sweep(now, p.window);
        }
        Ok(claims
            .iter()
            .map(|claim| {
                let since = match state.warm.get(&claim.namespace) {
                    Some(&(since, until)) if until > now => since,
                    _ => now,
                };
                state
                    .warm
                    .insert(claim.namespace.clone(), (since, now + p.warm_marker));
                state.decide_one(claim, &p, now, now - since < p.dedup)
            })
            .collect())
    }

    async fn commit(&self, done: &[(ClaimKey, Option<String>)]) -> Result<(), StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        for (key, moved_to) in done {
            match key {
                ClaimKey::Fingerprint {
                    namespace,
                    fingerprint,
                } => {
                    let k = (namespace.clone(), fingerprint.clone());
                    if let Some(entry) = state.fingerprint(&k, now) {
                        if let FpKind::Own(own) = &mut entry.kind {
                            if own.pending {
                                own.pending = false;
                                own.moved_to.clone_from(moved_to);
                                // The lease no longer keeps it: the dedup window does.
                                entry.expires_ms = (own.last_ms + p.dedup).max(now + 1);
                            }
                        }
                    }
                }
                ClaimKey::Storm { namespace, name } => {
                    if let Some(storm) = state.storm(namespace, name, now) {
                        if storm.pending {
                            storm.pending = false;
                            storm.moved_to.clone_from(moved_to);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn release(&self, keys: &[ClaimKey]) -> Result<(), StoreError> {
        let mut state = self.lock();
        let now = now_ms();
        for key in keys {
            match key {
                ClaimKey::Fingerprint {
                    namespace,
                    fingerprint,
                } => {
                    let k = (namespace.clone(), fingerprint.clone());
                    if let Some(FpEntry {
                        kind: FpKind::Own(own),
                        ..
                    }) = state.fingerprint(&k, now)
                    {
                        if own.pending {
                            own.lease_until_ms = 0;
                        }
                    }
                }
                ClaimKey::Storm { namespace, name } => {
                    if let Some(storm) = state.storm(namespace, name, now) {
                        if storm.pending {
                            storm.lease_until_ms = 0;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn adopt(
        &self,
        namespace: &str,
        fingerprint: &str,
        existing: &Snapshot,
    ) -> Result<Option<Adopted>, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        let k = (namespace.to_string(), fingerprint.to_string());
        if let Some(entry) = state.fingerprint(&k, now) {
            // Known by now: count the signal in what the store holds, and
            // settle another request's claim as decide would.
            let FpKind::Own(own) = &mut entry.kind else {
                return Ok(None);
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
            return Ok(Some(Adopted {
                snapshot: own.snapshot(),
                write,
            }));
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
        state.fingerprints.insert(
            k,
            FpEntry {
                kind: FpKind::Own(own),
                expires_ms: now + p.dedup,
            },
        );
        Ok(Some(Adopted {
            snapshot,
            write: Write::Update,
        }))
    }

    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        Ok(state.adopt_storm(namespace, existing, &p, now_ms()))
    }

    async fn forget(&self, key: &ClaimKey, resource: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let now = now_ms();
        Ok(match key {
            ClaimKey::Fingerprint {
                namespace,
                fingerprint,
            } => {
                let k = (namespace.clone(), fingerprint.clone());
                let committed_here = state.fingerprint(&k, now).is_some_and(|entry| {
                    matches!(&entry.kind, FpKind::Own(own) if !own.pending && own.resource == resource)
                });
                if committed_here {
                    state.fingerprints.remove(&k);
                }
                committed_here
            }
            ClaimKey::Storm { namespace, name } => {
                let committed = state
                    .storm(namespace, name, now)
                    .is_some_and(|storm| !storm.pending);
                if committed {
                    if let Some(ns) = state.namespaces.get_mut(namespace) {
                        ns.drop_storm(name);
                    }
                }
                committed
            }
        })
    }

    async fn poll(&self, key: &ClaimKey) -> Result<ClaimState, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        let poll = |pending: bool, lease_until: &mut i64, moved_to: &Option<String>| {
            if !pending {
                ClaimState::Committed {
                    moved_to: moved_to.clone(),
                }
            } else if *lease_until > now {
                ClaimState::Pending
            } else {
                *lease_until = now + p.lease;
                ClaimState::Owned
            }
        };
        Ok(match key {
            ClaimKey::Fingerprint {
                namespace,
                fingerprint,
            } => {
                let k = (namespace.clone(), fingerprint.clone());
                match state.fingerprint(&k, now) {
                    Some(entry) => match &mut entry.kind {
                        FpKind::Own(own) => {
                            let s = poll(own.pending, &mut own.lease_until_ms, &own.moved_to);
                            if s == ClaimState::Owned {
                                entry.expires_ms = entry.expires_ms.max(now + p.lease);
                            }
                            s
                        }
                        FpKind::Member(_) => ClaimState::Gone,
                    },
                    None => ClaimState::Gone,
                }
            }
            ClaimKey::Storm { namespace, name } => match state.storm(namespace, name, now) {
                Some(storm) => {
                    let s = poll(storm.pending, &mut storm.lease_until_ms, &storm.moved_to);
                    if s == ClaimState::Owned {
                        storm.keep_until_ms = storm.keep_until_ms.max(now + p.lease);
                    }
                    s
                }
                None => ClaimState::Gone,
            },
        })
    }

    async fn snapshot(&self, keys: &[ClaimKey]) -> Result<Vec<Option<Snapshot>>, StoreError> {
        let mut state = self.lock();
        let now = now_ms();
        Ok(keys
            .iter()
            .map(|key| match key {
                ClaimKey::Fingerprint {
                    namespace,
                    fingerprint,
                } => {
                    let k = (namespace.clone(), fingerprint.clone());
                    match state.fingerprint(&k, now) {
                        Some(FpEntry {
                            kind: FpKind::Own(own),
                            ..
                        }) => Some(own.snapshot()),
                        _ => None,
                    }
                }
                ClaimKey::Storm { namespace, name } => state
                    .storm(namespace, name, now)
                    .map(|s| s.snapshot(name, true)),
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
