//! Applying records that came from another datacenter to the owners in this one.
//!
//! The records keep their HLC and origin; each owner applies them by last-writer-wins
//! (the cluster's `Replicate`, the path a primary uses to copy a write to the other owners),
//! which also moves the owner's clock past them and sends the invalidations its near-cache
//! leases call for. A batch counts as applied only when every partition in it reached the
//! write quorum of its owners: until then the sending connector keeps its cursor and sends
//! it again, so nothing acknowledged across the WAN is held by fewer owners than a client
//! write would be.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use opencluster_node::cluster::messages::{Replicate, WireRecord};
use opencluster_node::config::WriteQuorum;
use opencluster_node::membership::members::Members;
use opencluster_node::peer::{Peers, Target};
use opencluster_node::placement::{NodeId, Placement, partition_of};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no data node of this datacenter is alive to apply records to")]
    NoNodes,
    #[error("partition {partition}: applied at {acks} of the {required} owners needed ({errors})")]
    QuorumMissed { partition: u16, acks: usize, required: usize, errors: String },
}

/// Applies records in this datacenter.
pub struct Applier {
    pub members: Arc<Members>,
    pub peers: Arc<Peers>,
    pub partitions: u16,
    pub replicas: usize,
    pub quorum: WriteQuorum,
    pub timeout: Duration,
}

/// Records grouped by partition, in the order they came.
pub fn by_partition(
    records: Vec<(Bytes, WireRecord)>,
    partitions: u16,
) -> BTreeMap<u16, Vec<(Bytes, WireRecord)>> {
    let mut out: BTreeMap<u16, Vec<(Bytes, WireRecord)>> = BTreeMap::new();
    for (key, record) in records {
        out.entry(partition_of(&key, partitions)).or_default().push((key, record));
    }
    out
}

impl Applier {
    /// The owners of `partition` in this datacenter as gossip shows them now, primary
    /// first.
    pub fn owners(&self, partition: u16) -> Vec<Target> {
        let nodes = self.members.data_nodes();
        let placement = Placement::new(self.partitions, self.replicas, nodes.iter().map(|n| NodeId(n.id)));
        placement
            .owners(partition)
            .iter()
            .filter_map(|o| nodes.iter().find(|n| n.id == o.0))
            .map(|n| Target { id: n.id, name: n.name.clone(), addr: n.rpc_addr })
            .collect()
    }

    /// Applies `records` at the owners of their partitions, with one [`Replicate`] per
    /// owner node carrying the records of every partition it owns; Ok once each partition
    /// reached its write quorum.
    pub async fn apply(&self, records: Vec<(Bytes, WireRecord)>) -> Result<(), ApplyError> {
        let nodes = self.members.data_nodes();
        if nodes.is_empty() {
            return Err(ApplyError::NoNodes);
        }
        let placement = Placement::new(self.partitions, self.replicas, nodes.iter().map(|n| NodeId(n.id)));
        let targets: BTreeMap<u64, Target> = nodes
            .iter()
            .map(|n| (n.id, Target { id: n.id, name: n.name.clone(), addr: n.rpc_addr }))
            .collect();
        let mut per_owner: BTreeMap<u64, Vec<(Bytes, WireRecord)>> = BTreeMap::new();
        let mut owners_of: Vec<(u16, Vec<u64>)> = Vec::new();
        for (partition, records) in by_partition(records, self.partitions) {
            let owners: Vec<u64> = placement
                .owners(partition)
                .iter()
                .map(|o| o.0)
                .filter(|id| targets.contains_key(id))
                .collect();
            for id in &owners {
                per_owner.entry(*id).or_default().extend(records.iter().cloned());
            }
            owners_of.push((partition, owners));
        }
        let answers: BTreeMap<u64, Result<(), String>> =
            join_all(per_owner.into_iter().map(|(id, records)| {
                let target = &targets[&id];
                async move {
                    let answer = self.peers.call(target, &Replicate { records }, self.timeout).await;
                    (id, answer.map_err(|e| e.to_string()))
                }
            }))
            .await
            .into_iter()
            .collect();
        for (partition, owners) in owners_of {
            if let Some(missed) = quorum_missed(partition, &owners, &answers, self.quorum) {
                return Err(missed);
            }
        }
        Ok(())
    }
}

/// Whether `partition`, held by `owners`, missed its write quorum given each owner
/// node's answer.
fn quorum_missed(
    partition: u16,
    owners: &[u64],
    answers: &BTreeMap<u64, Result<(), String>>,
    quorum: WriteQuorum,
) -> Option<ApplyError> {
    let required = quorum.required(owners.len());
    let acks = owners.iter().filter(|id| matches!(answers.get(id), Some(Ok(())))).count();
    if acks >= required {
        return None;
    }
    let errors: Vec<&str> = owners
        .iter()
        .filter_map(|id| answers.get(id).and_then(|a| a.as_ref().err()))
        .map(|e| e.as_str())
        .collect();
    Some(ApplyError::QuorumMissed { partition, acks, required, errors: errors.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_partition_needs_its_own_quorum_of_owner_answers() {
        let answers: BTreeMap<u64, Result<(), String>> =
            [(1, Ok(())), (2, Err("n2: timed out".to_string())), (3, Ok(()))].into_iter().collect();
        // Owners 1 and 3 answered: a majority of [1, 2, 3], and of [1, 2].
        assert!(quorum_missed(0, &[1, 2, 3], &answers, WriteQuorum::Majority).is_none());
        assert!(quorum_missed(1, &[2, 1], &answers, WriteQuorum::One).is_none());
        let e = quorum_missed(7, &[1, 2, 3], &answers, WriteQuorum::All).unwrap().to_string();
        assert!(e.contains("partition 7: applied at 2 of the 3") && e.contains("n2: timed out"), "{e}");
        // An owner that was not asked (no answer) counts as missing.
        let e = quorum_missed(9, &[2, 4], &answers, WriteQuorum::Majority).unwrap().to_string();
        assert!(e.contains("applied at 0 of the"), "{e}");
    }
}
