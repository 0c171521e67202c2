//! The memory store's index of unwritten changes: which resources' counters
//! changed and when, until a flush reports them written (see
//! [`Store::unwritten`](crate::store::Store::unwritten)). One process holds
//! both the store and its sidecar, so nobody else can be left to write what
//! a dead one counted; the index still holds what this sidecar could not
//! write, and answers as the Redis store's does.

use std::collections::HashMap;

use crate::store::{ClaimKey, Mark};

#[derive(Default)]
pub(super) struct Unwritten {
    /// Resource → the mark of its latest unwritten change, and when (ms).
    changed: HashMap<ClaimKey, (Mark, i64)>,
    /// The last mark handed out: marks only grow.
    last: i64,
}

impl Unwritten {
    /// Records a change of `key`'s counters at `now` (ms), under a new mark.
    pub fn change(&mut self, key: &ClaimKey, now: i64) {
        self.last += 1;
        self.changed.insert(key.clone(), (Mark(self.last), now));
    }

    /// The mark of `key`'s latest unwritten change.
    pub fn mark(&self, key: &ClaimKey) -> Option<Mark> {
        self.changed.get(key).map(|(mark, _)| *mark)
    }

    /// Resources whose latest change came at or before `before` (ms).
    pub fn older(&self, before: i64) -> Vec<ClaimKey> {
        self.changed
            .iter()
            .filter(|(_, (_, at))| *at <= before)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// `key` was written with the counters marked `mark` (`None`: it was
    /// found gone); `gone`: it is gone now. Removes it unless it changed since.
    pub fn written(&mut self, key: &ClaimKey, mark: Option<Mark>, gone: bool) {
        if gone || (mark.is_some() && self.mark(key) == mark) {
            self.changed.remove(key);
        }
    }

    /// Keeps only the resources `live` says still exist.
    pub fn retain(&mut self, live: impl Fn(&ClaimKey) -> bool) {
        self.changed.retain(|key, _| live(key));
    }

    pub fn len(&self) -> usize {
        self.changed.len()
    }
}
