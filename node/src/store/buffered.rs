//! The write buffer in front of a storage engine: a write-ahead log plus an in-memory
//! table of the latest records not yet applied to the engine.
//!
//! Why: an embedded B-tree such as sled costs tens of microseconds of CPU per random
//! write once its index entries are counted, several times what a Redis client expects a
//! SET to cost. Here a write costs an append to the log buffer and a hash-map insert;
//! durability comes from the log (synced by the flusher per the fsync policy), and a
//! background applier moves records into the engine at the engine's pace, using the
//! same last-writer-wins rule as replication (so applying twice, or replaying the log
//! after a crash, changes nothing). Reads look in the table first.
//!
//! The applier starts when the buffer is half full or its oldest record has waited
//! `apply_delay`: like an LSM memtable, the buffer absorbs bursts without stealing CPU from
//! the requests, and a key rewritten many times in that window reaches the engine once.
//! Memory is bounded: past `write_buffer_bytes` of unapplied records, writers wait (see
//! [`WriteBudget`]) until the applier catches up, so a sustained write rate above what
//! the engine can absorb turns into backpressure, not growth. The price of a large buffer
//! is a longer log replay after a crash.
//!
//! The buffer also numbers the records as they enter it, in each partition's local change
//! sequence (see [`Store::changes_after`]), so the WAN connector ships a write as soon as
//! it is buffered instead of once it is applied. A number may be handed out for a record
//! that a crash then loses (the log is synced by the fsync policy), and the connector may
//! have shipped it: so numbers must never be handed out twice, even across a crash. Each
//! open starts a new numbering epoch, kept in a file beside the log, and numbers of epoch
//! e start at e << 40 (2^40 changes per partition per run): every number of a run is above
//! every number of the runs before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::packed::{Shard, counts, key_bytes};
use super::wal::Wal;
use super::{Changes, Store, StoreError, StoreStats, TombstoneHold, Write, chunk_bytes, count_now};
use crate::hlc::Hlc;
use crate::placement::{Partition, partition_of};
use crate::record::Record;

const LOCK_STRIPES: usize = 1024;
/// How often the applier looks at the buffer while it is waiting for work.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Records the applier writes to the engine in one batch unless the engine asks for
/// another size ([`BufferOptions::apply_batch`]): large enough that a B-tree's commit is
/// shared by many records.
pub const APPLY_BATCH: usize = 512;
/// The most records in one batch: the commit of a B-tree that syncs at each (LMDB) is
/// shared by more records, and a page changed by several of them is written once.
pub const APPLY_BATCH_MAX: usize = 8192;
/// Most bytes of keys and values the log replay at start writes to the engine in one batch.
const REPLAY_BATCH_BYTES: usize = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sizes of the write buffer.
#[derive(Clone, Copy, Debug)]
pub struct BufferOptions {
    /// Unapplied records kept in memory before writers wait.
    pub write_buffer_bytes: usize,
    /// Log segment size before a new one is started.
    pub wal_segment_bytes: u64,
    /// Log bytes buffered in memory before they are written out (between syncs).
    pub wal_buffer_bytes: usize,
    /// Longest a record waits in the buffer before the applier starts.
    pub apply_delay: Duration,
    /// Most records in one engine batch, at most [`APPLY_BATCH_MAX`]: the engine's memory
    /// for a batch grows with it (LMDB copies every page a commit changes, and keeps the
    /// copies of its largest commit for reuse until it closes).
    pub apply_batch: usize,
}

/// Lets async writers wait for room in the buffer without blocking a thread.
#[derive(Debug, Default)]
pub struct WriteBudget {
    used: AtomicUsize,
    limit: usize,
    /// Memory pressure: the buffer counts as full at a quarter of its limit.
    pressure: AtomicBool,
    /// The applier's last pass failed (the engine refused writes: a full disk, a broken
    /// engine): waiting for room could last forever, so writers are not held but refused
    /// once the buffer is full (see [`WriteBudget::refusal`]).
    failing: Mutex<Option<String>>,
    room: tokio::sync::Notify,
}

impl WriteBudget {
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    /// The limit in force: the configured one, or a quarter of it under memory pressure.
    pub fn limit(&self) -> usize {
        if self.pressure.load(Ordering::Relaxed) { self.limit / 4 } else { self.limit }
    }
    /// Under memory pressure the buffer holds a quarter of its limit: writers wait
    /// sooner and the applier moves records to the engine in smaller batches, so the node
    /// slows its writers instead of growing.
    pub fn set_pressure(&self, on: bool) {
        if self.pressure.swap(on, Ordering::Relaxed) && !on {
            self.room.notify_waiters();
        }
    }
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::Relaxed)
    }
    fn has_room(&self) -> bool {
        self.used() < self.limit() || lock(&self.failing).is_some()
    }
    /// Why a write must be refused now: the buffer is full and the engine is failing, so
    /// the write could only grow memory without bound.
    fn refusal(&self) -> Option<StoreError> {
        if self.used() < self.limit() {
            return None;
        }
        lock(&self.failing).as_ref().map(|why| {
            StoreError::Io(format!(
                "write refused: the write buffer is full and the storage engine cannot take its records ({why})"
            ))
        })
    }
    fn set_failing(&self, why: Option<String>) {
        let now = why.is_some();
        let was = std::mem::replace(&mut *lock(&self.failing), why).is_some();
        if now && !was {
            // Writers waiting for room are refused instead.
            self.room.notify_waiters();
        }
    }
    /// Returns once the buffer is below its limit, or the engine is failing (the write
    /// is then refused with an error, not held forever).
    pub async fn wait_for_room(&self) {
        while !self.has_room() {
            let room = self.room.notified();
            if self.has_room() {
                return;
            }
            room.await;
        }
    }
}

/// What the buffer holds now, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferStatus {
    pub records: u64,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub applied_total: u64,
    pub wal_bytes: u64,
}

/// Bits of a change number below its numbering epoch.
pub const EPOCH_SHIFT: u32 = 40;

/// How many positions of a change sequence lie between `from` and `to`: within one
/// numbering epoch their difference; across epochs (the node restarted), the positions
/// of `to`'s epoch only, as the rest of the earlier epoch is unknown and most of the gap
/// between epochs was never handed out.
pub fn positions_between(from: u64, to: u64) -> u64 {
    if from >> EPOCH_SHIFT == to >> EPOCH_SHIFT {
        to.saturating_sub(from)
    } else {
        to & ((1 << EPOCH_SHIFT) - 1)
    }
}
/// The file beside the log that holds the last numbering epoch.
const EPOCH_FILE: &str = "numbering-epoch";

/// Starts a new numbering epoch: one above both the last one recorded in `wal_dir` and
/// the epoch of the highest number the engine holds (should the file have been lost),
/// recorded durably before any number of it is handed out.
fn next_epoch(wal_dir: &std::path::Path, engine_last: u64) -> Result<u64, StoreError> {
    let path = wal_dir.join(EPOCH_FILE);
    let io = |e: std::io::Error| StoreError::Io(format!("numbering epoch file {}: {e}", path.display()));
    std::fs::create_dir_all(wal_dir).map_err(io)?;
    let recorded = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|e| StoreError::Open {
            path: path.clone(),
            reason: format!("{text:?} is not a numbering epoch: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let epoch = recorded.max(engine_last >> EPOCH_SHIFT) + 1;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{epoch}\n")).map_err(io)?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(wal_dir).and_then(|f| f.sync_all()).map_err(io)?;
    Ok(epoch)
}

/// The bytes of a key and its value.
fn payload_bytes(key: &[u8], r: &Record) -> usize {
    key.len() + r.value.as_ref().map_or(0, |v| v.len())
}

struct Inner {
    engine: Arc<dyn Store>,
    wal: Arc<Wal>,
    partitions: u16,
    /// The buffered records of each partition; each entry holds what the engine held for
    /// its key as counts, `None` until looked up (a plain SET does not read the engine:
    /// [`Inner::resolve_bases`]).
    shards: Box<[Mutex<Shard>]>,
    /// The origin datacenters' names, shared by the records read out of the buffer.
    datacenters: Mutex<Vec<Arc<str>>>,
    locks: Box<[Mutex<()>]>,
    budget: WriteBudget,
    /// Counts of the buffered records minus the counts they replace in the engine.
    delta: [AtomicI64; 3],
    /// Buffered entries whose base is not looked up yet (`Entry::base` is `None`).
    unresolved: AtomicUsize,
    records: AtomicUsize,
    /// The last change number handed out per partition; changed only under the
    /// partition's shard lock, so whoever holds it sees every lower number buffered or
    /// in the engine.
    numbers: Box<[AtomicU64]>,
    /// Woken when a number is handed out: the connectors' long polls wait on it.
    signal: Arc<super::signal::ChangeSignal>,
    applied: AtomicU64,
    stop: AtomicBool,
    /// Apply everything now, whatever the delay (`drain`).
    force: AtomicBool,
    apply_delay: Duration,
    /// Most records in one engine batch.
    apply_batch: usize,
    /// Held shared by a writer from its log append until its records are in the buffer,
    /// and exclusively by the applier to read how far the log goes before a pass: so that
    /// every write logged up to that point is in the buffer, and the pass applies it (or a
    /// newer write of its key) before the log segments holding it are deleted.
    log_gate: RwLock<()>,
    /// Held exclusively by the applier while the engine counts a batch and the counts in
    /// `delta` give the batch's records up, and shared by whoever reads the counts: in
    /// between, a record would be counted in both.
    counting: RwLock<()>,
    /// When the oldest record still buffered was written.
    oldest: Mutex<Option<std::time::Instant>>,
    wake: (Mutex<()>, Condvar),
    /// Signalled after every applier pass.
    passed: Condvar,
}

pub struct BufferedStore {
    inner: Arc<Inner>,
    applier: Option<JoinHandle<()>>,
}

/// Opens the log in `wal_dir`, writing what it holds from an earlier run into `engine`
/// (each record that wins over the engine's, numbered from `numbers`), and returns it.
fn replay(
    engine: &dyn Store,
    wal_dir: &std::path::Path,
    opts: &BufferOptions,
    apply_batch: usize,
    numbers: &[AtomicU64],
) -> Result<Arc<Wal>, StoreError> {
    // Replayed records get numbers of this run: a number of the last run may have been
    // handed out for one of them and then lost with the log's tail. They are gathered, as
    // the write buffer gathers writes and in as much memory, and written to the engine a
    // partition at a time: a batch of records in log order changes a tree page per
    // record, and replayed ten times slower than the applier writes. Engine batches are
    // bounded in bytes too, like the engine's own pace: one batch of 512 large values
    // would hold hundreds of MiB in one engine transaction.
    let partitions = engine.partitions();
    let started = std::time::Instant::now();
    let intern = |dc: &str| Arc::from(dc);
    let mut gathered: Vec<Shard> = (0..partitions).map(|_| Shard::default()).collect();
    let (mut held, mut replayed) = (0usize, 0usize);
    let apply = |gathered: &mut [Shard]| -> Result<(), StoreError> {
        let (mut records, mut bytes) = (Vec::with_capacity(apply_batch), 0);
        for shard in gathered.iter_mut() {
            for e in shard.iter() {
                let record = e.record(intern);
                bytes += payload_bytes(e.key(), &record);
                records.push((e.seq(), key_bytes(e), record));
                if records.len() >= apply_batch || bytes >= REPLAY_BATCH_BYTES {
                    engine.apply_numbered(&records, &mut count_now)?;
                    (records, bytes) = (Vec::with_capacity(apply_batch), 0);
                }
            }
            *shard = Shard::default();
        }
        if !records.is_empty() {
            engine.apply_numbered(&records, &mut count_now)?;
        }
        Ok(())
    };
    let wal = Wal::open_replaying(wal_dir, opts.wal_segment_bytes, opts.wal_buffer_bytes, &mut |records| {
        for (key, record) in records {
            replayed += 1;
            let p = partition_of(&key, partitions);
            let shard = &mut gathered[p as usize];
            let current = match shard.get(&key) {
                Some(e) => Some(e.record(intern)),
                None => engine.get(&key)?,
            };
            if !record.wins_over(current.as_ref()) {
                continue;
            }
            let n = numbers[p as usize].fetch_add(1, Ordering::Relaxed) + 1;
            let before = shard.bytes();
            shard.insert(&key, n, None, &record);
            held = (held + shard.bytes()).saturating_sub(before);
            if held >= opts.write_buffer_bytes {
                apply(&mut gathered)?;
                held = 0;
            }
        }
        Ok(())
    })?;
    if replayed > 0 {
        apply(&mut gathered)?;
        engine.flush()?;
        tracing::info!(
            records = replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "replayed the write-ahead log into the store"
        );
    }
    Ok(wal)
}

impl BufferedStore {
    /// Wraps `engine`, replaying what the log in `wal_dir` holds from an earlier run into
    /// it first, and starts the applier thread.
    pub fn open(
        engine: Arc<dyn Store>,
        wal_dir: &std::path::Path,
        opts: BufferOptions,
    ) -> Result<Self, StoreError> {
        let partitions = engine.partitions();
        let apply_batch = opts.apply_batch.clamp(1, APPLY_BATCH_MAX);
        let engine_last = (0..partitions).map(|p| engine.last_seq(p)).max().unwrap_or(0);
        let base = next_epoch(wal_dir, engine_last)? << EPOCH_SHIFT;
        let numbers: Box<[AtomicU64]> =
            (0..partitions).map(|p| AtomicU64::new(engine.last_seq(p).max(base))).collect();
        let wal = replay(&*engine, wal_dir, &opts, apply_batch, &numbers)?;
        wal.checkpoint(wal.last_seq())?;
        let inner = Arc::new(Inner {
            engine,
            wal,
            partitions,
            shards: (0..partitions).map(|_| Mutex::new(Shard::default())).collect(),
            datacenters: Mutex::new(Vec::new()),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            budget: WriteBudget {
                used: AtomicUsize::new(0),
                limit: opts.write_buffer_bytes,
                pressure: AtomicBool::new(false),
                failing: Mutex::new(None),
                room: Default::default(),
            },
            delta: Default::default(),
            unresolved: AtomicUsize::new(0),
            records: AtomicUsize::new(0),
            numbers,
            signal: Default::default(),
            applied: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            force: AtomicBool::new(false),
            apply_delay: opts.apply_delay,
            apply_batch,
            log_gate: RwLock::new(()),
            counting: RwLock::new(()),
            oldest: Mutex::new(None),
            wake: (Mutex::new(()), Condvar::new()),
            passed: Condvar::new(),
        });
        let applier = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("store-applier".into())
                .spawn(move || inner.run_applier())
                .map_err(|e| StoreError::Io(format!("cannot start the store applier thread: {e}")))?
        };
        Ok(BufferedStore { inner, applier: Some(applier) })
    }

    pub fn budget(&self) -> &WriteBudget {
        &self.inner.budget
    }

    pub fn status(&self) -> BufferStatus {
        let i = &self.inner;
        BufferStatus {
            records: i.records.load(Ordering::Relaxed) as u64,
            bytes: i.budget.used() as u64,
            limit_bytes: i.budget.limit() as u64,
            applied_total: i.applied.load(Ordering::Relaxed),
            wal_bytes: i.wal.disk_bytes(),
        }
    }

    /// Blocks until every record buffered so far has reached the engine.
    pub fn drain(&self) {
        let i = &self.inner;
        i.force.store(true, Ordering::Release);
        let mut g = lock(&i.wake.0);
        while i.records.load(Ordering::Acquire) > 0 {
            i.wake.1.notify_one();
            g = i.passed.wait_timeout(g, IDLE_WAIT).unwrap_or_else(|p| p.into_inner()).0;
        }
        i.force.store(false, Ordering::Release);
    }
}

impl Drop for BufferedStore {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.wake_applier();
        if let Some(t) = self.applier.take()
            && t.join().is_err()
        {
            tracing::error!("the store applier thread panicked");
        }
    }
}

impl Inner {
    fn stripe(&self, key: &[u8]) -> &Mutex<()> {
        &self.locks[(xxh3_64(key) as usize) % LOCK_STRIPES]
    }

    fn shard(&self, p: Partition) -> MutexGuard<'_, Shard> {
        lock(&self.shards[p as usize])
    }

    /// The shared name of a buffered record's origin datacenter.
    fn intern(&self, name: &str) -> Arc<str> {
        let mut names = lock(&self.datacenters);
        if let Some(known) = names.iter().find(|n| &***n == name) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(name);
        // A few datacenters in practice; a flood of names is not kept.
        if names.len() < 64 {
            names.push(name.clone());
        }
        name
    }

    /// Changes the budget's count by what a shard's memory changed.
    fn charge(&self, before: usize, after: usize) {
        if after >= before {
            self.budget.used.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.budget.used.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    fn wake_applier(&self) {
        let _g = lock(&self.wake.0);
        self.wake.1.notify_one();
    }

    fn add_delta(&self, s: StoreStats, sign: i64) {
        self.delta[0].fetch_add(sign * s.keys as i64, Ordering::Relaxed);
        self.delta[1].fetch_add(sign * s.expiring as i64, Ordering::Relaxed);
        self.delta[2].fetch_add(sign * s.tombstones as i64, Ordering::Relaxed);
    }

    /// The current record of `key`: the buffered one, else the engine's.
    fn read(&self, p: Partition, key: &[u8]) -> Result<Option<Record>, StoreError> {
        if let Some(e) = self.shard(p).get(key) {
            return Ok(Some(e.record(|dc| self.intern(dc))));
        }
        self.engine.get(key)
    }

    /// Buffers `record` for `key` (already in the log). The caller holds the key's stripe.
    /// `engine_record` is what the engine holds, when the caller read it (None = unknown).
    fn buffer(
        &self,
        p: Partition,
        key: &[u8],
        record: &Record,
        engine_record: Option<Option<&Record>>,
    ) -> Result<(), StoreError> {
        let mut shard = self.shard(p);
        let before = shard.bytes();
        let seq = self.number(p);
        // What the engine holds is only looked up when asked for (`resolve_bases`): a
        // B-tree read per SET cost a tenth of a node's CPU under sustained writes.
        let base = engine_record.map(counts);
        match shard.insert(key, seq, base, record) {
            Some((old, _)) => self.add_delta(old, -1),
            None => {
                match base {
                    Some(b) => self.add_delta(b, -1),
                    None => {
                        self.unresolved.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if self.records.fetch_add(1, Ordering::Release) == 0 {
                    lock(&self.oldest).get_or_insert_with(std::time::Instant::now);
                }
            }
        }
        self.add_delta(counts(Some(record)), 1);
        self.charge(before, shard.bytes());
        drop(shard);
        self.signal.wake();
        Ok(())
    }

    /// Held by a writer from its log append until its records are buffered (`log_gate`).
    fn enter_log(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.log_gate.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every record buffered for partition `p` now: change number, key and record.
    fn buffered(&self, p: Partition) -> impl Iterator<Item = (u64, Bytes, Record)> {
        let shard = self.shard(p);
        let all: Vec<_> =
            shard.iter().map(|e| (e.seq(), key_bytes(e), e.record(|dc| self.intern(dc)))).collect();
        all.into_iter()
    }

    /// Gives back the table memory of a partition most of whose records were applied.
    fn shrink(&self, p: Partition) {
        let mut shard = self.shard(p);
        let before = shard.bytes();
        shard.shrink();
        self.charge(before, shard.bytes());
    }

    /// Takes an entry's base out of the counts: what the engine held is now counted by
    /// the engine itself.
    fn release_base(&self, base: Option<StoreStats>) {
        match base {
            Some(b) => self.add_delta(b, 1),
            None => {
                self.unresolved.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Looks up what the engine holds for every buffered entry created without looking,
    /// so that the counts are exact. The engine is read with no shard locked (a read may
    /// wait for the disk, and writers take the shards on the async workers); a result is
    /// kept only if the entry is still the one looked up, with the same change number. The
    /// applier may have written that entry to the engine meanwhile, and then the read
    /// found the entry's own record, which is right too: an entry's base is added back
    /// when the applier drops it, so what it holds only matters until then. An entry
    /// rewritten during the look-up stays uncounted until the next one or until it is
    /// applied. One engine read per entry not yet looked up; entries applied first never
    /// need one.
    fn resolve_bases(&self) -> Result<(), StoreError> {
        if self.unresolved.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        for p in 0..self.partitions {
            let wanted: Vec<(Bytes, u64)> = self
                .shard(p)
                .iter()
                .filter(|e| e.base().is_none())
                .map(|e| (key_bytes(e), e.seq()))
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let mut found = Vec::with_capacity(wanted.len());
            for (key, seq) in wanted {
                let base = counts(self.engine.get(&key)?.as_ref());
                found.push((key, seq, base));
            }
            let mut shard = self.shard(p);
            for (key, seq, base) in found {
                if shard.get(&key).is_some_and(|e| e.seq() == seq && e.base().is_none()) {
                    shard.set_base(&key, Some(seq), base);
                    self.add_delta(base, -1);
                    self.unresolved.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// The next change number of partition `p`; the caller holds its shard.
    fn number(&self, p: Partition) -> u64 {
        self.numbers[p as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// True when the buffer should be applied now.
    fn due(&self) -> bool {
        let records = self.records.load(Ordering::Acquire);
        records > 0
            && (self.force.load(Ordering::Acquire)
                || self.budget.used() >= self.budget.limit() / 2
                || lock(&self.oldest).is_some_and(|t| t.elapsed() >= self.apply_delay))
    }

    fn run_applier(self: Arc<Self>) {
        // The applier runs at the priority of the request threads. Once the buffer is full
        // its pace is the node's write rate (writers wait for the room it makes); at nice
        // 19 it spent a third of its time waiting for the CPU behind the very writers
        // that waited for it, and sustained writes ran 20% slower (docs/storage-study.md).
        loop {
            if self.stop.load(Ordering::Acquire) {
                // Whatever is still buffered is in the log and is replayed at the next start.
                return;
            }
            if !self.due() {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                let g = lock(&self.wake.0);
                self.passed.notify_all();
                let _ = self.wake.1.wait_timeout(g, IDLE_WAIT);
                continue;
            }
            // A segment larger than four buffers is closed first, so that the checkpoint
            // after this pass can delete it: the log then holds a few buffers at most, and
            // a restart replays that, not everything since the segment began. (Closing
            // costs a sync and a new file: not at every pass.)
            if self.wal.current_segment_bytes() >= 4 * self.budget.limit as u64
                && let Err(e) = self.wal.roll()
            {
                tracing::warn!(error = %e, "starting a new write-ahead log segment failed; will retry");
            }
            // How far the log goes, and the change numbers handed out up to there: the pass
            // applies the records numbered up to them, which hold every write logged up to
            // `pass_seq` or a newer write of its key.
            let (pass_seq, upto) = {
                let _gate = self.log_gate.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                let upto: Vec<u64> = self.numbers.iter().map(|n| n.load(Ordering::Relaxed)).collect();
                (self.wal.last_seq(), upto)
            };
            let pass_started = std::time::Instant::now();
            let result = self.apply_pass(&upto);
            {
                let mut oldest = lock(&self.oldest);
                // What is left was written during the pass.
                *oldest = (self.records.load(Ordering::Acquire) > 0).then_some(pass_started);
            }
            let complete = match result {
                Ok(complete) => complete,
                Err(e) => {
                    tracing::error!(error = %e, "applying buffered writes to the store failed; will retry");
                    self.budget.set_failing(Some(e.to_string()));
                    let g = lock(&self.wake.0);
                    let _ = self.wake.1.wait_timeout(g, IDLE_WAIT);
                    continue;
                }
            };
            self.budget.set_failing(None);
            if !complete {
                // Stopped half way (the node shuts down): records of the pass are still
                // only in the log, which must stay whole for the replay at the next start.
                self.passed.notify_all();
                return;
            }
            // Everything logged up to `pass_seq` is now in the engine (or superseded by a
            // later, still logged write): once the engine is flushed, the log can go.
            match self.engine.flush().and_then(|_| self.wal.checkpoint(pass_seq)) {
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "checkpointing the write-ahead log failed; will retry"),
            }
            self.passed.notify_all();
            if self.stop.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// Applies the buffered records of each partition `p` numbered up to `upto[p]`. Those
    /// written during the pass wait for the next one: a pass that took them too would,
    /// under a sustained load, run on for as long as the writers keep up with it, and the
    /// log could be cut only after it (at twice the buffer's records, it held four).
    /// Returns whether every partition was applied (`false`: a shutdown stopped it).
    fn apply_pass(&self, upto: &[u64]) -> Result<bool, StoreError> {
        let mut pending: Vec<(Bytes, u64, Partition)> = Vec::with_capacity(self.apply_batch);
        for p in 0..self.partitions {
            {
                let shard = self.shard(p);
                let last = upto[p as usize];
                pending.extend(shard.iter().filter(|e| e.seq() <= last).map(|e| (key_bytes(e), e.seq(), p)));
            }
            while pending.len() >= self.apply_batch {
                let rest = pending.split_off(self.apply_batch);
                self.apply_batch(&pending)?;
                pending = rest;
            }
            if self.stop.load(Ordering::Acquire) {
                return Ok(false);
            }
        }
        if !pending.is_empty() {
            self.apply_batch(&pending)?;
        }
        Ok(true)
    }

    /// Applies the listed buffered records in one engine batch and drops from the buffer
    /// those not rewritten meanwhile. No key stripe is held while the engine writes: a
    /// slow engine (a B-tree reading its pages back under a memory limit) must not block
    /// writers, which take the stripes on the async workers. A key rewritten during the
    /// batch keeps its newer entry, which a later batch applies.
    fn apply_batch(&self, batch: &[(Bytes, u64, Partition)]) -> Result<(), StoreError> {
        let mut records = Vec::with_capacity(batch.len());
        let mut parts = Vec::with_capacity(batch.len());
        for (key, seq, p) in batch {
            match self.shard(*p).get(key) {
                Some(e) if e.seq() == *seq => {
                    records.push((*seq, key.clone(), e.record(|dc| self.intern(dc))));
                    parts.push(*p);
                }
                _ => {} // rewritten since: the newer entry is applied later
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        // No read first: a buffered record passed the last-writer-wins check against
        // what the engine held when it was written, and only this thread changes the
        // engine's records since.
        self.engine.apply_numbered(&records, &mut |count| {
            let _counting = self.counting.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            count();
            self.give_up_applied(&records, &parts);
        })?;
        // The partitions are done with once their records are: give back their tables.
        let mut done = parts;
        done.dedup();
        for p in done {
            self.shrink(p);
        }
        self.budget.room.notify_waiters();
        Ok(())
    }

    /// Drops the applied records from the buffer and their counts from `delta`: the
    /// engine's counts include them now. A record rewritten meanwhile stays buffered.
    fn give_up_applied(&self, records: &[(u64, Bytes, Record)], parts: &[Partition]) {
        for ((seq, key, applied), &p) in records.iter().zip(parts) {
            let mut shard = self.shard(p);
            let before = shard.bytes();
            if let Some((record, base)) = shard.remove_if(key, *seq) {
                self.add_delta(record, -1);
                self.release_base(base);
                self.records.fetch_sub(1, Ordering::Release);
                self.applied.fetch_add(1, Ordering::Relaxed);
            } else if let Some(old) = shard.set_base(key, None, counts(Some(applied))) {
                // Rewritten during the batch: the engine now holds `applied`, which is
                // what the newer entry replaces (its counts are taken against that).
                self.release_base(old);
                self.add_delta(counts(Some(applied)), -1);
            }
            self.charge(before, shard.bytes());
        }
    }
}

impl Store for BufferedStore {
    fn engine(&self) -> &'static str {
        self.inner.engine.engine()
    }

    fn partitions(&self) -> u16 {
        self.inner.partitions
    }

    fn get(&self, key: &[u8]) -> Result<Option<Record>, StoreError> {
        self.inner.read(partition_of(key, self.inner.partitions), key)
    }

    fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        let p = partition_of(key, self.inner.partitions);
        if let Some(e) = self.inner.shard(p).get(key) {
            return Ok(e.view().live_value(now_ms).map(Bytes::copy_from_slice));
        }
        self.inner.engine.get_value(key, now_ms)
    }

    fn update(
        &self,
        keys: &[&[u8]],
        decide: &mut dyn FnMut(&[Option<Record>]) -> Vec<Write>,
    ) -> Result<usize, StoreError> {
        let i = &*self.inner;
        let mut stripes: Vec<usize> = keys.iter().map(|k| (xxh3_64(k) as usize) % LOCK_STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // Ascending order: multi-key updates cannot deadlock.
        let _guards: Vec<_> = stripes.iter().map(|&s| lock(&i.locks[s])).collect();
        let parts: Vec<Partition> = keys.iter().map(|k| partition_of(k, i.partitions)).collect();
        let mut in_engine: Vec<bool> = Vec::with_capacity(keys.len());
        let mut current = Vec::with_capacity(keys.len());
        for (k, &p) in keys.iter().zip(&parts) {
            let buffered = i.shard(p).get(k).map(|e| e.record(|dc| i.intern(dc)));
            in_engine.push(buffered.is_none());
            current.push(match buffered {
                Some(r) => Some(r),
                None => i.engine.get(k)?,
            });
        }
        let writes = decide(&current);
        let puts: Vec<(usize, Record)> = writes
            .into_iter()
            .enumerate()
            .filter_map(|(n, w)| match w {
                Write::Put(r) => Some((n, r)),
                Write::Keep => None,
            })
            .collect();
        if puts.is_empty() {
            return Ok(0);
        }
        if let Some(refused) = i.budget.refusal() {
            return Err(refused);
        }
        let logged: Vec<(&[u8], &Record)> = puts.iter().map(|(n, r)| (keys[*n], r)).collect();
        let _gate = i.enter_log();
        i.wal.append(&logged)?;
        for (n, record) in puts.iter() {
            let engine_record = in_engine[*n].then_some(current[*n].as_ref());
            i.buffer(parts[*n], keys[*n], record, engine_record)?;
            // A key repeated in this update is buffered now: later writes replace it.
            if let Some(flag) = in_engine.get_mut(*n) {
                *flag = false;
            }
        }
        Ok(puts.len())
    }

    fn put(&self, key: &[u8], make: &mut dyn FnMut() -> Record) -> Result<(), StoreError> {
        let i = &*self.inner;
        if let Some(refused) = i.budget.refusal() {
            return Err(refused);
        }
        let _stripe = lock(i.stripe(key));
        let record = make();
        let _gate = i.enter_log();
        i.wal.append(&[(key, &record)])?;
        i.buffer(partition_of(key, i.partitions), key, &record, None)
    }

    fn max_hlc(&self) -> Result<Hlc, StoreError> {
        let i = &*self.inner;
        let buffered = i.shards.iter().flat_map(|s| lock(s).iter().map(|e| e.hlc()).max()).max();
        Ok(i.engine.max_hlc()?.max(buffered.unwrap_or(Hlc::ZERO)))
    }

    fn scan_partition(
        &self,
        partition: Partition,
        visit: &mut dyn FnMut(&[u8], &Record),
    ) -> Result<(), StoreError> {
        let buffered: BTreeMap<Bytes, Record> =
            self.inner.buffered(partition).map(|(_, k, r)| (k, r)).collect();
        let mut merged: BTreeMap<Bytes, Record> = BTreeMap::new();
        self.inner.engine.scan_partition(partition, &mut |k, r| {
            if !buffered.contains_key(k) {
                merged.insert(Bytes::copy_from_slice(k), r.clone());
            }
        })?;
        merged.extend(buffered);
        for (k, r) in &merged {
            visit(k, r);
        }
        Ok(())
    }

    /// The engine's chunk merged with the buffer. When the engine stopped at a limit,
    /// buffered records past its last HLC wait for a later chunk: the engine may hold
    /// older records between the two that this chunk must not skip.
    fn changes_since(
        &self,
        partition: Partition,
        since: Hlc,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Changes, StoreError> {
        let buffered: HashMap<Bytes, Record> =
            self.inner.buffered(partition).map(|(_, k, r)| (k, r)).collect();
        let engine = self.inner.engine.changes_since(partition, since, limit, max_bytes)?;
        let mut all: Vec<(Bytes, Record)> =
            engine.records.into_iter().filter(|(k, _)| !buffered.contains_key(k)).collect();
        all.extend(
            buffered
                .into_iter()
                .filter(|(_, r)| r.hlc > since && engine.next.is_none_or(|next| r.hlc <= next)),
        );
        all.sort_by_key(|(_, r)| r.hlc);
        let mut out = Changes { records: Vec::with_capacity(all.len().min(limit)), next: engine.next };
        let mut bytes = 0;
        for (key, record) in all {
            let size = chunk_bytes(&key, &record);
            if let Some((_, last)) = out.records.last()
                && (out.records.len() >= limit || bytes + size > max_bytes)
            {
                out.next = Some(last.hlc);
                break;
            }
            bytes += size;
            out.records.push((key, record));
        }
        Ok(out)
    }

    /// The buffered records numbered after `after`, merged with the engine's sequence, up
    /// to the head as the buffer is read (`head`: every number up to it was handed out
    /// before, so its record is buffered then, or superseded in the buffer then, or in the
    /// engine by then; numbers past it wait for a later chunk, whatever the engine shows).
    /// The buffer is read first: a record the applier moves meanwhile is in the engine
    /// before it leaves the buffer, so it is seen in one or the other (or both, with the
    /// same number: it is listed once). An engine record whose key the buffer holds under
    /// a newer number is superseded and left out: looked up in the buffer once the engine
    /// was read, rather than by copying every buffered key first.
    /// When the engine stopped at a limit, buffered numbers past its last wait for a
    /// later chunk: the engine may hold lower numbers beyond it.
    fn changes_after(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<super::Sequenced, StoreError> {
        let (head, mut buffered): (u64, Vec<(u64, Bytes, Record)>) = {
            let i = &self.inner;
            let shard = i.shard(partition);
            let head = i.numbers[partition as usize].load(Ordering::Relaxed);
            let newer = shard
                .iter()
                .filter(|e| e.seq() > after)
                .map(|e| (e.seq(), key_bytes(e), e.record(|dc| i.intern(dc))))
                .collect();
            (head, newer)
        };
        if head <= after {
            return Ok(super::Sequenced { records: Vec::new(), more: false, upto: after });
        }
        let engine = self.inner.engine.changes_after(partition, after, limit, max_bytes)?;
        let mut all: Vec<(u64, Bytes, Record)> = if engine.records.is_empty() {
            Vec::new()
        } else {
            let shard = self.inner.shard(partition);
            engine
                .records
                .into_iter()
                .filter(|(n, k, _)| *n <= head && shard.get(k).is_none_or(|e| e.seq() <= *n))
                .collect()
        };
        // Everything up to the engine's last number is covered, even when all its
        // records were shadowed by buffered ones.
        let mut out = super::Sequenced {
            records: Vec::new(),
            more: engine.more && engine.upto < head,
            upto: engine.upto.min(head),
        };
        if out.more {
            buffered.retain(|(n, _, _)| *n <= engine.upto);
        }
        all.extend(buffered);
        all.sort_unstable_by_key(|(n, _, _)| *n);
        all.dedup_by_key(|(n, _, _)| *n);
        let mut bytes = 0;
        for (n, key, record) in all {
            let size = chunk_bytes(&key, &record);
            if !out.records.is_empty() && (out.records.len() >= limit || bytes + size > max_bytes) {
                out.more = true;
                out.upto = out.records.last().map_or(after, |(n, _, _)| *n);
                break;
            }
            bytes += size;
            out.upto = out.upto.max(n);
            out.records.push((n, key, record));
        }
        if !out.more {
            // Every number up to the head is listed or superseded (or purged since).
            out.upto = head;
        }
        Ok(out)
    }

    fn last_seq(&self, partition: Partition) -> u64 {
        let _shard = self.inner.shard(partition);
        self.inner.numbers[partition as usize].load(Ordering::Relaxed)
    }

    fn change_signal(&self) -> Option<Arc<super::signal::ChangeSignal>> {
        Some(self.inner.signal.clone())
    }

    /// Purges from the engine. A buffered record always supersedes what the engine held,
    /// so the engine may purge a key that is also buffered; the counts stay right once the
    /// buffered record is applied.
    fn purge_due(&self, now_ms: u64, limit: usize, hold: &dyn TombstoneHold) -> Result<usize, StoreError> {
        self.inner.engine.purge_due(now_ms, limit, hold)
    }

    /// Removes from the engine, under each key's lock. A buffered record is newer than
    /// anything listed (it was written after the list was made, or is still on its way to
    /// the engine), so its key is left for a later pass.
    fn remove_unchanged(&self, partition: Partition, entries: &[(Bytes, Hlc)]) -> Result<usize, StoreError> {
        let i = &*self.inner;
        let mut removed = 0;
        for entry in entries {
            let _guard = lock(&i.locks[(xxh3_64(&entry.0) as usize) % LOCK_STRIPES]);
            if !i.shard(partition).contains(&entry.0) {
                removed += i.engine.remove_unchanged(partition, std::slice::from_ref(entry))?;
            }
        }
        Ok(removed)
    }

    /// Makes every write so far durable: the log is synced (the engine catches up later).
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.wal.sync().map(|_| ())
    }

    fn stats(&self) -> StoreStats {
        if let Err(e) = self.inner.resolve_bases() {
            tracing::warn!(error = %e, "counting keys: reading the engine failed; the counts may be off until the buffer is applied");
        }
        let _counting = self.inner.counting.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let e = self.inner.engine.stats();
        let d =
            |n: usize, base: u64| (base as i64 + self.inner.delta[n].load(Ordering::Relaxed)).max(0) as u64;
        StoreStats { keys: d(0, e.keys), expiring: d(1, e.expiring), tombstones: d(2, e.tombstones) }
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.engine.size_on_disk() + self.inner.wal.disk_bytes()
    }

    fn write_budget(&self) -> Option<&WriteBudget> {
        Some(&self.inner.budget)
    }

    fn buffer_status(&self) -> Option<BufferStatus> {
        Some(self.status())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn positions_between_epochs_count_only_the_new_epoch() {
        let e = |epoch: u64, n: u64| (epoch << EPOCH_SHIFT) + n;
        assert_eq!(positions_between(e(1, 5), e(1, 12)), 7);
        assert_eq!(positions_between(e(1, 12), e(1, 5)), 0);
        assert_eq!(positions_between(e(1, 900), e(2, 3)), 3);
        assert_eq!(positions_between(0, e(1, 0)), 0);
    }
    use crate::store::suite::rec;
    use crate::store::{SledStore, StoreOptions, chunk_bytes};

    /// The engine's options for a store under `dir`.
    fn store_options(dir: &std::path::Path) -> StoreOptions {
        StoreOptions {
            path: dir.join("store"),
            partitions: 8,
            cache_bytes: 4 << 20,
            tombstone_grace: Duration::from_secs(60),
            datacenter: "dc1".into(),
        }
    }

    /// Opens the engine; a reopen in the same process waits (with a deadline) for sled's
    /// I/O threads to let go of the previous handle's directory lock.
    fn engine(dir: &std::path::Path) -> Arc<dyn Store> {
        let opts = store_options(dir);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match SledStore::open(&opts) {
                Ok(s) => return Arc::new(s),
                Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn open(dir: &std::path::Path, limit: usize) -> BufferedStore {
        let opts = BufferOptions {
            write_buffer_bytes: limit,
            wal_segment_bytes: 1 << 20,
            wal_buffer_bytes: 4096,
            apply_delay: Duration::from_secs(3600),
            apply_batch: APPLY_BATCH,
        };
        BufferedStore::open(engine(dir), &dir.join("wal"), opts).unwrap()
    }

    fn value(s: &dyn Store, key: &[u8]) -> Option<Vec<u8>> {
        s.get(key).unwrap().and_then(|r| r.value.map(|v| v.to_vec()))
    }

    #[test]
    fn reads_see_writes_before_and_after_they_reach_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.put(b"a", &mut || rec(Some(b"1"), 10, None)).unwrap();
        s.update(&[b"b", b"c"], &mut |_| {
            vec![Write::Put(rec(Some(b"2"), 11, None)), Write::Put(rec(Some(b"3"), 12, Some(99_999)))]
        })
        .unwrap();
        assert_eq!(value(&s, b"a").as_deref(), Some(&b"1"[..]));
        assert_eq!(s.stats(), StoreStats { keys: 3, expiring: 1, tombstones: 0 });
        s.drain();
        assert_eq!(s.status().records, 0);
        assert_eq!(value(&*s.inner.engine, b"c").as_deref(), Some(&b"3"[..]));
        assert_eq!(s.stats(), StoreStats { keys: 3, expiring: 1, tombstones: 0 });
        // Overwrite and delete over applied records: counts follow.
        s.put(b"a", &mut || rec(None, 20, None)).unwrap();
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 1, tombstones: 1 });
        s.drain();
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 1, tombstones: 1 });
    }

    #[test]
    fn the_log_keeps_about_what_is_unapplied_not_a_whole_segment() {
        let dir = tempfile::tempdir().unwrap();
        // A 64 KiB buffer in front of 1 MiB log segments.
        let s = open(dir.path(), 64 << 10);
        static BIG: [u8; 1000] = [b'v'; 1000];
        // 900 KB in chunks of 50, each applied before the next (as writers held back by
        // a full buffer would be).
        for chunk in 0..18u64 {
            for n in chunk * 50..(chunk + 1) * 50 {
                let key = format!("key{n}");
                s.put(key.as_bytes(), &mut || rec(Some(&BIG), 100 + n, None)).unwrap();
            }
            s.drain();
        }
        // Segments past four buffers were closed before a pass and deleted after it: the
        // log holds at most that and one chunk, so a restart replays little that is stale.
        let wal = s.status().wal_bytes;
        assert!(wal < 5 * (64 << 10), "the log still holds {wal} bytes");
        drop(s);
        let s = open(dir.path(), 64 << 10);
        assert_eq!(s.stats().keys, 900);
        assert_eq!(value(&s, b"key899").map(|v| v.len()), Some(1000));
    }

    #[test]
    fn a_pass_applies_what_was_numbered_when_it_began() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.put(b"before", &mut || rec(Some(b"1"), 10, None)).unwrap();
        s.put(b"rewritten", &mut || rec(Some(b"2"), 11, None)).unwrap();
        let upto: Vec<u64> = s.inner.numbers.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        // Written after the pass took its bounds.
        s.put(b"after", &mut || rec(Some(b"3"), 12, None)).unwrap();
        s.put(b"rewritten", &mut || rec(Some(b"4"), 13, None)).unwrap();
        s.inner.apply_pass(&upto).unwrap();
        assert_eq!(s.inner.engine.get(b"before").unwrap().map(|r| r.hlc), Some(Hlc(10)));
        assert_eq!(s.inner.engine.get(b"after").unwrap(), None, "left for the next pass");
        assert_eq!(s.inner.engine.get(b"rewritten").unwrap(), None, "its newer write is past the bounds");
        assert_eq!(s.status().records, 2);
        assert_eq!(value(&s, b"rewritten"), Some(b"4".to_vec()));
    }

    #[test]
    fn counts_stay_exact_when_sets_reach_the_engine_before_anyone_counts() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        s.put(b"a", &mut || rec(Some(b"1"), 10, None)).unwrap();
        s.put(b"b", &mut || rec(Some(b"2"), 11, Some(99_999))).unwrap();
        s.drain();
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 1, tombstones: 0 });
        // Plain SETs do not look at the engine: an overwrite, a delete and a new key.
        s.put(b"a", &mut || rec(Some(b"3"), 20, None)).unwrap();
        s.put(b"b", &mut || rec(None, 21, None)).unwrap();
        s.put(b"c", &mut || rec(Some(b"4"), 22, None)).unwrap();
        assert_eq!(s.inner.unresolved.load(Ordering::Relaxed), 3);
        // Applied before anything asked for the counts: the engine counts them itself.
        s.drain();
        assert_eq!(s.inner.unresolved.load(Ordering::Relaxed), 0);
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 0, tombstones: 1 });
        // Asked for while buffered: looked up once, then applied.
        s.put(b"c", &mut || rec(None, 30, None)).unwrap();
        s.put(b"d", &mut || rec(Some(b"5"), 31, None)).unwrap();
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 0, tombstones: 2 });
        assert_eq!(s.inner.unresolved.load(Ordering::Relaxed), 0);
        s.drain();
        assert_eq!(s.stats(), StoreStats { keys: 2, expiring: 0, tombstones: 2 });
    }

    #[test]
    fn counts_asked_for_while_the_applier_runs_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 64 << 20);
        const KEYS: u64 = 30_000;
        for n in 0..KEYS {
            let key = format!("key{n}");
            s.put(key.as_bytes(), &mut || {
                rec(Some(b"v"), 10 + n, if n % 3 == 0 { Some(99_999) } else { None })
            })
            .unwrap();
        }
        let want = StoreStats { keys: KEYS, expiring: KEYS.div_ceil(3), tombstones: 0 };
        assert_eq!(s.stats(), want);
        // Nothing is written while the buffer drains: every count taken meanwhile must be
        // the same, whether a record is still buffered, being applied, or applied.
        let done = std::sync::atomic::AtomicBool::new(false);
        let (asked, wrong) = std::thread::scope(|scope| {
            let counter = scope.spawn(|| {
                let (mut asked, mut wrong) = (0u64, Vec::new());
                while !done.load(Ordering::Acquire) {
                    let got = s.stats();
                    asked += 1;
                    if got != want && wrong.len() < 5 {
                        wrong.push(got);
                    }
                }
                (asked, wrong)
            });
            s.drain();
            done.store(true, Ordering::Release);
            counter.join().unwrap()
        });
        assert!(wrong.is_empty(), "{} counts asked for during the drain, these were off: {wrong:?}", asked);
        assert_eq!(s.status().records, 0);
        assert_eq!(s.stats(), want);
    }

    #[test]
    fn removing_a_handed_over_partition_keeps_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let p = |k: &[u8]| partition_of(k, 8);
        // Four keys of one partition, all applied to the engine.
        let keys: Vec<Vec<u8>> =
            (0..200).map(|i| format!("k{i}").into_bytes()).filter(|k| p(k) == 3).take(4).collect();
        for (n, k) in keys.iter().enumerate() {
            s.put(k, &mut || rec(Some(b"v"), 10 + n as u64, None)).unwrap();
        }
        s.drain();
        let listed: Vec<(Bytes, Hlc)> =
            keys.iter().enumerate().map(|(n, k)| (Bytes::from(k.clone()), Hlc(10 + n as u64))).collect();
        // Written since the list was made: one applied, one still buffered.
        s.put(&keys[1], &mut || rec(Some(b"newer"), 30, None)).unwrap();
        s.drain();
        s.put(&keys[2], &mut || rec(Some(b"newer"), 31, None)).unwrap();
        assert_eq!(s.remove_unchanged(3, &listed).unwrap(), 2);
        assert_eq!(value(&s, &keys[0]), None);
        assert_eq!(value(&s, &keys[1]).as_deref(), Some(&b"newer"[..]));
        assert_eq!(value(&s, &keys[2]).as_deref(), Some(&b"newer"[..]));
        assert_eq!(value(&s, &keys[3]), None);
        assert_eq!(s.stats().keys, 2);
        let mut scanned = Vec::new();
        s.scan_partition(3, &mut |k, _| scanned.push(k.to_vec())).unwrap();
        assert_eq!(scanned.len(), 2);
        assert!(
            s.changes_since(3, Hlc(0), 10, usize::MAX).unwrap().records.iter().all(|(_, r)| r.hlc >= Hlc(30))
        );
        // Nothing left to remove, and the buffered one reaches the engine intact.
        assert_eq!(s.remove_unchanged(3, &listed).unwrap(), 0);
        s.drain();
        assert_eq!(s.stats().keys, 2);
    }

    /// Holds the first engine batch after it is armed until the test lets it go.
    #[derive(Default)]
    struct Gate {
        armed: AtomicBool,
        reached: (Mutex<bool>, Condvar),
        released: (Mutex<bool>, Condvar),
    }

    impl Gate {
        fn pass(&self) {
            if self.armed.swap(false, Ordering::AcqRel) {
                *lock(&self.reached.0) = true;
                self.reached.1.notify_all();
                let mut released = lock(&self.released.0);
                while !*released {
                    released = self.released.1.wait(released).unwrap();
                }
            }
        }
    }

    /// A shutdown that stops the applier half way through a pass leaves the log whole: the
    /// records the pass did not apply are replayed at the next start. (The log used to be
    /// cut as if the pass had finished: a node stopped under load lost acknowledged writes.)
    #[test]
    fn a_pass_stopped_by_a_shutdown_leaves_its_unapplied_records_in_the_log() {
        use crate::store::engines::redb::RedbKv;
        let dir = tempfile::tempdir().unwrap();
        let store_opts = store_options(dir.path());
        let opts = BufferOptions {
            write_buffer_bytes: 1 << 20,
            wal_segment_bytes: 1 << 20,
            wal_buffer_bytes: 4096,
            apply_delay: Duration::from_secs(3600),
            apply_batch: 1,
        };
        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        assert!(
            keys.iter()
                .map(|k| partition_of(k.as_bytes(), 8))
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 2
        );
        {
            let gate = Arc::new(Gate::default());
            let held = gate.clone();
            let kv = crate::store::engines::HookedKv {
                kv: RedbKv::open(&store_opts).unwrap(),
                before_write: move |_: &[crate::store::engines::Op]| held.pass(),
            };
            let engine =
                Arc::new(crate::store::ordered::OrderedStore::with_kv(kv, &store_opts, "redb").unwrap());
            let s = BufferedStore::open(engine.clone(), &dir.path().join("wal"), opts).unwrap();
            for (i, k) in keys.iter().enumerate() {
                s.put(k.as_bytes(), &mut || rec(Some(b"v"), 100 + i as u64, None)).unwrap();
            }
            s.flush().unwrap();
            // The records' segment is closed, as the applier closes one that grew past four
            // buffers before a pass: the checkpoint after the pass may then delete it.
            s.inner.wal.roll().unwrap();
            gate.armed.store(true, Ordering::Release);
            s.inner.force.store(true, Ordering::Release);
            s.inner.wake_applier();
            // The applier is inside the pass's first batch: the node shuts down meanwhile.
            let (reached, waited) = gate
                .reached
                .1
                .wait_timeout_while(lock(&gate.reached.0), Duration::from_secs(30), |reached| !*reached)
                .unwrap();
            assert!(!waited.timed_out(), "the applier reached no engine batch within 30 s");
            drop(reached);
            s.inner.stop.store(true, Ordering::Release);
            *lock(&gate.released.0) = true;
            gate.released.1.notify_all();
            drop(s);
            let applied = keys.iter().filter(|k| engine.get(k.as_bytes()).unwrap().is_some()).count();
            assert!(applied < keys.len(), "the pass was not stopped half way: {applied} applied");
        }
        let engine: Arc<dyn Store> = Arc::new(
            crate::store::ordered::OrderedStore::with_kv(
                RedbKv::open(&store_opts).unwrap(),
                &store_opts,
                "redb",
            )
            .unwrap(),
        );
        let s = BufferedStore::open(engine, &dir.path().join("wal"), opts).unwrap();
        for k in &keys {
            assert_eq!(value(&s, k.as_bytes()).as_deref(), Some(&b"v"[..]), "{k} was lost");
        }
        assert_eq!(s.stats().keys, keys.len() as u64);
    }

    #[test]
    fn the_log_replays_into_the_engine_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 1 << 20);
            // Stop the applier first, as a crash would, so nothing reaches the engine.
            s.inner.stop.store(true, Ordering::Release);
            for i in 0..50u64 {
                let key = format!("k{i}");
                s.put(key.as_bytes(), &mut || rec(Some(b"v"), 100 + i, None)).unwrap();
            }
            s.flush().unwrap();
        }
        let s = open(dir.path(), 1 << 20);
        for i in 0..50u64 {
            assert_eq!(value(&s, format!("k{i}").as_bytes()).as_deref(), Some(&b"v"[..]), "k{i}");
        }
        assert_eq!(s.stats().keys, 50);
        assert_eq!(s.max_hlc().unwrap(), Hlc(149));
    }

    #[test]
    fn replay_never_lets_an_older_record_win() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), 1 << 20);
            s.put(b"k", &mut || rec(Some(b"old"), 10, None)).unwrap();
            s.put(b"k", &mut || rec(Some(b"new"), 20, None)).unwrap();
            s.flush().unwrap();
            s.drain();
        }
        let s = open(dir.path(), 1 << 20);
        assert_eq!(value(&s, b"k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn scans_and_changes_merge_buffer_and_engine() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            s.put(k.as_bytes(), &mut || rec(Some(b"v"), 100 + i as u64, None)).unwrap();
            if i == 20 {
                s.drain();
            }
        }
        let mut seen = Vec::new();
        let mut changes = 0;
        for p in 0..8 {
            s.scan_partition(p, &mut |k, _| seen.push(String::from_utf8(k.to_vec()).unwrap())).unwrap();
            let c = s.changes_since(p, Hlc(110), 100, usize::MAX).unwrap().records;
            assert!(c.windows(2).all(|w| w[0].1.hlc < w[1].1.hlc));
            changes += c.len();
        }
        seen.sort();
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(seen, expected);
        assert_eq!(changes, 29);
    }

    /// Copies partition `p` chunk by chunk as rebalance does: following `next`, with
    /// twice the limits after a chunk that got no further.
    fn copy_in_chunks(
        s: &dyn Store,
        p: Partition,
        mut limit: usize,
        mut max_bytes: usize,
    ) -> (BTreeMap<Vec<u8>, Hlc>, usize) {
        let (mut got, mut from, mut chunks) = (BTreeMap::new(), Hlc::ZERO, 0);
        loop {
            let c = s.changes_since(p, Hlc(from.0.saturating_sub(1)), limit, max_bytes).unwrap();
            chunks += 1;
            // A chunk can be empty when everything the engine read was superseded by
            // buffered records further on; never the last one.
            assert!(!c.records.is_empty() || c.next.is_some(), "an empty last chunk");
            let size: usize = c.records.iter().map(|(k, r)| chunk_bytes(k, r)).sum();
            assert!(
                c.records.len() <= limit && (size <= max_bytes || c.records.len() == 1),
                "chunk of {size} bytes"
            );
            for (k, r) in c.records {
                let held = got.entry(k.to_vec()).or_insert(r.hlc);
                *held = (*held).max(r.hlc);
            }
            match c.next {
                Some(next) => {
                    assert!(next >= from && chunks < 1000, "no progress from {from:?}");
                    if next == from {
                        limit = limit.saturating_mul(2);
                        max_bytes = max_bytes.saturating_mul(2);
                    }
                    from = next;
                }
                None => return (got, chunks),
            }
        }
    }

    #[test]
    fn a_partition_copied_in_chunks_misses_nothing_buffered_or_applied() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20);
        let keys: Vec<Vec<u8>> =
            (0..2000).map(|i| format!("k{i}").into_bytes()).filter(|k| partition_of(k, 8) == 5).collect();
        let mut latest = BTreeMap::new();
        for (n, k) in keys.iter().enumerate() {
            s.put(k, &mut || rec(Some(b"0123456789"), 100 + n as u64, None)).unwrap();
            latest.insert(k.clone(), Hlc(100 + n as u64));
        }
        s.drain();
        // Every fourth key overwritten later, still in the buffer: its applied version,
        // early in HLC order, is superseded by one past the end of most chunks.
        for (n, k) in keys.iter().enumerate().step_by(4) {
            s.put(k, &mut || rec(Some(b"newer"), 10_000 + n as u64, None)).unwrap();
            latest.insert(k.clone(), Hlc(10_000 + n as u64));
        }
        for (limit, max_bytes) in [(7, usize::MAX), (1000, 40), (3, 1), (100_000, usize::MAX)] {
            let (got, chunks) = copy_in_chunks(&s, 5, limit, max_bytes);
            assert_eq!(got, latest, "limit {limit}, max_bytes {max_bytes}");
            if limit < 10 || max_bytes < 100 {
                assert!(chunks > 10, "{chunks} chunks");
            }
        }
        // One value larger than the byte limit comes alone.
        let big = Bytes::from(vec![b'x'; 1000]);
        s.put(&keys[0], &mut || Record { value: Some(big.clone()), ..rec(None, 20_000, None) }).unwrap();
        let c = s.changes_since(5, Hlc(19_999), 100, 100).unwrap();
        assert_eq!((c.records.len(), c.next), (1, None));
    }

    #[tokio::test]
    async fn writers_wait_for_room_when_the_buffer_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 4096);
        for i in 0..100u64 {
            s.put(format!("k{i}").as_bytes(), &mut || rec(Some(b"0123456789"), i + 1, None)).unwrap();
        }
        // Over the limit now; the applier frees room and wakes the waiter.
        let budget = s.budget();
        tokio::time::timeout(Duration::from_secs(10), budget.wait_for_room()).await.expect("room within 10s");
        assert!(budget.used() < budget.limit());
    }

    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        #[derive(Clone, Debug)]
        enum Op {
            Put(u8, u8),
            Delete(u8),
            PutMany(Vec<(u8, u8)>),
            Expire(u8),
            Drain,
            Crash,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0u8..16, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
                2 => (0u8..16).prop_map(Op::Delete),
                2 => proptest::collection::vec((0u8..16, any::<u8>()), 1..4).prop_map(Op::PutMany),
                1 => (0u8..16).prop_map(Op::Expire),
                1 => Just(Op::Drain),
                1 => Just(Op::Crash),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
            /// Whatever mix of writes, applier passes and crashes (after a log sync), the
            /// store reads and counts exactly like a plain map.
            #[test]
            fn behaves_like_a_map_across_applies_and_crashes(ops in proptest::collection::vec(op(), 1..60)) {
                let dir = tempfile::tempdir().unwrap();
                let mut s = open(dir.path(), 1 << 20);
                // None: the key exists but has expired.
                let mut model: BTreeMap<u8, Option<Vec<u8>>> = BTreeMap::new();
                let mut hlc = 1_000u64;
                let mut next = || { hlc += 1; hlc };
                let key = |k: u8| format!("key{k}").into_bytes();
                for op in ops {
                    match op {
                        Op::Put(k, v) => {
                            let h = next();
                            let r = Record { value: Some(Bytes::from(vec![v])), ..rec(None, h, None) };
                            s.put(&key(k), &mut || r.clone()).unwrap();
                            model.insert(k, Some(vec![v]));
                        }
                        Op::Delete(k) => {
                            let h = next();
                            s.update(&[&key(k)], &mut |cur| vec![match cur[0] {
                                Some(_) => Write::Put(rec(None, h, None)),
                                None => Write::Keep,
                            }]).unwrap();
                            model.remove(&k);
                        }
                        Op::PutMany(kvs) => {
                            let keys: Vec<Vec<u8>> = kvs.iter().map(|(k, _)| key(*k)).collect();
                            let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                            let records: Vec<Record> = kvs.iter().map(|(_, v)| {
                                Record { value: Some(Bytes::from(vec![*v])), ..rec(None, next(), None) }
                            }).collect();
                            s.update(&refs, &mut |_| records.iter().cloned().map(Write::Put).collect()).unwrap();
                            for (k, v) in kvs {
                                model.insert(k, Some(vec![v]));
                            }
                        }
                        Op::Expire(k) => {
                            // An expiry long past: the key reads as absent but still counts.
                            let h = next();
                            s.update(&[&key(k)], &mut |cur| vec![match &cur[0] {
                                Some(r) if r.value.is_some() => Write::Put(Record { expires_at_ms: Some(1), ..r.clone() }.with_hlc(Hlc(h))),
                                _ => Write::Keep,
                            }]).unwrap();
                            if let Some(v) = model.get_mut(&k) { *v = None; }
                        }
                        Op::Drain => s.drain(),
                        Op::Crash => {
                            s.flush().unwrap();
                            s.inner.stop.store(true, Ordering::Release);
                            drop(s);
                            s = open(dir.path(), 1 << 20);
                        }
                    }
                    for k in 0u8..16 {
                        let got = s.get_value(&key(k), 10).unwrap().map(|v| v.to_vec());
                        let want = model.get(&k).cloned().flatten();
                        prop_assert_eq!(got, want, "key{}", k);
                    }
                    prop_assert_eq!(s.stats().keys, model.len() as u64);
                }
            }
        }
    }
}
