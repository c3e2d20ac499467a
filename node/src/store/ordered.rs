//! The record layout every engine shares, over any ordered key-value engine ([`Kv`]).
//!
//! One ordered keyspace holds six kinds of entries, told apart by a one-byte prefix, so
//! that a record and all its index entries change in one atomic batch:
//!
//! - `d | partition | key` -> change number (8 bytes) + encoded record
//! - `i | partition | hlc | key` -> empty: the per-partition HLC index ("changes since t"),
//!   which rebalance and repair read
//! - `s | partition | change number` -> key: the per-partition local change sequence
//!   (each record applied to a partition gets the next number, or the number the write
//!   buffer gave it), which the WAN connector's cursor reads; a key's older numbers are
//!   removed as it changes, so the sequence holds one entry per key and reading it after
//!   a position yields every key changed since
//! - `n | partition` -> the highest change number stored, so numbers never repeat even
//!   when the entry holding the highest one is purged
//! - `p | purge_at_ms | partition | key` -> empty: when an expired value or an old
//!   tombstone may be removed, so purging reads only what is due
//! - `m | name` -> layout version and partition count
//!
//! Read-decide-write is serialised per key by lock stripes; numbering is serialised per
//! partition by a lock held from taking the number until its batch is committed, so a
//! reader that sees number n also sees every number below it that will ever exist. (Under
//! the write buffer, the buffer hands out the numbers and keeps that promise itself.)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::engines::{Kv, Op, prefix_end};
use super::{Changes, Sequenced, Store, StoreError, StoreOptions, StoreStats, Write, chunk_bytes};
use crate::hlc::Hlc;
use crate::placement::{Partition, partition_of};
use crate::record::{Record, RecordView};

const DATA: u8 = b'd';
const INDEX: u8 = b'i';
const SEQ: u8 = b's';
const LAST_SEQ: u8 = b'n';
const PURGE: u8 = b'p';
const META: u8 = b'm';
const LOCK_STRIPES: usize = 1024;
/// Version of the layout described in the module header.
const LAYOUT_V2: u8 = 2;

pub struct OrderedStore<K: Kv> {
    kv: K,
    name: &'static str,
    partitions: u16,
    grace_ms: u64,
    datacenter: Arc<str>,
    locks: Box<[Mutex<()>]>,
    /// Per partition: the last change number handed out.
    seqs: Box<[Mutex<u64>]>,
    keys: AtomicU64,
    expiring: AtomicU64,
    tombstones: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and `()` only: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn with_partition(tag: u8, partition: Partition, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + extra);
    k.push(tag);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

fn data_key(partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut k = with_partition(DATA, partition, key.len());
    k.extend_from_slice(key);
    k
}

fn index_key(partition: Partition, hlc: Hlc, key: &[u8]) -> Vec<u8> {
    let mut k = with_partition(INDEX, partition, 8 + key.len());
    k.extend_from_slice(&hlc.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn seq_key(partition: Partition, seq: u64) -> Vec<u8> {
    let mut k = with_partition(SEQ, partition, 8);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn purge_key(at_ms: u64, partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + key.len());
    k.push(PURGE);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    let n = bytes.len().min(8);
    raw[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(raw)
}

/// A stored record and the change number it was applied with.
struct Stored {
    seq: u64,
    record: Record,
}

impl<K: Kv> OrderedStore<K> {
    pub fn with_kv(kv: K, opts: &StoreOptions, name: &'static str) -> Result<Self, StoreError> {
        let partitions = check_meta(&kv, opts)?;
        let mut seqs = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let last = kv.get(&with_partition(LAST_SEQ, p, 0))?.map_or(0, |v| be_u64(v.as_ref()));
            seqs.push(Mutex::new(last));
        }
        let store = OrderedStore {
            kv,
            name,
            partitions,
            grace_ms: opts.tombstone_grace.as_millis() as u64,
            datacenter: Arc::from(opts.datacenter.as_str()),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            seqs: seqs.into_boxed_slice(),
            keys: AtomicU64::new(0),
            expiring: AtomicU64::new(0),
            tombstones: AtomicU64::new(0),
        };
        store.count_records()?;
        Ok(store)
    }

    fn count_records(&self) -> Result<(), StoreError> {
        let mut stats = StoreStats::default();
        let mut failed = None;
        self.kv.scan(&[DATA], &[DATA + 1], false, &mut |k, v| match self.decode(&k[3..], v) {
            Ok(s) => {
                count(&mut stats, &s.record, 1);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        self.keys.store(stats.keys, Ordering::Relaxed);
        self.expiring.store(stats.expiring, Ordering::Relaxed);
        self.tombstones.store(stats.tombstones, Ordering::Relaxed);
        Ok(())
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Stored, StoreError> {
        let corrupt = |error| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error };
        if bytes.len() < 8 {
            return Err(corrupt(crate::record::DecodeError::Truncated));
        }
        let record = Record::decode(&bytes[8..], |dc| {
            if dc == &*self.datacenter { self.datacenter.clone() } else { Arc::from(dc) }
        })
        .map_err(corrupt)?;
        Ok(Stored { seq: be_u64(&bytes[..8]), record })
    }

    fn read(&self, partition: Partition, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        match self.kv.get(&data_key(partition, key))? {
            Some(bytes) => self.decode(key, bytes.as_ref()).map(Some),
            None => Ok(None),
        }
    }

    fn stripe(key: &[u8]) -> usize {
        (xxh3_64(key) as usize) % LOCK_STRIPES
    }

    /// Locks the stripes of `keys` in ascending order, so that no two callers deadlock.
    fn lock_stripes<'a>(&'a self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<MutexGuard<'a, ()>> {
        let mut stripes: Vec<usize> = keys.map(Self::stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.iter().map(|&s| lock(&self.locks[s])).collect()
    }

    /// Locks the numbering of `parts` in ascending order (always after the key stripes).
    fn lock_seqs(&self, parts: impl Iterator<Item = Partition>) -> Vec<(Partition, MutexGuard<'_, u64>)> {
        let mut parts: Vec<Partition> = parts.collect();
        parts.sort_unstable();
        parts.dedup();
        parts.into_iter().map(|p| (p, lock(&self.seqs[p as usize]))).collect()
    }

    /// When a record may be physically removed: at expiry for values, after the grace
    /// period for tombstones.
    fn purge_at(&self, r: &Record) -> Option<u64> {
        match &r.value {
            Some(_) => r.expires_at_ms,
            None => Some(r.hlc.physical_ms().saturating_add(self.grace_ms)),
        }
    }

    /// The operations that remove `old`'s entries, as it is replaced by a record with
    /// `new_hlc` and `new_purge` (or removed, with `None`s).
    fn unindex(
        &self,
        ops: &mut Vec<Op>,
        p: Partition,
        key: &[u8],
        old: &Stored,
        new_hlc: Option<Hlc>,
        new_purge: Option<u64>,
    ) {
        if Some(old.record.hlc) != new_hlc {
            ops.push(Op::Delete(index_key(p, old.record.hlc, key)));
        }
        if let Some(at) = self.purge_at(&old.record)
            && Some(at) != new_purge
        {
            ops.push(Op::Delete(purge_key(at, p, key)));
        }
        ops.push(Op::Delete(seq_key(p, old.seq)));
    }

    /// Writes `writes` (key, record, what it replaces) in one batch, each record with the
    /// number given in `numbers`, or else the next number of its partition. The caller
    /// holds the keys' stripes.
    fn write_batch(
        &self,
        writes: &[(&[u8], Partition, &Record, Option<&Stored>)],
        numbers: Option<&[u64]>,
    ) -> Result<(), StoreError> {
        let mut numbering = self.lock_seqs(writes.iter().map(|w| w.1));
        let mut next: HashMap<Partition, u64> = numbering.iter().map(|(p, g)| (*p, **g)).collect();
        let mut ops = Vec::with_capacity(writes.len() * 6);
        let (mut added, mut removed) = (StoreStats::default(), StoreStats::default());
        for (n, &(key, p, new, old)) in writes.iter().enumerate() {
            let last = next.get_mut(&p).expect("locked above");
            let seq = match numbers {
                Some(given) => {
                    *last = (*last).max(given[n]);
                    given[n]
                }
                None => {
                    *last += 1;
                    *last
                }
            };
            let new_purge = self.purge_at(new);
            if let Some(old) = old {
                self.unindex(&mut ops, p, key, old, Some(new.hlc), new_purge);
                count(&mut removed, &old.record, 1);
            }
            let mut value = Vec::with_capacity(8 + new.encoded_len());
            value.extend_from_slice(&seq.to_be_bytes());
            new.encode_into(&mut value);
            ops.push(Op::Put(data_key(p, key), value));
            ops.push(Op::Put(index_key(p, new.hlc, key), Vec::new()));
            ops.push(Op::Put(seq_key(p, seq), key.to_vec()));
            if let Some(at) = new_purge {
                ops.push(Op::Put(purge_key(at, p, key), Vec::new()));
            }
            count(&mut added, new, 1);
        }
        for (p, last) in &next {
            ops.push(Op::Put(with_partition(LAST_SEQ, *p, 0), last.to_be_bytes().to_vec()));
        }
        self.kv.write(&ops)?;
        for (p, guard) in numbering.iter_mut() {
            **guard = next[p];
        }
        self.apply_stats(&added, 1);
        self.apply_stats(&removed, -1);
        Ok(())
    }

    /// Removes `key`'s record and entries; the caller holds its stripe. The partition's
    /// numbering is locked so the removal cannot interleave with a numbered batch.
    fn remove(&self, p: Partition, key: &[u8], old: &Stored) -> Result<(), StoreError> {
        let _numbering = lock(&self.seqs[p as usize]);
        let mut ops = Vec::with_capacity(4);
        self.unindex(&mut ops, p, key, old, None, None);
        ops.push(Op::Delete(data_key(p, key)));
        self.kv.write(&ops)?;
        let mut gone = StoreStats::default();
        count(&mut gone, &old.record, 1);
        self.apply_stats(&gone, -1);
        Ok(())
    }

    fn apply_stats(&self, delta: &StoreStats, sign: i8) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                if sign > 0 {
                    counter.fetch_add(n, Ordering::Relaxed);
                } else {
                    counter.fetch_sub(n, Ordering::Relaxed);
                }
            }
        };
        add(&self.keys, delta.keys);
        add(&self.expiring, delta.expiring);
        add(&self.tombstones, delta.tombstones);
    }
}

impl OrderedStore<super::engines::sled::SledKv> {
    /// A sled store with the common options.
    pub fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        Self::with_kv(super::engines::sled::SledKv::open(opts)?, opts, "sled")
    }
}

fn count(stats: &mut StoreStats, r: &Record, n: u64) {
    match r.value {
        Some(_) => {
            stats.keys += n;
            if r.expires_at_ms.is_some() {
                stats.expiring += n;
            }
        }
        None => stats.tombstones += n,
    }
}

/// Records the layout version and partition count at creation, and refuses to open data
/// created with another layout or partition count.
fn check_meta<K: Kv>(kv: &K, opts: &StoreOptions) -> Result<u16, StoreError> {
    let path = &opts.path;
    let open_err = |reason: String| StoreError::Open { path: path.clone(), reason };
    let meta = |name: &str| [&[META][..], name.as_bytes()].concat();
    match kv.get(&meta("partitions"))? {
        Some(raw) => {
            let layout = kv.get(&meta("layout"))?;
            if layout.as_ref().map(|l| l.as_ref()) != Some(&[LAYOUT_V2][..]) {
                return Err(open_err(format!(
                    "it holds store layout {:?}, this version reads layout {LAYOUT_V2}",
                    layout.map(|l| l.as_ref().to_vec())
                )));
            }
            let raw = raw.as_ref();
            let found = u16::from_be_bytes(
                raw.try_into().map_err(|_| open_err("meta/partitions is malformed".into()))?,
            );
            if found != opts.partitions {
                return Err(StoreError::PartitionMismatch {
                    path: path.clone(),
                    found,
                    configured: opts.partitions,
                });
            }
            Ok(found)
        }
        None => {
            kv.write(&[
                Op::Put(meta("layout"), vec![LAYOUT_V2]),
                Op::Put(meta("partitions"), opts.partitions.to_be_bytes().to_vec()),
            ])?;
            kv.flush()?;
            Ok(opts.partitions)
        }
    }
}

impl<K: Kv> Store for OrderedStore<K> {
    fn engine(&self) -> &'static str {
        self.name
    }

    fn partitions(&self) -> u16 {
        self.partitions
    }

    fn get(&self, key: &[u8]) -> Result<Option<Record>, StoreError> {
        Ok(self.read(partition_of(key, self.partitions), key)?.map(|s| s.record))
    }

    fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        let Some(bytes) = self.kv.get(&data_key(partition_of(key, self.partitions), key))? else {
            return Ok(None);
        };
        let corrupt = |error| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error };
        let bytes = bytes.as_ref();
        let record = bytes.get(8..).ok_or(corrupt(crate::record::DecodeError::Truncated))?;
        let view = RecordView::parse(record).map_err(corrupt)?;
        Ok(view.live_value(now_ms).map(Bytes::copy_from_slice))
    }

    fn update(
        &self,
        keys: &[&[u8]],
        decide: &mut dyn FnMut(&[Option<Record>]) -> Vec<Write>,
    ) -> Result<usize, StoreError> {
        let _guards = self.lock_stripes(keys.iter().copied());
        let parts: Vec<Partition> = keys.iter().map(|k| partition_of(k, self.partitions)).collect();
        let stored = keys.iter().zip(&parts).map(|(k, &p)| self.read(p, k)).collect::<Result<Vec<_>, _>>()?;
        let current: Vec<Option<Record>> =
            stored.iter().map(|s| s.as_ref().map(|s| s.record.clone())).collect();
        let writes = decide(&current);
        debug_assert_eq!(writes.len(), keys.len());
        // A key repeated in one update: only its last write is kept, replacing what is
        // stored (the earlier writes never reach the engine).
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            if matches!(w, Write::Put(_)) {
                last.insert(keys[i], i);
            }
        }
        let mut batch = Vec::with_capacity(last.len());
        for (i, w) in writes.iter().enumerate() {
            if let Write::Put(new) = w
                && last.get(keys[i]) == Some(&i)
            {
                batch.push((keys[i], parts[i], new, stored[i].as_ref()));
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        self.write_batch(&batch, None)?;
        Ok(writes.iter().filter(|w| matches!(w, Write::Put(_))).count())
    }

    fn put(&self, key: &[u8], make: &mut dyn FnMut() -> Record) -> Result<(), StoreError> {
        let _guard = lock(&self.locks[Self::stripe(key)]);
        let p = partition_of(key, self.partitions);
        let old = self.read(p, key)?;
        self.write_batch(&[(key, p, &make(), old.as_ref())], None)
    }

    fn apply_numbered(&self, records: &[(u64, Bytes, Record)]) -> Result<(), StoreError> {
        let _guards = self.lock_stripes(records.iter().map(|(_, k, _)| &k[..]));
        // A key listed twice keeps its last (highest numbered) record.
        let mut latest: HashMap<&[u8], (u64, &Record)> = HashMap::with_capacity(records.len());
        for (n, k, r) in records {
            latest.insert(k, (*n, r));
        }
        let mut olds = Vec::with_capacity(latest.len());
        for (k, (n, r)) in &latest {
            let p = partition_of(k, self.partitions);
            olds.push((*k, p, *r, self.read(p, k)?, *n));
        }
        let batch: Vec<_> = olds.iter().map(|(k, p, r, old, _)| (*k, *p, *r, old.as_ref())).collect();
        let numbers: Vec<u64> = olds.iter().map(|o| o.4).collect();
        self.write_batch(&batch, Some(&numbers))
    }

    fn max_hlc(&self) -> Result<Hlc, StoreError> {
        let mut max = Hlc::ZERO;
        for p in 0..self.partitions {
            let from = with_partition(INDEX, p, 0);
            let to = prefix_end(&from).expect("a bounded prefix");
            self.kv.scan(&from, &to, true, &mut |k, _| {
                max = max.max(Hlc(be_u64(&k[3..11])));
                false
            })?;
        }
        Ok(max)
    }

    fn scan_partition(
        &self,
        partition: Partition,
        visit: &mut dyn FnMut(&[u8], &Record),
    ) -> Result<(), StoreError> {
        let from = with_partition(DATA, partition, 0);
        let to = prefix_end(&from).expect("a bounded prefix");
        let mut failed = None;
        self.kv.scan(&from, &to, false, &mut |k, v| match self.decode(&k[3..], v) {
            Ok(s) => {
                visit(&k[3..], &s.record);
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    fn changes_since(
        &self,
        partition: Partition,
        since: Hlc,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Changes, StoreError> {
        let from = index_key(partition, Hlc(since.0.saturating_add(1)), &[]);
        let to = prefix_end(&with_partition(INDEX, partition, 0)).expect("a bounded prefix");
        let mut out = Changes::default();
        let mut bytes = 0;
        let mut failed = None;
        self.kv.scan(&from, &to, false, &mut |k, _| {
            let hlc = Hlc(be_u64(&k[3..11]));
            let key = &k[11..];
            let r = match self.read(partition, key) {
                // Only the entry of the record's current HLC counts.
                Ok(Some(s)) if s.record.hlc == hlc => s.record,
                Ok(_) => return true,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            let size = chunk_bytes(key, &r);
            if let Some((_, last)) = out.records.last()
                && (out.records.len() >= limit || bytes + size > max_bytes)
            {
                out.next = Some(last.hlc);
                return false;
            }
            bytes += size;
            out.records.push((Bytes::copy_from_slice(key), r));
            true
        })?;
        failed.map_or(Ok(out), Err)
    }

    fn changes_after(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Sequenced, StoreError> {
        let from = seq_key(partition, after.saturating_add(1));
        let to = prefix_end(&with_partition(SEQ, partition, 0)).expect("a bounded prefix");
        let mut out = Sequenced { records: Vec::new(), more: false, upto: after };
        let mut bytes = 0;
        let mut failed = None;
        self.kv.scan(&from, &to, false, &mut |k, key| {
            let seq = be_u64(&k[3..11]);
            let r = match self.read(partition, key) {
                // The key was changed again since this entry was read: its newer number
                // comes later in this scan or the next.
                Ok(Some(s)) if s.seq == seq => s.record,
                Ok(_) => return true,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            let size = chunk_bytes(key, &r);
            if !out.records.is_empty() && (out.records.len() >= limit || bytes + size > max_bytes) {
                out.more = true;
                return false;
            }
            bytes += size;
            out.upto = seq;
            out.records.push((seq, Bytes::copy_from_slice(key), r));
            true
        })?;
        failed.map_or(Ok(out), Err)
    }

    fn last_seq(&self, partition: Partition) -> u64 {
        *lock(&self.seqs[partition as usize])
    }

    fn purge_due(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let end = purge_key(now_ms.saturating_add(1), 0, &[]);
        let mut due: Vec<Vec<u8>> = Vec::new();
        self.kv.scan(&[PURGE], &end, false, &mut |k, _| {
            due.push(k.to_vec());
            due.len() < limit
        })?;
        let mut purged = 0;
        for pk in due {
            let at = be_u64(&pk[1..9]);
            let p = Partition::from_be_bytes([pk[9], pk[10]]);
            let key = &pk[11..];
            let _guard = lock(&self.locks[Self::stripe(key)]);
            match self.read(p, key)? {
                Some(s) if self.purge_at(&s.record) == Some(at) => {
                    self.remove(p, key, &s)?;
                    purged += 1;
                }
                // A stale entry (the key changed since, or a crash between two batches of
                // another layout): only the entry goes.
                _ => self.kv.write(&[Op::Delete(pk.clone())])?,
            }
        }
        Ok(purged)
    }

    fn remove_unchanged(&self, partition: Partition, entries: &[(Bytes, Hlc)]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (key, hlc) in entries {
            let _guard = lock(&self.locks[Self::stripe(key)]);
            let Some(s) = self.read(partition, key)?.filter(|s| s.record.hlc == *hlc) else { continue };
            self.remove(partition, key, &s)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.keys.load(Ordering::Relaxed),
            expiring: self.expiring.load(Ordering::Relaxed),
            tombstones: self.tombstones.load(Ordering::Relaxed),
        }
    }

    fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }
}
