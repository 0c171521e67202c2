//! The process-wide bucket table, kept in proxy-wasm shared data.
//!
//! Every Envoy worker runs its own VM, so the buckets live in shared data
//! (one store for the whole process) and are updated with compare-and-swap.
//! Shared-data keys can never be deleted, so one key per source would grow
//! without bound. Instead the table has a fixed shape:
//!
//! - [`SLOTS`] keys (`signalgate.rl.v1.<n>`); a source's key hashes
//!   (SipHash-1-3, keyed by the process's random [`Seed`]) to one slot;
//! - each slot's value holds [`WAYS`](crate::slot::WAYS) entries ([`crate::slot`]) (a small set-associative
//!   group): the source's 64-bit hash as tag, its bucket, and the limit the
//!   bucket was last used with;
//! - a source not in its slot takes an empty way, else the way whose bucket
//!   is already full again (forgetting a full bucket changes nothing: a new
//!   source starts full), else the least recently used way, whose bucket
//!   level it inherits.
//!
//! So at most `SLOTS * WAYS` = 16 384 sources are tracked at once, in
//! `SLOTS` values of [`SLOT_BYTES`](crate::slot::SLOT_BYTES) = 129 bytes: about 0.5 MiB of values, and
//! with the keys and Envoy's per-entry bookkeeping (roughly 100-150 bytes a
//! key) about 1 MiB for the whole process, whatever the number of sources.
//! Evicting a bucket that is not full only happens when more than `WAYS`
//! sources that hash to one slot are active at once. The newcomer then
//! starts with the evicted bucket's level, not a full bucket: a crowded slot
//! makes the limit stricter for the sources in it, never looser. (Starting
//! full would let five sources of one slot taking turns each find a fresh
//! bucket every time: no limit at all.)
//!
//! The hash is keyed so that nobody can pick sources that land in the slot
//! of another source (and crowd it): the seed is made at random by the first
//! VM that finds none in shared data, and read from there by every other
//! (see [`seed`]).
//!
//! A slot update reads the value and its CAS token, computes, and writes back
//! with that token; a concurrent write from another worker makes the write
//! fail and the whole step is retried on the fresh value, up to
//! [`MAX_ATTEMPTS`] times.

use crate::ratelimit::{self, Decision, Limit};
use crate::slot::{Entry, Slot};

/// Number of shared-data keys of the table.
pub const SLOTS: u32 = 4096;
/// Prefix of the slot keys.
pub const KEY_PREFIX: &str = "signalgate.rl.v1.";
/// The shared-data key of the [`Seed`].
pub const SEED_KEY: &str = "signalgate.rl.v1.seed";
/// CAS attempts before giving up on one request.
pub const MAX_ATTEMPTS: u32 = 64;

/// Why the store could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The CAS token was stale: someone wrote the key since it was read.
    CasMismatch,
    /// Any other host failure.
    Host(String),
}

/// The get / compare-and-swap interface of proxy-wasm shared data.
pub trait SharedStore {
    /// The value and its CAS token; `(None, None)` when the key was never set.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key's CAS token is still `cas` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// Why a limit could not be checked (the caller lets the request through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    /// Every CAS attempt lost against a concurrent writer.
    Contended,
    Store(String),
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableError::Contended => write!(f, "{MAX_ATTEMPTS} CAS attempts lost"),
            TableError::Store(e) => write!(f, "shared data: {e}"),
        }
    }
}

/// The secret key of the source hash, one per Envoy process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seed(pub [u8; 16]);

/// The process's seed: the one in shared data, else `fresh` (random bytes),
/// stored there for the others. Two VMs starting at the same instant may
/// both store theirs; the one read back is the one that stays, and a VM
/// that kept another one picks it up when it calls this again.
pub fn seed(store: &dyn SharedStore, fresh: Seed) -> Result<Seed, StoreError> {
    if let Some(s) = stored_seed(store)? {
        return Ok(s);
    }
    store.set(SEED_KEY, &fresh.0, None)?;
    Ok(stored_seed(store)?.unwrap_or(fresh))
}

/// The seed in shared data, if one was stored.
fn stored_seed(store: &dyn SharedStore) -> Result<Option<Seed>, StoreError> {
    let (value, _) = store.get(SEED_KEY)?;
    Ok(value
        .and_then(|v| <[u8; 16]>::try_from(v.as_slice()).ok())
        .map(Seed))
}

/// SipHash-1-3 of the bucket key under `seed`; never 0 (0 marks an empty way).
pub fn hash(seed: &Seed, key: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_key(&seed.0);
    h.write(key.as_bytes());
    h.finish().max(1)
}

/// The slot a hash lives in.
pub fn slot_of(hash: u64) -> u32 {
    u32::try_from(hash % u64::from(SLOTS)).unwrap_or(0)
}

/// The shared-data key of slot `n`.
pub fn slot_key(n: u32) -> String {
    format!("{KEY_PREFIX}{n}")
}

/// Creates every slot key that does not exist yet (a no-op once done, so it
/// is safe to run in each worker's VM and on every reconfiguration). Having
/// all keys exist before traffic means every later write is a real CAS.
/// Returns how many keys were created.
pub fn init(store: &dyn SharedStore) -> Result<u32, StoreError> {
    let empty = Slot::default().encode();
    let mut created = 0;
    for n in 0..SLOTS {
        let key = slot_key(n);
        if let (None, None) = store.get(&key)? {
            store.set(&key, &empty, None)?;
            created += 1;
        }
    }
    Ok(created)
}

/// Takes one token from the bucket of `bucket_key` under `limit` at `now_ns`.
pub fn take(
    store: &dyn SharedStore,
    seed: &Seed,
    bucket_key: &str,
    limit: Limit,
    now_ns: u64,
) -> Result<Decision, TableError> {
    let tag = hash(seed, bucket_key);
    let key = slot_key(slot_of(tag));
    for _ in 0..MAX_ATTEMPTS {
        let (value, cas) = store
            .get(&key)
            .map_err(|e| TableError::Store(format!("{e:?}")))?;
        let mut slot = Slot::decode(value.as_deref());
        let (way, bucket) = slot.way_for(tag, now_ns);
        let (bucket, decision) = ratelimit::take(bucket, limit, now_ns);
        if let Some(w) = slot.ways.get_mut(way) {
            *w = Some(Entry { tag, bucket, limit });
        }
        match store.set(&key, &slot.encode(), cas) {
            Ok(()) => return Ok(decision),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host(e)) => return Err(TableError::Store(e)),
        }
    }
    Err(TableError::Contended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{SLOT_BYTES, WAYS};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    const SEC: u64 = 1_000_000_000;
    const SEED: Seed = Seed([7; 16]);
    const T0: u64 = 1_700_000_000 * SEC;

    /// An in-memory shared data store with CAS tokens, like Envoy's. It can
    /// make the next `conflicts` writes fail as if another worker had written
    /// the key in between (and it really does write the key then, taking one
    /// token for `interloper` when set).
    #[derive(Default)]
    struct FakeStore {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        conflicts: Cell<u32>,
        interloper: RefCell<Option<(String, Limit, u64)>>,
        gets: Cell<u32>,
        fail: Cell<bool>,
    }

    impl FakeStore {
        fn bump(&self) -> u32 {
            self.next_cas.set(self.next_cas.get() + 1);
            self.next_cas.get()
        }
    }

    impl SharedStore for FakeStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            if self.fail.get() {
                return Err(StoreError::Host("boom".into()));
            }
            self.gets.set(self.gets.get() + 1);
            Ok(match self.map.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.conflicts.get() > 0 {
                self.conflicts.set(self.conflicts.get() - 1);
                // Another worker wins the race for this key.
                let other = self.interloper.borrow().clone();
                if let Some((other_key, limit, now)) = other {
                    let (v, _) = self.map.borrow().get(key).cloned().unwrap_or_default();
                    let mut slot = Slot::decode(Some(&v));
                    let tag = hash(&SEED, &other_key);
                    let (way, bucket) = slot.way_for(tag, now);
                    let (bucket, _) = ratelimit::take(bucket, limit, now);
                    slot.ways[way] = Some(Entry { tag, bucket, limit });
                    let cas = self.bump();
                    self.map
                        .borrow_mut()
                        .insert(key.into(), (slot.encode(), cas));
                } else {
                    let cas = self.bump();
                    if let Some(e) = self.map.borrow_mut().get_mut(key) {
                        e.1 = cas;
                    }
                }
                return Err(StoreError::CasMismatch);
            }
            let mut map = self.map.borrow_mut();
            if let (Some(want), Some((_, have))) = (cas, map.get(key)) {
                if want != *have {
                    return Err(StoreError::CasMismatch);
                }
            }
            let cas = self.bump();
            map.insert(key.to_string(), (value.to_vec(), cas));
            Ok(())
        }
    }

    fn limit(per_minute: u32, burst: u32) -> Limit {
        Limit { per_minute, burst }
    }

    fn allowed(store: &FakeStore, key: &str, l: Limit, now: u64, n: u32) -> u32 {
        (0..n)
            .filter(|_| {
                matches!(
                    take(store, &SEED, key, l, now),
                    Ok(Decision::Allowed { .. })
                )
            })
            .count() as u32
    }

    #[test]
    fn init_creates_every_slot_once() {
        let store = FakeStore::default();
        assert_eq!(init(&store), Ok(SLOTS));
        assert_eq!(store.map.borrow().len(), SLOTS as usize);
        assert_eq!(init(&store), Ok(0));
    }

    #[test]
    fn buckets_are_per_key_and_persist_in_the_store() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(20, 20);
        assert_eq!(allowed(&store, "s:127.0.0.1", l, T0, 30), 20);
        assert_eq!(allowed(&store, "s:127.0.0.2", l, T0, 30), 20);
        // 3 s later: one token back for each.
        assert_eq!(allowed(&store, "s:127.0.0.1", l, T0 + 3 * SEC, 5), 1);
        assert_eq!(
            take(&store, &SEED, "s:127.0.0.1", l, T0 + 3 * SEC),
            Ok(Decision::Limited {
                retry_after_secs: 3
            })
        );
    }

    #[test]
    fn cas_conflicts_are_retried_on_the_fresh_value() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(10, 10);
        // Each of our writes first loses against another worker serving the
        // same source: both requests must be counted.
        *store.interloper.borrow_mut() = Some(("s:a".into(), l, T0));
        let mut ours = 0;
        for _ in 0..10 {
            store.conflicts.set(1);
            if matches!(
                take(&store, &SEED, "s:a", l, T0),
                Ok(Decision::Allowed { .. })
            ) {
                ours += 1;
            }
        }
        // Every retry saw the interloper's write: together the two "workers"
        // got exactly the burst, half each.
        let (v, _) = store
            .get(&slot_key(slot_of(hash(&SEED, "s:a"))))
            .unwrap_or_default();
        let slot = Slot::decode(v.as_deref());
        let tokens_left: u64 = slot
            .ways
            .iter()
            .flatten()
            .filter(|e| e.tag == hash(&SEED, "s:a"))
            .map(|e| e.bucket.tokens())
            .sum();
        assert_eq!(tokens_left, 0);
        assert_eq!(ours, 5, "ours and the interloper's alternate");
    }

    #[test]
    fn endless_conflicts_give_up_after_max_attempts() {
        let store = FakeStore::default();
        let _ = init(&store);
        store.conflicts.set(u32::MAX);
        store.gets.set(0);
        assert_eq!(
            take(&store, &SEED, "s:a", limit(1, 1), T0),
            Err(TableError::Contended)
        );
        assert_eq!(store.gets.get(), MAX_ATTEMPTS);
        store.conflicts.set(MAX_ATTEMPTS - 1);
        assert!(take(&store, &SEED, "s:a", limit(1, 1), T0).is_ok());
    }

    #[test]
    fn host_errors_are_reported() {
        let store = FakeStore::default();
        store.fail.set(true);
        assert!(matches!(
            take(&store, &SEED, "s:a", limit(1, 1), T0),
            Err(TableError::Store(_))
        ));
        assert!(init(&store).is_err());
    }

    #[test]
    fn a_million_sources_never_grow_the_table() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(100, 100);
        for i in 0..1_000_000u32 {
            let key = format!("s:10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let _ = take(&store, &SEED, &key, l, T0 + u64::from(i));
        }
        let map = store.map.borrow();
        assert_eq!(map.len(), SLOTS as usize);
        assert!(map.values().all(|(v, _)| v.len() == SLOT_BYTES));
        let tracked: usize = map
            .values()
            .map(|(v, _)| Slot::decode(Some(v)).ways.iter().flatten().count())
            .sum();
        assert_eq!(tracked, SLOTS as usize * WAYS);
    }

    #[test]
    fn hashing_spreads_sources_over_the_slots() {
        let mut used = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            used.insert(slot_of(hash(
                &SEED,
                &format!("s:10.0.{}.{}", i >> 8, i & 255),
            )));
        }
        // 20k keys in 4096 slots: nearly all slots used.
        assert!(used.len() > 4000, "{}", used.len());
        assert_ne!(hash(&SEED, ""), 0);
        assert_eq!(slot_key(7), "signalgate.rl.v1.7");
    }

    /// Finds `n` distinct keys that hash to the same slot as `first`.
    fn same_slot_keys(first: &str, n: usize) -> Vec<String> {
        let slot = slot_of(hash(&SEED, first));
        let mut keys = vec![first.to_string()];
        let mut i = 0u32;
        while keys.len() < n {
            let k = format!("s:probe-{i}");
            if slot_of(hash(&SEED, &k)) == slot {
                keys.push(k);
            }
            i += 1;
        }
        keys
    }

    #[test]
    fn eviction_prefers_full_buckets_then_the_least_recently_used() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(60, 2);
        let keys = same_slot_keys("s:victim", WAYS + 2);
        // Fill all ways at increasing times; each source uses both tokens,
        // except keys[1], which uses one and is full again 1 s later.
        for (i, k) in keys.iter().take(WAYS).enumerate() {
            let n = if i == 1 { 1 } else { 2 };
            assert_eq!(allowed(&store, k, l, T0 + i as u64, n), n);
        }
        // A new source at T0 + 1.5 s: keys[1] is full again and is the one replaced.
        let t = T0 + 3 * SEC / 2;
        assert_eq!(allowed(&store, &keys[WAYS], l, t, 2), 2);
        // keys[0] (not full, LRU but not evicted) is still limited.
        assert_eq!(allowed(&store, &keys[0], l, t, 1), 1);
        assert_eq!(allowed(&store, &keys[0], l, t, 1), 0);
        // Another newcomer: no way is full now, so the least recently used
        // (keys[2], touched at T0 + 2 ns) goes.
        assert_eq!(allowed(&store, &keys[WAYS + 1], l, t, 1), 1);
        let (v, _) = store
            .get(&slot_key(slot_of(hash(&SEED, "s:victim"))))
            .unwrap_or_default();
        let tags: Vec<u64> = Slot::decode(v.as_deref())
            .ways
            .iter()
            .flatten()
            .map(|e| e.tag)
            .collect();
        assert!(!tags.contains(&hash(&SEED, &keys[1])));
        assert!(!tags.contains(&hash(&SEED, &keys[2])));
        assert!(tags.contains(&hash(&SEED, &keys[0])));
    }

    #[test]
    fn the_first_seed_stored_is_the_one_every_vm_uses() {
        let store = FakeStore::default();
        assert_eq!(stored_seed(&store), Ok(None));
        assert_eq!(seed(&store, Seed([1; 16])), Ok(Seed([1; 16])));
        // Another VM, with its own random bytes, reads the stored one.
        assert_eq!(seed(&store, Seed([2; 16])), Ok(Seed([1; 16])));
        assert_eq!(stored_seed(&store), Ok(Some(Seed([1; 16]))));
        store.fail.set(true);
        assert!(seed(&store, Seed([3; 16])).is_err());
    }

    #[test]
    fn sources_crowding_one_slot_under_one_seed_spread_under_another() {
        let crowd = same_slot_keys("s:victim", 8);
        let other = Seed([9; 16]);
        let slots: std::collections::HashSet<u32> =
            crowd.iter().map(|k| slot_of(hash(&other, k))).collect();
        // Eight keys in one slot under SEED: under another seed, eight slots
        // but for a chance collision.
        assert!(slots.len() >= 7, "{slots:?}");
        assert_ne!(hash(&SEED, "s:a"), hash(&other, "s:a"));
    }

    #[test]
    fn sources_of_one_slot_taking_turns_do_not_get_fresh_buckets() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(1, 1);
        // One more source than the slot has ways, each asking in turn: every
        // request evicts the source that asks next.
        let keys = same_slot_keys("s:10.0.1.253", WAYS + 1);
        let mut allowed_total = 0;
        for i in 0..10_000u64 {
            let k = &keys[(i % keys.len() as u64) as usize];
            if let Ok(Decision::Allowed { .. }) = take(&store, &SEED, k, l, T0 + i) {
                allowed_total += 1;
            }
        }
        // Only the first requests, which found empty ways, got a token.
        assert_eq!(allowed_total, WAYS);
    }

    #[test]
    fn a_newcomer_inherits_the_level_of_the_bucket_it_evicts_capped_by_its_own_burst() {
        let store = FakeStore::default();
        let _ = init(&store);
        let keys = same_slot_keys("s:a", WAYS + 2);
        // Four sources with 10 tokens each use 7: 3 left each.
        for (i, k) in keys.iter().take(WAYS).enumerate() {
            assert_eq!(allowed(&store, k, limit(1, 10), T0 + i as u64, 7), 7);
        }
        // A newcomer under a burst of 5 gets the 3 tokens left, not 5.
        assert_eq!(allowed(&store, &keys[WAYS], limit(1, 5), T0 + 9, 5), 3);
        // One under a burst of 2 gets min(3, 2) = 2.
        assert_eq!(allowed(&store, &keys[WAYS + 1], limit(1, 2), T0 + 9, 5), 2);
    }

    #[test]
    fn a_missing_slot_is_created_on_first_use() {
        let store = FakeStore::default();
        assert!(matches!(
            take(&store, &SEED, "s:a", limit(1, 1), T0),
            Ok(Decision::Allowed { .. })
        ));
        assert!(matches!(
            take(&store, &SEED, "s:a", limit(1, 1), T0),
            Ok(Decision::Limited { .. })
        ));
    }
}
