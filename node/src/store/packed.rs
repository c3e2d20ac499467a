//! One partition's share of the write buffer, packed so that what it holds is what it
//! counts.
//!
//! Each buffered record is one allocation laid out as
//! `change number (u64 LE) | base (u8) | key length (u32 LE) | key | encoded record`, and
//! the partition's hash table holds only the pointers to them. A buffered 64-byte SET
//! takes about 150 bytes this way; as a map from `Bytes` to a decoded record it took 427,
//! more than twice what the buffer counted for it. [`Shard::bytes`] is the memory the shard
//! holds: its table's slots and every entry's allocation, rounded as the allocator rounds
//! them, so the write budget bounds real memory.
//!
//! A read decodes the record (the value is copied out): buffered records are read only
//! until the applier moves them, and most reads find the engine's.

use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

use super::StoreStats;
use crate::hlc::Hlc;
use crate::record::{DecodeError, Record, RecordView};

const SEQ_END: usize = 8;
const BASE_AT: usize = 8;
const KEY_LEN_AT: usize = 9;
const KEY_AT: usize = 13;

/// `base` not looked up yet: what the engine held for the key is unknown.
const BASE_UNKNOWN: u8 = 0;
const BASE_KNOWN: u8 = 1 << 7;
const BASE_KEY: u8 = 1 << 0;
const BASE_EXPIRING: u8 = 1 << 1;
const BASE_TOMBSTONE: u8 = 1 << 2;

/// Bytes the allocator takes for an allocation of `len` bytes: glibc's malloc adds an
/// 8-byte header and rounds to 16, at least 32 (other allocators round similarly).
fn allocated(len: usize) -> usize {
    (len + 8).next_multiple_of(16).max(32)
}

/// Bytes a table with room for `capacity` entries holds: a pointer and a control byte per
/// bucket (buckets are a power of two with 1/8 kept free), and a group of control bytes.
fn table_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 7 { capacity + 1 } else { capacity / 7 * 8 };
    buckets * (size_of::<Box<[u8]>>() + 1) + 16
}

/// What one record counts for in the store's statistics.
pub fn counts(r: Option<&Record>) -> StoreStats {
    let mut s = StoreStats::default();
    if let Some(r) = r {
        match r.value {
            Some(_) => {
                s.keys = 1;
                s.expiring = u64::from(r.expires_at_ms.is_some());
            }
            None => s.tombstones = 1,
        }
    }
    s
}

fn pack_base(base: Option<StoreStats>) -> u8 {
    base.map_or(BASE_UNKNOWN, |b| {
        let bit = |n: u64, flag: u8| if n > 0 { flag } else { 0 };
        BASE_KNOWN
            | bit(b.keys, BASE_KEY)
            | bit(b.expiring, BASE_EXPIRING)
            | bit(b.tombstones, BASE_TOMBSTONE)
    })
}

fn unpack_base(byte: u8) -> Option<StoreStats> {
    (byte & BASE_KNOWN != 0).then(|| StoreStats {
        keys: u64::from(byte & BASE_KEY != 0),
        expiring: u64::from(byte & BASE_EXPIRING != 0),
        tombstones: u64::from(byte & BASE_TOMBSTONE != 0),
    })
}

/// A buffered record, as the shard holds it.
#[derive(Clone, Copy)]
pub struct Entry<'a>(&'a [u8]);

impl<'a> Entry<'a> {
    /// The record's change number in its partition.
    pub fn seq(self) -> u64 {
        u64::from_le_bytes(self.0[..SEQ_END].try_into().expect("8 bytes"))
    }

    /// What the engine held for the key when the entry was created, as counts; `None`
    /// until looked up.
    pub fn base(self) -> Option<StoreStats> {
        unpack_base(self.0[BASE_AT])
    }

    pub fn key(self) -> &'a [u8] {
        &self.0[KEY_AT..KEY_AT + self.key_len()]
    }

    fn key_len(self) -> usize {
        u32::from_le_bytes(self.0[KEY_LEN_AT..KEY_AT].try_into().expect("4 bytes")) as usize
    }

    /// The record without copying it.
    pub fn view(self) -> RecordView<'a> {
        RecordView::parse(&self.0[KEY_AT + self.key_len()..]).expect("the buffer encoded it")
    }

    pub fn hlc(self) -> Hlc {
        self.view().hlc
    }

    /// The record, its value copied out; `intern` gives the origin datacenter's name.
    pub fn record(self, intern: impl FnOnce(&str) -> Arc<str>) -> Record {
        Record::decode(&self.0[KEY_AT + self.key_len()..], intern)
            .unwrap_or_else(|e: DecodeError| unreachable!("the buffer encoded this record: {e}"))
    }

    pub fn counts(self) -> StoreStats {
        let view = self.view();
        StoreStats {
            keys: u64::from(view.value.is_some()),
            expiring: u64::from(view.value.is_some() && view.expires_at_ms.is_some()),
            tombstones: u64::from(view.value.is_none()),
        }
    }

    /// The bytes the entry holds, with the allocator's rounding.
    fn size(self) -> usize {
        allocated(self.0.len())
    }
}

/// The buffered records of one partition.
#[derive(Default)]
pub struct Shard {
    table: HashTable<Box<[u8]>>,
    /// What the entries' allocations hold; the table's own memory is added in `bytes`.
    entries_bytes: usize,
}

fn key_of(entry: &[u8]) -> &[u8] {
    Entry(entry).key()
}

fn hash_entry(entry: &[u8]) -> u64 {
    xxh3_64(key_of(entry))
}

impl Shard {
    /// The memory the shard holds.
    pub fn bytes(&self) -> usize {
        table_bytes(self.table.capacity()) + self.entries_bytes
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<Entry<'_>> {
        self.table.find(xxh3_64(key), |e| key_of(e) == key).map(|e| Entry(e))
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.table.iter().map(|e| Entry(e))
    }

    /// Buffers `record` for `key` under change number `seq`, replacing the key's entry if
    /// there is one; returns the replaced entry's counts and base. `base` is for a new
    /// entry: a replaced one keeps its own, since what the engine holds has not changed.
    ///
    /// # Panics
    ///
    /// If `key` is 4 GiB or longer (keys are limited to 512 MiB).
    pub fn insert(
        &mut self,
        key: &[u8],
        seq: u64,
        base: Option<StoreStats>,
        record: &Record,
    ) -> Option<(StoreStats, Option<StoreStats>)> {
        let key_len = u32::try_from(key.len()).expect("keys are shorter than 4 GiB");
        let mut packed = Vec::with_capacity(KEY_AT + key.len() + record.encoded_len());
        packed.extend_from_slice(&seq.to_le_bytes());
        packed.push(pack_base(base));
        packed.extend_from_slice(&key_len.to_le_bytes());
        packed.extend_from_slice(key);
        record.encode_into(&mut packed);
        let mut packed = packed.into_boxed_slice();
        self.entries_bytes += allocated(packed.len());
        let hash = xxh3_64(key);
        match self.table.find_mut(hash, |e| key_of(e) == key) {
            Some(slot) => {
                packed[BASE_AT] = slot[BASE_AT];
                let old = std::mem::replace(slot, packed);
                let old = Entry(&old);
                self.entries_bytes -= old.size();
                Some((old.counts(), old.base()))
            }
            None => {
                self.table.insert_unique(hash, packed, |e| hash_entry(e));
                None
            }
        }
    }

    /// Records what the engine held for `key`'s entry, if it is still numbered `seq`
    /// (or whatever its number when `seq` is `None`); returns the base it replaced.
    pub fn set_base(&mut self, key: &[u8], seq: Option<u64>, base: StoreStats) -> Option<Option<StoreStats>> {
        let entry = self.table.find_mut(xxh3_64(key), |e| key_of(e) == key)?;
        if seq.is_some_and(|s| Entry(entry).seq() != s) {
            return None;
        }
        let old = Entry(entry).base();
        entry[BASE_AT] = pack_base(Some(base));
        Some(old)
    }

    /// Removes `key`'s entry if it is numbered `seq`; returns its counts and base.
    pub fn remove_if(&mut self, key: &[u8], seq: u64) -> Option<(StoreStats, Option<StoreStats>)> {
        let found = self.table.find_entry(xxh3_64(key), |e| key_of(e) == key).ok()?;
        if Entry(found.get()).seq() != seq {
            return None;
        }
        let (removed, _) = found.remove();
        let entry = Entry(&removed);
        self.entries_bytes -= entry.size();
        Some((entry.counts(), entry.base()))
    }

    /// Gives back table memory once most entries are gone (after an applier pass): a
    /// table keeps its largest size otherwise.
    pub fn shrink(&mut self) {
        if self.table.capacity() > 4 * self.table.len().max(8) {
            self.table.shrink_to(2 * self.table.len(), |e| hash_entry(e));
        }
    }
}

/// Copies `key` out of a shard.
pub fn key_bytes(entry: Entry<'_>) -> Bytes {
    Bytes::copy_from_slice(entry.key())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::rec;

    #[test]
    fn an_entry_gives_back_what_was_buffered() {
        let mut shard = Shard::default();
        let r = rec(Some(b"value"), 42, Some(1_000));
        assert!(shard.insert(b"key", 9, None, &r).is_none());
        let e = shard.get(b"key").unwrap();
        assert_eq!((e.key(), e.seq(), e.base(), e.hlc()), (&b"key"[..], 9, None, Hlc(42)));
        assert_eq!(e.record(|dc| Arc::from(dc)), r);
        assert_eq!(e.counts(), StoreStats { keys: 1, expiring: 1, tombstones: 0 });
        assert!(shard.get(b"other").is_none());

        let base = StoreStats { keys: 0, expiring: 0, tombstones: 1 };
        assert_eq!(shard.set_base(b"key", Some(8), base), None, "another number: left alone");
        assert_eq!(shard.set_base(b"key", Some(9), base), Some(None));
        assert_eq!(shard.get(b"key").unwrap().base(), Some(base));

        let tombstone = rec(None, 43, None);
        let replaced = shard.insert(b"key", 10, Some(base), &tombstone);
        assert_eq!(replaced, Some((StoreStats { keys: 1, expiring: 1, tombstones: 0 }, Some(base))));
        assert_eq!(shard.get(b"key").unwrap().record(|dc| Arc::from(dc)), tombstone);
        assert_eq!(shard.remove_if(b"key", 9), None, "rewritten since");
        assert_eq!(
            shard.remove_if(b"key", 10),
            Some((StoreStats { tombstones: 1, ..Default::default() }, Some(base)))
        );
        assert_eq!(shard.len(), 0);
    }

    #[test]
    fn the_counted_bytes_follow_the_entries_and_the_table() {
        let mut shard = Shard::default();
        assert_eq!(shard.bytes(), 0);
        for i in 0..1000u32 {
            shard.insert(
                format!("key:{i:012}").as_bytes(),
                u64::from(i),
                None,
                &rec(Some(&[7; 64]), 1, None),
            );
        }
        // 13 + 16 + 19 + 3 + 64 = 115 bytes each, 128 with the allocator's header and
        // rounding; a table of 1,024 buckets of 17 bytes (capacity 896 was outgrown).
        let entry = allocated(13 + 16 + 19 + 3 + 64);
        assert_eq!(entry, 128);
        assert_eq!(shard.bytes(), 1000 * entry + table_bytes(shard.table.capacity()));
        assert!(table_bytes(shard.table.capacity()) >= 1000 * 17);
        for i in 0..990u32 {
            assert!(shard.remove_if(format!("key:{i:012}").as_bytes(), u64::from(i)).is_some());
        }
        let big_table = shard.bytes() - 10 * entry;
        shard.shrink();
        assert!(shard.bytes() - 10 * entry < big_table / 8, "the table shrank");
        assert_eq!(shard.len(), 10);
    }

    #[test]
    fn every_base_packs_into_a_byte() {
        for keys in 0..2 {
            for expiring in 0..2 {
                for tombstones in 0..2 {
                    let b = StoreStats { keys, expiring, tombstones };
                    assert_eq!(unpack_base(pack_base(Some(b))), Some(b));
                }
            }
        }
        assert_eq!(unpack_base(pack_base(None)), None);
    }
}
