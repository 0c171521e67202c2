//! [`MemoryStore`]: the embedded default store for a single sidecar process.
//!
//! The same decision as the Redis scripts (`decide.lua`, `claim.lua`,
//! `snapshot.lua`), entry for entry, in one mutex-protected map: every claim
//! is one critical section, a whole `decide` call one lock. Its clock is the
//! host's real time ([`crate::clock::now_ms`]).
//!
//! Memory stays bounded the way Redis keys do: every entry has an expiry
//! (a fingerprint its TTL after its last sighting: the incident TTL for an
//! open incident with a firing instance, else the dedup window; a storm until
//! its last member's fingerprint could expire), expired entries are ignored
//! and removed when met, and a sweep over the whole map runs at most once a
//! second from `decide`. The storm window keeps at most `storm_threshold`
//! fingerprints per namespace, a storm at most `storm_max_affected` listed
//! targets.
//!
//! - `records`: the entries kept, each with its expiry.
//! - `state`: the map and the decision, step by step.
//! - `index`: the index of unwritten changes.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::now_ms;

use super::{
    Adopted, Claim, ClaimKey, ClaimState, Decision, Owner, Settings, Snapshot, Store, StoreError,
    Write, Written,
};

mod index;
mod records;
mod state;

use records::{FpEntry, FpKind, Params};
use state::State;

/// How often `decide` sweeps the whole map for expired entries.
const SWEEP_INTERVAL_MS: i64 = 1_000;

/// The in-memory store. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    settings: Settings,
    state: Mutex<State>,
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

    /// Live entries (fingerprints, namespaces with a window or storms,
    /// storms, unwritten changes) after removing the expired ones: what
    /// bounds this store's memory.
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
            + state.unwritten.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
                let cold =
                    now - since < p.dedup || (claim.instance_ms != 0 && claim.instance_ms < since);
                let decision = state.decide_one(claim, &p, now, cold);
                if matches!(decision.write, Write::Update | Write::Await) {
                    state.index(&decision.key, &p, now);
                }
                decision
            })
            .collect())
    }

    async fn commit(
        &self,
        owner: Owner,
        done: &[(ClaimKey, Option<String>)],
    ) -> Result<(), StoreError> {
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
                            if own.pending && own.owner == owner {
                                own.pending = false;
                                own.moved_to.clone_from(moved_to);
                                // The lease no longer keeps it: its TTL does,
                                // from its last sighting or its resolution.
                                entry.expires_ms = own.expiry_after_last_sighting(&p, now);
                            }
                        }
                    }
                }
                ClaimKey::Storm { namespace, name } => {
                    if let Some(storm) = state.storm(namespace, name, now) {
                        if storm.pending && storm.owner == owner {
                            storm.pending = false;
                            storm.moved_to.clone_from(moved_to);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn release(&self, owner: Owner, keys: &[ClaimKey]) -> Result<(), StoreError> {
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
                        if own.pending && own.owner == owner {
                            own.lease_until_ms = 0;
                        }
                    }
                }
                ClaimKey::Storm { namespace, name } => {
                    if let Some(storm) = state.storm(namespace, name, now) {
                        if storm.pending && storm.owner == owner {
                            storm.lease_until_ms = 0;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn uncount(&self, owner: Owner, signals: &[(String, String)]) -> Result<(), StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        for key in signals {
            let Some(entry) = state.fingerprint(key, now) else {
                continue;
            };
            if !entry.counted.take_back(owner) {
                continue; // not its count to take back
            }
            let storm = match &mut entry.kind {
                FpKind::Own(own) => {
                    own.count = own.count.saturating_sub(1);
                    let own_key = ClaimKey::Fingerprint {
                        namespace: key.0.clone(),
                        fingerprint: key.1.clone(),
                    };
                    state.index(&own_key, &p, now);
                    continue;
                }
                FpKind::Member { storm, .. } => storm.clone(),
            };
            if let Some(s) = state.storm(&key.0, &storm, now) {
                if s.count > 0 {
                    s.count -= 1;
                    let storm_key = ClaimKey::Storm {
                        namespace: key.0.clone(),
                        name: storm,
                    };
                    state.index(&storm_key, &p, now);
                }
            }
        }
        Ok(())
    }

    async fn adopt(
        &self,
        claim: &Claim,
        existing: &Snapshot,
        absorb: bool,
    ) -> Result<Option<Adopted>, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        let adopted = state.adopt(claim, existing, absorb, &p, now);
        if adopted.is_some() {
            let key = ClaimKey::Fingerprint {
                namespace: claim.namespace.clone(),
                fingerprint: claim.fingerprint.clone(),
            };
            state.index(&key, &p, now);
        }
        Ok(adopted)
    }

    async fn adopt_storm(&self, namespace: &str, existing: &Snapshot) -> Result<bool, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        Ok(state.adopt_storm(namespace, existing, &p, now_ms()))
    }

    async fn adopt_member(
        &self,
        claim: &Claim,
        storm: &Snapshot,
    ) -> Result<Option<Decision>, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        let member = state.adopt_member(claim, storm, &p, now);
        if let Some(decision) = &member {
            state.index(&decision.key, &p, now);
        }
        Ok(member)
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

    async fn poll(&self, owner: Owner, key: &ClaimKey) -> Result<ClaimState, StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        let poll = |pending: bool,
                    lease_until: &mut i64,
                    held_by: &mut Owner,
                    moved_to: &Option<String>| {
            if !pending {
                ClaimState::Committed {
                    moved_to: moved_to.clone(),
                }
            } else if *lease_until > now {
                ClaimState::Pending
            } else {
                *lease_until = now + p.lease;
                *held_by = owner;
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
                            let s = poll(
                                own.pending,
                                &mut own.lease_until_ms,
                                &mut own.owner,
                                &own.moved_to,
                            );
                            if s == ClaimState::Owned {
                                entry.expires_ms = entry.expires_ms.max(now + p.lease);
                            }
                            s
                        }
                        FpKind::Member { .. } => ClaimState::Gone,
                    },
                    None => ClaimState::Gone,
                }
            }
            ClaimKey::Storm { namespace, name } => match state.storm(namespace, name, now) {
                Some(storm) => {
                    let s = poll(
                        storm.pending,
                        &mut storm.lease_until_ms,
                        &mut storm.owner,
                        &storm.moved_to,
                    );
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
            .map(|key| {
                state.snapshot_of(key, now).map(|mut snapshot| {
                    snapshot.unwritten = state.unwritten.contains(key);
                    snapshot
                })
            })
            .collect())
    }

    async fn unwritten(&self, older_than: Duration) -> Result<Vec<ClaimKey>, StoreError> {
        let mut state = self.lock();
        let now = now_ms();
        let mut found = Vec::new();
        for key in state.unwritten.older(now - crate::clock::ms(older_than)) {
            if state.snapshot_of(&key, now).is_some() {
                found.push(key);
            } else {
                state.unwritten.written(&key, true, now);
            }
        }
        Ok(found)
    }

    async fn written(&self, done: &[(ClaimKey, Option<Written>)]) -> Result<(), StoreError> {
        let p = Params::new(&self.settings);
        let mut state = self.lock();
        let now = now_ms();
        for (key, written) in done {
            let now_held = state.snapshot_of(key, now).map(|s| Written::of(&s));
            let same = now_held.is_none() || now_held == *written;
            state.unindex(key, same, &p, now);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
