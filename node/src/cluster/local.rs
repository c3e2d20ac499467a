//! What a node does to its own store on behalf of the cluster: stamp and apply a write as
//! a partition's primary, apply a replica's copy by last-writer-wins, read and scan.
//! Every write waits until it is as durable as the fsync policy promises.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::DataError;
use super::invalidate::Invalidations;
use super::messages::{Change, Op};
use crate::cache::LocalClients;
use crate::glob;
use crate::hlc::{Clock, Hlc};
use crate::placement::Partition;
use crate::record::{Origin, Record};
use crate::store::flusher::Flusher;
use crate::store::{Store, StoreError, Write};

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

/// The outcome of [`Local::execute`].
pub enum Executed {
    /// Applied and durable: what was written.
    Written(Vec<(Bytes, Record)>),
    /// An expectation failed; nothing was written. What is stored, per op.
    Conflict(Vec<Option<Record>>),
}

pub struct Local {
    pub store: Arc<dyn Store>,
    pub flusher: Arc<Flusher>,
    pub clock: Clock,
    pub origin: Origin,
    /// Told of every record stored here: the near-cache holders of leases on its key, and
    /// this node's clients that track keys.
    pub invalidations: Arc<Invalidations>,
    pub clients: Arc<OnceLock<Arc<dyn LocalClients>>>,
    /// Other datacenters' leases on this datacenter's home keys.
    pub home_leases: Arc<super::home::HomeLeases>,
}

impl Local {
    /// Reports records just stored to whoever follows their keys.
    fn changed(&self, written: &[(&[u8], Hlc)]) {
        if written.is_empty() {
            return;
        }
        self.invalidations.applied(written.iter().copied(), self.store.partitions());
        self.home_leases.applied(written.iter().map(|(k, _)| *k));
        if let Some(clients) = self.clients.get()
            && clients.wants_changes()
        {
            let keys: Vec<Bytes> = written.iter().map(|(k, _)| Bytes::copy_from_slice(k)).collect();
            clients.keys_changed(&keys, crate::cache::writer());
        }
    }

    pub fn stamp(&self) -> Stamp<'_> {
        Stamp { clock: &self.clock, origin: &self.origin }
    }

    /// Backpressure: waits while the store's write buffer is full.
    pub async fn wait_for_room(&self) {
        if let Some(budget) = self.store.write_budget() {
            budget.wait_for_room().await;
        }
    }

    pub fn read(&self, keys: &[Bytes]) -> Result<Vec<Option<Record>>, StoreError> {
        keys.iter().map(|k| self.store.get(k)).collect()
    }

    /// Atomically reads `keys`, lets `decide` choose writes, applies them and waits for
    /// durability. Returns what was written.
    pub async fn update<F>(&self, keys: &[&[u8]], decide: F) -> Result<Vec<(Bytes, Record)>, DataError>
    where
        F: FnOnce(&[Option<Record>], &Stamp<'_>) -> Vec<Write>,
    {
        self.wait_for_room().await;
        let stamp = self.stamp();
        let mut decide = Some(decide);
        let mut written = Vec::new();
        self.store.update(keys, &mut |current| {
            let writes = decide.take().map_or_else(Vec::new, |d| d(current, &stamp));
            written = keys
                .iter()
                .zip(&writes)
                .filter_map(|(k, w)| match w {
                    Write::Put(r) => Some((Bytes::copy_from_slice(k), r.clone())),
                    Write::Keep => None,
                })
                .collect();
            writes
        })?;
        if !written.is_empty() {
            self.changed(&written.iter().map(|(k, r)| (&k[..], r.hlc)).collect::<Vec<_>>());
            self.flusher.written().await?;
        }
        Ok(written)
    }

    /// Writes `value` whatever the key holds now, stamped above everything this node has seen.
    pub async fn put(
        &self,
        key: &[u8],
        value: Bytes,
        expires_at_ms: Option<u64>,
    ) -> Result<(Bytes, Record), DataError> {
        self.wait_for_room().await;
        let mut record = None;
        self.store.put(key, &mut || {
            let r = Record {
                value: Some(value.clone()),
                hlc: self.clock.now(),
                origin: self.origin.clone(),
                expires_at_ms,
            };
            record = Some(r.clone());
            r
        })?;
        let record = record.ok_or_else(|| StoreError::Io("the store did not write the record".into()))?;
        self.changed(&[(key, record.hlc)]);
        self.flusher.written().await?;
        Ok((Bytes::copy_from_slice(key), record))
    }

    /// As a partition's primary: first takes in what the coordinator saw at the other
    /// owners (`seen`, by last-writer-wins), then checks every op's expectation against the
    /// result and, if all hold, stamps and applies the changes, all in one atomic step.
    /// Records taken in from `seen` are kept even when an expectation fails.
    pub async fn execute(&self, ops: &[Op]) -> Result<Executed, DataError> {
        if let [Op { key, expect: None, change: Change::Put { value, expires_at_ms }, seen: None }] = ops {
            // A blind SET needs no read.
            let written = self.put(key, value.clone(), *expires_at_ms).await?;
            return Ok(Executed::Written(vec![written]));
        }
        let seen: Vec<Option<Record>> = ops
            .iter()
            .map(|op| op.seen.as_ref().map(|w| w.decode()).transpose())
            .collect::<Result<_, _>>()
            .map_err(|e| DataError::Unavailable(format!("a peer sent an unreadable record: {e}")))?;
        if let Some(max) = seen.iter().flatten().map(|r| r.hlc).max() {
            self.clock.observe(max);
        }
        let keys: Vec<&[u8]> = ops.iter().map(|op| &op.key[..]).collect();
        let mut conflict = None;
        let written = self
            .update(&keys, |current, stamp| {
                // What each key holds once the newer records seen elsewhere are taken in.
                let merged: Vec<Option<Record>> = current
                    .iter()
                    .zip(&seen)
                    .map(|(cur, seen)| match seen {
                        Some(s) if s.wins_over(cur.as_ref()) => Some(s.clone()),
                        _ => cur.clone(),
                    })
                    .collect();
                let caught_up = |i: usize| merged[i] != current[i];
                let holds = ops
                    .iter()
                    .zip(&merged)
                    .all(|(op, m)| op.expect.is_none_or(|hlc| m.as_ref().map(|r| r.hlc) == hlc));
                let writes = ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| match (&op.change, holds) {
                        (Change::Put { value, expires_at_ms }, true) => {
                            stamp.put(merged[i].as_ref(), value.clone(), *expires_at_ms)
                        }
                        (Change::Delete, true) => match stamp.delete(merged[i].as_ref()) {
                            Write::Keep if caught_up(i) => merged[i].clone().map_or(Write::Keep, Write::Put),
                            write => write,
                        },
                        _ if caught_up(i) => merged[i].clone().map_or(Write::Keep, Write::Put),
                        _ => Write::Keep,
                    })
                    .collect();
                if !holds {
                    conflict = Some(merged);
                }
                writes
            })
            .await?;
        Ok(match conflict {
            Some(current) => Executed::Conflict(current),
            None => Executed::Written(written),
        })
    }

    /// Applies other nodes' records by last-writer-wins and waits for durability.
    pub async fn apply(&self, records: &[(Bytes, Record)]) -> Result<(), DataError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(max) = records.iter().map(|(_, r)| r.hlc).max() {
            self.clock.observe(max);
        }
        self.wait_for_room().await;
        let written = apply_newer(&*self.store, records)?;
        if !written.is_empty() {
            self.changed(&written.iter().map(|&i| (&records[i].0[..], records[i].1.hlc)).collect::<Vec<_>>());
            self.flusher.written().await?;
        }
        Ok(())
    }

    /// [`Local::apply`] for large batches (a rebalance chunk, a repair): the store work runs
    /// on a blocking thread, so client requests on the async workers do not wait behind it.
    pub async fn apply_batch(&self, records: Vec<(Bytes, Record)>) -> Result<(), DataError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(max) = records.iter().map(|(_, r)| r.hlc).max() {
            self.clock.observe(max);
        }
        self.wait_for_room().await;
        let store = self.store.clone();
        let (written, records) = tokio::task::spawn_blocking(move || {
            apply_newer(&*store, &records).map(|written| (written, records))
        })
        .await
        .map_err(|e| DataError::Unavailable(format!("applying a batch failed: {e}")))??;
        if !written.is_empty() {
            self.changed(&written.iter().map(|&i| (&records[i].0[..], records[i].1.hlc)).collect::<Vec<_>>());
            self.flusher.written().await?;
        }
        Ok(())
    }

    /// Live keys of a partition at `now_ms` matching `pattern`.
    pub fn keys(
        &self,
        partition: Partition,
        pattern: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        let mut keys = Vec::new();
        self.store.scan_partition(partition, &mut |key, r| {
            if r.is_live(now_ms) && pattern.is_none_or(|p| glob::matches(p, key)) {
                keys.push(Bytes::copy_from_slice(key));
            }
        })?;
        Ok(keys)
    }

    /// Live keys in `partitions` at `now_ms`.
    pub fn count(&self, partitions: &[Partition], now_ms: u64) -> Result<u64, StoreError> {
        let mut n = 0;
        for &p in partitions {
            self.store.scan_partition(p, &mut |_, r| n += u64::from(r.is_live(now_ms)))?;
        }
        Ok(n)
    }
}

/// Stores each of `records` that wins over the stored one (last-writer-wins); returns the
/// indices of those written.
fn apply_newer(store: &dyn Store, records: &[(Bytes, Record)]) -> Result<Vec<usize>, StoreError> {
    let keys: Vec<&[u8]> = records.iter().map(|(k, _)| &k[..]).collect();
    let mut written = Vec::new();
    store.update(&keys, &mut |current| {
        written.clear();
        records
            .iter()
            .zip(current)
            .enumerate()
            .map(|(i, ((_, r), cur))| {
                if r.wins_over(cur.as_ref()) {
                    written.push(i);
                    Write::Put(r.clone())
                } else {
                    Write::Keep
                }
            })
            .collect()
    })?;
    Ok(written)
}
