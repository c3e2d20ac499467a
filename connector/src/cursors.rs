//! The connector's side of its cursors. A cursor (node, partition, remote datacenter) is a
//! position in that node's own change sequence, so the node keeps it
//! (`opencluster_node::cluster::outbound`): any connector of the datacenter, a twin taking a
//! share over or a new one on an empty volume, reads it back with the node's heads
//! ([`Positions`](opencluster_node::cluster::messages::Positions)) and resumes there. The
//! connector keeps no copy of its own: the round that reads a node's heads reads its
//! cursors in the same answer.
//!
//! Once the remote acknowledged a batch, the cursor moves it made are told to each node
//! they concern, one [`Acknowledge`] per node ([`Advances`]). Telling a node may fail or
//! lag (the records are then sent again, harmless under last-writer-wins); it never comes
//! before the remote's acknowledgement, so a cursor never runs ahead of what the remote has.

use std::collections::BTreeMap;

use opencluster_node::cluster::messages::Acknowledge;
use opencluster_node::peer::Target;

/// The cursor moves of one batch, by node.
#[derive(Default)]
pub struct Advances {
    by_node: BTreeMap<u64, (Target, BTreeMap<u16, u64>)>,
}

impl Advances {
    /// `partition` of the node at `target` is covered up to `to`.
    pub fn push(&mut self, target: &Target, partition: u16, to: u64) {
        let (_, at) = self.by_node.entry(target.id).or_insert_with(|| (target.clone(), BTreeMap::new()));
        let position = at.entry(partition).or_insert(0);
        *position = (*position).max(to);
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// Adds the moves of a later batch: the furthest of both for each partition.
    pub fn merge(&mut self, later: Advances) {
        for (target, at) in later.by_node.into_values() {
            for (partition, to) in at {
                self.push(&target, partition, to);
            }
        }
    }

    /// One message per node: every partition's furthest move.
    pub fn messages(self, remote: &str) -> Vec<(Target, Acknowledge)> {
        self.by_node
            .into_values()
            .map(|(target, at)| {
                (target, Acknowledge { remote: remote.to_string(), positions: at.into_iter().collect() })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(id: u64) -> Target {
        Target { id, name: format!("n{id}"), addr: ([127, 0, 0, 1], 7000 + id as u16).into() }
    }

    #[test]
    fn a_batch_tells_each_node_once_with_the_furthest_move_of_each_partition() {
        let mut a = Advances::default();
        assert!(a.is_empty());
        a.push(&target(1), 3, 10);
        a.push(&target(2), 3, 4);
        a.push(&target(1), 3, 25);
        a.push(&target(1), 0, 7);
        a.push(&target(1), 3, 12);
        let m = a.messages("dc2");
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].0.id, m[0].1.remote.as_str()), (1, "dc2"));
        assert_eq!(m[0].1.positions, [(0, 7), (3, 25)]);
        assert_eq!((m[1].0.id, &m[1].1.positions[..]), (2, &[(3, 4)][..]));
    }

    #[test]
    fn merged_batches_tell_the_furthest_move_of_each() {
        let mut first = Advances::default();
        first.push(&target(1), 3, 10);
        first.push(&target(1), 4, 50);
        let mut later = Advances::default();
        later.push(&target(1), 3, 20);
        later.push(&target(1), 4, 40);
        later.push(&target(2), 0, 5);
        first.merge(later);
        let m = first.messages("dc2");
        assert_eq!(m[0].1.positions, [(3, 20), (4, 50)]);
        assert_eq!(m[1].1.positions, [(0, 5)]);
    }
}
