//! Durable storage of records, behind a narrow trait so engines can be compared.
//!
//! The [`Store`] trait is everything the layers above need from a storage engine: read a
//! record, atomically read-decide-write one or several keys, walk a partition, list a
//! partition's changes since an HLC (the index that anti-entropy and WAN shipping will
//! read), list a partition's changes after a position in its local change sequence (the
//! WAN connector's cursor), purge what expired, and flush. [`ordered`] lays records out
//! once over any ordered key-value engine of [`engines`] (sled, redb, fjall, LMDB); the
//! storage study measures them against each other.
//!
//! Durability is not the engine's policy: [`flusher`] decides when to flush (on every
//! write, or on an interval) and tells writers when their write is on disk.

pub mod buffered;
pub mod engines;
pub mod flusher;
pub mod ordered;
mod packed;
pub mod purger;
pub mod signal;
#[cfg(test)]
mod suite;
pub mod wal;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::hlc::Hlc;
use crate::placement::Partition;
use crate::record::Record;

pub use buffered::{BufferOptions, BufferedStore};
pub use engines::{Engine, EngineOptions};
pub use flusher::Flusher;
pub use ordered::OrderedStore;

/// The sled engine under the shared layout.
pub type SledStore = OrderedStore<engines::sled::SledKv>;

/// What an update decides for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Leave the key as it is.
    Keep,
    /// Store this record (a value or a tombstone) in place of the current one.
    Put(Record),
}

/// A chunk of a partition's records in HLC order, from [`Store::changes_since`].
#[derive(Debug, Default)]
pub struct Changes {
    pub records: Vec<(Bytes, Record)>,
    /// Where the next chunk starts (inclusive: records at this HLC may come again), or
    /// `None` when this chunk holds every record left. It can lie past the last record of
    /// this chunk (which may then be empty) when records read were superseded by newer
    /// ones still to come.
    pub next: Option<Hlc>,
}

/// A chunk of a partition's local change sequence, from [`Store::changes_after`].
#[derive(Debug, Default)]
pub struct Sequenced {
    /// (change number, key, record), in ascending change number.
    pub records: Vec<(u64, Bytes, Record)>,
    /// A limit stopped the chunk: read on after `upto`.
    pub more: bool,
    /// The chunk covers every number up to this one: its last record's, or further when
    /// what it read past that was superseded (`after` when it covers nothing).
    pub upto: u64,
}

/// The bytes a record takes in a chunk: its key and value.
pub fn chunk_bytes(key: &[u8], record: &Record) -> usize {
    key.len() + record.value.as_ref().map_or(0, |v| v.len())
}

/// Counters the store keeps as it goes, for INFO, `/v1/status` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records holding a value (expired ones count until purged, as in Redis).
    pub keys: u64,
    /// Of those, records with an expiry.
    pub expiring: u64,
    /// Tombstones kept until their grace period ends.
    pub tombstones: u64,
}

/// What [`Store::apply_numbered`] calls with the change of the engine's counts to make.
pub type Settle<'a> = &'a mut dyn FnMut(&mut dyn FnMut());

/// A [`Settle`] that makes the change of the engine's counts and nothing else.
pub fn count_now(count: &mut dyn FnMut()) {
    count()
}

/// Options every engine understands.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub partitions: u16,
    /// Bytes the engine may use for its own cache.
    pub cache_bytes: u64,
    /// How long a tombstone is kept before it is purged.
    pub tombstone_grace: Duration,
    /// The datacenter of this node, interned into decoded records.
    pub datacenter: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "the store at {path} was created with {found} partitions but the config says {configured} (store.partitions cannot change once data exists)"
    )]
    PartitionMismatch { path: PathBuf, found: u16, configured: u16 },
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("record of key {key:?} is unreadable: {error}")]
    Corrupt { key: String, error: crate::record::DecodeError },
}

/// What keeps a deleted key's tombstone on disk past its grace period: a tombstone that
/// has not yet reached every datacenter must not go before it does, or the key would
/// come back there (see `cluster::outbound`).
pub trait TombstoneHold: Send + Sync {
    /// Whether the tombstone of `key`, numbered `seq` in `partition`'s change sequence,
    /// must stay for now.
    fn holds(&self, partition: Partition, seq: u64, key: &[u8], tombstone: &Record) -> bool;
}

/// Holds nothing: tombstones go once their grace period is over.
pub struct HoldNone;

impl TombstoneHold for HoldNone {
    fn holds(&self, _: Partition, _: u64, _: &[u8], _: &Record) -> bool {
        false
    }
}

/// A storage engine. All methods are synchronous and short (an in-memory or page-cache
/// operation, or one disk read); `flush` may block for a disk sync and is called off the
/// async workers.
pub trait Store: Send + Sync + 'static {
    /// The engine's name, shown in status.
    fn engine(&self) -> &'static str;

    fn partitions(&self) -> u16;

    /// The stored record of `key`, including tombstones and expired values.
    fn get(&self, key: &[u8]) -> Result<Option<Record>, StoreError>;

    /// The live value of `key` at `now_ms`: the read path of GET, which needs nothing else
    /// of the record (engines override it to skip decoding the rest).
    fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(self.get(key)?.and_then(|r| r.live_value(now_ms).cloned()))
    }

    /// Atomically reads the current records of `keys` (in the order given; a key may
    /// repeat), lets `decide` choose a [`Write`] for each, and applies them as one batch.
    /// Concurrent updates of the same keys are serialised; `decide` runs exactly once.
    /// Returns how many records were written.
    fn update(
        &self,
        keys: &[&[u8]],
        decide: &mut dyn FnMut(&[Option<Record>]) -> Vec<Write>,
    ) -> Result<usize, StoreError>;

    /// Writes the record `make` returns without reading the current one first (SET without
    /// options): `make` runs under the key's lock, so records made later by the same clock
    /// are written later.
    fn put(&self, key: &[u8], make: &mut dyn FnMut() -> Record) -> Result<(), StoreError>;

    /// The largest HLC of any record stored (or once stored: an engine may keep the
    /// highest it ever wrote): a restarted node's clock starts above it, so its writes
    /// order after everything it already holds.
    fn max_hlc(&self) -> Result<Hlc, StoreError>;

    /// Calls `visit` for every record of `partition`, in key order.
    fn scan_partition(
        &self,
        partition: Partition,
        visit: &mut dyn FnMut(&[u8], &Record),
    ) -> Result<(), StoreError>;

    /// Records of `partition` with an HLC strictly above `since`, in HLC order: at most
    /// `limit` of them, with at most `max_bytes` of keys and values in all, except that the
    /// first record comes whatever its size (a chunk is never empty while records remain).
    fn changes_since(
        &self,
        partition: Partition,
        since: Hlc,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Changes, StoreError>;

    /// Writes `records` (change number, key, record) without reading them first, in one
    /// batch: the write buffer's applier, whose records already won against what the
    /// engine holds and already have their numbers (the buffer numbers records as they
    /// enter it, see [`buffered`]). Only a storage engine takes them; numbers of a
    /// partition given here must be above every number it holds.
    ///
    /// Once the batch is in the engine, the engine calls `settle` with the change of its
    /// record counts to make; a caller that keeps counts of its own beside the engine's
    /// (the write buffer's) makes both changes under one lock in `settle`, so that no
    /// reader of the counts sees a record counted twice or not at all. [`count_now`]
    /// makes the change and nothing else.
    fn apply_numbered(&self, records: &[(u64, Bytes, Record)], settle: Settle<'_>) -> Result<(), StoreError> {
        let _ = (records, settle);
        Err(StoreError::Io(format!("the {} store numbers its records itself", self.engine())))
    }

    /// The partition's local change sequence after position `after`: each record applied
    /// to a partition gets the next number of that partition, durably with the record,
    /// and a key's older numbers are dropped as it changes, so this lists every key of the
    /// partition changed since `after` once, with its current record, in the order of its
    /// last change. At most `limit` records and `max_bytes` of keys and values, except
    /// that the first comes whatever its size. A cursor that stores the last number it
    /// shipped misses nothing: numbers are never reused, and one is visible only once
    /// every lower number of its partition is.
    fn changes_after(
        &self,
        partition: Partition,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Sequenced, StoreError>;

    /// The last change number handed out in `partition` (0 before the first).
    fn last_seq(&self, partition: Partition) -> u64;

    /// What wakes a waiter when a change number is handed out, if the store numbers its
    /// changes itself (the write buffer does); without one, waiters only time out.
    fn change_signal(&self) -> Option<std::sync::Arc<signal::ChangeSignal>> {
        None
    }

    /// Physically removes up to `limit` expired values and tombstones older than the grace
    /// period, as of `now_ms`, but for the tombstones `hold` keeps: those are looked at again
    /// later, less often the longer they are held. Returns how many were removed.
    fn purge_due(&self, now_ms: u64, limit: usize, hold: &dyn TombstoneHold) -> Result<usize, StoreError>;

    /// Physically removes the records of `partition` listed in `entries` whose HLC is
    /// still the one given; a key written since keeps its record. For a partition this
    /// node no longer owns, once its owners hold everything listed. Returns how many were
    /// removed. A crash may bring removed records back (they were on disk before), which
    /// only means they are handed over and removed again.
    fn remove_unchanged(&self, partition: Partition, entries: &[(Bytes, Hlc)]) -> Result<usize, StoreError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), StoreError>;

    fn stats(&self) -> StoreStats;

    /// Bytes the engine's files take on disk.
    fn size_on_disk(&self) -> u64;

    /// For a store with a bounded write buffer: what async writers wait on when it is full.
    fn write_budget(&self) -> Option<&buffered::WriteBudget> {
        None
    }

    /// For a store with a write buffer: what it holds now.
    fn buffer_status(&self) -> Option<buffered::BufferStatus> {
        None
    }
}
