//! Anti-entropy: the owners of a partition compare what they hold and copy each other
//! what differs, so replicas converge after anything the write path, hinted handoff and
//! rebalance did not cover (a primary that crashed with its hints, a partition that
//! healed, a copy cut short).
//!
//! A comparison is a two-level hash tree per partition. Every record that counts (see
//! [`Horizon`]) hashes its key and HLC into one of [`BUCKETS`] buckets by its key; a
//! bucket's hash is the XOR of its records' hashes. The initiator asks a peer for its
//! bucket hashes ([`messages::Digest`]); for the buckets that differ only, it asks for
//! the keys and HLCs they hold ([`messages::Versions`]), then fetches what the peer has
//! newer and pushes what it has newer. Records are applied by last-writer-wins, so a
//! repair can only move a key forward.
//!
//! The primary of each partition compares it with every other owner, one round every
//! `repair.interval` and soon after the placed nodes change (a node joined, returned or
//! was lost), once this node's rebalance is idle. A node also compares partitions it holds
//! records of but no longer owns with their owners, and pushes whatever they lack; once
//! every owner has answered, it removes the records it listed beforehand and that were not
//! written since ([`Cluster::hand_over`]).
//!
//! **Purging consistently.** Expired values and tombstones past `store.tombstone_grace`
//! are purged by each node on its own. Both sides of a comparison leave out the records
//! that are dead as of the initiator's clock (the same cut-offs on both sides), so a
//! replica that has purged and one that has not yet agree, and a purged tombstone or an
//! expired value is never copied back. A tombstone must therefore outlive the longest
//! time a node stays away and comes back with its data (docs/operations.md).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::messages::{self, WireRecord};
use super::{Cluster, DataError, View, unavailable};
use crate::hlc::Hlc;
use crate::placement::{NodeId, Partition};
use crate::record::Record;
use crate::store::{Store, StoreError};

/// Buckets per partition in a comparison.
pub const BUCKETS: usize = 64;
/// How long placement must be unchanged before a round starts after a change.
const SETTLE: Duration = Duration::from_secs(2);
/// When the next round starts after one in which a peer did not answer.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Records per fetch or push message (and at most [`MAX_BATCH_BYTES`] of them).
const BATCH_RECORDS: usize = 500;
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Anti-entropy settings, from config.
#[derive(Clone, Copy, Debug)]
pub struct RepairOptions {
    /// Time between rounds.
    pub interval: Duration,
    /// Partitions compared at once.
    pub max_parallel: usize,
    /// `store.tombstone_grace`: tombstones older than this are left out of comparisons.
    pub tombstone_grace: Duration,
}

/// Which records a comparison counts: values not expired at `now_ms` and tombstones
/// stamped at or after `tombstones_from_ms`. Chosen by the initiator and applied by both
/// sides, so two replicas that differ only in what they have purged compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Horizon {
    pub now_ms: u64,
    pub tombstones_from_ms: u64,
}

impl Horizon {
    pub fn at(now_ms: u64, grace: Duration) -> Horizon {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        Horizon { now_ms, tombstones_from_ms: now_ms.saturating_sub(grace_ms) }
    }

    pub fn counts(&self, r: &Record) -> bool {
        match &r.value {
            Some(_) => r.expires_at_ms.is_none_or(|at| at > self.now_ms),
            None => r.hlc.physical_ms() >= self.tombstones_from_ms,
        }
    }
}

fn bucket_of(key: &[u8]) -> usize {
    // A seed unlike placement's, so a partition's keys spread over every bucket.
    (xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x0c_a7_1e) % BUCKETS as u64) as usize
}

fn entry_hash(key: &[u8], hlc: Hlc) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, hlc.0)
}

/// The bucket hashes of `partition` as this store holds it.
pub fn digest(store: &dyn Store, partition: Partition, horizon: Horizon) -> Result<Vec<u64>, StoreError> {
    let mut buckets = vec![0u64; BUCKETS];
    store.scan_partition(partition, &mut |key, r| {
        if horizon.counts(r) {
            buckets[bucket_of(key)] ^= entry_hash(key, r.hlc);
        }
    })?;
    Ok(buckets)
}

/// The keys and HLCs of `partition` in `buckets`.
pub fn versions(
    store: &dyn Store,
    partition: Partition,
    buckets: &[u8],
    horizon: Horizon,
) -> Result<Vec<(Bytes, Hlc)>, StoreError> {
    let wanted: HashSet<usize> = buckets.iter().map(|&b| b as usize).collect();
    let mut out = Vec::new();
    store.scan_partition(partition, &mut |key, r| {
        if horizon.counts(r) && wanted.contains(&bucket_of(key)) {
            out.push((Bytes::copy_from_slice(key), r.hlc));
        }
    })?;
    Ok(out)
}

/// The key and HLC of every record of `partition`, dead ones included.
fn listing(store: &dyn Store, partition: Partition) -> Result<Vec<(Bytes, Hlc)>, StoreError> {
    let mut out = Vec::new();
    store.scan_partition(partition, &mut |key, r| out.push((Bytes::copy_from_slice(key), r.hlc)))?;
    Ok(out)
}

/// What differs between two replicas' versions of the same buckets: the keys to fetch
/// (the peer's is newer or only the peer has it) and to push (the other way round).
pub fn differences(mine: &[(Bytes, Hlc)], theirs: &[(Bytes, Hlc)]) -> (Vec<Bytes>, Vec<Bytes>) {
    let mine: BTreeMap<&Bytes, Hlc> = mine.iter().map(|(k, h)| (k, *h)).collect();
    let theirs: BTreeMap<&Bytes, Hlc> = theirs.iter().map(|(k, h)| (k, *h)).collect();
    let fetch = theirs.iter().filter(|(k, h)| mine.get(*k).is_none_or(|m| m < *h)).map(|(k, _)| (*k).clone());
    let push = mine.iter().filter(|(k, h)| theirs.get(*k).is_none_or(|t| t < *h)).map(|(k, _)| (*k).clone());
    (fetch.collect(), push.collect())
}

/// One unit of a round's work.
#[derive(Clone, Copy)]
enum Work {
    /// Compare a partition this node is primary of with another owner.
    Compare { partition: Partition, peer: NodeId },
}

/// The hand-back rule: records of a partition this node held without owning it may be
/// removed once every owner it compared with (`compared`, each confirmed) is still the
/// partition's owner set now, and this node has not become an owner in between.
pub(super) fn may_remove(compared: &[NodeId], owners_now: &[NodeId], owned_now: bool) -> bool {
    !owned_now && !compared.is_empty() && compared == owners_now
}

/// What a unit of work did: each comparison made, whether records of a partition not
/// owned were held, and how many were removed once every owner had them.
pub(super) struct Outcome {
    results: Vec<(Partition, NodeId, Result<Option<Compared>, DataError>)>,
    pub(super) held: bool,
    pub(super) removed: Option<u64>,
}

/// The outcome of comparing one partition with one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Compared {
    /// The peer is still copying partitions it gained: compared later.
    deferred: bool,
    differing_buckets: usize,
    fetched: u64,
    pushed: u64,
}

/// What the repair worker reports in `/v1/status` and metrics.
#[derive(Default)]
pub struct RepairStatus {
    inner: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    running: bool,
    rounds: u64,
    compared: u64,
    deferred: u64,
    repaired: u64,
    failed: u64,
    fetched: u64,
    pushed: u64,
    /// Partitions held here but not owned and not handed over yet.
    not_owned_held: u64,
    /// Partitions handed over to their owners and removed here, and their records.
    handed_over: u64,
    removed: u64,
    last_round_ms: Option<u64>,
    last_round_finished: Option<Instant>,
}

impl RepairStatus {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// For `/v1/status`'s workers list.
    pub fn json(&self) -> Value {
        let p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "name": "repair",
            "state": if p.running { "comparing" } else { "idle" },
            "rounds": p.rounds,
            "partitions_compared": p.compared,
            "comparisons_deferred": p.deferred,
            "partitions_repaired": p.repaired,
            "comparisons_failed": p.failed,
            "keys_fetched": p.fetched,
            "keys_pushed": p.pushed,
            "not_owned_partitions_held": p.not_owned_held,
            "partitions_handed_over": p.handed_over,
            "keys_removed": p.removed,
            "last_round_ms": p.last_round_ms,
            "last_round_seconds_ago": p.last_round_finished.map(|t| t.elapsed().as_secs()),
        })
    }
}

impl Cluster {
    /// Runs anti-entropy rounds until `stop`.
    pub async fn anti_entropy(self: Arc<Self>, stop: CancellationToken) {
        let Some(topology) = &self.topology else { return };
        let options = topology.repair;
        let first = self.view();
        let mut seen = first.generation;
        // Nodes placed now: any change (a restarted node meeting its cluster again
        // included) is followed by a round.
        let mut placed: HashSet<NodeId> = first.placement.nodes().iter().copied().collect();
        let mut changed_at: Option<Instant> = None;
        let mut next_round = Instant::now() + options.interval;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let view = self.view();
            if view.generation != seen {
                seen = view.generation;
                let now: HashSet<NodeId> = view.placement.nodes().iter().copied().collect();
                // A node that returned (restarted, resumed, or on the other side of a
                // healed network partition) may hold or lack writes. A node lost or
                // added leaves a window too: a new owner copies a partition from the
                // old ones, and writes acknowledged between its copy and the moment
                // every coordinator places it reach only the old owners. Either way a
                // round follows once placement settles and rebalance is idle (never in
                // the middle of a copy).
                if now != placed {
                    changed_at = Some(Instant::now());
                }
                placed = now;
            }
            let settled = changed_at.is_some_and(|t| t.elapsed() >= SETTLE);
            if !(settled || Instant::now() >= next_round) || self.rebalance_status.busy() {
                continue;
            }
            changed_at = None;
            let complete = self.repair_round(&view, options, &stop).await;
            next_round =
                Instant::now() + if complete { options.interval } else { options.interval.min(RETRY_AFTER) };
        }
    }

    /// One pass over the partitions this node is primary of, and over those it holds
    /// records of without owning them. A peer that fails a comparison is skipped for the
    /// rest of the round. Returns whether every comparison was made.
    async fn repair_round(&self, view: &View, options: RepairOptions, stop: &CancellationToken) -> bool {
        let started = Instant::now();
        self.repair_status.update(|p| p.running = true);
        let mut work = Vec::new();
        let mut not_owned = Vec::new();
        for partition in 0..self.partitions() {
            let owners = view.placement.owners(partition);
            if owners.first() == Some(&self.node) {
                work.extend(owners[1..].iter().map(|&peer| Work::Compare { partition, peer }));
            } else if !owners.contains(&self.node) {
                not_owned.push(partition);
            }
        }
        // Records held in partitions not owned: the stray worker hands them over.
        self.strays.add(not_owned);
        let mut pending = work.into_iter();
        let mut running = FuturesUnordered::new();
        let (mut compared, mut repaired, mut failed, mut fetched, mut pushed) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut deferred = 0u64;
        // Peers that did not answer, or are still copying: skipped for the rest of the round.
        let mut unreachable: HashSet<NodeId> = HashSet::new();
        let mut copying: HashSet<NodeId> = HashSet::new();
        loop {
            while running.len() < options.max_parallel {
                let Some(item) = pending.next() else { break };
                let Work::Compare { partition, peer } = item;
                if copying.contains(&peer) {
                    deferred += 1;
                    continue;
                }
                if unreachable.contains(&peer) {
                    failed += 1;
                    continue;
                }
                running.push(async move {
                    let result = self.compare(view, partition, peer, true).await;
                    Outcome { results: vec![(partition, peer, result)], held: false, removed: None }
                });
            }
            let Some(outcome) = running.next().await else { break };
            for (partition, peer, result) in outcome.results {
                match result {
                    Ok(None) => {}
                    Ok(Some(c)) if c.deferred => {
                        deferred += 1;
                        copying.insert(peer);
                    }
                    Ok(Some(c)) => {
                        compared += 1;
                        fetched += c.fetched;
                        pushed += c.pushed;
                        if c.fetched + c.pushed > 0 {
                            repaired += 1;
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if unreachable.insert(peer) {
                            tracing::info!(partition, %peer, error = %e, "comparison failed; this peer is skipped until the next round");
                        }
                    }
                }
            }
            if stop.is_cancelled() {
                break;
            }
        }
        let elapsed = started.elapsed();
        let m = &self.metrics;
        m.repair_rounds.inc();
        m.repair_keys.with_label_values(&["fetched"]).inc_by(fetched);
        m.repair_keys.with_label_values(&["pushed"]).inc_by(pushed);
        self.repair_status.update(|p| {
            p.running = false;
            p.rounds += 1;
            p.compared += compared;
            p.deferred += deferred;
            p.repaired += repaired;
            p.failed += failed;
            p.fetched += fetched;
            p.pushed += pushed;
            p.last_round_ms = Some(elapsed.as_millis() as u64);
            p.last_round_finished = Some(Instant::now());
        });
        if fetched + pushed + failed > 0 {
            tracing::info!(
                compared,
                repaired,
                fetched,
                pushed,
                failed,
                elapsed_ms = elapsed.as_millis() as u64,
                "anti-entropy round finished"
            );
        } else {
            tracing::debug!(compared, elapsed_ms = elapsed.as_millis() as u64, "anti-entropy round: in sync");
        }
        failed + deferred == 0 && !stop.is_cancelled()
    }

    /// Compares `partition` with `peer` and repairs the difference. `owned`: this node is
    /// an owner and takes what the peer has newer; otherwise it only pushes, and returns
    /// `None` without asking the peer when it holds nothing of the partition.
    async fn compare(
        &self,
        view: &View,
        partition: Partition,
        peer: NodeId,
        owned: bool,
    ) -> Result<Option<Compared>, DataError> {
        let topology = self.topology.as_ref().expect("repair runs in a cluster");
        let target = self.target(view, peer)?;
        let grace = topology.repair.tombstone_grace;
        let horizon = Horizon::at(crate::hlc::unix_ms(), grace);
        // The peer first: one still copying answers at once, before this node hashes the
        // whole partition for nothing.
        let answer = topology
            .peers
            .call(&target, &messages::Digest { partition, horizon }, self.timeout())
            .await
            .map_err(unavailable)?;
        let messages::DigestAnswer::Buckets(theirs) = answer else {
            return Ok(Some(Compared { deferred: true, ..Compared::default() }));
        };
        let mine = self.local_digest(partition, horizon).await?;
        if !owned && mine.iter().all(|&h| h == 0) {
            return Ok(None);
        }
        let differing: Vec<u8> =
            (0..BUCKETS).filter(|&b| theirs.get(b) != Some(&mine[b])).map(|b| b as u8).collect();
        let mut result = Compared { differing_buckets: differing.len(), ..Compared::default() };
        if differing.is_empty() {
            return Ok(Some(result));
        }
        let store = self.local.store.clone();
        let buckets = differing.clone();
        let my_versions =
            tokio::task::spawn_blocking(move || versions(&*store, partition, &buckets, horizon))
                .await
                .map_err(|e| DataError::Unavailable(format!("comparison task failed: {e}")))??;
        let their_versions = topology
            .peers
            .call(&target, &messages::Versions { partition, buckets: differing, horizon }, self.timeout())
            .await
            .map_err(unavailable)?;
        let (fetch, push) = differences(&my_versions, &their_versions);
        if owned {
            for keys in fetch.chunks(BATCH_RECORDS) {
                let records = topology
                    .peers
                    .call(&target, &messages::Read { keys: keys.to_vec() }, self.timeout())
                    .await
                    .map_err(unavailable)?;
                let mut got = Vec::with_capacity(keys.len());
                for (key, wire) in keys.iter().zip(records) {
                    let Some(wire) = wire else { continue };
                    let record = wire.decode().map_err(|e| DataError::Unavailable(e.to_string()))?;
                    if horizon.counts(&record) {
                        got.push((key.clone(), record));
                    }
                }
                result.fetched += got.len() as u64;
                self.local.apply_batch(got).await?;
            }
        }
        for keys in push.chunks(BATCH_RECORDS) {
            let records = self.local.read(keys)?;
            let mut batch: Vec<(Bytes, WireRecord)> = Vec::new();
            let mut bytes = 0;
            for (key, record) in keys.iter().zip(records) {
                let Some(record) = record.filter(|r| horizon.counts(r)) else { continue };
                let wire = WireRecord::new(&record);
                bytes += key.len() + wire.0.len();
                batch.push((key.clone(), wire));
                if bytes >= MAX_BATCH_BYTES {
                    result.pushed += batch.len() as u64;
                    let records = std::mem::take(&mut batch);
                    topology
                        .peers
                        .call(&target, &messages::Replicate { records }, self.timeout())
                        .await
                        .map_err(unavailable)?;
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                result.pushed += batch.len() as u64;
                topology
                    .peers
                    .call(&target, &messages::Replicate { records: batch }, self.timeout())
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(Some(result))
    }

    /// Hands `partition`, which this node holds records of but does not own, over to its
    /// owners: lists every record held, brings each owner up to date with what it lacks,
    /// and once every owner has answered, removes the listed records that were not written
    /// since. Records that arrive later (from a writer with an older view) stay for the
    /// next round. Nothing is removed if this node owns the partition again by then, or
    /// its owners changed.
    pub(super) async fn hand_over(&self, view: &View, partition: Partition) -> Outcome {
        let mut outcome = Outcome { results: Vec::new(), held: false, removed: None };
        let store = self.local.store.clone();
        let listed = match tokio::task::spawn_blocking(move || listing(&*store, partition)).await {
            Ok(Ok(listed)) => listed,
            Ok(Err(e)) => {
                tracing::warn!(partition, error = %e, "cannot list a partition to hand over");
                return outcome;
            }
            Err(e) => {
                tracing::error!(partition, error = %e, "listing task failed");
                return outcome;
            }
        };
        if listed.is_empty() {
            return outcome;
        }
        outcome.held = true;
        let owners = view.placement.owners(partition);
        for &peer in owners {
            let result = self.compare(view, partition, peer, false).await;
            let confirmed = matches!(result, Ok(None)) || matches!(result, Ok(Some(c)) if !c.deferred);
            outcome.results.push((partition, peer, result));
            if !confirmed {
                return outcome;
            }
        }
        let now = self.view();
        if !may_remove(owners, now.placement.owners(partition), now.placement.is_owner(partition, self.node))
        {
            return outcome;
        }
        let store = self.local.store.clone();
        match tokio::task::spawn_blocking(move || store.remove_unchanged(partition, &listed)).await {
            Ok(Ok(n)) => outcome.removed = Some(n as u64),
            Ok(Err(e)) => tracing::warn!(partition, error = %e, "removing a handed-over partition failed"),
            Err(e) => tracing::error!(partition, error = %e, "removal task failed"),
        }
        outcome
    }

    /// Counts what a hand-over by the stray worker did.
    pub(super) fn note_hand_over(&self, partition: Partition, outcome: &Outcome) {
        let (mut pushed, mut failed) = (0, 0);
        for (_, _, result) in &outcome.results {
            match result {
                Ok(Some(c)) => pushed += c.pushed,
                Ok(None) => {}
                Err(_) => failed += 1,
            }
        }
        let removed = outcome.removed.unwrap_or(0);
        self.metrics.repair_keys.with_label_values(&["pushed"]).inc_by(pushed);
        self.metrics.repair_keys.with_label_values(&["removed"]).inc_by(removed);
        let held = self.strays.held(partition, outcome.held && outcome.removed.is_none());
        self.repair_status.update(|p| {
            p.not_owned_held = held as u64;
            p.pushed += pushed;
            p.failed += failed;
            p.handed_over += u64::from(outcome.removed.is_some());
            p.removed += removed;
        });
        if outcome.removed.is_some() || pushed > 0 {
            tracing::debug!(pushed, removed, "stray records handed over to their owners");
        }
    }

    /// This node's bucket hashes of `partition`, computed off the async workers.
    pub(super) async fn local_digest(
        &self,
        partition: Partition,
        horizon: Horizon,
    ) -> Result<Vec<u64>, DataError> {
        let store = self.local.store.clone();
        tokio::task::spawn_blocking(move || digest(&*store, partition, horizon))
            .await
            .map_err(|e| DataError::Unavailable(format!("comparison task failed: {e}")))?
            .map_err(DataError::from)
    }

    /// The repair worker's progress, for `/v1/status`.
    pub fn repair_status(&self) -> Value {
        self.repair_status.json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    fn record(value: Option<&str>, ms: u64, expires_at_ms: Option<u64>) -> Record {
        Record {
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            hlc: Hlc::new(ms, 0),
            origin: Origin { datacenter: "dc1".into(), node: 1 },
            expires_at_ms,
        }
    }

    #[test]
    fn strays_are_removed_only_when_the_owners_compared_are_the_owners_now() {
        let (a, b, c, me) = (NodeId(1), NodeId(2), NodeId(3), NodeId(9));
        assert!(may_remove(&[a, b, c], &[a, b, c], false));
        // Placement moved on meanwhile: an owner now was never brought up to date.
        assert!(!may_remove(&[a, b, c], &[a, b, me], false));
        assert!(!may_remove(&[a, b], &[a, b, c], false));
        // This node owns it again: its records are where they belong.
        assert!(!may_remove(&[a, b, c], &[a, b, c], true));
        // No owner at all: nobody holds the records.
        assert!(!may_remove(&[], &[], false));
    }

    #[test]
    fn the_horizon_leaves_out_expired_values_and_old_tombstones() {
        let h = Horizon::at(10_000, Duration::from_secs(5));
        assert_eq!(h.tombstones_from_ms, 5_000);
        assert!(h.counts(&record(Some("v"), 1, None)));
        assert!(h.counts(&record(Some("v"), 1, Some(10_001))));
        assert!(!h.counts(&record(Some("v"), 1, Some(10_000))));
        assert!(h.counts(&record(None, 5_000, None)));
        assert!(!h.counts(&record(None, 4_999, None)));
    }

    #[test]
    fn differences_fetch_what_the_peer_has_newer_and_push_the_rest() {
        let k = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let h = |n: u64| Hlc::new(n, 0);
        let mine = vec![
            (k("same"), h(1)),
            (k("mine-newer"), h(5)),
            (k("only-mine"), h(1)),
            (k("theirs-newer"), h(1)),
        ];
        let theirs = vec![
            (k("same"), h(1)),
            (k("mine-newer"), h(4)),
            (k("theirs-newer"), h(2)),
            (k("only-theirs"), h(3)),
        ];
        let (fetch, push) = differences(&mine, &theirs);
        assert_eq!(fetch, vec![k("only-theirs"), k("theirs-newer")]);
        assert_eq!(push, vec![k("mine-newer"), k("only-mine")]);
    }

    #[test]
    fn equal_contents_give_equal_digests_and_one_change_moves_one_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(&crate::store::StoreOptions {
            path: dir.path().to_path_buf(),
            partitions: 1,
            cache_bytes: 1 << 20,
            tombstone_grace: Duration::from_secs(5),
            datacenter: "dc1".into(),
        })
        .unwrap();
        let horizon = Horizon::at(100_000, Duration::from_secs(5));
        let empty = digest(&store, 0, horizon).unwrap();
        assert!(empty.iter().all(|&b| b == 0));
        for i in 0..200 {
            let r = record(Some("v"), 1_000 + i, None);
            store.put(format!("k{i}").as_bytes(), &mut || r.clone()).unwrap();
        }
        let before = digest(&store, 0, horizon).unwrap();
        assert_eq!(before, digest(&store, 0, horizon).unwrap());
        let newer = record(Some("w"), 50_000, None);
        store.put(b"k7", &mut || newer.clone()).unwrap();
        let after = digest(&store, 0, horizon).unwrap();
        let changed: Vec<usize> = (0..BUCKETS).filter(|&b| before[b] != after[b]).collect();
        assert_eq!(changed, vec![bucket_of(b"k7")]);
        let listed = versions(&store, 0, &[changed[0] as u8], horizon).unwrap();
        assert!(listed.contains(&(Bytes::from_static(b"k7"), newer.hlc)));
        // A tombstone older than the grace period counts as nothing: same as no record.
        let old_delete = record(None, 90_000, None);
        store.put(b"k7", &mut || old_delete.clone()).unwrap();
        let purged_view = digest(&store, 0, Horizon::at(100_000, Duration::from_secs(5))).unwrap();
        assert_eq!(
            purged_view[bucket_of(b"k7")],
            before[bucket_of(b"k7")] ^ entry_hash(b"k7", Hlc::new(1_007, 0))
        );
    }
}
