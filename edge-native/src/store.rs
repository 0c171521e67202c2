//! The bucket table's store in plain Rust: one per Envoy process, shared by
//! every worker (Envoy runs all of them in this one address space).
//!
//! It keeps exactly the keys the table uses, [`table::SLOTS`] slot keys and
//! the seed key, each behind its own mutex with a CAS token, so it is as
//! bounded as the proxy-wasm shared data (about 0.6 MiB of values) and
//! [`table::take`] keeps its get / compare-and-swap semantics. Other keys
//! are refused. A lock is held only to copy a value in or out, never while
//! the table computes.

use std::sync::{Mutex, OnceLock};

use signalgate_filter::table::{self, SharedStore, StoreError};

/// A value and its CAS token.
type Entry = Option<(Vec<u8>, u32)>;

pub struct ProcessStore {
    slots: Vec<Mutex<Entry>>,
    seed: Mutex<Entry>,
}

impl Default for ProcessStore {
    fn default() -> Self {
        ProcessStore {
            slots: (0..table::SLOTS).map(|_| Mutex::new(None)).collect(),
            seed: Mutex::new(None),
        }
    }
}

/// The process's store.
pub fn process() -> &'static ProcessStore {
    static STORE: OnceLock<ProcessStore> = OnceLock::new();
    STORE.get_or_init(ProcessStore::default)
}

impl ProcessStore {
    fn entry(&self, key: &str) -> Result<&Mutex<Entry>, StoreError> {
        if key == table::SEED_KEY {
            return Ok(&self.seed);
        }
        key.strip_prefix(table::KEY_PREFIX)
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| self.slots.get(n))
            .ok_or_else(|| StoreError::Host(format!("no such key in the table: {key}")))
    }
}

/// A poisoned lock only means another request panicked while copying a
/// value: the value itself is whole, so keep using it.
fn lock(m: &Mutex<Entry>) -> std::sync::MutexGuard<'_, Entry> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedStore for ProcessStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        Ok(match &*lock(self.entry(key)?) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        let mut entry = lock(self.entry(key)?);
        let current = entry.as_ref().map(|(_, c)| *c);
        if cas.is_some() && cas != current {
            return Err(StoreError::CasMismatch);
        }
        let next = current.map_or(1, |c| c.wrapping_add(1).max(1));
        *entry = Some((value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalgate_filter::ratelimit::{Decision, Limit};
    use signalgate_filter::table::Seed;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_stale_cas_token_is_refused_and_a_fresh_one_accepted() {
        let store = ProcessStore::default();
        let key = table::slot_key(3);
        assert_eq!(store.get(&key), Ok((None, None)));
        store.set(&key, b"a", None).unwrap();
        let (value, cas) = store.get(&key).unwrap();
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        store.set(&key, b"b", cas).unwrap();
        assert_eq!(store.set(&key, b"c", cas), Err(StoreError::CasMismatch));
        assert_eq!(store.get(&key).unwrap().0.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn only_the_tables_keys_exist() {
        let store = ProcessStore::default();
        let outside = table::slot_key(table::SLOTS);
        assert!(matches!(store.get(&outside), Err(StoreError::Host(_))));
        assert!(matches!(
            store.set("other", b"x", None),
            Err(StoreError::Host(_))
        ));
        assert!(store.set(table::SEED_KEY, &[1; 16], None).is_ok());
    }

    #[test]
    fn the_seed_stored_first_is_the_one_everybody_gets() {
        let store = ProcessStore::default();
        let first = table::seed(&store, Seed([1; 16])).unwrap();
        let second = table::seed(&store, Seed([2; 16])).unwrap();
        assert_eq!(first, Seed([1; 16]));
        assert_eq!(second, first);
    }

    #[test]
    fn one_limit_across_threads() {
        // 8 threads take from one source's bucket (burst 10) at the same
        // instant: exactly 10 are allowed, as on one thread.
        let store = ProcessStore::default();
        table::init(&store).unwrap();
        let seed = Seed([9; 16]);
        let limit = Limit {
            per_minute: 10,
            burst: 10,
        };
        let now = 1_700_000_000 * SEC;
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        (0..5)
                            .filter(|_| {
                                matches!(
                                    table::take(&store, &seed, "10.0.0.1", limit, now),
                                    Ok(Decision::Allowed { .. })
                                )
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 10);
    }
}
