//! Scans over many keys (KEYS, SCAN, DBSIZE): each partition is read from one owner,
//! this node where it owns it, since a scan lists keys rather than deciding on values.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use super::messages;
use super::{Cluster, DataError, remaining, unavailable};
use crate::placement::{NodeId, Partition};

impl Cluster {
    /// Live keys of a partition at `now_ms` matching `pattern`, from an owner.
    pub async fn keys(
        &self,
        partition: Partition,
        pattern: Option<&[u8]>,
        now_ms: u64,
    ) -> Result<Vec<Bytes>, DataError> {
        let view = self.view();
        self.check_reachable(&view, view.quorums.read, "scan")?;
        let owners = view.placement.owners(partition).to_vec();
        if owners.contains(&self.node) || owners.is_empty() {
            return Ok(self.local.keys(partition, pattern, now_ms)?);
        }
        let deadline = Instant::now() + self.timeout();
        let mut errors = Vec::new();
        for owner in owners {
            let msg = messages::Keys { partition, pattern: pattern.map(Bytes::copy_from_slice), now_ms };
            self.metrics.forwarded.with_label_values(&["scan"]).inc();
            match self.target(&view, owner) {
                Ok(target) => match self.peers()?.call(&target, &msg, remaining(deadline)).await {
                    Ok(keys) => return Ok(keys),
                    Err(e) => errors.push(e.to_string()),
                },
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(DataError::Unavailable(format!(
            "no owner of partition {partition} answered: {}",
            errors.join("; ")
        )))
    }

    /// Live keys in the whole cluster at `now_ms` (DBSIZE): each partition counted once,
    /// by this node where it owns it, else by its primary.
    pub async fn count(&self, now_ms: u64) -> Result<u64, DataError> {
        let view = self.view();
        self.check_reachable(&view, view.quorums.read, "scan")?;
        let mut by_node: BTreeMap<NodeId, Vec<Partition>> = BTreeMap::new();
        for p in 0..self.partitions() {
            let owners = view.placement.owners(p);
            let node = if owners.contains(&self.node) {
                self.node
            } else {
                owners.first().copied().unwrap_or(self.node)
            };
            by_node.entry(node).or_default().push(p);
        }
        let deadline = Instant::now() + self.timeout();
        let mut total = 0;
        for (node, partitions) in by_node {
            total += if node == self.node {
                self.local.count(&partitions, now_ms)?
            } else {
                let target = self.target(&view, node)?;
                self.metrics.forwarded.with_label_values(&["scan"]).inc();
                let msg = messages::Count { partitions, now_ms };
                self.peers()?.call(&target, &msg, remaining(deadline)).await.map_err(unavailable)?
            };
        }
        Ok(total)
    }
}
