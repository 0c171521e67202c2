//! One slot of the bucket table (the `table` module): [`WAYS`] entries, each a
//! source's hash, its bucket and its limit, and the slot's overflow bucket,
//! encoded in [`SLOT_BYTES`] bytes of shared data; and [`Slot::take`], which
//! decides whose bucket a request is charged to.
//!
//! The rule, and why it never hands one source another's tokens:
//!
//! - a source in a way is charged to its own bucket;
//! - a source not in the slot takes an empty way, else a way whose bucket is
//!   full again (forgetting a full bucket loses nothing: the source it held
//!   would start full anyway). A way whose bucket is not full is never taken;
//! - a source that finds no such way is charged to the slot's *overflow*
//!   bucket, shared by every source of the slot that has no way;
//! - a source that takes a way starts from the overflow bucket's level (it
//!   may have spent overflow tokens a moment ago), except when the overflow
//!   is full, or was last used under another limit and is not full (then no
//!   source under this limit owes it anything, and it starts full);
//! - the overflow serves one limit at a time: a source under another limit
//!   is refused until it is full again, and then takes it over.
//!
//! So at every moment, measured against the bucket each source would have
//! had alone all along (its *own* bucket): a source in a way holds at most
//! its own bucket's level; a source not in a way either has a full own
//! bucket (never seen, or forgotten full) or has spent, since it last had,
//! only overflow tokens under the overflow's limit, so its own bucket holds
//! at least the overflow's level. A way is taken at most at that level, and
//! no token is taken from an empty bucket: no source is allowed more than
//! its own bucket would allow, the bound stated in the `table` module.

use crate::ratelimit::{self, secs_to_refill, Bucket, Decision, Limit};

/// Entries per slot.
pub const WAYS: usize = 4;
/// Bytes of one encoded entry: tag, units, last_ns (u64 each), per_minute, burst (u32 each).
pub const ENTRY_BYTES: usize = 32;
/// Bytes of the encoded overflow bucket: units, last_ns (u64 each), per_minute, burst (u32 each).
pub const OVERFLOW_BYTES: usize = 24;
/// Bytes of one slot's value: a format byte, `WAYS` entries and the overflow bucket.
pub const SLOT_BYTES: usize = 1 + WAYS * ENTRY_BYTES + OVERFLOW_BYTES;

const FORMAT: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The source's hash (never 0: 0 marks an empty way).
    pub tag: u64,
    pub bucket: Bucket,
    /// The limit the bucket was last used with.
    pub limit: Limit,
}

/// The bucket shared by the sources of a slot that have no way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub bucket: Bucket,
    /// The limit it serves (the one it was last used with).
    pub limit: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub ways: [Option<Entry>; WAYS],
    /// `None`: never used, i.e. full under any limit.
    pub overflow: Option<Overflow>,
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// A bucket and its limit encoded at `at` (units, last_ns, per_minute,
/// burst); `None` when the limit is 0 (nothing stored).
fn read_bucket(v: &[u8], at: usize) -> Option<(Bucket, Limit)> {
    let limit = Limit {
        per_minute: read_u32(v, at + 16),
        burst: read_u32(v, at + 20),
    };
    (limit.per_minute > 0 && limit.burst > 0).then(|| {
        let bucket = Bucket {
            units: read_u64(v, at),
            last_ns: read_u64(v, at + 8),
        };
        (bucket, limit)
    })
}

fn write_bucket(v: &mut Vec<u8>, bucket: Bucket, limit: Limit) {
    v.extend_from_slice(&bucket.units.to_le_bytes());
    v.extend_from_slice(&bucket.last_ns.to_le_bytes());
    v.extend_from_slice(&limit.per_minute.to_le_bytes());
    v.extend_from_slice(&limit.burst.to_le_bytes());
}

impl Slot {
    /// Decodes a slot value; anything not in the current format is an empty slot.
    pub fn decode(value: Option<&[u8]>) -> Slot {
        let mut slot = Slot::default();
        let Some(v) = value else { return slot };
        if v.len() != SLOT_BYTES || v.first() != Some(&FORMAT) {
            return slot;
        }
        for (i, way) in slot.ways.iter_mut().enumerate() {
            let at = 1 + i * ENTRY_BYTES;
            let tag = read_u64(v, at);
            if tag != 0 {
                *way = read_bucket(v, at + 8).map(|(bucket, limit)| Entry { tag, bucket, limit });
            }
        }
        slot.overflow = read_bucket(v, 1 + WAYS * ENTRY_BYTES)
            .map(|(bucket, limit)| Overflow { bucket, limit });
        slot
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SLOT_BYTES);
        v.push(FORMAT);
        for way in &self.ways {
            match way {
                Some(e) => {
                    v.extend_from_slice(&e.tag.to_le_bytes());
                    write_bucket(&mut v, e.bucket, e.limit);
                }
                None => v.extend_from_slice(&[0u8; ENTRY_BYTES]),
            }
        }
        match self.overflow {
            Some(o) => write_bucket(&mut v, o.bucket, o.limit),
            None => v.extend_from_slice(&[0u8; OVERFLOW_BYTES]),
        }
        v
    }

    /// Takes one token for the source `tag` under `limit` at `now_ns`, from
    /// its own bucket or the overflow (see the module doc), and records it.
    pub fn take(&mut self, tag: u64, limit: Limit, now_ns: u64) -> Decision {
        if let Some(e) = self.ways.iter_mut().flatten().find(|e| e.tag == tag) {
            let (bucket, decision) = ratelimit::take(Some(e.bucket), limit, now_ns);
            *e = Entry { tag, bucket, limit };
            return decision;
        }
        let overflow = self.overflow_for(limit, now_ns);
        if let Some(way) = self.free_way(now_ns) {
            let start = overflow.unwrap_or_else(|| Bucket::full(limit, now_ns));
            let (bucket, decision) = ratelimit::take(Some(start), limit, now_ns);
            *way = Some(Entry { tag, bucket, limit });
            return decision;
        }
        match overflow {
            Some(start) => {
                let (bucket, decision) = ratelimit::take(Some(start), limit, now_ns);
                self.overflow = Some(Overflow { bucket, limit });
                decision
            }
            // Busy under another limit: refused until it is full again.
            None => {
                let missing = self.overflow.map_or(0, |o| {
                    let level = o.bucket.refilled(o.limit, now_ns).units;
                    secs_to_refill(o.limit.capacity().saturating_sub(level), o.limit.per_minute)
                });
                Decision::Limited {
                    retry_after_secs: missing.max(1),
                }
            }
        }
    }

    /// The overflow bucket as a source under `limit` may use it at `now_ns`:
    /// a full one when it is full (or unused), its level when it serves
    /// `limit`, `None` when it serves another limit and is not full.
    fn overflow_for(&self, limit: Limit, now_ns: u64) -> Option<Bucket> {
        match self.overflow {
            None => Some(Bucket::full(limit, now_ns)),
            Some(o) if o.bucket.is_full_at(o.limit, now_ns) => Some(Bucket::full(limit, now_ns)),
            Some(o) if o.limit == limit => Some(o.bucket.refilled(limit, now_ns)),
            Some(_) => None,
        }
    }

    /// An empty way, else one whose bucket is full again at `now_ns`.
    fn free_way(&mut self, now_ns: u64) -> Option<&mut Option<Entry>> {
        let i = self.ways.iter().position(Option::is_none).or_else(|| {
            self.ways
                .iter()
                .position(|w| w.is_some_and(|e| e.bucket.is_full_at(e.limit, now_ns)))
        })?;
        self.ways.get_mut(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * SEC;

    fn limit(per_minute: u32, burst: u32) -> Limit {
        Limit { per_minute, burst }
    }

    fn allowed(slot: &mut Slot, tag: u64, l: Limit, now: u64, n: u32) -> u32 {
        (0..n)
            .filter(|_| matches!(slot.take(tag, l, now), Decision::Allowed { .. }))
            .count() as u32
    }

    #[test]
    fn slot_encoding_round_trips_and_has_the_documented_size() {
        let mut slot = Slot::default();
        slot.ways[2] = Some(Entry {
            tag: 42,
            bucket: Bucket {
                units: 7,
                last_ns: T0,
            },
            limit: limit(20, 30),
        });
        assert_eq!(Slot::decode(Some(&slot.encode())), slot);
        slot.overflow = Some(Overflow {
            bucket: Bucket {
                units: 3,
                last_ns: T0 + 1,
            },
            limit: limit(5, 6),
        });
        let bytes = slot.encode();
        assert_eq!(bytes.len(), SLOT_BYTES);
        assert_eq!(SLOT_BYTES, 153);
        assert_eq!(Slot::decode(Some(&bytes)), slot);
        // Garbage or an old format (1: 129 bytes, no overflow) reads as
        // empty, never panics.
        let mut old = vec![1u8];
        old.extend_from_slice(&bytes[1..1 + WAYS * ENTRY_BYTES]);
        for junk in [&b""[..], b"x", &[3u8; SLOT_BYTES], &bytes[..100], &old] {
            assert_eq!(Slot::decode(Some(junk)), Slot::default());
        }
        assert_eq!(Slot::decode(None), Slot::default());
    }

    /// A slot whose ways hold sources 1..=WAYS, each with `tokens` left of a
    /// burst of 5 at 1/min, used at `T0`.
    fn crowded(tokens: u32) -> Slot {
        let mut slot = Slot::default();
        for tag in 1..=WAYS as u64 {
            assert_eq!(
                allowed(&mut slot, tag, limit(1, 5), T0, 5 - tokens),
                5 - tokens
            );
        }
        slot
    }

    #[test]
    fn a_crowded_source_that_gets_a_way_starts_from_the_overflow_level() {
        let mut slot = crowded(0);
        // Source 1 is now under 60/min, burst 1: its way is full 1 s later.
        assert_eq!(allowed(&mut slot, 1, limit(60, 1), T0, 1), 0);
        // Source 9 has no way: it spends the overflow's burst.
        let l = limit(1, 5);
        assert_eq!(allowed(&mut slot, 9, l, T0, 9), 5);
        // 1 s later it takes source 1's way, but with the overflow's level
        // (1/60 token), not a fresh burst of 5...
        assert_eq!(allowed(&mut slot, 9, l, T0 + SEC, 9), 0);
        assert!(slot.ways.iter().flatten().any(|e| e.tag == 9));
        // ...and refills from there: 2 tokens 2 min after it spent them.
        assert_eq!(allowed(&mut slot, 9, l, T0 + 120 * SEC, 9), 2);
    }

    #[test]
    fn the_overflow_serves_one_limit_at_a_time() {
        let mut slot = crowded(0);
        // Source 8 under 60/min, burst 2 spends the overflow.
        assert_eq!(allowed(&mut slot, 8, limit(60, 2), T0, 3), 2);
        // Source 9 under another limit is refused until it is full (2 s)...
        assert_eq!(
            slot.take(9, limit(1, 5), T0 + SEC / 2),
            Decision::Limited {
                retry_after_secs: 2
            }
        );
        // ...and then has it to itself, at its own burst.
        assert_eq!(allowed(&mut slot, 9, limit(1, 5), T0 + 2 * SEC, 9), 5);
        // Now source 8 is refused in turn, though its own limit refilled.
        assert_eq!(allowed(&mut slot, 8, limit(60, 2), T0 + 3 * SEC, 1), 0);
    }

    #[test]
    fn a_way_whose_bucket_is_not_full_is_never_taken() {
        // Four sources with a token left each: however many newcomers come,
        // none of them takes (and forgets) one of those buckets.
        let mut slot = crowded(1);
        let before = slot.ways;
        for tag in 10..50 {
            let _ = slot.take(tag, limit(1, 5), T0 + tag);
        }
        assert_eq!(slot.ways, before);
    }
}
