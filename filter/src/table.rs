//! The process-wide bucket table, kept in proxy-wasm shared data.
//!
//! Every Envoy worker runs its own VM, so the buckets live in shared data
//! (one store for the whole process) and are updated with compare-and-swap.
//! Shared-data keys can never be deleted, so one key per source would grow
//! without bound. Instead the table has a fixed shape:
//!
//! - [`SLOTS`] keys (`signalgate.rl.v1.<n>`); a source's key hashes
//!   (SipHash-1-3, keyed by the process's random [`Seed`]) to one slot;
//! - each slot's value holds [`WAYS`](crate::slot::WAYS) entries (a small
//!   set-associative group): the source's 64-bit hash as tag, its bucket, and
//!   the limit the bucket was last used with; and one *overflow* bucket, shared
//!   by the sources of the slot that have no entry;
//! - a source not in its slot takes an empty way, else a way whose bucket is
//!   full again (forgetting a full bucket loses nothing: that source would
//!   start full anyway), else it is charged to the overflow bucket. A bucket
//!   that is not full is never forgotten. The whole rule, and why it holds
//!   the bound below, is in [`crate::slot`].
//!
//! So at most `SLOTS * WAYS` = 16 384 sources have a bucket of their own at
//! once, in `SLOTS` values of [`SLOT_BYTES`](crate::slot::SLOT_BYTES) = 153
//! bytes: about 0.6 MiB of values, and with the keys and Envoy's per-entry
//! bookkeeping (roughly 100-150 bytes a key) about 1.1 MiB for the whole
//! process, whatever the number of sources.
//!
//! **The guarantee.** For any source whose limit (`per_minute`, `burst`)
//! stays the same, and clock readings that do not go backwards, the requests
//! the table allows it in any interval `[t0, t1]` number at most
//! `burst + floor(per_minute * (t1 - t0) / 1 min)`: what its own token bucket
//! alone would allow, whatever the other sources of its slot do. No source is
//! ever handed another's tokens. (A clock that steps back refills nothing, see
//! [`crate::ratelimit`].) The table is stricter than private buckets only
//! for a crowded slot, one where more than `WAYS` sources have buckets that
//! are not full at once:
//!
//! - the sources without a way share one overflow bucket (one `burst` and
//!   one rate for all of them);
//! - a source that takes a way while the overflow is not full starts from the
//!   overflow's level, not a full burst (it may have just spent from it);
//! - the overflow serves one limit at a time: a source under another limit
//!   that finds no way is refused until the overflow is full again.
//!
//! As long as a slot's overflow stays full (never used, or unused for the
//! time it takes to refill), every source of the slot is limited exactly by
//! its own bucket, and a new source starts with its full burst. (Giving a source that finds no
//! way a fresh bucket instead would let five sources of one slot taking
//! turns escape the limit; giving it an evicted source's level would hand it
//! that source's tokens.)
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

use crate::ratelimit::{Decision, Limit};
use crate::slot::Slot;

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
        let decision = slot.take(tag, limit, now_ns);
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
    use crate::ratelimit;
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
                    let _ = slot.take(hash(&SEED, &other_key), limit, now);
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
    fn only_full_buckets_are_evicted_and_crowded_sources_share_the_overflow() {
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
        // keys[0] (not full, least recently used) keeps its bucket.
        assert_eq!(allowed(&store, &keys[0], l, t, 1), 1);
        assert_eq!(allowed(&store, &keys[0], l, t, 1), 0);
        // Another newcomer: no way is full now, so it is charged to the
        // overflow (a burst of 2, shared) and nobody is evicted.
        assert_eq!(allowed(&store, &keys[WAYS + 1], l, t, 3), 2);
        let (v, _) = store
            .get(&slot_key(slot_of(hash(&SEED, "s:victim"))))
            .unwrap_or_default();
        let slot = Slot::decode(v.as_deref());
        let tags: Vec<u64> = slot.ways.iter().flatten().map(|e| e.tag).collect();
        assert!(!tags.contains(&hash(&SEED, &keys[1])));
        for k in [0, 2, 3, WAYS] {
            assert!(tags.contains(&hash(&SEED, &keys[k])), "{k}");
        }
        assert_eq!(slot.overflow.map(|o| o.bucket.tokens()), Some(0));
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
    fn sources_of_one_slot_taking_turns_get_their_burst_once() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(1, 1);
        // One more source than the slot has ways, each asking in turn.
        let keys = same_slot_keys("s:10.0.1.253", WAYS + 1);
        let mut allowed_total = 0;
        for i in 0..10_000u64 {
            let k = &keys[(i % keys.len() as u64) as usize];
            if let Ok(Decision::Allowed { .. }) = take(&store, &SEED, k, l, T0 + i) {
                allowed_total += 1;
            }
        }
        // Each got its burst of one (the last one from the overflow), and
        // nothing refills in 10 µs at 1/min: no fresh buckets by taking turns.
        assert_eq!(allowed_total, WAYS + 1);
    }

    #[test]
    fn a_new_source_gets_its_full_burst_while_its_slot_is_not_crowded() {
        let store = FakeStore::default();
        let _ = init(&store);
        let l = limit(1, 5);
        let keys = same_slot_keys("s:new", WAYS + 3);
        // Sources that drained their buckets do not make a newcomer poorer.
        for (i, k) in keys.iter().take(WAYS).enumerate() {
            assert_eq!(allowed(&store, k, l, T0 + i as u64, 9), 5, "{k}");
        }
        // Every way is taken and not full: the fifth source gets the
        // overflow's full burst, and a sixth at once shares what is left.
        assert_eq!(allowed(&store, &keys[WAYS], l, T0 + 9, 3), 3);
        assert_eq!(allowed(&store, &keys[WAYS + 1], l, T0 + 9, 9), 2);
        // A source under another limit, once the overflow is full again.
        let back = T0 + 5 * 60 * SEC;
        assert_eq!(allowed(&store, &keys[WAYS + 2], limit(60, 7), back, 9), 7);
    }

    #[test]
    fn a_drained_source_gets_no_other_sources_tokens_when_its_slot_is_crowded() {
        let store = FakeStore::default();
        let _ = init(&store);
        // 1 token a minute: nothing refills within these few seconds.
        let l = limit(1, 5);
        let keys = same_slot_keys("s:drained", WAYS + 1);
        // keys[0] spends its whole burst.
        assert_eq!(allowed(&store, &keys[0], l, T0, 10), 5);
        // Three more sources take the other ways and spend one token each.
        for (i, k) in keys.iter().enumerate().take(WAYS).skip(1) {
            assert_eq!(allowed(&store, k, l, T0 + i as u64 * SEC, 1), 1);
        }
        // A fifth source arrives while no way is free or full again.
        let _ = allowed(&store, &keys[WAYS], l, T0 + 4 * SEC, 1);
        // keys[0] comes back: over [T0, T0 + 5 s] it may have its burst
        // (5) plus 5 s of refill at 1/min (0 whole tokens), nothing more.
        let again = allowed(&store, &keys[0], l, T0 + 5 * SEC, 10);
        assert_eq!(
            again, 0,
            "a drained source was handed {again} tokens on its return"
        );
    }

    /// A deterministic xorshift64* sequence (no dev-dependency needed).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Drives `keys` (all in one slot, each under its own limit) with `n`
    /// requests at random sources and non-decreasing random times; returns
    /// every request as (source, time, allowed).
    fn drive(rng: &mut Rng, keys: &[(String, Limit)], n: usize) -> Vec<(usize, u64, bool)> {
        let store = FakeStore::default();
        let _ = init(&store);
        let mut now = T0;
        let mut log = Vec::with_capacity(n);
        for _ in 0..n {
            // Half the requests come at once; the others after up to 3 s.
            if rng.below(2) == 0 {
                now += rng.below(3 * SEC);
            }
            // The first few sources are busier than the rest.
            let i = if rng.below(2) == 0 {
                rng.below(3)
            } else {
                rng.below(keys.len() as u64)
            } as usize;
            let (key, l) = &keys[i];
            let ok = matches!(
                take(&store, &SEED, key, *l, now),
                Ok(Decision::Allowed { .. })
            );
            log.push((i, now, ok));
        }
        log
    }

    #[test]
    fn no_source_ever_gets_more_than_its_burst_plus_its_refill() {
        let limits = [limit(60, 3), limit(60, 3), limit(20, 2), limit(120, 5)];
        for run in 0..12u64 {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ run.wrapping_mul(0x1234_5678_9abc));
            let n_keys = 5 + (run as usize % 8);
            let keys: Vec<(String, Limit)> = same_slot_keys(&format!("s:run-{run}"), n_keys)
                .into_iter()
                .enumerate()
                .map(|(i, k)| (k, limits[(i + run as usize) % limits.len()]))
                .collect();
            let log = drive(&mut rng, &keys, 3000);
            let total = log.iter().filter(|r| r.2).count();
            assert!(total > 300, "run {run}: only {total} allowed");
            for (i, (key, l)) in keys.iter().enumerate() {
                let times: Vec<u64> = log
                    .iter()
                    .filter(|r| r.0 == i && r.2)
                    .map(|r| r.1)
                    .collect();
                assert!(!times.is_empty(), "run {run}: {key} never allowed");
                // Every interval [times[a], times[b]] between two allowed
                // requests: at most burst + whole tokens refilled in it.
                for a in 0..times.len() {
                    for b in a..times.len() {
                        let refill = u128::from(l.per_minute) * u128::from(times[b] - times[a])
                            / u128::from(ratelimit::UNITS_PER_TOKEN);
                        let bound = u128::from(l.burst) + refill;
                        let got = (b - a + 1) as u128;
                        assert!(
                            got <= bound,
                            "run {run}: {key} ({l:?}) got {got} > {bound} in {} ns",
                            times[b] - times[a]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_slot_with_no_more_sources_than_ways_limits_each_by_its_own_bucket_exactly() {
        let limits = [limit(60, 3), limit(20, 2), limit(120, 5), limit(60, 3)];
        let mut rng = Rng(42);
        let keys: Vec<(String, Limit)> = same_slot_keys("s:uncrowded", WAYS)
            .into_iter()
            .zip(limits)
            .collect();
        let log = drive(&mut rng, &keys, 5000);
        // The same requests against one private bucket per source.
        let mut own: Vec<Option<ratelimit::Bucket>> = vec![None; WAYS];
        for (i, now, ok) in log {
            let (bucket, d) = ratelimit::take(own[i], keys[i].1, now);
            own[i] = Some(bucket);
            assert_eq!(ok, matches!(d, Decision::Allowed { .. }), "{i} at {now}");
        }
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
