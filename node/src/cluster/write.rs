//! The write path: deciding on the records a quorum holds, sending each key's ops to its
//! primary, and, as primary, copying the written records to the other owners until the
//! write quorum has them.
//!
//! Whether the quorum is met (and how many acknowledgements a write reports) is decided
//! by [`count_acks`], a pure function over the acknowledgements per partition.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;

use super::local::{Executed, Stamp};
use super::messages::{self, Change, Op, WireRecord, WriteOutcome};
use super::read::Merged;
use super::{Cluster, DataError, View, decode, remaining, unavailable};
use crate::peer::RpcError;
use crate::peer::messages::Refusal;
use crate::placement::{NodeId, Partition, partition_of};
use crate::queue;
use crate::record::Record;
use crate::store::Write;

/// Longest pause before a coordinator decides again after a conflict; the pause grows
/// with the attempts, randomised, so that coordinators racing for one key spread out.
const MAX_CONFLICT_BACKOFF: Duration = Duration::from_millis(5);
/// Pause before a write refused by a primary that has not joined yet is sent again.
const NOT_JOINED_PAUSE: Duration = Duration::from_millis(50);

impl Cluster {
    /// Atomically reads `keys`, lets `decide` choose writes (stamping new records with
    /// [`Stamp`]), applies them and waits until the write quorum has them on disk.
    /// Returns the number of records written.
    ///
    /// Keys whose partitions have different primaries are written by each primary on its
    /// own: such a multi-key command is not atomic across them.
    pub async fn update<F>(&self, keys: &[&[u8]], decide: F) -> Result<usize, DataError>
    where
        F: FnMut(&[Option<Record>], &Stamp<'_>) -> Vec<Write>,
    {
        self.refuse_home_write(keys)?;
        let result = self.update_keys(keys, decide).await;
        self.wrote_through(keys);
        result
    }

    async fn update_keys<F>(&self, keys: &[&[u8]], mut decide: F) -> Result<usize, DataError>
    where
        F: FnMut(&[Option<Record>], &Stamp<'_>) -> Vec<Write>,
    {
        let view = self.view();
        let primaries: Vec<NodeId> =
            keys.iter().map(|k| self.owners(&view, k).first().copied().unwrap_or(self.node)).collect();
        let deadline = Instant::now() + self.timeout();
        // Decide on the acknowledged state: read every key from a quorum of its owners
        // (just this node when it is the only one needed), whatever cluster.read_quorum says.
        let need = self.read_required(&view);
        self.check_reachable(&view, need.max(self.required(&view)), "write")?;
        let merged = join_all(keys.iter().map(|k| self.read_merged(&view, k, need, deadline, None))).await;
        let merged: Vec<Merged> = merged.into_iter().collect::<Result<_, _>>()?;
        if primaries.iter().all(|&p| p == self.node) {
            // The reads repaired this node's copies: decide and write in one local step.
            let written = self.local.update(keys, |current, stamp| decide(current, stamp)).await?;
            let n = written.len();
            self.replicate_as_primary(&view, written, self.required(&view)).await?;
            return Ok(n);
        }
        let owned: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
        let mut primary_current: Vec<bool> = merged.iter().map(|m| m.primary_current).collect();
        let mut current: Vec<Option<Record>> = merged.into_iter().map(|m| m.record).collect();
        for attempt in 1u32.. {
            let writes = decide(&current, &self.local.stamp());
            let ops: Vec<Op> = owned
                .iter()
                .zip(&current)
                .zip(&writes)
                .zip(&primary_current)
                .map(|(((key, cur), write), &primary_has_it)| Op {
                    key: key.clone(),
                    expect: Some(cur.as_ref().map(|r| r.hlc)),
                    change: change_of(write),
                    seen: if primary_has_it { None } else { cur.as_ref().map(WireRecord::new) },
                })
                .collect();
            if ops.iter().all(|op| op.change == Change::Keep && op.seen.is_none()) {
                return Ok(0);
            }
            match self.write_ops(&view, ops, &primaries, deadline).await? {
                Ok(written) => return Ok(written),
                Err(conflict) => {
                    if Instant::now() >= deadline {
                        return Err(DataError::Unavailable(format!(
                            "the keys kept changing under this write; gave up after {attempt} attempts"
                        )));
                    }
                    // The primary sent what it holds now (it kept what it was sent): decide
                    // again on that.
                    for (i, record) in conflict {
                        current[i] = record;
                        primary_current[i] = true;
                    }
                    let pause = MAX_CONFLICT_BACKOFF.min(Duration::from_micros(100) * attempt);
                    tokio::time::sleep(pause.mul_f64(rand::random::<f64>())).await;
                }
            }
        }
        unreachable!("the attempts never run out")
    }

    /// Writes `value` whatever the key holds now (SET without options).
    pub async fn put(&self, key: &[u8], value: Bytes, expires_at_ms: Option<u64>) -> Result<(), DataError> {
        self.refuse_home_write(&[key])?;
        let result = self.put_key(key, value, expires_at_ms).await;
        self.wrote_through(&[key]);
        result
    }

    async fn put_key(&self, key: &[u8], value: Bytes, expires_at_ms: Option<u64>) -> Result<(), DataError> {
        let view = self.view();
        self.check_reachable(&view, self.required(&view), "write")?;
        let primary = self.owners(&view, key).first().copied().unwrap_or(self.node);
        if primary == self.node {
            let written = self.local.put(key, value, expires_at_ms).await?;
            return self.replicate_as_primary(&view, vec![written], self.required(&view)).await;
        }
        let op = Op {
            key: Bytes::copy_from_slice(key),
            expect: None,
            change: Change::Put { value, expires_at_ms },
            seen: None,
        };
        let deadline = Instant::now() + self.timeout();
        match self.write_ops(&view, vec![op], &[primary], deadline).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(DataError::Unavailable("unexpected conflict on an unconditional write".into())),
        }
    }

    /// Acknowledgements a write needs under the current placement.
    fn required(&self, view: &View) -> usize {
        view.quorums.write
    }

    /// Sends each group of ops to its primary. `Ok(Err(current))`: a conflict; `current`
    /// is what the primary holds now for the ops of its group, by op index.
    async fn write_ops(
        &self,
        view: &View,
        ops: Vec<Op>,
        primaries: &[NodeId],
        deadline: Instant,
    ) -> Result<Result<usize, Conflict>, DataError> {
        let required = self.required(view);
        let mut total = 0;
        let mut ops: Vec<Option<Op>> = ops.into_iter().map(Some).collect();
        for (primary, indexes) in group(primaries) {
            let group_ops: Vec<Op> = indexes.iter().filter_map(|&i| ops[i].take()).collect();
            if group_ops.iter().all(|op| op.change == Change::Keep && op.seen.is_none()) {
                continue;
            }
            if primary == self.node {
                match self.local.execute(&group_ops).await? {
                    Executed::Conflict(current) => {
                        return Ok(Err(indexes.into_iter().zip(current).collect()));
                    }
                    Executed::Written(written) => {
                        total += written.len();
                        self.replicate_as_primary(view, written, required).await?;
                    }
                }
                continue;
            }
            // The primary copies the records to every other owner, this node included when
            // it is one (a coordinator that gave up waiting must still get its copy).
            let msg = messages::Write {
                quorum: required as u32,
                budget_ms: (remaining(deadline).as_millis() * 3 / 4).min(u128::from(u32::MAX)) as u32,
                ops: group_ops,
            };
            let target = self.target(view, primary)?;
            self.metrics.forwarded.with_label_values(&["write"]).inc();
            let outcome = loop {
                match self.peers()?.call(&target, &msg, remaining(deadline)).await {
                    // A primary that has just joined (or come back) and does not reach its
                    // cluster yet applied nothing: it usually does within a verification
                    // round, so the write waits for it rather than failing.
                    Err(RpcError::Refused { refusal: Refusal::NotJoined(why), .. })
                        if remaining(deadline) > NOT_JOINED_PAUSE * 2 =>
                    {
                        tracing::debug!(primary = %target.name, %why, "primary not joined yet; trying again");
                        tokio::time::sleep(NOT_JOINED_PAUSE).await;
                    }
                    result => break result,
                }
            }
            .map_err(primary_failed)?;
            match outcome {
                WriteOutcome::Conflict { current } => {
                    let current: Vec<Option<Record>> = current
                        .iter()
                        .map(|w| w.as_ref().map(decode).transpose())
                        .collect::<Result<_, _>>()?;
                    return Ok(Err(indexes.into_iter().zip(current).collect()));
                }
                WriteOutcome::Written { written, acks } => {
                    total += written as usize;
                    let acks = acks as usize;
                    if acks < required {
                        return Err(quorum_missed(acks, required));
                    }
                }
            }
        }
        Ok(Ok(total))
    }

    /// As primary: copies `written` to the other owners of their partitions and waits
    /// until `required` owners, this one included, have each record. Copies still in
    /// flight then complete in the background.
    async fn replicate_as_primary(
        &self,
        view: &View,
        written: Vec<(Bytes, Record)>,
        required: usize,
    ) -> Result<(), DataError> {
        let acks = self.replicate(view, written, required, self.timeout()).await?;
        if acks < required {
            return Err(quorum_missed(acks, required));
        }
        Ok(())
    }

    /// Returns the fewest owners that have any one record (this node included).
    pub(super) async fn replicate(
        &self,
        view: &View,
        written: Vec<(Bytes, Record)>,
        required: usize,
        wait: Duration,
    ) -> Result<usize, DataError> {
        if written.is_empty() {
            return Ok(required.max(1));
        }
        // This node's copy is the only one when it is the only owner: one ack, whatever
        // the quorum asks for.
        let Some(topology) = self.topology.as_ref().filter(|_| view.placement.owners_per_partition() > 1)
        else {
            return Ok(1);
        };
        // Which records go to which node, and which partitions each node answers for.
        #[derive(Default)]
        struct Copies {
            records: Vec<(Bytes, WireRecord)>,
            /// The partitions of those records: an answer counts as an ack for each.
            partitions: Vec<Partition>,
        }
        let mut per_node: BTreeMap<NodeId, Copies> = BTreeMap::new();
        let mut partitions: BTreeMap<Partition, usize> = BTreeMap::new();
        for (key, record) in &written {
            let p = partition_of(key, self.partitions());
            partitions.insert(p, 1);
            for &owner in view.placement.owners(p) {
                if owner != self.node {
                    let copies = per_node.entry(owner).or_default();
                    copies.records.push((key.clone(), WireRecord::new(record)));
                    copies.partitions.push(p);
                }
            }
        }
        // One answer per copy sent: a channel as large as the copies never makes a copy
        // wait to report.
        let (tx, mut rx) = queue::bounded(per_node.len(), self.metrics.replica_acks_depth.clone());
        let mut outstanding = 0;
        for (node, Copies { records, partitions: parts }) in per_node {
            let Ok(target) = self.target(view, node) else { continue };
            let peers = topology.peers.clone();
            let (tx, timeout) = (tx.clone(), topology.timeout);
            let sent = records.len() as u64;
            self.metrics.replicated_records.with_label_values(&["sent"]).inc_by(sent);
            outstanding += 1;
            let (hints, dropped_hints) = (self.hints.clone(), self.metrics.hints_dropped.clone());
            tokio::spawn(async move {
                let msg = messages::Replicate { records };
                let result = peers.call(&target, &msg, timeout).await;
                if let Err(e) = &result {
                    tracing::debug!(peer = %target.name, error = %e, "replica copy failed; kept as a hint");
                    let dropped = hints.keep(target.id, msg.records);
                    if dropped > 0 {
                        dropped_hints.inc_by(dropped as u64);
                        tracing::warn!(
                            dropped,
                            "hint budget (cluster.max_hint_bytes) full: oldest hints dropped"
                        );
                    }
                }
                // The primary stops listening once the quorum is met or its wait is over;
                // this copy's outcome is then no longer needed (a failed copy is a hint).
                if tx.send((parts, result.is_ok())).await.is_err() {
                    tracing::trace!(peer = %target.name, "replica answered after the primary stopped waiting");
                }
            });
        }
        drop(tx);
        let deadline = tokio::time::Instant::now() + wait;
        while outstanding > 0 && !count_acks(&partitions, required).met {
            let Ok(Some((parts, ok))) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
            outstanding -= 1;
            if ok {
                for p in parts {
                    *partitions.entry(p).or_default() += 1;
                }
            }
        }
        let Acks { met, reported } = count_acks(&partitions, required);
        let outcome = if met { "quorum_met" } else { "quorum_missed" };
        self.metrics.replication.with_label_values(&[outcome]).inc();
        Ok(reported)
    }
}

/// How far a primary's copies of one write have got.
#[derive(Debug, PartialEq, Eq)]
struct Acks {
    /// Every partition the write touched has `required` owners holding it.
    met: bool,
    /// The acknowledgements the write reports: those of its least-copied partition.
    reported: usize,
}

/// Counts a write's acknowledgements from those of each partition it touched (this
/// node's own copy included). A multi-key write is only as durable as its least-copied
/// partition, so that one decides. A write touches at least one partition; with none,
/// this node's copy is the only one.
fn count_acks(per_partition: &BTreeMap<Partition, usize>, required: usize) -> Acks {
    let reported = per_partition.values().copied().min().unwrap_or(1);
    Acks { met: reported >= required, reported }
}

fn change_of(write: &Write) -> Change {
    match write {
        Write::Keep => Change::Keep,
        Write::Put(Record { value: Some(value), expires_at_ms, .. }) => {
            Change::Put { value: value.clone(), expires_at_ms: *expires_at_ms }
        }
        Write::Put(Record { value: None, .. }) => Change::Delete,
    }
}

/// What a primary holds for the keys of a conflicting write: (key index, record).
type Conflict = Vec<(usize, Option<Record>)>;

/// Indexes grouped by node, in node order.
fn group(nodes: &[NodeId]) -> BTreeMap<NodeId, Vec<usize>> {
    let mut groups: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for (i, &n) in nodes.iter().enumerate() {
        groups.entry(n).or_default().push(i);
    }
    groups
}

fn quorum_missed(acks: usize, required: usize) -> DataError {
    DataError::QuorumMissed { acks, required }
}

/// What a write sent to a primary ended in, when the primary did not answer with an
/// outcome: a missed quorum stays a missed quorum (the write was applied and may still
/// become visible), a lost answer may or may not have been applied, anything else made
/// the owners unavailable.
fn primary_failed(e: RpcError) -> DataError {
    match e {
        RpcError::Refused { refusal: Refusal::QuorumMissed { acks, required }, .. } => {
            DataError::QuorumMissed { acks: acks as usize, required: required as usize }
        }
        RpcError::Timeout { .. } | RpcError::Transport { .. } => {
            DataError::Unavailable(format!("{e}; the write may or may not have been applied"))
        }
        e => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acks(counts: &[(Partition, usize)]) -> BTreeMap<Partition, usize> {
        counts.iter().copied().collect()
    }

    #[test]
    fn quorum_is_met_when_every_partition_reaches_it() {
        assert_eq!(count_acks(&acks(&[(0, 2), (5, 3)]), 2), Acks { met: true, reported: 2 });
        assert_eq!(count_acks(&acks(&[(0, 1)]), 1), Acks { met: true, reported: 1 });
    }

    #[test]
    fn one_partition_short_misses_the_quorum_and_reports_its_count() {
        assert_eq!(count_acks(&acks(&[(0, 3), (1, 1), (2, 3)]), 2), Acks { met: false, reported: 1 });
    }

    #[test]
    fn a_lone_owner_counts_its_own_copy() {
        // Before any copy answers, the primary's own copy is the one ack of each partition.
        assert_eq!(count_acks(&acks(&[(7, 1)]), 2), Acks { met: false, reported: 1 });
        assert_eq!(count_acks(&BTreeMap::new(), 1), Acks { met: true, reported: 1 });
    }

    #[test]
    fn a_primary_that_missed_the_quorum_is_reported_as_such() {
        let refused =
            RpcError::Refused { peer: "n2".into(), refusal: Refusal::QuorumMissed { acks: 1, required: 2 } };
        let e = primary_failed(refused);
        assert!(matches!(e, DataError::QuorumMissed { acks: 1, required: 2 }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "write reached 1 of the 2 owners it needs (cluster.write_quorum) in time; \
             it is kept where it was applied and may still become visible"
        );
        // Not to be confused with a write whose answer was lost, or a primary not joined.
        let lost = primary_failed(RpcError::Timeout { peer: "n2".into(), timeout: Duration::from_secs(1) });
        assert!(matches!(&lost, DataError::Unavailable(why) if why.contains("may or may not")), "{lost:?}");
        let refused =
            RpcError::Refused { peer: "n2".into(), refusal: Refusal::NotJoined("reaches 0 of 2".into()) };
        assert!(matches!(primary_failed(refused), DataError::Unavailable(_)));
        // What the primary reports in its outcome ends the same way.
        assert!(matches!(quorum_missed(1, 2), DataError::QuorumMissed { acks: 1, required: 2 }));
    }

    proptest! {
        #[test]
        fn reports_the_fewest_and_is_met_iff_all_reach_required(
            counts in proptest::collection::btree_map(any::<Partition>(), 1usize..6, 1..8),
            required in 1usize..6,
        ) {
            let got = count_acks(&counts, required);
            prop_assert_eq!(got.reported, *counts.values().min().unwrap());
            prop_assert_eq!(got.met, counts.values().all(|&n| n >= required));
        }
    }
}
