//! One slot of the bucket table (the `table` module): [`WAYS`] entries, each a
//! source's hash, its bucket and its limit, encoded in [`SLOT_BYTES`] bytes
//! of shared data; and which way a source takes when it is not there.

use crate::ratelimit::{Bucket, Limit};

/// Entries per slot.
pub const WAYS: usize = 4;
/// Bytes of one encoded entry: tag, units, last_ns (u64 each), per_minute, burst (u32 each).
pub const ENTRY_BYTES: usize = 32;
/// Bytes of one slot's value: a format byte and `WAYS` entries.
pub const SLOT_BYTES: usize = 1 + WAYS * ENTRY_BYTES;

const FORMAT: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The source's hash (never 0: 0 marks an empty way).
    pub tag: u64,
    pub bucket: Bucket,
    /// The limit the bucket was last used with.
    pub limit: Limit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Slot {
    pub ways: [Option<Entry>; WAYS],
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
            let limit = Limit {
                per_minute: read_u32(v, at + 24),
                burst: read_u32(v, at + 28),
            };
            if tag != 0 && limit.per_minute > 0 && limit.burst > 0 {
                *way = Some(Entry {
                    tag,
                    bucket: Bucket {
                        units: read_u64(v, at + 8),
                        last_ns: read_u64(v, at + 16),
                    },
                    limit,
                });
            }
        }
        slot
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SLOT_BYTES);
        v.push(FORMAT);
        for way in &self.ways {
            match way {
                Some(e) => {
                    v.extend_from_slice(&e.tag.to_le_bytes());
                    v.extend_from_slice(&e.bucket.units.to_le_bytes());
                    v.extend_from_slice(&e.bucket.last_ns.to_le_bytes());
                    v.extend_from_slice(&e.limit.per_minute.to_le_bytes());
                    v.extend_from_slice(&e.limit.burst.to_le_bytes());
                }
                None => v.extend_from_slice(&[0u8; ENTRY_BYTES]),
            }
        }
        v
    }

    /// The way holding `tag`, else the way to (re)use for it; with the bucket
    /// to start from (`None`: a full one).
    pub fn way_for(&self, tag: u64, now_ns: u64) -> (usize, Option<Bucket>) {
        if let Some(i) = self
            .ways
            .iter()
            .position(|w| w.is_some_and(|e| e.tag == tag))
        {
            return (i, self.ways.get(i).copied().flatten().map(|e| e.bucket));
        }
        if let Some(i) = self.ways.iter().position(Option::is_none) {
            return (i, None);
        }
        if let Some(i) = self
            .ways
            .iter()
            .position(|w| w.is_some_and(|e| e.bucket.is_full_at(e.limit, now_ns)))
        {
            return (i, None);
        }
        let lru = self
            .ways
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.map(|e| (i, e)))
            .min_by_key(|(_, e)| e.bucket.last_ns);
        match lru {
            Some((i, e)) => (i, Some(e.bucket.refilled(e.limit, now_ns))),
            None => (0, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn limit(per_minute: u32, burst: u32) -> Limit {
        Limit { per_minute, burst }
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
        let bytes = slot.encode();
        assert_eq!(bytes.len(), SLOT_BYTES);
        assert_eq!(SLOT_BYTES, 129);
        assert_eq!(Slot::decode(Some(&bytes)), slot);
        // Garbage or an old format reads as empty, never panics.
        for junk in [&b""[..], b"x", &[2u8; SLOT_BYTES], &bytes[..100]] {
            assert_eq!(Slot::decode(Some(junk)), Slot::default());
        }
        assert_eq!(Slot::decode(None), Slot::default());
    }
}
