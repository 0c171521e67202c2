//! The memory store's index of unwritten changes: which resources' counters
//! changed since a flush last wrote them, and since when (see
//! [`Store::unwritten`](crate::store::Store::unwritten)). One process holds
//! both the store and its sidecar, so nobody else can be left to write what
//! a dead one counted; the index still holds what this sidecar could not
//! write, and answers as the Redis store's does.

use std::collections::HashMap;

use crate::store::ClaimKey;

#[derive(Default)]
pub(super) struct Unwritten {
    /// Resource → when it was put in the index (ms).
    since: HashMap<ClaimKey, i64>,
}

impl Unwritten {
    /// Records a change of `key`'s counters at `now` (ms), unless it is in
    /// the index already.
    pub fn change(&mut self, key: &ClaimKey, now: i64) {
        self.since.entry(key.clone()).or_insert(now);
    }

    pub fn contains(&self, key: &ClaimKey) -> bool {
        self.since.contains_key(key)
    }

    /// Resources put in the index at or before `before` (ms).
    pub fn older(&self, before: i64) -> Vec<ClaimKey> {
        self.since
            .iter()
            .filter(|(_, at)| **at <= before)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// A flush wrote `key`; `same`: the store's counters are still the ones
    /// written (or it is gone). Removed if so, else in the index as of `now`.
    pub fn written(&mut self, key: &ClaimKey, same: bool, now: i64) {
        if same {
            self.since.remove(key);
        } else if let Some(at) = self.since.get_mut(key) {
            *at = now;
        }
    }

    /// Keeps only the resources `live` says still exist.
    pub fn retain(&mut self, live: impl Fn(&ClaimKey) -> bool) {
        self.since.retain(|key, _| live(key));
    }

    pub fn len(&self) -> usize {
        self.since.len()
    }
}
