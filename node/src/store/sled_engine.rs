//! The sled engine.
//!
//! One sled tree holds three kinds of entries, distinguished by a one-byte prefix, so that a
//! record and its index entries change in one atomic batch:
//!
//! - `d | partition | key` -> encoded record
//! - `i | partition | hlc | key` -> empty: the per-partition HLC index ("changes since t")
//! - `p | purge_at_ms | partition | key` -> empty: when an expired value or an old
//!   tombstone may be removed, so purging reads only what is due
//!
//! Read-decide-write is serialised per key by a fixed array of lock stripes. A write of
//! one key is a few individual sled operations in a crash-safe order (the new index and
//! purge entries first, then the record, then the old entries are removed): a crash
//! between them leaves at worst a stale index or purge entry, and every reader of those
//! entries checks them against the record. Writes of several keys go in one atomic batch.
//! (A sled batch takes a global lock and costs about six single operations, so the common
//! single-key path avoids it.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::{Store, StoreError, StoreOptions, StoreStats, Write};
use crate::hlc::Hlc;
use crate::placement::{Partition, partition_of};
use crate::record::{Record, RecordView};

const DATA: u8 = b'd';
const INDEX: u8 = b'i';
const PURGE: u8 = b'p';
const LOCK_STRIPES: usize = 1024;
/// Version of the key layout described in the module header.
const LAYOUT_V1: u8 = 1;

pub struct SledStore {
    db: sled::Db,
    partitions: u16,
    grace_ms: u64,
    datacenter: Arc<str>,
    locks: Box<[Mutex<()>]>,
    keys: AtomicU64,
    expiring: AtomicU64,
    tombstones: AtomicU64,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn data_key(partition: Partition, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + key.len());
    k.push(DATA);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn index_key(partition: Partition, hlc: Hlc, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + key.len());
    k.push(INDEX);
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&hlc.0.to_be_bytes());
    k.extend_from_slice(key);
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

fn lock(m: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SledStore {
    pub fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: opts.path.clone(), reason };
        std::fs::create_dir_all(&opts.path).map_err(|e| open_err(e.to_string()))?;
        let db = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                // sled reports a held lock as an I/O error mentioning the lock.
                let text = e.to_string();
                if text.contains("could not acquire lock") || text.contains("WouldBlock") {
                    open_err(
                        "it is in use by another process (is another node running on this data_dir?)".into(),
                    )
                } else {
                    open_err(text)
                }
            })?;
        let partitions = check_meta(&db, &opts.path, opts.partitions)?;
        let store = SledStore {
            db,
            partitions,
            grace_ms: opts.tombstone_grace.as_millis() as u64,
            datacenter: Arc::from(opts.datacenter.as_str()),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            keys: AtomicU64::new(0),
            expiring: AtomicU64::new(0),
            tombstones: AtomicU64::new(0),
        };
        store.count_records()?;
        Ok(store)
    }

    fn count_records(&self) -> Result<(), StoreError> {
        let mut stats = StoreStats::default();
        for entry in self.db.scan_prefix([DATA]) {
            let (k, v) = entry.map_err(io)?;
            let r = self.decode(&k[3..], &v)?;
            count(&mut stats, &r, 1);
        }
        self.keys.store(stats.keys, Ordering::Relaxed);
        self.expiring.store(stats.expiring, Ordering::Relaxed);
        self.tombstones.store(stats.tombstones, Ordering::Relaxed);
        Ok(())
    }

    fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<Record, StoreError> {
        Record::decode(
            bytes,
            |dc| {
                if dc == &*self.datacenter { self.datacenter.clone() } else { Arc::from(dc) }
            },
        )
        .map_err(|error| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error })
    }

    fn read(&self, partition: Partition, key: &[u8]) -> Result<Option<Record>, StoreError> {
        match self.db.get(data_key(partition, key)).map_err(io)? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn stripe(key: &[u8]) -> usize {
        (xxh3_64(key) as usize) % LOCK_STRIPES
    }

    /// When a record may be physically removed: at expiry for values, after the grace
    /// period for tombstones.
    fn purge_at(&self, r: &Record) -> Option<u64> {
        match &r.value {
            Some(_) => r.expires_at_ms,
            None => Some(r.hlc.physical_ms().saturating_add(self.grace_ms)),
        }
    }

    /// Writes one record in the crash-safe order described in the module header. `old` is
    /// the record it replaces when the caller read it under the key's lock; otherwise the
    /// replaced record is taken from the data insert itself.
    fn write_one(
        &self,
        p: Partition,
        key: &[u8],
        new: &Record,
        old: Option<Option<&Record>>,
    ) -> Result<(), StoreError> {
        self.db.insert(index_key(p, new.hlc, key), &[]).map_err(io)?;
        let new_purge = self.purge_at(new);
        if let Some(at) = new_purge {
            self.db.insert(purge_key(at, p, key), &[]).map_err(io)?;
        }
        let replaced = self.db.insert(data_key(p, key), new.encode()).map_err(io)?;
        let decoded;
        let old = match old {
            Some(old) => old,
            None => {
                decoded = replaced.map(|bytes| self.decode(key, &bytes)).transpose()?;
                decoded.as_ref()
            }
        };
        let (mut added, mut removed) = (StoreStats::default(), StoreStats::default());
        count(&mut added, new, 1);
        if let Some(old) = old {
            if old.hlc != new.hlc {
                self.db.remove(index_key(p, old.hlc, key)).map_err(io)?;
            }
            if let Some(at) = self.purge_at(old)
                && Some(at) != new_purge
            {
                self.db.remove(purge_key(at, p, key)).map_err(io)?;
            }
            count(&mut removed, old, 1);
        }
        self.apply_stats(&added, 1);
        self.apply_stats(&removed, -1);
        Ok(())
    }

    fn remove_entries(&self, batch: &mut sled::Batch, p: Partition, key: &[u8], r: &Record) {
        batch.remove(index_key(p, r.hlc, key));
        if let Some(at) = self.purge_at(r) {
            batch.remove(purge_key(at, p, key));
        }
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
/// created with a different partition count.
fn check_meta(db: &sled::Db, path: &Path, configured: u16) -> Result<u16, StoreError> {
    let meta = db.open_tree("meta").map_err(io)?;
    match meta.get("partitions").map_err(io)? {
        Some(raw) => {
            let found = u16::from_be_bytes(raw.as_ref().try_into().map_err(|_| StoreError::Open {
                path: path.into(),
                reason: "meta/partitions is malformed".into(),
            })?);
            if found != configured {
                return Err(StoreError::PartitionMismatch { path: path.into(), found, configured });
            }
            Ok(found)
        }
        None => {
            meta.insert("layout", &[LAYOUT_V1]).map_err(io)?;
            meta.insert("partitions", &configured.to_be_bytes()).map_err(io)?;
            db.flush().map_err(io)?;
            Ok(configured)
        }
    }
}

impl Store for SledStore {
    fn engine(&self) -> &'static str {
        "sled"
    }

    fn partitions(&self) -> u16 {
        self.partitions
    }

    fn get(&self, key: &[u8]) -> Result<Option<Record>, StoreError> {
        self.read(partition_of(key, self.partitions), key)
    }

    fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        let Some(bytes) = self.db.get(data_key(partition_of(key, self.partitions), key)).map_err(io)? else {
            return Ok(None);
        };
        let view = RecordView::parse(&bytes)
            .map_err(|error| StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), error })?;
        Ok(view.live_value(now_ms).map(Bytes::copy_from_slice))
    }

    fn update(
        &self,
        keys: &[&[u8]],
        decide: &mut dyn FnMut(&[Option<Record>]) -> Vec<Write>,
    ) -> Result<usize, StoreError> {
        let mut stripes: Vec<usize> = keys.iter().map(|k| Self::stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // Stripes are always taken in ascending order, so multi-key updates cannot deadlock.
        let _guards: Vec<_> = stripes.iter().map(|&s| lock(&self.locks[s])).collect();

        let parts: Vec<Partition> = keys.iter().map(|k| partition_of(k, self.partitions)).collect();
        let current =
            keys.iter().zip(&parts).map(|(k, &p)| self.read(p, k)).collect::<Result<Vec<_>, _>>()?;
        let mut writes = decide(&current);
        debug_assert_eq!(writes.len(), keys.len());
        if keys.len() == 1 {
            return match writes.pop() {
                Some(Write::Put(new)) => {
                    self.write_one(parts[0], keys[0], &new, Some(current[0].as_ref()))?;
                    Ok(1)
                }
                _ => Ok(0),
            };
        }

        let mut batch = sled::Batch::default();
        let (mut added, mut removed) = (StoreStats::default(), StoreStats::default());
        let mut written = 0;
        // A key repeated in one update: each write replaces the one before it in the batch.
        let mut latest: HashMap<&[u8], Record> = HashMap::new();
        for (i, write) in writes.into_iter().enumerate() {
            let Write::Put(new) = write else { continue };
            let (key, p) = (keys[i], parts[i]);
            let old = latest.get(key).or(current[i].as_ref());
            if let Some(old) = old {
                self.remove_entries(&mut batch, p, key, old);
                count(&mut removed, old, 1);
            }
            batch.insert(data_key(p, key), new.encode());
            batch.insert(index_key(p, new.hlc, key), &[]);
            if let Some(at) = self.purge_at(&new) {
                batch.insert(purge_key(at, p, key), &[]);
            }
            count(&mut added, &new, 1);
            written += 1;
            if keys.len() > 1 {
                latest.insert(key, new);
            }
        }
        if written > 0 {
            self.db.apply_batch(batch).map_err(io)?;
            self.apply_stats(&added, 1);
            self.apply_stats(&removed, -1);
        }
        Ok(written)
    }

    fn put(&self, key: &[u8], make: &mut dyn FnMut() -> Record) -> Result<(), StoreError> {
        let _guard = lock(&self.locks[Self::stripe(key)]);
        self.write_one(partition_of(key, self.partitions), key, &make(), None)
    }

    fn max_hlc(&self) -> Result<Hlc, StoreError> {
        let mut max = Hlc::ZERO;
        for p in 0..self.partitions {
            let mut prefix = vec![INDEX];
            prefix.extend_from_slice(&p.to_be_bytes());
            if let Some(entry) = self.db.scan_prefix(&prefix).next_back() {
                let (k, _) = entry.map_err(io)?;
                let hlc = Hlc(u64::from_be_bytes(k[3..11].try_into().expect("8 bytes")));
                max = max.max(hlc);
            }
        }
        Ok(max)
    }

    fn scan_partition(
        &self,
        partition: Partition,
        visit: &mut dyn FnMut(&[u8], &Record),
    ) -> Result<(), StoreError> {
        let mut prefix = vec![DATA];
        prefix.extend_from_slice(&partition.to_be_bytes());
        for entry in self.db.scan_prefix(&prefix) {
            let (k, v) = entry.map_err(io)?;
            let key = &k[3..];
            visit(key, &self.decode(key, &v)?);
        }
        Ok(())
    }

    fn changes_since(
        &self,
        partition: Partition,
        since: Hlc,
        limit: usize,
    ) -> Result<Vec<(Bytes, Record)>, StoreError> {
        let start = index_key(partition, Hlc(since.0.saturating_add(1)), &[]);
        let mut end = vec![INDEX];
        end.extend_from_slice(&partition.to_be_bytes());
        end.extend_from_slice(&[0xff; 9]);
        let mut out = Vec::new();
        for entry in self.db.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry.map_err(io)?;
            let hlc = Hlc(u64::from_be_bytes(k[3..11].try_into().expect("8 bytes")));
            let key = &k[11..];
            // An entry left stale by a crash between two writes no longer matches its record.
            if let Some(r) = self.read(partition, key)?
                && r.hlc == hlc
            {
                out.push((Bytes::copy_from_slice(key), r));
            }
        }
        Ok(out)
    }

    fn purge_due(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let end = purge_key(now_ms.saturating_add(1), 0, &[]);
        let due: Vec<sled::IVec> =
            self.db.range(vec![PURGE]..end).keys().take(limit).collect::<Result<_, _>>().map_err(io)?;
        let mut purged = 0;
        for pk in due {
            let at = u64::from_be_bytes(pk[1..9].try_into().expect("8 bytes"));
            let p = Partition::from_be_bytes(pk[9..11].try_into().expect("2 bytes"));
            let key = &pk[11..];
            let _guard = lock(&self.locks[Self::stripe(key)]);
            let mut batch = sled::Batch::default();
            batch.remove(&pk);
            let mut removed = StoreStats::default();
            if let Some(r) = self.read(p, key)?
                && self.purge_at(&r) == Some(at)
            {
                self.remove_entries(&mut batch, p, key, &r);
                batch.remove(data_key(p, key));
                count(&mut removed, &r, 1);
                purged += 1;
            }
            self.db.apply_batch(batch).map_err(io)?;
            self.apply_stats(&removed, -1);
        }
        Ok(purged)
    }

    fn remove_unchanged(&self, partition: Partition, entries: &[(Bytes, Hlc)]) -> Result<usize, StoreError> {
        let mut removed = 0;
        for (key, hlc) in entries {
            let _guard = lock(&self.locks[Self::stripe(key)]);
            let Some(r) = self.read(partition, key)?.filter(|r| r.hlc == *hlc) else { continue };
            let mut batch = sled::Batch::default();
            self.remove_entries(&mut batch, partition, key, &r);
            batch.remove(data_key(partition, key));
            self.db.apply_batch(batch).map_err(io)?;
            let mut gone = StoreStats::default();
            count(&mut gone, &r, 1);
            self.apply_stats(&gone, -1);
            removed += 1;
        }
        Ok(removed)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            keys: self.keys.load(Ordering::Relaxed),
            expiring: self.expiring.load(Ordering::Relaxed),
            tombstones: self.tombstones.load(Ordering::Relaxed),
        }
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;
    use std::time::Duration;

    fn open(dir: &Path, partitions: u16) -> Result<SledStore, StoreError> {
        SledStore::open(&StoreOptions {
            path: dir.to_path_buf(),
            partitions,
            cache_bytes: 8 << 20,
            tombstone_grace: Duration::from_secs(10),
            datacenter: "dc1".into(),
        })
    }

    fn rec(value: Option<&'static [u8]>, hlc: u64, expires_at_ms: Option<u64>) -> Record {
        Record {
            value: value.map(Bytes::from_static),
            hlc: Hlc(hlc),
            origin: Origin { datacenter: "dc1".into(), node: 1 },
            expires_at_ms,
        }
    }

    fn put(s: &SledStore, key: &[u8], r: Record) {
        s.update(&[key], &mut |_| vec![Write::Put(r.clone())]).unwrap();
    }

    #[test]
    fn writes_read_back_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 16).unwrap();
        put(&s, b"a", rec(Some(b"1"), 10, None));
        put(&s, b"b", rec(Some(b"2"), 11, Some(5_000)));
        put(&s, b"a", rec(Some(b"3"), 12, None));
        assert_eq!(s.get(b"a").unwrap().unwrap().value.as_deref(), Some(&b"3"[..]));
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 1, tombstones: 0 });
        put(&s, b"a", rec(None, 13, None));
        assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 1, tombstones: 1 });
    }

    #[test]
    fn blind_puts_replace_and_clean_up_the_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1).unwrap();
        s.put(b"k", &mut || rec(Some(b"1"), 10, Some(5_000))).unwrap();
        s.put(b"k", &mut || rec(Some(b"2"), 20, None)).unwrap();
        assert_eq!(s.get(b"k").unwrap().unwrap().value.as_deref(), Some(&b"2"[..]));
        assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 0, tombstones: 0 });
        let changes = s.changes_since(0, Hlc::ZERO, 10).unwrap();
        assert_eq!(changes.iter().map(|(_, r)| r.hlc.0).collect::<Vec<_>>(), vec![20]);
        // The old expiry's purge entry is gone: nothing is purged at 5_000.
        assert_eq!(s.purge_due(6_000, 10).unwrap(), 0);
        assert_eq!(s.max_hlc().unwrap(), Hlc(20));
    }

    #[test]
    fn stale_index_entries_from_a_crash_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1).unwrap();
        put(&s, b"k", rec(Some(b"1"), 10, None));
        // A crash after the new index entry but before the record was written leaves this.
        s.db.insert(index_key(0, Hlc(30), b"k"), &[]).unwrap();
        let changes = s.changes_since(0, Hlc::ZERO, 10).unwrap();
        assert_eq!(changes.iter().map(|(_, r)| r.hlc.0).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn decide_sees_current_records_and_may_keep() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 16).unwrap();
        put(&s, b"a", rec(Some(b"1"), 10, None));
        let mut seen = Vec::new();
        let written = s
            .update(&[b"a", b"b"], &mut |cur| {
                seen = cur.iter().map(|r| r.as_ref().map(|r| r.hlc)).collect();
                vec![Write::Keep, Write::Put(rec(Some(b"x"), 20, None))]
            })
            .unwrap();
        assert_eq!(written, 1);
        assert_eq!(seen, vec![Some(Hlc(10)), None]);
        assert_eq!(s.get(b"a").unwrap().unwrap().hlc, Hlc(10));
    }

    #[test]
    fn repeated_keys_in_one_update_keep_the_last_write_and_a_clean_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 4).unwrap();
        s.update(&[b"k", b"k"], &mut |_| {
            vec![Write::Put(rec(Some(b"1"), 10, None)), Write::Put(rec(Some(b"2"), 11, None))]
        })
        .unwrap();
        assert_eq!(s.get(b"k").unwrap().unwrap().value.as_deref(), Some(&b"2"[..]));
        let p = partition_of(b"k", 4);
        let changes = s.changes_since(p, Hlc::ZERO, 10).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(s.stats().keys, 1);
    }

    #[test]
    fn changes_since_follows_the_hlc_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1).unwrap();
        put(&s, b"a", rec(Some(b"1"), 10, None));
        put(&s, b"b", rec(Some(b"1"), 20, None));
        put(&s, b"a", rec(Some(b"2"), 30, None));
        let since = |t| -> Vec<(Vec<u8>, u64)> {
            s.changes_since(0, Hlc(t), 10).unwrap().into_iter().map(|(k, r)| (k.to_vec(), r.hlc.0)).collect()
        };
        assert_eq!(since(0), vec![(b"b".to_vec(), 20), (b"a".to_vec(), 30)]);
        assert_eq!(since(20), vec![(b"a".to_vec(), 30)]);
        assert_eq!(since(30), vec![]);
    }

    #[test]
    fn purges_expired_values_and_old_tombstones_only_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 8).unwrap();
        put(&s, b"exp", rec(Some(b"v"), Hlc::new(1_000, 0).0, Some(2_000)));
        put(&s, b"gone", rec(None, Hlc::new(1_000, 0).0, None)); // purge at 11_000
        put(&s, b"keep", rec(Some(b"v"), Hlc::new(1_000, 0).0, None));
        assert_eq!(s.purge_due(1_999, 100).unwrap(), 0);
        assert_eq!(s.purge_due(2_000, 100).unwrap(), 1);
        assert!(s.get(b"exp").unwrap().is_none());
        assert_eq!(s.purge_due(10_999, 100).unwrap(), 0);
        assert_eq!(s.purge_due(11_000, 100).unwrap(), 1);
        assert!(s.get(b"gone").unwrap().is_none());
        assert!(s.get(b"keep").unwrap().is_some());
        assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 0, tombstones: 0 });
        let left = s.changes_since(partition_of(b"exp", 8), Hlc::ZERO, 10).unwrap();
        assert!(left.iter().all(|(k, _)| &k[..] != b"exp"), "purged key still indexed");
    }

    #[test]
    fn a_rewritten_key_is_not_purged_by_its_old_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 8).unwrap();
        put(&s, b"k", rec(Some(b"v"), 10, Some(2_000)));
        put(&s, b"k", rec(Some(b"w"), 11, None));
        assert_eq!(s.purge_due(5_000, 100).unwrap(), 0);
        assert_eq!(s.get(b"k").unwrap().unwrap().value.as_deref(), Some(&b"w"[..]));
    }

    #[test]
    fn reopen_keeps_data_counts_and_refuses_another_partition_count() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 8).unwrap();
            put(&s, b"a", rec(Some(b"1"), 10, None));
            put(&s, b"b", rec(None, 11, None));
            s.flush().unwrap();
        }
        let s = open(dir.path(), 8).unwrap();
        assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 0, tombstones: 1 });
        drop(s);
        let err = open(dir.path(), 16).err().expect("mismatch refused");
        assert!(err.to_string().contains("store.partitions"), "{err}");
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _s = open(dir.path(), 8).unwrap();
        let err = open(dir.path(), 8).err().expect("second open refused");
        assert!(err.to_string().contains("in use by another process"), "{err}");
    }

    #[test]
    fn scan_partition_visits_each_record_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 4).unwrap();
        for i in 0..100u64 {
            let key = format!("k{i}");
            s.update(&[key.as_bytes()], &mut |_| vec![Write::Put(rec(Some(b"v"), i + 1, None))]).unwrap();
        }
        let mut seen = Vec::new();
        for p in 0..4 {
            s.scan_partition(p, &mut |k, _| seen.push(k.to_vec())).unwrap();
        }
        seen.sort();
        let mut expected: Vec<Vec<u8>> = (0..100).map(|i| format!("k{i}").into_bytes()).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }
}
