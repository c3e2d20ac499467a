//! The read path: asking enough owners of a key, taking the newest record, and
//! repairing the owners found behind (read repair).
//!
//! Which record wins and which owners are repaired is decided by [`choose`], a pure
//! function over the owners' answers; the async code only gathers them.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;

use super::messages::{self, WireRecord};
use super::{Cluster, DataError, View, decode, half_of, remaining, unavailable};
use crate::cache::near::Grant;
use crate::placement::{NodeId, partition_of};
use crate::record::Record;

/// The leases owners granted during one read.
pub(super) type Grants = std::sync::Mutex<Vec<Grant>>;

/// How many owners a read asks (`cluster.read_quorum`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadQuorum {
    /// Enough owners to overlap every write quorum; the newest record wins.
    #[default]
    Quorum,
    /// The first owner with a record: fastest, and may miss writes after a fault.
    One,
}

/// A quorum read's result.
pub(super) struct Merged {
    /// The newest record any owner asked holds.
    pub(super) record: Option<Record>,
    /// Whether the key's primary answered with that record (else writes send it along).
    pub(super) primary_current: bool,
}

impl Cluster {
    /// The stored record of `key` (tombstones and expired values included: the caller
    /// decides what is live at its own `now`).
    ///
    /// With `cluster.read_quorum = "quorum"` (the default) enough owners answer that every
    /// acknowledged write is among them, and the newest record wins; owners that answered
    /// with an older one are repaired. With `"one"` the first owner that has a record
    /// answers (this node when it owns the key).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Record>, DataError> {
        if let Some(home) = self.home_elsewhere(key) {
            return self.home_get(key, &home).await;
        }
        let view = self.view();
        let deadline = Instant::now() + self.timeout();
        // A key owned elsewhere may be served from, or kept in, the near cache.
        let partition = partition_of(key, self.partitions());
        let elsewhere = self.topology.is_some() && !view.placement.is_owner(partition, self.node);
        let mut reservation = None;
        if elsewhere && let Some(near) = &self.near {
            let now = Instant::now();
            if let Some(hit) = near.get(key, now) {
                return Ok(hit);
            }
            reservation = near.reserve(key, partition, now);
        }
        let grants = Grants::default();
        let leased = elsewhere && (reservation.is_some() || self.clients_track_reads());
        let lease = leased.then_some(&grants);
        let record = match self.topology.as_ref().map_or(ReadQuorum::One, |t| t.read_quorum) {
            ReadQuorum::Quorum => {
                let need = self.read_required(&view);
                self.check_reachable(&view, need, "read")?;
                self.read_merged(&view, key, need, deadline, lease).await?.record
            }
            ReadQuorum::One => self.read_one(&view, key, deadline, lease).await?,
        };
        if let (Some(near), Some(reservation)) = (&self.near, reservation) {
            let grants = grants.into_inner().unwrap_or_else(|e| e.into_inner());
            near.fill(key, partition, reservation, record.clone(), &grants, Instant::now());
        }
        Ok(record)
    }

    /// Owners a quorum read must hear from: enough that any write quorum overlaps them
    /// (`owners - write quorum + 1`).
    pub(super) fn read_required(&self, view: &View) -> usize {
        view.quorums.read
    }

    /// Reads `key` from `need` of its owners (this node first when it is one), takes the
    /// newest record, and repairs the owners that answered with an older one.
    pub(super) async fn read_merged(
        &self,
        view: &View,
        key: &[u8],
        need: usize,
        deadline: Instant,
        lease: Option<&Grants>,
    ) -> Result<Merged, DataError> {
        let owners = self.owners(view, key);
        let primary = owners.first().copied();
        let mut answers: Vec<(NodeId, Option<Record>)> = Vec::with_capacity(owners.len());
        if owners.contains(&self.node) || owners.is_empty() {
            // Completed from the copy's sources while the partition is still arriving.
            answers.push((self.node, self.read_own_one(key, || remaining(half_of(deadline))).await?));
        }
        let mut errors = Vec::new();
        // Other owners are asked only as many at a time as are still needed, primary first,
        // the first ones with half of the time left so that a replacement fits. One more is
        // asked for each that fails, and when every answer so far is "no record": an owner
        // that gained the partition after the write has nothing, and the write may be only
        // at an owner not asked yet.
        let found = |answers: &[(NodeId, Option<Record>)]| answers.iter().any(|(_, r)| r.is_some());
        let keys = [Bytes::copy_from_slice(key)];
        let keys = &keys;
        let others: Vec<NodeId> = owners.iter().copied().filter(|&n| n != self.node).collect();
        let mut next = 0;
        let mut reads = FuturesUnordered::new();
        let ask = |node: NodeId, by: Instant| async move {
            (node, self.read_from(view, node, keys, by, lease).await)
        };
        while next < others.len() && reads.len() < need.saturating_sub(answers.len()) {
            reads.push(ask(others[next], half_of(deadline)));
            next += 1;
        }
        loop {
            let enough = answers.len() >= need;
            if enough && found(&answers) {
                break;
            }
            if reads.is_empty() {
                if next == others.len() {
                    break;
                }
                // Enough answers, all "no record": ask every owner not heard yet.
                let more = if enough { others.len() - next } else { 1 };
                for &node in &others[next..next + more] {
                    reads.push(ask(node, deadline));
                }
                next += more;
            }
            match reads.next().await {
                Some((node, Ok(record))) => answers.push((node, record)),
                Some((_, Err(e))) => {
                    errors.push(e.to_string());
                    if next < others.len() {
                        reads.push(ask(others[next], deadline));
                        next += 1;
                    }
                }
                None => {}
            }
        }
        if answers.len() < need {
            return Err(DataError::Unavailable(format!(
                "read reached {} of the {need} owners it needs (cluster.read_quorum) in time: {}",
                answers.len(),
                errors.join("; ")
            )));
        }
        let Chosen { best, behind, primary_current } = choose(&answers, primary);
        if let Some(best) = &best {
            for node in behind {
                let copy = [(Bytes::copy_from_slice(key), best.clone())];
                if node == self.node {
                    self.local.apply(&copy).await?;
                } else {
                    self.repair(view, node, &copy);
                }
            }
        }
        Ok(Merged { record: best, primary_current })
    }

    /// Sends `records` to an owner that answered a read with older ones, in the background.
    fn repair(&self, view: &View, node: NodeId, records: &[(Bytes, Record)]) {
        let (Some(topology), Ok(target)) = (&self.topology, self.target(view, node)) else { return };
        let (peers, timeout) = (topology.peers.clone(), topology.timeout);
        let msg = messages::Replicate {
            records: records.iter().map(|(k, r)| (k.clone(), WireRecord::new(r))).collect(),
        };
        self.metrics.read_repairs.inc_by(records.len() as u64);
        tokio::spawn(async move {
            if let Err(e) = peers.call(&target, &msg, timeout).await {
                tracing::debug!(peer = %target.name, error = %e, "read repair failed");
            }
        });
    }

    /// `cluster.read_quorum = "one"`: this node's record when it owns the key and has one;
    /// else the primary's; when that has nothing (or fails), the newest of the others'.
    async fn read_one(
        &self,
        view: &View,
        key: &[u8],
        deadline: Instant,
        lease: Option<&Grants>,
    ) -> Result<Option<Record>, DataError> {
        let owners = self.owners(view, key);
        let here = owners.contains(&self.node);
        if here {
            let local = self.read_own_one(key, || remaining(half_of(deadline))).await?;
            if local.is_some() || owners.len() == 1 {
                return Ok(local);
            }
        }
        let keys = vec![Bytes::copy_from_slice(key)];
        let mut others = owners.iter().copied().filter(|&n| n != self.node);
        let mut answered = here;
        let mut errors = Vec::new();
        // Not an owner: ask the primary alone first (usually it has the record).
        if !here && let Some(primary) = others.next() {
            match self.read_from(view, primary, &keys, half_of(deadline), lease).await {
                Ok(Some(record)) => return Ok(Some(record)),
                Ok(None) => answered = true,
                Err(e) => errors.push(e.to_string()),
            }
        }
        let rest: Vec<NodeId> = others.collect();
        let answers = join_all(rest.iter().map(|&n| self.read_from(view, n, &keys, deadline, lease))).await;
        let mut best: Option<Record> = None;
        for answer in answers {
            match answer {
                Ok(found) => {
                    answered = true;
                    if let Some(r) = found
                        && r.wins_over(best.as_ref())
                    {
                        best = Some(r);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !answered {
            return Err(DataError::Unavailable(format!(
                "no owner of the key answered: {}",
                errors.join("; ")
            )));
        }
        if here && let Some(record) = &best {
            self.local.apply(&[(Bytes::copy_from_slice(key), record.clone())]).await?;
        }
        Ok(best)
    }

    /// The record of `keys[0]` at `node`; with `lease`, the owner also grants this node a
    /// lease on the key, recorded in `lease`.
    async fn read_from(
        &self,
        view: &View,
        node: NodeId,
        keys: &[Bytes],
        deadline: Instant,
        lease: Option<&Grants>,
    ) -> Result<Option<Record>, DataError> {
        let target = self.target(view, node)?;
        self.metrics.forwarded.with_label_values(&["read"]).inc();
        let peers = self.peers()?;
        let answer = match lease {
            Some(grants) => {
                let lease_ms = u32::try_from(self.invalidations.lease.as_millis()).unwrap_or(u32::MAX);
                let msg = messages::LeasedRead { keys: keys.to_vec(), holder: self.node.0, lease_ms };
                let answer = peers.call(&target, &msg, remaining(deadline)).await.map_err(|e| {
                    self.owner_unreachable(node, &e);
                    unavailable(e)
                })?;
                if let Some(&seq) = answer.seqs.first() {
                    let grant = Grant { owner: node.0, incarnation: answer.incarnation, seq };
                    grants.lock().unwrap_or_else(|e| e.into_inner()).push(grant);
                }
                answer.records
            }
            None => {
                let msg = messages::Read { keys: keys.to_vec() };
                peers.call(&target, &msg, remaining(deadline)).await.map_err(unavailable)?
            }
        };
        match answer.into_iter().next().flatten() {
            None => Ok(None),
            Some(wire) => Ok(Some(decode(&wire)?)),
        }
    }

    /// The live value of `key` at `now_ms` (GET, MGET, STRLEN, GETRANGE).
    pub async fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, DataError> {
        if !self.is_clustered() {
            return Ok(self.local.store.get_value(key, now_ms)?);
        }
        Ok(self.get(key).await?.and_then(|r| r.live_value(now_ms).cloned()))
    }
}

/// What a quorum read makes of the owners' answers.
#[derive(Debug, PartialEq)]
struct Chosen {
    /// The newest record any owner answered with (last-writer-wins).
    best: Option<Record>,
    /// The owners that answered with an older record or none, in answer order: each is
    /// sent `best` (read repair).
    behind: Vec<NodeId>,
    /// Whether `primary` answered with `best` (or nothing newer exists): when it did not,
    /// a write built on this read carries `best` along to the primary.
    primary_current: bool,
}

/// Chooses the record a read returns and the owners to repair from `answers`, one per
/// owner heard. An owner holding a record equal to the newest is current, not behind.
fn choose(answers: &[(NodeId, Option<Record>)], primary: Option<NodeId>) -> Chosen {
    let mut best: Option<Record> = None;
    for (_, record) in answers {
        if let Some(r) = record
            && r.wins_over(best.as_ref())
        {
            best = Some(r.clone());
        }
    }
    let newest = |r: &Option<Record>| best.as_ref().is_none_or(|b| !b.wins_over(r.as_ref()));
    let primary_current = answers.iter().any(|(n, r)| Some(*n) == primary && newest(r));
    let behind = match &best {
        Some(b) => answers.iter().filter(|(_, r)| b.wins_over(r.as_ref())).map(|(n, _)| *n).collect(),
        None => Vec::new(),
    };
    Chosen { best, behind, primary_current }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::hlc::Hlc;
    use crate::record::Origin;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    fn at(hlc: u64) -> Option<Record> {
        Some(Record {
            value: Some(Bytes::from(format!("v{hlc}"))),
            hlc: Hlc(hlc),
            origin: Origin { datacenter: Arc::from("dc1"), node: 9 },
            expires_at_ms: None,
        })
    }

    #[test]
    fn owners_with_older_or_missing_records_are_repaired() {
        let chosen = choose(&[(A, at(5)), (B, at(3)), (C, None)], Some(A));
        assert_eq!(chosen, Chosen { best: at(5), behind: vec![B, C], primary_current: true });
    }

    #[test]
    fn owners_with_the_newest_record_are_left_alone() {
        let chosen = choose(&[(A, at(5)), (B, at(5)), (C, at(4))], Some(B));
        assert_eq!(chosen, Chosen { best: at(5), behind: vec![C], primary_current: true });
    }

    #[test]
    fn a_primary_behind_is_not_current() {
        let chosen = choose(&[(B, at(7)), (A, at(2))], Some(A));
        assert_eq!(chosen, Chosen { best: at(7), behind: vec![A], primary_current: false });
    }

    #[test]
    fn a_primary_that_was_not_heard_is_not_current() {
        let chosen = choose(&[(B, at(7)), (C, at(7))], Some(A));
        assert_eq!(chosen, Chosen { best: at(7), behind: vec![], primary_current: false });
    }

    #[test]
    fn no_record_anywhere_repairs_nothing() {
        let chosen = choose(&[(A, None), (B, None)], Some(A));
        assert_eq!(chosen, Chosen { best: None, behind: vec![], primary_current: true });
        // Without placement (a lone node) there is no primary to be current.
        let chosen = choose(&[(A, None)], None);
        assert_eq!(chosen, Chosen { best: None, behind: vec![], primary_current: false });
    }

    #[test]
    fn a_tombstone_wins_over_an_older_value_and_is_repaired_like_one() {
        let tombstone = at(9).map(|r| Record { value: None, ..r });
        let chosen = choose(&[(A, at(8)), (B, tombstone.clone())], Some(A));
        assert_eq!(chosen, Chosen { best: tombstone, behind: vec![A], primary_current: false });
    }
}
