//! Partitions still arriving: reads of a partition this node is copying in are answered
//! from its sources too, never from its incomplete store alone.
//!
//! When placement gives this node a partition, the rebalance worker copies it from the
//! nodes that held it (its previous owners, or every other owner after a restart). Until
//! that copy is done, this node's store may lack acknowledged writes of the partition,
//! yet it counts as an owner in every quorum. So while a partition is arriving, this
//! node's answer for one of its keys (to its own quorum reads and to peers' `Read`s) is
//! the newest of its own record and what the copy's sources hold: the read sees what the
//! copy would have brought. If no source answers, its own record is all it has, as
//! before the copy started.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;

use super::messages;
use super::{Cluster, DataError, decode, unavailable};
use crate::placement::{NodeId, Partition, partition_of};
use crate::record::Record;

/// Partitions being copied in, with the nodes they are copied from.
#[derive(Default)]
pub(super) struct Arriving {
    sources: Mutex<HashMap<Partition, Vec<NodeId>>>,
    /// How many, readable without the lock on every request.
    count: AtomicUsize,
}

impl Arriving {
    /// Copies queued: `(partition, sources)`.
    pub fn start(&self, tasks: impl IntoIterator<Item = (Partition, Vec<NodeId>)>) {
        self.update(|s| s.extend(tasks));
    }

    fn update(&self, f: impl FnOnce(&mut HashMap<Partition, Vec<NodeId>>)) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut sources);
        self.count.store(sources.len(), Ordering::Release);
    }

    /// The copy of `partition` is done (or no longer wanted).
    pub fn done(&self, partition: Partition) {
        self.update(|s| {
            s.remove(&partition);
        });
    }

    /// Keeps only the partitions `owned` says this node still owns.
    pub fn retain(&self, owned: impl Fn(Partition) -> bool) {
        self.update(|s| s.retain(|&p, _| owned(p)));
    }

    /// Where `partition` is being copied from, if it is arriving.
    pub fn sources_of(&self, partition: Partition) -> Option<Vec<NodeId>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner()).get(&partition).cloned()
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// The newest of `mine` and `theirs`, by last-writer-wins.
pub(super) fn newest(
    mine: Option<Record>,
    theirs: impl IntoIterator<Item = Option<Record>>,
) -> Option<Record> {
    theirs.into_iter().flatten().fold(mine, |best, r| if r.wins_over(best.as_ref()) { Some(r) } else { best })
}

impl Cluster {
    /// This node's records of `keys`, completed from the sources of the partitions still
    /// arriving (each asked within `wait`; one that does not answer is skipped).
    pub(super) async fn read_own(
        &self,
        keys: &[Bytes],
        wait: Duration,
    ) -> Result<Vec<Option<Record>>, DataError> {
        let mut records = self.local.read(keys)?;
        if self.arriving.len() == 0 {
            return Ok(records);
        }
        let partitions = self.partitions();
        for (i, key) in keys.iter().enumerate() {
            let Some(sources) = self.arriving.sources_of(partition_of(key, partitions)) else { continue };
            let theirs = join_all(sources.iter().map(|&n| self.read_source(n, key, wait))).await;
            records[i] = newest(records[i].take(), theirs.into_iter().filter_map(Result::ok));
        }
        Ok(records)
    }

    /// [`Cluster::read_own`] for one key, without allocating when nothing is arriving
    /// (the common case, on the request path).
    /// Sources are asked within `wait()`, computed only then.
    pub(super) async fn read_own_one(
        &self,
        key: &[u8],
        wait: impl FnOnce() -> Duration,
    ) -> Result<Option<Record>, DataError> {
        if self.arriving.len() == 0 {
            return Ok(self.local.store.get(key)?);
        }
        Ok(self.read_own(&[Bytes::copy_from_slice(key)], wait()).await?.into_iter().next().flatten())
    }

    async fn read_source(
        &self,
        node: NodeId,
        key: &Bytes,
        wait: Duration,
    ) -> Result<Option<Record>, DataError> {
        let view = self.view();
        let target = self.target(&view, node)?;
        let msg = messages::Read { keys: vec![key.clone()] };
        let answer = self.peers()?.call(&target, &msg, wait).await.map_err(unavailable)?;
        answer.into_iter().next().flatten().map(|w| decode(&w)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::record::Origin;

    fn rec(hlc: u64, value: &'static str) -> Option<Record> {
        Some(Record {
            value: Some(Bytes::from_static(value.as_bytes())),
            hlc: Hlc(hlc),
            origin: Origin { datacenter: "dc1".into(), node: 1 },
            expires_at_ms: None,
        })
    }

    #[test]
    fn the_newest_of_this_node_and_the_sources_wins() {
        assert_eq!(newest(None, [None, None]), None);
        assert_eq!(newest(rec(5, "mine"), [rec(3, "old"), None]), rec(5, "mine"));
        assert_eq!(newest(None, [rec(3, "a"), rec(7, "b")]), rec(7, "b"));
        assert_eq!(newest(rec(5, "mine"), [rec(9, "theirs")]), rec(9, "theirs"));
    }

    #[test]
    fn partitions_arrive_and_leave() {
        let a = Arriving::default();
        a.start([(3, vec![NodeId(1), NodeId(2)]), (4, vec![NodeId(2)])]);
        assert_eq!(a.sources_of(3), Some(vec![NodeId(1), NodeId(2)]));
        a.done(3);
        assert_eq!(a.sources_of(3), None);
        a.retain(|p| p != 4);
        assert_eq!(a.len(), 0);
    }
}
