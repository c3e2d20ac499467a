//! Strays go home: records this node holds in partitions it does not own are delivered
//! to the owners before they are removed here.
//!
//! A node comes to hold such records in several ways: placement moved a partition away
//! (a node joined or returned), a primary with an older view copied a write here, a read
//! repaired a copy here, or this node held a partition before it restarted. Whatever the
//! way, the partition is marked, and the stray worker hands it over soon after
//! ([`Cluster::hand_over`]: every owner is brought up to date with what it lacks, then the
//! records listed beforehand and unchanged since are removed). A hand-over that cannot
//! finish (an owner unreachable, or still copying) is tried again later; nothing is
//! removed until every owner has answered. Anti-entropy rounds cover every partition
//! not owned too, as a backstop.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::placement::Partition;

/// How long a partition whose hand-over could not finish waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Partitions that may hold records this node does not own.
#[derive(Default)]
pub(super) struct Strays {
    marked: Mutex<BTreeSet<Partition>>,
    /// Partitions found holding records and not handed over yet.
    holding: Mutex<BTreeSet<Partition>>,
    wake: tokio::sync::Notify,
}

impl Strays {
    /// Marks partitions to hand over and wakes the worker.
    pub fn add(&self, partitions: impl IntoIterator<Item = Partition>) {
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        let before = marked.len();
        marked.extend(partitions);
        if marked.len() != before {
            self.wake.notify_one();
        }
    }

    fn take(&self) -> BTreeSet<Partition> {
        std::mem::take(&mut *self.marked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notes whether `partition` still holds records not handed over; returns how many
    /// partitions do.
    pub fn held(&self, partition: Partition, holds: bool) -> usize {
        let mut holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        if holds {
            holding.insert(partition);
        } else {
            holding.remove(&partition);
        }
        holding.len()
    }

    /// Partitions marked and not handed over yet.
    pub fn pending(&self) -> usize {
        self.marked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Cluster {
    /// Marks the partitions of `keys` that this node does not own as strays: records were
    /// just stored here for them.
    pub(super) fn note_stored<'a>(&self, keys: impl IntoIterator<Item = &'a [u8]>) {
        if self.topology.is_none() {
            return;
        }
        let view = self.view();
        let partitions = self.partitions();
        let strays: Vec<Partition> = keys
            .into_iter()
            .map(|k| crate::placement::partition_of(k, partitions))
            .filter(|&p| !view.placement.is_owner(p, self.node))
            .collect();
        if !strays.is_empty() {
            self.strays.add(strays);
        }
    }

    /// Hands marked partitions over to their owners until `stop`; at start, every
    /// partition (this node may hold records from before it restarted).
    pub async fn hand_strays_home(self: Arc<Self>, stop: CancellationToken) {
        let Some(topology) = &self.topology else { return };
        let parallel = topology.repair.max_parallel.max(1);
        self.strays.add(0..self.partitions());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.strays.wake.notified() => {}
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
            // Placement must be settled enough to know the owners, and reach them.
            if self.not_joined().is_some() {
                continue;
            }
            let view = self.view();
            let mut marked = self.strays.take().into_iter();
            let mut again = Vec::new();
            let mut running = FuturesUnordered::new();
            loop {
                while running.len() < parallel {
                    let Some(partition) = marked.next() else { break };
                    // Owned (again): its records are where they belong.
                    if view.placement.is_owner(partition, self.node) {
                        self.strays.held(partition, false);
                        continue;
                    }
                    let (this, view) = (&self, &view);
                    running.push(async move { (partition, this.hand_over(view, partition).await) });
                }
                let Some((partition, outcome)) = running.next().await else { break };
                self.note_hand_over(partition, &outcome);
                if outcome.held && outcome.removed.is_none() {
                    again.push(partition);
                }
                if stop.is_cancelled() {
                    return;
                }
            }
            if !again.is_empty() {
                tracing::debug!(partitions = again.len(), "strays not handed over yet; trying again");
                // Not through add(): the retry waits for the next tick, not at once.
                self.strays.marked.lock().unwrap_or_else(|e| e.into_inner()).extend(again);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marking_wakes_the_worker_once_and_take_empties() {
        let strays = Strays::default();
        strays.add([3, 1, 3]);
        assert_eq!(strays.pending(), 2);
        tokio::time::timeout(Duration::from_secs(1), strays.wake.notified()).await.expect("woken");
        assert_eq!(strays.take().into_iter().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(strays.pending(), 0);
        // Marking what is already marked does not wake again.
        strays.add([5]);
        strays.wake.notified().await;
        strays.add([5]);
        assert!(tokio::time::timeout(Duration::from_millis(50), strays.wake.notified()).await.is_err());
    }
}
