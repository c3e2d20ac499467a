//! The record layout every engine shares, over any ordered key-value engine ([`Kv`]).
//!
//! One ordered keyspace holds five kinds of entries, told apart by a one-byte prefix, so
//! that a record and all its index entries change in one atomic batch:
//!
//! - `d | partition | key` -> change number (8 bytes) + encoded record
//! - `s | partition | change number` -> key: the per-partition local change sequence
//!   (each record applied to a partition gets the next number, or the number the write
//!   buffer gave it), which rebalance and the WAN connector's cursor read; a key's older
//!   numbers are removed as it changes, so the sequence holds one entry per key and
//!   reading it after a position yields every key changed since
//! - `n | partition` -> the highest change number stored, so numbers never repeat even
//!   when the entry holding the highest one is purged, then the partition's record counts
//!   (keys, expiring, tombstones: 8 bytes each), then the highest HLC it ever stored, kept
//!   in the same batches as the records so that opening a store reads 2 entries per
//!   partition instead of every record (a store written before the counts were kept is
//!   counted once, at its first open)
//! - `p | purge_at_ms | partition | key` -> empty: when an expired value or an old
//!   tombstone may be removed, so purging reads only what is due
//! - `m | name` -> layout version and partition count
//!
//! Layout 2 also kept `i | partition | hlc | key`, an index in HLC order that rebalance
//! read. It cost every overwrite an insert and a delete at a random place in the tree, and
//! the change sequence serves rebalance as well; a layout 2 store is upgraded at its first
//! open (its highest HLCs moved into the `n` entries, then the index removed).
//!
//! Read-decide-write is serialised per key by lock stripes; numbering is serialised per
//! partition by a lock held from taking the number until its batch is committed, so a
//! reader that sees number n also sees every number below it that will ever exist. (Under
//! the write buffer, the buffer hands out the numbers and keeps that promise itself.)

use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::engines::{Kv, Op, prefix_end};
use super::{
    Changes, Sequenced, Settle, Store, StoreError, StoreOptions, StoreStats, TombstoneHold, Write,
    chunk_bytes, count_now,
};
use crate::hlc::Hlc;
use crate::placement::{Partition, partition_of};
use crate::record::{DecodeError, Record, RecordView};

const DATA: u8 = b'd';
/// Layout 2's HLC index, removed at the upgrade to layout 3.
const INDEX: u8 = b'i';
const SEQ: u8 = b's';
const LAST_SEQ: u8 = b'n';
const PURGE: u8 = b'p';
const META: u8 = b'm';
const LOCK_STRIPES: usize = 1024;
/// The layout before the HLC index was dropped; upgraded at open.
const LAYOUT_V2: u8 = 2;
/// Version of the layout described in the module header.
const LAYOUT_V3: u8 = 3;
/// Entries of layout 2's HLC index removed per batch at the upgrade.
const UPGRADE_BATCH: usize = 10_000;

pub struct OrderedStore<K: Kv> {
    kv: K,
    name: &'static str,
    partitions: u16,
    grace_ms: u64,
    datacenter: Arc<str>,
    locks: Box<[Mutex<()>]>,
    /// Per partition: the last change number handed out.
    seqs: Box<[Mutex<u64>]>,
    /// Per partition: its record counts as stored in its `n` entry; changed only by a
    /// holder of the partition's `seqs` lock.
    counts: Box<[Mutex<StoreStats>]>,
    /// Per partition: the highest HLC it ever stored, as in its `n` entry; raised only by a
    /// holder of the partition's `seqs` lock.
    tops: Box<[AtomicU64]>,
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

fn seq_key(partition: Partition, seq: u64) -> Vec<u8> {
    let mut k = with_partition(SEQ, partition, 8);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Bounds of the wait before a held tombstone is looked at again, in milliseconds.
const HOLD_RECHECK: (u64, u64) = (10_000, 3_600_000);

fn purge_key(at_ms: u64, partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + key.len());
    k.push(PURGE);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The value of a partition's `n` entry.
fn numbering_value(last: u64, c: &StoreStats, top: Hlc) -> Vec<u8> {
    [last, c.keys, c.expiring, c.tombstones, top.0].iter().flat_map(|n| n.to_be_bytes()).collect()
}

/// `c` with `added` counted in and `removed` counted out.
fn shifted(c: StoreStats, added: &StoreStats, removed: &StoreStats) -> StoreStats {
    StoreStats {
        keys: (c.keys + added.keys).saturating_sub(removed.keys),
        expiring: (c.expiring + added.expiring).saturating_sub(removed.expiring),
        tombstones: (c.tombstones + added.tombstones).saturating_sub(removed.tombstones),
    }
}

/// The change number of a data entry's stored `bytes` (of `key`), and a view of its record.
fn stored_view<'a>(key: &[u8], bytes: &'a [u8]) -> Result<(u64, RecordView<'a>), StoreError> {
    let corrupt = |error| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error };
    let record = bytes.get(8..).ok_or_else(|| corrupt(crate::record::DecodeError::Truncated))?;
    Ok((be_u64(&bytes[..8]), RecordView::parse(record).map_err(corrupt)?))
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

impl Stored {
    fn replaced(&self) -> Replaced {
        Replaced { seq: self.seq, shape: Shape::of(&self.record) }
    }
}

/// What a record's purge entry and its counts derive from: whether it holds a value, its
/// expiry and its HLC.
#[derive(Clone, Copy, Debug)]
struct Shape {
    live: bool,
    expires_at_ms: Option<u64>,
    hlc: Hlc,
}

impl Shape {
    fn of(r: &Record) -> Self {
        Shape { live: r.value.is_some(), expires_at_ms: r.expires_at_ms, hlc: r.hlc }
    }
}

/// What a write needs of the stored record it replaces: its change number (whose entry
/// goes) and its shape (whose purge entry goes, and what leaves the counts). Not its
/// value, which the applier therefore never copies out of the engine.
#[derive(Clone, Copy, Debug)]
struct Replaced {
    seq: u64,
    shape: Shape,
}

impl Replaced {
    /// What a write that replaces the stored `bytes` of `key` needs of them.
    fn decode(key: &[u8], bytes: &[u8]) -> Result<Self, StoreError> {
        let (seq, view) = stored_view(key, bytes)?;
        Ok(Replaced {
            seq,
            shape: Shape { live: view.value.is_some(), expires_at_ms: view.expires_at_ms, hlc: view.hlc },
        })
    }
}

impl<K: Kv> OrderedStore<K> {
    pub fn with_kv(kv: K, opts: &StoreOptions, name: &'static str) -> Result<Self, StoreError> {
        let (partitions, layout) = check_meta(&kv, opts)?;
        let mut seqs = Vec::with_capacity(partitions as usize);
        let mut counts = Vec::with_capacity(partitions as usize);
        let mut tops = Vec::with_capacity(partitions as usize);
        let mut counted = true;
        for p in 0..partitions {
            let (last, c, top) = match kv.get(&with_partition(LAST_SEQ, p, 0))? {
                None => (0, StoreStats::default(), 0),
                Some(v) => {
                    let v = v.as_ref();
                    // An entry of 8 bytes was written before the counts were kept.
                    counted &= v.len() >= 32;
                    let at = |i: usize| v.get(i..i + 8).map_or(0, be_u64);
                    (be_u64(v), StoreStats { keys: at(8), expiring: at(16), tombstones: at(24) }, at(32))
                }
            };
            seqs.push(Mutex::new(last));
            counts.push(Mutex::new(c));
            tops.push(AtomicU64::new(top));
        }
        let store = OrderedStore {
            kv,
            name,
            partitions,
            grace_ms: opts.tombstone_grace.as_millis() as u64,
            datacenter: Arc::from(opts.datacenter.as_str()),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            seqs: seqs.into_boxed_slice(),
            counts: counts.into_boxed_slice(),
            tops: tops.into_boxed_slice(),
            keys: AtomicU64::new(0),
            expiring: AtomicU64::new(0),
            tombstones: AtomicU64::new(0),
        };
        if !counted {
            store.count_records()?;
        }
        if layout == LAYOUT_V2 {
            store.upgrade_from_v2(opts)?;
        }
        store.drop_hlc_index()?;
        for c in store.counts.iter() {
            store.apply_stats(&lock(c), 1);
        }
        Ok(store)
    }

    /// Counts every record (a store written before the counts were kept in the `n`
    /// entries) and stores the counts there.
    fn count_records(&self) -> Result<(), StoreError> {
        let mut stats = vec![StoreStats::default(); self.partitions as usize];
        let mut failed = None;
        self.kv.scan(&[DATA], &[DATA + 1], false, &mut |k, v| match self.decode(&k[3..], v) {
            Ok(s) => {
                let p = Partition::from_be_bytes([k[1], k[2]]) as usize;
                if let Some(c) = stats.get_mut(p) {
                    count(c, Shape::of(&s.record), 1);
                }
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
        let mut ops = Vec::with_capacity(stats.len());
        for (p, c) in stats.into_iter().enumerate() {
            let last = *lock(&self.seqs[p]);
            ops.push(Op::Put(
                with_partition(LAST_SEQ, p as Partition, 0),
                numbering_value(last, &c, self.top(p)),
            ));
            *lock(&self.counts[p]) = c;
        }
        self.kv.write(&ops)
    }

    fn top(&self, p: usize) -> Hlc {
        Hlc(self.tops[p].load(Ordering::Relaxed))
    }

    /// Layout 2 to 3, step one: each partition's highest HLC, read from the HLC index, goes
    /// into its `n` entry, in the batch that marks the store as layout 3. The index itself
    /// is removed after ([`Self::drop_hlc_index`]), so a crash in between leaves a layout 3
    /// store whose leftover index entries the next open removes.
    fn upgrade_from_v2(&self, opts: &StoreOptions) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(self.partitions as usize + 1);
        for p in 0..self.partitions {
            let from = with_partition(INDEX, p, 0);
            let to = prefix_end(&from).expect("a bounded prefix");
            let mut top = Hlc::ZERO;
            self.kv.scan(&from, &to, true, &mut |k, _| {
                top = Hlc(be_u64(&k[3..11]));
                false
            })?;
            self.tops[p as usize].fetch_max(top.0, Ordering::Relaxed);
            let last = *lock(&self.seqs[p as usize]);
            let c = *lock(&self.counts[p as usize]);
            ops.push(Op::Put(
                with_partition(LAST_SEQ, p, 0),
                numbering_value(last, &c, self.top(p as usize)),
            ));
        }
        ops.push(Op::Put(meta_key("layout"), vec![LAYOUT_V3]));
        self.kv.write(&ops)?;
        self.kv.flush()?;
        tracing::info!(path = %opts.path.display(), "store upgraded to layout {LAYOUT_V3}; removing its HLC index");
        Ok(())
    }

    /// Removes what is left of layout 2's HLC index, in batches: nothing reads it since
    /// layout 3. A store without any costs one seek.
    fn drop_hlc_index(&self) -> Result<(), StoreError> {
        loop {
            let mut batch = Vec::new();
            self.kv.scan(&[INDEX], &[INDEX + 1], false, &mut |k, _| {
                batch.push(Op::Delete(k.to_vec()));
                batch.len() < UPGRADE_BATCH
            })?;
            if batch.is_empty() {
                return Ok(());
            }
            self.kv.write(&batch)?;
        }
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Stored, StoreError> {
        let (seq, view) = stored_view(key, bytes)?;
        let record = view
            .to_record(|dc| if dc == &*self.datacenter { self.datacenter.clone() } else { Arc::from(dc) });
        Ok(Stored { seq, record })
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
    fn purge_at(&self, s: Shape) -> Option<u64> {
        if s.live { s.expires_at_ms } else { Some(s.hlc.physical_ms().saturating_add(self.grace_ms)) }
    }

    /// Whether a purge entry at `at` stands for `r`: a value's entry is at its expiry; a
    /// tombstone's at the end of its grace, or later once held ([`TombstoneHold`]).
    fn purge_entry_current(&self, r: &Record, at: u64) -> bool {
        match (&r.value, self.purge_at(Shape::of(r))) {
            (None, Some(due)) => at >= due,
            (_, due) => due == Some(at),
        }
    }

    /// The operations that remove `old`'s entries, as it is replaced by a record with
    /// `new_purge` (or removed, with `None`).
    fn unindex(&self, ops: &mut Vec<Op>, p: Partition, key: &[u8], old: Replaced, new_purge: Option<u64>) {
        if let Some(at) = self.purge_at(old.shape)
            && Some(at) != new_purge
        {
            ops.push(Op::Delete(purge_key(at, p, key)));
        }
        ops.push(Op::Delete(seq_key(p, old.seq)));
    }

    /// Writes `writes` (key, record, what it replaces) in one batch, each record with the
    /// number given in `numbers`, or else the next number of its partition, and changes
    /// the counts through `settle` ([`Store::apply_numbered`]). The caller holds the keys'
    /// stripes.
    fn write_batch(
        &self,
        writes: &[(&[u8], Partition, &Record, Option<Replaced>)],
        numbers: Option<&[u64]>,
        settle: Settle<'_>,
    ) -> Result<(), StoreError> {
        let mut numbering = self.lock_seqs(writes.iter().map(|w| w.1));
        let mut next: HashMap<Partition, u64> = numbering.iter().map(|(p, g)| (*p, **g)).collect();
        let mut ops = Vec::with_capacity(writes.len() * 4);
        let (mut added, mut removed) = (StoreStats::default(), StoreStats::default());
        // Per partition: what this batch adds and removes.
        let mut changed: HashMap<Partition, (StoreStats, StoreStats, Hlc)> = HashMap::new();
        for (n, &(key, p, new, old)) in writes.iter().enumerate() {
            let delta = changed.entry(p).or_default();
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
            let new_purge = self.purge_at(Shape::of(new));
            if let Some(old) = old {
                self.unindex(&mut ops, p, key, old, new_purge);
                count(&mut removed, old.shape, 1);
                count(&mut delta.1, old.shape, 1);
            }
            let mut value = Vec::with_capacity(8 + new.encoded_len());
            value.extend_from_slice(&seq.to_be_bytes());
            new.encode_into(&mut value);
            ops.push(Op::Put(data_key(p, key), value));
            ops.push(Op::Put(seq_key(p, seq), key.to_vec()));
            if let Some(at) = new_purge {
                ops.push(Op::Put(purge_key(at, p, key), Vec::new()));
            }
            count(&mut added, Shape::of(new), 1);
            count(&mut delta.0, Shape::of(new), 1);
            delta.2 = delta.2.max(new.hlc);
        }
        let mut counted = Vec::with_capacity(next.len());
        for (p, last) in &next {
            let (plus, minus, top) = changed.get(p).copied().unwrap_or_default();
            let c = shifted(*lock(&self.counts[*p as usize]), &plus, &minus);
            let top = top.max(self.top(*p as usize));
            ops.push(Op::Put(with_partition(LAST_SEQ, *p, 0), numbering_value(*last, &c, top)));
            counted.push((*p, c, top));
        }
        // Applied in key order (a stable sort: changes of one key keep their order), so that
        // a B-tree walks its pages in order instead of jumping between the data and
        // sequence entries of each record in turn.
        ops.sort_by(|a, b| a.key().cmp(b.key()));
        self.kv.write(&ops)?;
        for (p, guard) in numbering.iter_mut() {
            **guard = next[p];
        }
        for (p, c, top) in counted {
            *lock(&self.counts[p as usize]) = c;
            self.tops[p as usize].store(top.0, Ordering::Relaxed);
        }
        settle(&mut || {
            self.apply_stats(&added, 1);
            self.apply_stats(&removed, -1);
        });
        Ok(())
    }

    /// Removes `key`'s record and entries; the caller holds its stripe. The partition's
    /// numbering is locked so the removal cannot interleave with a numbered batch.
    fn remove(&self, p: Partition, key: &[u8], old: Replaced) -> Result<(), StoreError> {
        let numbering = lock(&self.seqs[p as usize]);
        let mut ops = Vec::with_capacity(4);
        self.unindex(&mut ops, p, key, old, None);
        ops.push(Op::Delete(data_key(p, key)));
        let mut gone = StoreStats::default();
        count(&mut gone, old.shape, 1);
        let c = shifted(*lock(&self.counts[p as usize]), &StoreStats::default(), &gone);
        ops.push(Op::Put(
            with_partition(LAST_SEQ, p, 0),
            numbering_value(*numbering, &c, self.top(p as usize)),
        ));
        self.kv.write(&ops)?;
        *lock(&self.counts[p as usize]) = c;
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

fn count(stats: &mut StoreStats, s: Shape, n: u64) {
    if s.live {
        stats.keys += n;
        if s.expires_at_ms.is_some() {
            stats.expiring += n;
        }
    } else {
        stats.tombstones += n;
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    [&[META][..], name.as_bytes()].concat()
}

/// Records the layout version and partition count at creation, and refuses to open data
/// created with another partition count or a layout it cannot read (layout 2 it reads, to
/// upgrade it). Returns the partition count and the layout.
fn check_meta<K: Kv>(kv: &K, opts: &StoreOptions) -> Result<(u16, u8), StoreError> {
    let path = &opts.path;
    let open_err = |reason: String| StoreError::Open { path: path.clone(), reason };
    match kv.get(&meta_key("partitions"))? {
        Some(raw) => {
            let layout = match kv.get(&meta_key("layout"))?.as_ref().map(|l| l.as_ref()) {
                Some(&[v]) if v == LAYOUT_V2 || v == LAYOUT_V3 => v,
                other => {
                    return Err(open_err(format!(
                        "it holds store layout {:?}, this version reads layouts {LAYOUT_V2} and {LAYOUT_V3}",
                        other.map(|l| l.to_vec())
                    )));
                }
            };
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
            Ok((found, layout))
        }
        None => {
            kv.write(&[
                Op::Put(meta_key("layout"), vec![LAYOUT_V3]),
                Op::Put(meta_key("partitions"), opts.partitions.to_be_bytes().to_vec()),
            ])?;
            kv.flush()?;
            Ok((opts.partitions, LAYOUT_V3))
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
        let (_, view) = stored_view(key, bytes.as_ref())?;
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
                batch.push((keys[i], parts[i], new, stored[i].as_ref().map(Stored::replaced)));
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        self.write_batch(&batch, None, &mut count_now)?;
        Ok(writes.iter().filter(|w| matches!(w, Write::Put(_))).count())
    }

    fn put(&self, key: &[u8], make: &mut dyn FnMut() -> Record) -> Result<(), StoreError> {
        let _guard = lock(&self.locks[Self::stripe(key)]);
        let p = partition_of(key, self.partitions);
        let old = self.read(p, key)?;
        self.write_batch(&[(key, p, &make(), old.as_ref().map(Stored::replaced))], None, &mut count_now)
    }

    fn apply_numbered(&self, records: &[(u64, Bytes, Record)], settle: Settle<'_>) -> Result<(), StoreError> {
        let _guards = self.lock_stripes(records.iter().map(|(_, k, _)| &k[..]));
        // Read in the order of the records' entries (partition, then key): consecutive
        // reads then walk neighbouring tree pages, still in the CPU's cache. The sort is
        // stable, so a key listed twice keeps its last (highest numbered) record.
        let mut keys: Vec<(Partition, &[u8], u64, &Record)> =
            records.iter().map(|(n, k, r)| (partition_of(k, self.partitions), &k[..], *n, r)).collect();
        keys.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        keys.dedup_by(|later, kept| {
            let same = later.1 == kept.1;
            if same {
                *kept = *later;
            }
            same
        });
        // One read of what the records replace, for the whole batch: no value is copied.
        let data_keys: Vec<Vec<u8>> = keys.iter().map(|(p, k, ..)| data_key(*p, k)).collect();
        let mut batch = Vec::with_capacity(keys.len());
        self.kv.get_each(&data_keys, &mut |i, stored| {
            let (p, k, _, r) = keys[i];
            batch.push((k, p, r, stored.map(|bytes| Replaced::decode(k, bytes)).transpose()?));
            Ok(())
        })?;
        let numbers: Vec<u64> = keys.iter().map(|k| k.2).collect();
        self.write_batch(&batch, Some(&numbers), settle)
    }

    fn max_hlc(&self) -> Result<Hlc, StoreError> {
        Ok((0..self.partitions as usize).map(|p| self.top(p)).max().unwrap_or(Hlc::ZERO))
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

    /// Layout 3 keeps no HLC index (see the module header): a scan of the partition's
    /// records keeps the `limit` of lowest HLC above `since` in a heap as it goes. Only a
    /// peer of an older version asks (rebalance reads the change sequence now), so a copy
    /// to such a peer costs a scan of the partition per chunk.
    fn changes_since(
        &self,
        partition: Partition,
        since: Hlc,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Changes, StoreError> {
        let limit = limit.max(1);
        let from = with_partition(DATA, partition, 0);
        let to = prefix_end(&from).expect("a bounded prefix");
        let mut lowest: BinaryHeap<(Hlc, Vec<u8>)> = BinaryHeap::with_capacity(limit + 1);
        let mut more = false;
        let mut failed = None;
        self.kv.scan(&from, &to, false, &mut |k, v| {
            let key = &k[3..];
            let hlc = match v.get(8..).ok_or(DecodeError::Truncated).and_then(RecordView::parse) {
                Ok(view) => view.hlc,
                Err(error) => {
                    failed =
                        Some(StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error });
                    return false;
                }
            };
            if hlc <= since {
                return true;
            }
            if lowest.len() == limit {
                more = true;
                if lowest.peek().is_some_and(|top| (hlc, key) >= (top.0, &top.1[..])) {
                    return true;
                }
                lowest.pop();
            }
            lowest.push((hlc, key.to_vec()));
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut out = Changes::default();
        let (mut bytes, mut reached) = (0, since);
        for (hlc, key) in lowest.into_sorted_vec() {
            // Read again: a record changed since the scan goes with what it is now (a newer
            // record, which a later chunk would send again), one removed since not at all.
            let Some(s) = self.read(partition, &key)? else {
                reached = hlc;
                continue;
            };
            let size = chunk_bytes(&key, &s.record);
            if !out.records.is_empty() && bytes + size > max_bytes {
                more = true;
                break;
            }
            bytes += size;
            reached = hlc;
            out.records.push((Bytes::from(key), s.record));
        }
        out.next = more.then_some(reached);
        Ok(out)
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

    fn purge_due(&self, now_ms: u64, limit: usize, hold: &dyn TombstoneHold) -> Result<usize, StoreError> {
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
            let stored = self.read(p, key)?;
            let Some(s) = stored.filter(|s| self.purge_entry_current(&s.record, at)) else {
                // A stale entry (the key changed since, or a crash between two batches of
                // another layout): only the entry goes.
                self.kv.write(&[Op::Delete(pk.clone())])?;
                continue;
            };
            if s.record.value.is_none() && hold.holds(p, s.seq, key, &s.record) {
                // Looked at again after as long again as it is overdue, within bounds: a
                // long hold costs a few rewrites of the entry, not one per purge pass.
                let due_at = self.purge_at(Shape::of(&s.record)).unwrap_or(at);
                let again = now_ms
                    .saturating_add(now_ms.saturating_sub(due_at).clamp(HOLD_RECHECK.0, HOLD_RECHECK.1));
                self.kv.write(&[Op::Delete(pk.clone()), Op::Put(purge_key(again, p, key), Vec::new())])?;
                continue;
            }
            self.remove(p, key, s.replaced())?;
            if self.purge_at(Shape::of(&s.record)) != Some(at) {
                // A held tombstone's moved entry: `remove` took the original one.
                self.kv.write(&[Op::Delete(pk.clone())])?;
            }
            purged += 1;
        }
        Ok(purged)
    }

    fn remove_unchanged(&self, partition: Partition, entries: &[(Bytes, Hlc)]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (key, hlc) in entries {
            let _guard = lock(&self.locks[Self::stripe(key)]);
            let Some(s) = self.read(partition, key)?.filter(|s| s.record.hlc == *hlc) else { continue };
            self.remove(partition, key, s.replaced())?;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::Origin;
    use crate::store::engines::redb::RedbKv;

    fn options(dir: &std::path::Path) -> StoreOptions {
        StoreOptions {
            path: dir.to_path_buf(),
            partitions: 4,
            cache_bytes: 1 << 20,
            tombstone_grace: Duration::from_secs(10),
            datacenter: "dc1".into(),
        }
    }

    fn rec(value: Option<&'static [u8]>, hlc: u64) -> Record {
        Record {
            value: value.map(Bytes::from_static),
            hlc: Hlc(hlc),
            origin: Origin { datacenter: "dc1".into(), node: 1 },
            expires_at_ms: None,
        }
    }

    fn open(dir: &std::path::Path) -> OrderedStore<RedbKv> {
        OrderedStore::with_kv(RedbKv::open(&options(dir)).unwrap(), &options(dir), "redb").unwrap()
    }

    /// A batch reaches the engine in key order (a B-tree then walks its pages in order),
    /// the deletes of the entries it replaces included, and reads back as written.
    #[test]
    fn batches_reach_the_engine_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        // The keys of every batch the engine is given.
        let batches: Arc<Mutex<Vec<Vec<Vec<u8>>>>> = Arc::default();
        let recorded = batches.clone();
        let kv = crate::store::engines::HookedKv {
            kv: RedbKv::open(&options(dir.path())).unwrap(),
            before_write: move |ops: &[Op]| {
                lock(&recorded).push(ops.iter().map(|op| op.key().to_vec()).collect())
            },
        };
        let s = OrderedStore::with_kv(kv, &options(dir.path()), "redb").unwrap();
        let keys: Vec<Bytes> = (0..200).rev().map(|i| Bytes::from(format!("key:{i:03}"))).collect();
        let first: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u64 + 1, k.clone(), rec(Some(b"one"), 100 + i as u64)))
            .collect();
        s.apply_numbered(&first, &mut count_now).unwrap();
        let second: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i as u64 + 1000, k.clone(), rec(Some(b"two"), 1000 - i as u64)))
            .collect();
        lock(&batches).clear();
        s.apply_numbered(&second, &mut count_now).unwrap();
        let batches = std::mem::take(&mut *lock(&batches));
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        // Per key: its record, and its new and its replaced sequence entries.
        assert!(batch.len() >= 3 * keys.len(), "{} operations", batch.len());
        assert!(batch.windows(2).all(|w| w[0] < w[1]), "the operations are not in key order");
        for k in &keys {
            assert_eq!(s.get(k).unwrap().unwrap().value.as_deref(), Some(&b"two"[..]));
        }
        let held: usize = (0..4).map(|p| s.changes_after(p, 0, 1000, 1 << 20).unwrap().records.len()).sum();
        assert_eq!(held, keys.len(), "the replaced sequence entries are gone");
    }

    /// A key listed twice in one batch keeps its last record, once in its sequence.
    #[test]
    fn a_key_listed_twice_in_a_batch_keeps_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let key = Bytes::from_static(b"twice");
        let other = Bytes::from_static(b"other");
        s.apply_numbered(
            &[
                (1, key.clone(), rec(Some(b"first"), 10)),
                (2, other.clone(), rec(Some(b"x"), 11)),
                (3, key.clone(), rec(Some(b"last"), 12)),
            ],
            &mut count_now,
        )
        .unwrap();
        assert_eq!(s.get(&key).unwrap().unwrap().value.as_deref(), Some(&b"last"[..]));
        let p = partition_of(&key, 4);
        let listed: Vec<u64> = s
            .changes_after(p, 0, 100, 1 << 20)
            .unwrap()
            .records
            .iter()
            .filter(|(_, k, _)| *k == key)
            .map(|(n, _, _)| *n)
            .collect();
        assert_eq!(listed, vec![3]);
        assert_eq!(s.stats().keys, 2);
    }

    /// The counts are kept in the `n` entries (so an open reads no record), and a store
    /// whose `n` entries hold only the change number is counted once at open.
    #[test]
    fn record_counts_are_kept_in_the_store_and_older_stores_are_counted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let want = StoreStats { keys: 2, expiring: 0, tombstones: 1 };
        {
            let s = open(dir.path());
            for (i, key) in [&b"a"[..], b"b", b"c", b"d"].into_iter().enumerate() {
                s.put(key, &mut || rec(Some(b"v"), 10 + i as u64)).unwrap();
            }
            s.put(b"c", &mut || rec(None, 20)).unwrap();
            let p = partition_of(b"d", 4);
            let stored = s.read(p, b"d").unwrap().unwrap();
            s.remove(p, b"d", stored.replaced()).unwrap();
            assert_eq!(s.stats(), want);
            // A corrupt record that a count at open would read and refuse: this open must
            // take the counts from the `n` entries.
            s.kv.write(&[Op::Put(data_key(p, b"junk"), vec![1, 2])]).unwrap();
            s.flush().unwrap();
        }
        {
            let s = open(dir.path());
            assert_eq!(s.stats(), want);
            // Rewrite the `n` entries the way a store written before the counts holds them.
            let p = partition_of(b"d", 4);
            s.kv.write(&[Op::Delete(data_key(p, b"junk"))]).unwrap();
            let mut ops = Vec::new();
            for p in 0..4 {
                if let Some(v) = s.kv.get(&with_partition(LAST_SEQ, p, 0)).unwrap() {
                    ops.push(Op::Put(with_partition(LAST_SEQ, p, 0), v[..8].to_vec()));
                }
            }
            assert!(!ops.is_empty());
            s.kv.write(&ops).unwrap();
            s.flush().unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.stats(), want);
        for p in 0..4 {
            if let Some(v) = s.kv.get(&with_partition(LAST_SEQ, p, 0)).unwrap() {
                assert_eq!(v.len(), 40, "partition {p}'s counts were not stored back");
            }
        }
    }

    /// A layout 2 store (with its HLC index, `n` entries without the highest HLC) opens as
    /// layout 3: the index is gone, the highest HLC is kept, and every record still reads.
    #[test]
    fn a_layout_2_store_is_upgraded_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("key:{i:03}"))).collect();
        let top = 5_000;
        {
            let s = open(dir.path());
            for (i, k) in keys.iter().enumerate() {
                s.put(k, &mut || rec(Some(b"v"), top - i as u64)).unwrap();
            }
            // What layout 2 held besides: an index entry per record, shorter `n` entries.
            let mut ops = vec![Op::Put(meta_key("layout"), vec![LAYOUT_V2])];
            for (i, k) in keys.iter().enumerate() {
                let p = partition_of(k, 4);
                let mut index = with_partition(INDEX, p, 8 + k.len());
                index.extend_from_slice(&(top - i as u64).to_be_bytes());
                index.extend_from_slice(k);
                ops.push(Op::Put(index, Vec::new()));
            }
            for p in 0..4 {
                let n = s.kv.get(&with_partition(LAST_SEQ, p, 0)).unwrap().unwrap();
                ops.push(Op::Put(with_partition(LAST_SEQ, p, 0), n[..32].to_vec()));
            }
            s.kv.write(&ops).unwrap();
            s.flush().unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.kv.get(&meta_key("layout")).unwrap().as_deref(), Some(&[LAYOUT_V3][..]));
        let mut left = 0;
        s.kv.scan(&[INDEX], &[INDEX + 1], false, &mut |_, _| {
            left += 1;
            true
        })
        .unwrap();
        assert_eq!(left, 0, "index entries left");
        assert_eq!(s.max_hlc().unwrap(), Hlc(top));
        assert_eq!(s.stats().keys, keys.len() as u64);
        let held: usize = (0..4).map(|p| s.changes_after(p, 0, 1000, 1 << 20).unwrap().records.len()).sum();
        assert_eq!(held, keys.len());
        for k in &keys {
            assert_eq!(s.get(k).unwrap().unwrap().value.as_deref(), Some(&b"v"[..]));
        }
        drop(s);
        // The highest HLC is in the `n` entries now, not read from an index.
        assert_eq!(open(dir.path()).max_hlc().unwrap(), Hlc(top));
    }

    /// Index entries left by an upgrade that stopped half way (the store already says
    /// layout 3) are removed at the next open, in batches.
    #[test]
    fn an_upgrade_interrupted_while_removing_the_index_finishes_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            let ops: Vec<Op> = (0..(UPGRADE_BATCH as u64 * 2 + 7))
                .map(|i| {
                    let mut index = with_partition(INDEX, (i % 4) as Partition, 16);
                    index.extend_from_slice(&i.to_be_bytes());
                    index.extend_from_slice(b"k");
                    Op::Put(index, Vec::new())
                })
                .collect();
            s.kv.write(&ops).unwrap();
            s.flush().unwrap();
        }
        let s = open(dir.path());
        let mut left = 0;
        s.kv.scan(&[INDEX], &[INDEX + 1], false, &mut |_, _| {
            left += 1;
            true
        })
        .unwrap();
        assert_eq!(left, 0);
    }

    /// A layout this version does not know is refused, and the error names it.
    #[test]
    fn an_unknown_layout_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            s.kv.write(&[Op::Put(meta_key("layout"), vec![9])]).unwrap();
            s.flush().unwrap();
        }
        let err =
            OrderedStore::with_kv(RedbKv::open(&options(dir.path())).unwrap(), &options(dir.path()), "redb")
                .err()
                .expect("layout 9 opened");
        assert!(err.to_string().contains("layout Some([9])"), "{err}");
    }
}
