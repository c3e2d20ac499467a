//! The read and write paths every client command goes through.
//!
//! Today a node owns every key, so a read is a store read and a write is a store update
//! followed by the durability wait. Forwarding to owners, replication and rebalance slot in
//! here without the command layer changing: it only sees [`Cluster::get`],
//! [`Cluster::update`] and partition scans.

use std::sync::Arc;

use bytes::Bytes;

use crate::hlc::{Clock, Hlc};
use crate::placement::Partition;
use crate::record::{Origin, Record};
use crate::store::flusher::{Flusher, NotDurable};
use crate::store::{Store, StoreError, StoreStats, Write};

/// Why a read or write did not happen (or, for `NotDurable`, may not survive a crash).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
}

pub struct Cluster {
    store: Arc<dyn Store>,
    flusher: Arc<Flusher>,
    clock: Clock,
    origin: Origin,
}

/// Makes records for local writes: each gets an HLC above the record it replaces, and
/// this node's origin.
pub struct Stamp<'a> {
    clock: &'a Clock,
    origin: &'a Origin,
}

impl Stamp<'_> {
    fn hlc_over(&self, over: Option<&Record>) -> Hlc {
        self.clock.now_after(over.map_or(Hlc::ZERO, |r| r.hlc))
    }

    /// A write of `value` over `over` (the record currently stored, if any).
    pub fn put(&self, over: Option<&Record>, value: Bytes, expires_at_ms: Option<u64>) -> Write {
        Write::Put(Record {
            value: Some(value),
            hlc: self.hlc_over(over),
            origin: self.origin.clone(),
            expires_at_ms,
        })
    }

    /// A tombstone over `over`; nothing when there is nothing to delete.
    pub fn delete(&self, over: Option<&Record>) -> Write {
        match over {
            Some(r) if !r.is_tombstone() => Write::Put(Record {
                value: None,
                hlc: self.hlc_over(over),
                origin: self.origin.clone(),
                expires_at_ms: None,
            }),
            _ => Write::Keep,
        }
    }
}

impl Cluster {
    /// The clock starts above every stored HLC, so new local writes order after all of
    /// them (which lets [`Cluster::put`] write without reading first).
    pub fn new(store: Arc<dyn Store>, flusher: Arc<Flusher>, origin: Origin) -> Result<Self, StoreError> {
        let clock = Clock::new();
        clock.observe(store.max_hlc()?);
        Ok(Cluster { store, flusher, clock, origin })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn flusher(&self) -> &Arc<Flusher> {
        &self.flusher
    }

    pub fn partitions(&self) -> u16 {
        self.store.partitions()
    }

    pub fn stats(&self) -> StoreStats {
        self.store.stats()
    }

    /// The stored record of `key` (tombstones and expired values included: the caller
    /// decides what is live at its own `now`).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Record>, DataError> {
        Ok(self.store.get(key)?)
    }

    /// The live value of `key` at `now_ms` (GET, MGET, STRLEN, GETRANGE).
    pub async fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, DataError> {
        Ok(self.store.get_value(key, now_ms)?)
    }

    /// Atomically reads `keys`, lets `decide` choose writes (stamping new records with
    /// [`Stamp`]), applies them and waits until they are as durable as the fsync policy
    /// promises. Returns the number of records written.
    pub async fn update<F>(&self, keys: &[&[u8]], mut decide: F) -> Result<usize, DataError>
    where
        F: FnMut(&[Option<Record>], &Stamp<'_>) -> Vec<Write>,
    {
        self.wait_for_room().await;
        let stamp = Stamp { clock: &self.clock, origin: &self.origin };
        let written = self.store.update(keys, &mut |current| decide(current, &stamp))?;
        if written > 0 {
            self.flusher.written().await?;
        }
        Ok(written)
    }

    /// Writes `value` whatever the key holds now (SET without options).
    pub async fn put(&self, key: &[u8], value: Bytes, expires_at_ms: Option<u64>) -> Result<(), DataError> {
        self.wait_for_room().await;
        self.store.put(key, &mut || Record {
            value: Some(value.clone()),
            hlc: self.clock.now(),
            origin: self.origin.clone(),
            expires_at_ms,
        })?;
        self.flusher.written().await?;
        Ok(())
    }

    /// Backpressure: waits while the store's write buffer is full.
    async fn wait_for_room(&self) {
        if let Some(budget) = self.store.write_budget() {
            budget.wait_for_room().await;
        }
    }

    /// Calls `visit` for every record of a partition.
    pub async fn scan_partition(
        &self,
        partition: Partition,
        visit: &mut (dyn FnMut(&[u8], &Record) + Send),
    ) -> Result<(), DataError> {
        Ok(self.store.scan_partition(partition, visit)?)
    }
}
