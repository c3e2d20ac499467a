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
    /// Applies `records` at the owners of their partitions; Ok once each partition reached
    /// its write quorum.
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
        let groups = by_partition(records, self.partitions);
        let results = join_all(groups.into_iter().map(|(partition, records)| {
            let owners: Vec<Target> =
                placement.owners(partition).iter().filter_map(|o| targets.get(&o.0).cloned()).collect();
            async move { self.apply_partition(partition, owners, records).await }
        }))
        .await;
        results.into_iter().collect()
    }

    async fn apply_partition(
        &self,
        partition: u16,
        owners: Vec<Target>,
        records: Vec<(Bytes, WireRecord)>,
    ) -> Result<(), ApplyError> {
        let required = self.quorum.required(owners.len());
        let message = Replicate { records };
        let answers = join_all(owners.iter().map(|t| self.peers.call(t, &message, self.timeout))).await;
        let acks = answers.iter().filter(|a| a.is_ok()).count();
        if acks >= required {
            return Ok(());
        }
        let errors = answers.into_iter().filter_map(|a| a.err().map(|e| e.to_string())).collect::<Vec<_>>();
        Err(ApplyError::QuorumMissed { partition, acks, required, errors: errors.join("; ") })
    }
}
