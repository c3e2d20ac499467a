//! One test suite, run against every engine: what the node relies on from a store, the
//! per-partition change sequence, and crash recovery of acknowledged writes (a child
//! process killed with SIGKILL under each fsync policy).

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    BufferOptions, BufferedStore, Engine, EngineOptions, HoldNone, Store, StoreError, StoreOptions,
    StoreStats, Write, count_now,
};
use crate::hlc::Hlc;
use crate::placement::{Partition, partition_of};
use crate::record::{Origin, Record};

fn options(dir: &Path, partitions: u16) -> StoreOptions {
    StoreOptions {
        path: dir.to_path_buf(),
        partitions,
        cache_bytes: 8 << 20,
        tombstone_grace: Duration::from_secs(10),
        datacenter: "dc1".into(),
    }
}

fn try_open(engine: Engine, dir: &Path, partitions: u16) -> Result<Arc<dyn Store>, StoreError> {
    let mut e = EngineOptions::new(engine);
    e.lmdb_map_bytes = 1 << 30;
    e.write_buffer_bytes = 1 << 20;
    super::engines::open(&options(dir, partitions), &e)
}

/// Opens the engine; a reopen in the same process waits (with a deadline) for the
/// previous handle's background threads (sled's) to let go of the directory lock.
fn open(engine: Engine, dir: &Path, partitions: u16) -> Arc<dyn Store> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match try_open(engine, dir, partitions) {
            Ok(s) => return s,
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A record of `dc1`, node 1 (also used by the write buffer's own tests).
pub(super) fn rec(value: Option<&'static [u8]>, hlc: u64, expires_at_ms: Option<u64>) -> Record {
    Record {
        value: value.map(Bytes::from_static),
        hlc: Hlc(hlc),
        origin: Origin { datacenter: "dc1".into(), node: 1 },
        expires_at_ms,
    }
}

fn put(s: &dyn Store, key: &[u8], r: Record) {
    s.update(&[key], &mut |_| vec![Write::Put(r.clone())]).unwrap();
}

fn value(s: &dyn Store, key: &[u8]) -> Option<Vec<u8>> {
    s.get(key).unwrap().and_then(|r| r.value.map(|v| v.to_vec()))
}

/// Every (number, key) of a partition's sequence after `after`, read in chunks of `limit`.
fn sequence(s: &dyn Store, p: u16, mut after: u64, limit: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let chunk = s.changes_after(p, after, limit, usize::MAX).unwrap();
        assert!(chunk.records.len() <= limit);
        for (seq, key, _) in &chunk.records {
            assert!(*seq > after, "{seq} after {after}");
            after = *seq;
            out.push((*seq, key.to_vec()));
        }
        assert!(chunk.upto >= after, "a chunk ending at {} before its last record {after}", chunk.upto);
        after = chunk.upto;
        if !chunk.more {
            return out;
        }
    }
}

fn writes_read_back_and_count(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 16);
    put(&*s, b"a", rec(Some(b"1"), 10, None));
    put(&*s, b"b", rec(Some(b"2"), 11, Some(5_000)));
    put(&*s, b"a", rec(Some(b"3"), 12, None));
    assert_eq!(value(&*s, b"a").as_deref(), Some(&b"3"[..]));
    assert_eq!(s.get_value(b"b", 4_999).unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(s.get_value(b"b", 5_000).unwrap(), None);
    assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 1, tombstones: 0 });
    put(&*s, b"a", rec(None, 13, None));
    assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 1, tombstones: 1 });
    assert_eq!(s.get_value(b"a", 0).unwrap(), None);
    assert_eq!(s.engine(), engine.name());
}

fn blind_puts_replace_and_clean_up_the_old_entries(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 1);
    s.put(b"k", &mut || rec(Some(b"1"), 10, Some(5_000))).unwrap();
    s.put(b"k", &mut || rec(Some(b"2"), 20, None)).unwrap();
    assert_eq!(value(&*s, b"k").as_deref(), Some(&b"2"[..]));
    assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 0, tombstones: 0 });
    let changes = s.changes_since(0, Hlc::ZERO, 10, usize::MAX).unwrap().records;
    assert_eq!(changes.iter().map(|(_, r)| r.hlc.0).collect::<Vec<_>>(), vec![20]);
    // The old expiry's purge entry is gone: nothing is purged at 5_000.
    assert_eq!(s.purge_due(6_000, 10, &HoldNone).unwrap(), 0);
    assert_eq!(s.max_hlc().unwrap(), Hlc(20));
}

/// The applier's path: a numbered batch reads what its records replace in one go and
/// takes out their sequence and purge entries and their counts, for records of every kind.
fn numbered_batches_replace_what_they_find(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 1);
    put(&*s, b"expiring", rec(Some(b"1"), 10, Some(5_000)));
    put(&*s, b"plain", rec(Some(b"2"), 11, None));
    put(&*s, b"deleted", rec(None, 12, None));
    assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 1, tombstones: 1 });
    let last = sequence(&*s, 0, 0, 100).last().unwrap().0;
    let batch: Vec<(u64, Bytes, Record)> = vec![
        (last + 1, Bytes::from_static(b"plain"), rec(None, 20, None)),
        (last + 2, Bytes::from_static(b"deleted"), rec(Some(b"3"), 21, Some(9_000))),
        (last + 3, Bytes::from_static(b"new"), rec(Some(b"4"), 22, None)),
        (last + 4, Bytes::from_static(b"expiring"), rec(Some(b"5"), 23, None)),
        (last + 5, Bytes::from_static(b"new"), rec(Some(b"6"), 24, None)),
    ];
    s.apply_numbered(&batch, &mut count_now).unwrap();
    assert_eq!(value(&*s, b"plain"), None);
    assert_eq!(value(&*s, b"deleted").as_deref(), Some(&b"3"[..]));
    assert_eq!(value(&*s, b"new").as_deref(), Some(&b"6"[..]), "a key listed twice keeps its last record");
    assert_eq!(value(&*s, b"expiring").as_deref(), Some(&b"5"[..]));
    assert_eq!(s.stats(), StoreStats { keys: 3, expiring: 1, tombstones: 1 });
    // Each key is in the sequence once, at its new number.
    let mut listed = sequence(&*s, 0, 0, 100);
    listed.sort();
    let want: Vec<(u64, Vec<u8>)> =
        [(last + 1, "plain"), (last + 2, "deleted"), (last + 4, "expiring"), (last + 5, "new")]
            .into_iter()
            .map(|(n, k)| (n, k.as_bytes().to_vec()))
            .collect();
    assert_eq!(listed, want);
    // The replaced expiry's purge entry went; the new one stands.
    assert_eq!(s.purge_due(6_000, 10, &HoldNone).unwrap(), 0);
    assert_eq!(value(&*s, b"expiring").as_deref(), Some(&b"5"[..]));
    assert_eq!(s.purge_due(9_000, 10, &HoldNone).unwrap(), 1);
    assert_eq!(value(&*s, b"deleted"), None);
    assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 0, tombstones: 1 });
}

fn decide_sees_current_records_and_may_keep(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 16);
    put(&*s, b"a", rec(Some(b"1"), 10, None));
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

fn repeated_keys_in_one_update_keep_the_last_write(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 4);
    s.update(&[b"k", b"k"], &mut |_| {
        vec![Write::Put(rec(Some(b"1"), 10, None)), Write::Put(rec(Some(b"2"), 11, None))]
    })
    .unwrap();
    assert_eq!(value(&*s, b"k").as_deref(), Some(&b"2"[..]));
    let p = partition_of(b"k", 4);
    assert_eq!(s.changes_since(p, Hlc::ZERO, 10, usize::MAX).unwrap().records.len(), 1);
    assert_eq!(sequence(&*s, p, 0, 10).len(), 1);
    assert_eq!(s.stats().keys, 1);
}

fn changes_since_lists_records_in_hlc_order(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 1);
    put(&*s, b"a", rec(Some(b"1"), 10, None));
    put(&*s, b"b", rec(Some(b"1"), 20, None));
    put(&*s, b"a", rec(Some(b"2"), 30, None));
    let since = |t| -> Vec<(Vec<u8>, u64)> {
        s.changes_since(0, Hlc(t), 10, usize::MAX)
            .unwrap()
            .records
            .into_iter()
            .map(|(k, r)| (k.to_vec(), r.hlc.0))
            .collect()
    };
    assert_eq!(since(0), vec![(b"b".to_vec(), 20), (b"a".to_vec(), 30)]);
    assert_eq!(since(20), vec![(b"a".to_vec(), 30)]);
    assert_eq!(since(30), vec![]);
    let chunk = s.changes_since(0, Hlc::ZERO, 1, usize::MAX).unwrap();
    assert_eq!((chunk.records.len(), chunk.next), (1, Some(Hlc(20))));
    // Many records whose key order is not their HLC order, some sharing an HLC, walked in
    // small chunks the way a peer pulls: every record comes, in HLC order.
    for i in 0..60u64 {
        put(&*s, format!("k{i:02}").as_bytes(), rec(Some(b"v"), 1_000 - (i / 3), None));
    }
    let (mut since, mut seen, mut last) = (Hlc(30), std::collections::BTreeSet::new(), Hlc::ZERO);
    loop {
        let chunk = s.changes_since(0, since, 7, 20).unwrap();
        for (k, r) in &chunk.records {
            assert!(r.hlc >= last, "out of HLC order");
            last = r.hlc;
            seen.insert(k.to_vec());
        }
        let Some(next) = chunk.next else { break };
        assert!(next > since, "no progress");
        since = Hlc(next.0 - 1);
        last = Hlc::ZERO.max(since);
    }
    assert_eq!(seen.len(), 60);
}

fn purges_expired_values_and_old_tombstones_only_when_due(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 8);
    put(&*s, b"exp", rec(Some(b"v"), Hlc::new(1_000, 0).0, Some(2_000)));
    put(&*s, b"gone", rec(None, Hlc::new(1_000, 0).0, None)); // purge at 11_000
    put(&*s, b"keep", rec(Some(b"v"), Hlc::new(1_000, 0).0, None));
    assert_eq!(s.purge_due(1_999, 100, &HoldNone).unwrap(), 0);
    assert_eq!(s.purge_due(2_000, 100, &HoldNone).unwrap(), 1);
    assert!(s.get(b"exp").unwrap().is_none());
    assert_eq!(s.purge_due(10_999, 100, &HoldNone).unwrap(), 0);
    assert_eq!(s.purge_due(11_000, 100, &HoldNone).unwrap(), 1);
    assert!(s.get(b"gone").unwrap().is_none());
    assert!(s.get(b"keep").unwrap().is_some());
    assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 0, tombstones: 0 });
    let p = partition_of(b"exp", 8);
    let left = s.changes_since(p, Hlc::ZERO, 10, usize::MAX).unwrap().records;
    assert!(left.iter().all(|(k, _)| &k[..] != b"exp"), "purged key still indexed");
    assert!(sequence(&*s, p, 0, 10).iter().all(|(_, k)| &k[..] != b"exp"), "purged key still sequenced");
}

/// Holds the tombstone of one key while `on`, noting each number it is asked about.
struct HoldKey {
    key: &'static [u8],
    on: AtomicBool,
    asked: std::sync::Mutex<Vec<u64>>,
}

impl super::TombstoneHold for HoldKey {
    fn holds(&self, _: Partition, seq: u64, key: &[u8], t: &Record) -> bool {
        assert!(t.value.is_none(), "only tombstones are offered to a hold");
        if key != self.key {
            return false;
        }
        self.asked.lock().unwrap().push(seq);
        self.on.load(Ordering::SeqCst)
    }
}

fn a_held_tombstone_stays_until_released_and_is_looked_at_less_often(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 8);
    // Both due at 11_000 (grace 10 s).
    put(&*s, b"held", rec(None, Hlc::new(1_000, 0).0, None));
    put(&*s, b"free", rec(None, Hlc::new(1_000, 0).0, None));
    put(&*s, b"exp", rec(Some(b"v"), Hlc::new(1_000, 0).0, Some(11_000)));
    let p = partition_of(b"held", 8);
    let numbered = sequence(&*s, p, 0, 10).into_iter().find(|(_, k)| k == b"held").unwrap().0;
    let hold = HoldKey { key: b"held", on: AtomicBool::new(true), asked: Default::default() };
    let asked = || hold.asked.lock().unwrap().clone();

    assert_eq!(s.purge_due(11_000, 100, &hold).unwrap(), 2, "the free tombstone and the expired value");
    assert_eq!(asked(), [numbered], "the hold is asked with the tombstone's change number");
    assert!(s.get(b"held").unwrap().is_some_and(|r| r.value.is_none()), "the held tombstone stays");
    assert_eq!(s.stats().tombstones, 1);
    // Looked at again after the shortest wait (10 s), then after as long as it is overdue.
    assert_eq!(s.purge_due(20_999, 100, &hold).unwrap(), 0);
    assert_eq!(asked().len(), 1);
    assert_eq!(s.purge_due(21_000, 100, &hold).unwrap(), 0);
    assert_eq!(asked().len(), 2);
    assert_eq!(s.purge_due(30_999, 100, &hold).unwrap(), 0);
    assert_eq!(asked().len(), 2);
    assert_eq!(s.purge_due(31_000, 100, &hold).unwrap(), 0);
    assert_eq!((asked().len(), s.purge_due(50_999, 100, &hold).unwrap()), (3, 0));
    assert_eq!(asked().len(), 3, "20 s overdue: next look 20 s later");

    hold.on.store(false, Ordering::SeqCst);
    assert_eq!(s.purge_due(51_000, 100, &hold).unwrap(), 1);
    assert!(s.get(b"held").unwrap().is_none());
    assert_eq!(s.stats(), StoreStats { keys: 0, expiring: 0, tombstones: 0 });
    assert!(sequence(&*s, p, 0, 10).iter().all(|(_, k)| k != b"held"), "purged key still sequenced");
    // A later tombstone of the key goes at its own time, not at the moved entry's.
    put(&*s, b"held", rec(None, Hlc::new(100_000, 0).0, None));
    assert_eq!(s.purge_due(109_999, 100, &HoldNone).unwrap(), 0);
    assert_eq!(s.purge_due(110_000, 100, &HoldNone).unwrap(), 1);
}

fn a_rewritten_key_is_not_purged_by_its_old_expiry(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 8);
    put(&*s, b"k", rec(Some(b"v"), 10, Some(2_000)));
    put(&*s, b"k", rec(Some(b"w"), 11, None));
    assert_eq!(s.purge_due(5_000, 100, &HoldNone).unwrap(), 0);
    assert_eq!(value(&*s, b"k").as_deref(), Some(&b"w"[..]));
}

fn reopen_keeps_data_counts_and_refuses_another_partition_count(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(engine, dir.path(), 8);
        put(&*s, b"a", rec(Some(b"1"), 10, None));
        put(&*s, b"b", rec(None, 11, None));
        s.flush().unwrap();
    }
    let s = open(engine, dir.path(), 8);
    assert_eq!(s.stats(), StoreStats { keys: 1, expiring: 0, tombstones: 1 });
    assert_eq!(s.max_hlc().unwrap(), Hlc(11));
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match try_open(engine, dir.path(), 16) {
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => break e,
            Ok(_) => panic!("a store of 8 partitions opened with 16"),
        }
    };
    assert!(err.to_string().contains("store.partitions"), "{err}");
}

fn a_second_open_of_the_same_directory_is_refused_clearly(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let _s = open(engine, dir.path(), 8);
    let err = try_open(engine, dir.path(), 8).err().expect("second open refused");
    assert!(err.to_string().contains("in use by another process"), "{err}");
}

fn scan_partition_visits_each_record_once(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(engine, dir.path(), 4);
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

/// Each record applied to a partition gets the next number; a rewritten key moves to the
/// end; chunks respect their limits; numbers survive a reopen and are never reused, even
/// when the entry holding the highest one is purged.
fn the_change_sequence_numbers_each_partitions_records(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(engine, dir.path(), 1);
        for (n, k) in [b"a", b"b", b"c"].iter().enumerate() {
            put(&*s, *k, rec(Some(b"v"), 10 + n as u64, None));
        }
        // A late record with an old HLC (handoff, repair) still gets the next number: an
        // HLC cursor would skip it, this one does not.
        put(&*s, b"late", rec(Some(b"v"), 1, None));
        put(&*s, b"a", rec(Some(b"w"), 20, None));
        let all = sequence(&*s, 0, 0, 100);
        let keys: Vec<&[u8]> = all.iter().map(|(_, k)| &k[..]).collect();
        assert_eq!(keys, vec![&b"b"[..], b"c", b"late", b"a"]);
        assert_eq!(all.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![2, 3, 4, 5]);
        assert_eq!(s.last_seq(0), 5);
        assert_eq!(sequence(&*s, 0, 3, 1), vec![(4, b"late".to_vec()), (5, b"a".to_vec())]);
        // A byte limit: the first record comes whatever its size.
        let chunk = s.changes_after(0, 0, 100, 1).unwrap();
        assert_eq!((chunk.records.len(), chunk.more), (1, true));
        let (_, _, r) = &chunk.records[0];
        assert_eq!(r.value.as_deref(), Some(&b"v"[..]));
        // The key holding the highest number is purged (a tombstone past its grace).
        put(&*s, b"a", rec(None, Hlc::new(1_000, 0).0, None));
        assert_eq!(s.last_seq(0), 6);
        assert_eq!(s.purge_due(1_000 + 10_000, 100, &HoldNone).unwrap(), 1);
        s.flush().unwrap();
    }
    let s = open(engine, dir.path(), 1);
    assert_eq!(s.last_seq(0), 6);
    put(&*s, b"d", rec(Some(b"v"), 30, None));
    assert_eq!(sequence(&*s, 0, 5, 10), vec![(7, b"d".to_vec())]);
    // Records numbered by the write buffer keep their numbers, several in one batch;
    // numbering of its own goes on above them.
    let many: Vec<(u64, Bytes, Record)> =
        (0..20).map(|i| (1_000 + i, Bytes::from(format!("m{i}")), rec(Some(b"v"), 100 + i, None))).collect();
    s.apply_numbered(&many, &mut crate::store::count_now).unwrap();
    let numbered = sequence(&*s, 0, 7, 3);
    assert_eq!(numbered.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (1_000..1_020).collect::<Vec<_>>());
    assert_eq!(numbered[19].1, b"m19".to_vec());
    assert_eq!(s.last_seq(0), 1_019);
    put(&*s, b"e", rec(Some(b"v"), 200, None));
    assert_eq!(sequence(&*s, 0, 1_019, 10), vec![(1_020, b"e".to_vec())]);
}

/// A reader following the sequence while writers change keys of the same partition sees
/// the last record of every key: no number becomes visible before a lower one.
fn a_cursor_following_concurrent_writers_misses_nothing(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    follow_concurrent_writers(open(engine, dir.path(), 2), 2);
}

/// The same through the write buffer, with an applier moving records into the engine
/// while the reader reads: a record is seen in the buffer or in the engine, never in
/// neither.
fn a_cursor_following_writers_through_the_buffer_misses_nothing(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    follow_concurrent_writers(Arc::new(buffered(engine, dir.path(), 16 << 10, Duration::from_millis(1))), 8);
}

fn follow_concurrent_writers(s: Arc<dyn Store>, partitions: u16) {
    let done = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..300u64 {
                    let key = format!("w{w}-{}", i % 50);
                    let hlc = 1 + i * 3 + w;
                    s.put(key.as_bytes(), &mut || Record {
                        value: Some(Bytes::from(i.to_string())),
                        ..rec(None, hlc, None)
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let mut cursor = vec![0u64; partitions as usize];
            let mut seen = std::collections::BTreeMap::new();
            loop {
                let finished = done.load(Ordering::Acquire);
                for p in 0..partitions {
                    let chunk = s.changes_after(p, cursor[p as usize], 7, usize::MAX).unwrap();
                    for (_, key, r) in chunk.records {
                        seen.insert(key.to_vec(), r.hlc);
                    }
                    cursor[p as usize] = chunk.upto;
                }
                if finished && (0..partitions).all(|p| s.last_seq(p) == cursor[p as usize]) {
                    return seen;
                }
                std::thread::yield_now();
            }
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let seen = reader.join().unwrap();
    assert_eq!(seen.len(), 150);
    for (key, hlc) in seen {
        assert_eq!(s.get(&key).unwrap().unwrap().hlc, hlc, "{}", String::from_utf8_lossy(&key));
    }
}

/// Through the write buffer, as the node uses it: the sequence numbers records when the
/// applier moves them into the engine.
/// The write buffer numbers records as they enter it: they are in the sequence before
/// the applier moves them, keep their numbers when it does, and a reopen (after a crash:
/// the buffer is dropped unapplied, its log replayed) numbers above every number handed
/// out before, even numbers of records the crash could have lost.
fn the_buffered_store_numbers_records_as_they_enter_it(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let listed = |s: &BufferedStore| (0..8).flat_map(|p| sequence(s, p, 0, 3)).collect::<Vec<_>>();
    let before_drain;
    let highest;
    {
        let s = buffered(engine, dir.path(), 1 << 20, Duration::from_secs(3600));
        for i in 0..10u64 {
            s.put(format!("k{i}").as_bytes(), &mut || rec(Some(b"v"), 10 + i, None)).unwrap();
        }
        before_drain = listed(&s);
        assert_eq!(before_drain.len(), 10);
        s.drain();
        assert_eq!(listed(&s), before_drain, "applying keeps the numbers");
        // Rewritten in the buffer: the key moves to a new number, its old one is gone.
        s.put(b"k3", &mut || rec(Some(b"w"), 30, None)).unwrap();
        let after = listed(&s);
        assert_eq!(after.len(), 10);
        highest = (0..8).map(|p| s.last_seq(p)).max().unwrap();
        assert!(after.contains(&(highest, b"k3".to_vec())), "{after:?}");
        s.flush().unwrap();
    }
    let s = buffered(engine, dir.path(), 1 << 20, Duration::from_secs(3600));
    let reopened = listed(&s);
    assert_eq!(reopened.len(), 10);
    let (n, _) = reopened.iter().find(|(_, k)| k == b"k3").unwrap();
    assert!(*n > highest, "replayed k3 got {n}, not above {highest}");
    s.put(b"k11", &mut || rec(Some(b"v"), 40, None)).unwrap();
    assert!((0..8).all(|p| s.last_seq(p) > highest));
}

fn buffered(engine: Engine, dir: &Path, limit: usize, apply_delay: Duration) -> BufferedStore {
    let opts = BufferOptions {
        write_buffer_bytes: limit,
        wal_segment_bytes: 1 << 20,
        wal_buffer_bytes: 4096,
        apply_delay,
        // Small: the suite's few records still take several batches.
        apply_batch: 3,
    };
    BufferedStore::open(open(engine, &dir.join("store"), 8), &dir.join("wal"), opts).unwrap()
}

const CHILD_DIR: &str = "OPENCLUSTER_TEST_CRASH_DIR";
const CHILD_ENGINE: &str = "OPENCLUSTER_TEST_CRASH_ENGINE";
const CHILD_POLICY: &str = "OPENCLUSTER_TEST_CRASH_POLICY";

fn crash_value(i: u64) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat((i % 200) as usize)).into_bytes()
}

/// The child of the crash tests: writes keys through the write buffer as the node does
/// and prints `ack N` once every key up to N is durable (after each write's flush with
/// `always`; after each interval flush otherwise), until it is killed. Does nothing in a
/// normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(engine), Ok(policy)) =
        (std::env::var(CHILD_DIR), std::env::var(CHILD_ENGINE), std::env::var(CHILD_POLICY))
    else {
        return;
    };
    let engine = Engine::ALL.into_iter().find(|e| e.name() == engine).expect("an engine name");
    // A small buffer: the applier moves records into the engine and checkpoints the log
    // many times before the kill, so the engine's own durability is tested too.
    let s = Arc::new(buffered(engine, Path::new(&dir), 64 << 10, Duration::from_millis(20)));
    let written = Arc::new(AtomicU64::new(0));
    if policy == "interval" {
        let (s, written) = (s.clone(), written.clone());
        std::thread::spawn(move || {
            loop {
                let upto = written.load(Ordering::Acquire);
                s.flush().unwrap();
                println!("ack {upto}");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
    for i in 1..=1_000_000u64 {
        let value = Bytes::from(crash_value(i));
        s.put(format!("key{i}").as_bytes(), &mut || Record {
            value: Some(value.clone()),
            ..rec(None, i, None)
        })
        .unwrap();
        written.store(i, Ordering::Release);
        if policy == "always" {
            s.flush().unwrap();
            println!("ack {i}");
        }
    }
}

fn acknowledged_writes_survive_a_kill(engine: Engine, policy: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::suite::crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .env(CHILD_ENGINE, engine.name())
        .env(CHILD_POLICY, policy)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acked = 0;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ack ") {
            acked = n.trim().parse().unwrap();
        }
        if acked >= 3_000 || Instant::now() > deadline {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked >= 3_000, "the child acknowledged only {acked} writes before the deadline");
    let s = buffered(engine, dir.path(), 64 << 10, Duration::from_secs(3600));
    for i in 1..=acked {
        assert_eq!(
            value(&s, format!("key{i}").as_bytes()),
            Some(crash_value(i)),
            "{} {policy}: acknowledged key{i} of {acked} lost",
            engine.name()
        );
    }
    // Every stored key is in its partition's sequence exactly once.
    s.drain();
    let mut sequenced: Vec<Vec<u8>> = (0..8).flat_map(|p| sequence(&s, p, 0, 500)).map(|(_, k)| k).collect();
    let listed = sequenced.len();
    sequenced.sort();
    sequenced.dedup();
    assert_eq!(sequenced.len(), listed, "a key listed twice");
    assert_eq!(listed as u64, s.stats().keys);
}

macro_rules! suite {
    ($($engine:ident => $variant:expr),* $(,)?) => {$(
        mod $engine {
            use super::*;
            const E: Engine = $variant;
            #[test] fn writes_read_back_and_count() { super::writes_read_back_and_count(E) }
            #[test] fn blind_puts_replace_and_clean_up_the_old_entries() { super::blind_puts_replace_and_clean_up_the_old_entries(E) }
            #[test] fn numbered_batches_replace_what_they_find() { super::numbered_batches_replace_what_they_find(E) }
            #[test] fn decide_sees_current_records_and_may_keep() { super::decide_sees_current_records_and_may_keep(E) }
            #[test] fn repeated_keys_in_one_update_keep_the_last_write() { super::repeated_keys_in_one_update_keep_the_last_write(E) }
            #[test] fn changes_since_lists_records_in_hlc_order() { super::changes_since_lists_records_in_hlc_order(E) }
            #[test] fn purges_expired_values_and_old_tombstones_only_when_due() { super::purges_expired_values_and_old_tombstones_only_when_due(E) }
            #[test] fn a_held_tombstone_stays_until_released_and_is_looked_at_less_often() { super::a_held_tombstone_stays_until_released_and_is_looked_at_less_often(E) }
            #[test] fn a_rewritten_key_is_not_purged_by_its_old_expiry() { super::a_rewritten_key_is_not_purged_by_its_old_expiry(E) }
            #[test] fn reopen_keeps_data_counts_and_refuses_another_partition_count() { super::reopen_keeps_data_counts_and_refuses_another_partition_count(E) }
            #[test] fn a_second_open_of_the_same_directory_is_refused_clearly() { super::a_second_open_of_the_same_directory_is_refused_clearly(E) }
            #[test] fn scan_partition_visits_each_record_once() { super::scan_partition_visits_each_record_once(E) }
            #[test] fn the_change_sequence_numbers_each_partitions_records() { super::the_change_sequence_numbers_each_partitions_records(E) }
            #[test] fn a_cursor_following_concurrent_writers_misses_nothing() { super::a_cursor_following_concurrent_writers_misses_nothing(E) }
            #[test] fn a_cursor_following_writers_through_the_buffer_misses_nothing() { super::a_cursor_following_writers_through_the_buffer_misses_nothing(E) }
            #[test] fn the_buffered_store_numbers_records_as_they_enter_it() { super::the_buffered_store_numbers_records_as_they_enter_it(E) }
            #[test] fn acknowledged_writes_survive_a_kill_with_fsync_always() { super::acknowledged_writes_survive_a_kill(E, "always") }
            #[test] fn acknowledged_writes_survive_a_kill_with_fsync_interval() { super::acknowledged_writes_survive_a_kill(E, "interval") }
        }
    )*};
}

suite!(sled => Engine::Sled, redb => Engine::Redb, fjall => Engine::Fjall, lmdb => Engine::Lmdb);
