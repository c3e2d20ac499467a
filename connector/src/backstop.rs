//! The backstop behind the cursors: a slow, periodic comparison of each partition between
//! this datacenter and a remote one, which ships whatever of this datacenter's own records
//! the remote lacks or holds older.
//!
//! Cursors miss nothing by construction (see docs/multi-datacenter.md, "Cursors"), so in a
//! healthy cluster this finds nothing. It is there for what the argument does not cover:
//! a node's store lost with the cursors that indexed it, a bug. It reuses the
//! anti-entropy digests that owners inside a datacenter compare (`cluster::repair`): a
//! partition is 64 bucket hashes of its records' keys and HLCs.
//!
//! One comparison, for partition p: the initiator asks an owner of p here for the bucket
//! hashes and sends them to the remote connector ([`Compare`], 32 partitions in one
//! exchange); the remote asks an owner there for its hashes and answers with the keys and
//! HLCs of the buckets that differ ([`Compared`]); the initiator lists the same buckets here and ships, by the normal
//! [`Ship`] path (applied at the remote owners' write quorum), the records that are newer
//! here and originated in this datacenter. Each datacenter pushes only its own records, as
//! its shipping does, so the remote's check that a batch holds only its sender's records
//! stays true; the remote's own backstop pushes the other way. Records younger than one
//! interval are left to the cursors, which are about to ship them anyway.
//!
//! A full pass over the partitions takes `connector.backstop_interval` (or as long as the
//! comparisons take, if longer): one exchange every interval / (partitions / 32), so the
//! cost is a trickle of small messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use opencluster_node::cluster::messages::{Digest, DigestAnswer, Read, Versions, WireRecord};
use opencluster_node::cluster::{Horizon, differences};
use opencluster_node::hlc::Hlc;
use opencluster_node::membership::members::Members;
use opencluster_node::peer::messages::{Kind, Message};
use opencluster_node::peer::{Peers, Target};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::apply::Applier;
use crate::link::Link;
use crate::share::owned;
use crate::ship::{remote_target, resolve_all};
use crate::wan::{Ship, batch_bytes};

/// Partitions' bucket hashes here, for the remote to compare with its own.
#[derive(Debug, Serialize, Deserialize)]
pub struct Compare {
    pub from: String,
    pub horizon: Horizon,
    pub partitions: Vec<(u16, Vec<u64>)>,
}

/// What the remote found.
#[derive(Debug, Serialize, Deserialize)]
pub enum Compared {
    Same,
    /// The buckets that differ, and the keys and HLCs the remote holds in them.
    Differ {
        buckets: Vec<u8>,
        versions: Vec<(Bytes, Hlc)>,
    },
    /// No owner there could answer now (all copying partitions, or none reachable).
    Busy,
}

impl Message for Compare {
    const KIND: Kind = Kind::Compare;
    type Response = Vec<(u16, Compared)>;
}

/// Partitions compared in one exchange with the remote: one WAN round trip for all.
pub const PARTITIONS_PER_EXCHANGE: usize = 32;

/// Owners asked for digests at once.
const PARALLEL: usize = 8;

/// A partition's bucket hashes at one owner here.
pub struct OwnerDigest {
    pub partition: u16,
    /// The keys of differing buckets are asked of the same owner.
    pub owner: Target,
    pub buckets: Vec<u64>,
}

/// The bucket hashes of `partition` at the first owner here that gives them.
pub async fn owner_digest(applier: &Applier, partition: u16, horizon: Horizon) -> Option<OwnerDigest> {
    for owner in applier.owners(partition) {
        let message = Digest { partition, horizon };
        match applier.peers.call(&owner, &message, applier.timeout).await {
            Ok(DigestAnswer::Buckets(buckets)) => return Some(OwnerDigest { partition, owner, buckets }),
            Ok(DigestAnswer::Copying) => continue,
            Err(e) => tracing::debug!(node = %owner.name, error = %e, "no digest from an owner"),
        }
    }
    None
}

/// The remote side of a [`Compare`]: this datacenter's hashes against the initiator's.
pub async fn answer_compare(applier: &Applier, m: &Compare) -> Vec<(u16, Compared)> {
    let each: Vec<_> =
        m.partitions.iter().map(|(p, theirs)| compare_one(applier, *p, m.horizon, theirs)).collect();
    futures_util::stream::iter(each).buffered(PARALLEL).collect().await
}

async fn compare_one(applier: &Applier, partition: u16, horizon: Horizon, theirs: &[u64]) -> (u16, Compared) {
    let Some(OwnerDigest { owner, buckets: mine, .. }) = owner_digest(applier, partition, horizon).await
    else {
        return (partition, Compared::Busy);
    };
    let buckets = differing(&mine, theirs);
    if buckets.is_empty() {
        return (partition, Compared::Same);
    }
    let ask = Versions { partition, buckets: buckets.clone(), horizon };
    match applier.peers.call(&owner, &ask, applier.timeout).await {
        Ok(versions) => (partition, Compared::Differ { buckets, versions }),
        Err(_) => (partition, Compared::Busy),
    }
}

/// The indexes of the buckets whose hashes differ (all of them if the counts differ).
fn differing(a: &[u64], b: &[u64]) -> Vec<u8> {
    if a.len() != b.len() {
        return (0..a.len().max(b.len()).min(256) as u16).map(|i| i as u8).collect();
    }
    a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i as u8).collect()
}

/// Compares this connector's share of the partitions with one remote datacenter, forever.
pub struct Backstop {
    pub datacenter: String,
    /// This connector's id in gossip: it compares the partitions of its share only.
    pub node_id: u64,
    pub members: Arc<Members>,
    pub applier: Arc<Applier>,
    pub wan: Arc<Peers>,
    pub link: Arc<Link>,
    /// The remote's connectors (`HOST:PORT`, resolved again for every comparison), tried
    /// in turn.
    pub addresses: Vec<String>,
    pub interval: Duration,
    pub tombstone_grace: Duration,
    pub ship_timeout: Duration,
}

impl Backstop {
    pub async fn run(self, stop: CancellationToken) {
        let partitions = self.applier.partitions.max(1);
        let groups = (partitions as usize).div_ceil(PARTITIONS_PER_EXCHANGE) as u32;
        let step = self.interval / groups;
        let mut first = 0u16;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
            let last = (first as usize + PARTITIONS_PER_EXCHANGE).min(partitions as usize) as u16;
            let twins: Vec<u64> = self.members.connectors().into_iter().map(|(id, _)| id).collect();
            let mine = owned(self.node_id, &twins, partitions);
            let group: Vec<u16> = (first..last).filter(|&p| mine[p as usize]).collect();
            match self.compare(group).await {
                Ok((compared, pushed)) => self.link.compared(compared, pushed),
                Err(e) => {
                    tracing::debug!(remote = %self.link.remote, first, last, error = %e, "backstop comparison failed");
                    self.link
                        .failed(format!("backstop comparison of partitions {first}..{last}: {e}"), false);
                }
            }
            first = if last >= partitions { 0 } else { last };
        }
    }

    /// Compares `partitions` with the remote and ships what it lacks of this datacenter's
    /// records. Returns how many partitions were compared and records shipped.
    pub async fn compare(&self, partitions: Vec<u16>) -> Result<(usize, usize), String> {
        let now_ms = opencluster_node::hlc::unix_ms();
        let horizon = Horizon::at(now_ms, self.tombstone_grace);
        let each: Vec<_> = partitions.into_iter().map(|p| owner_digest(&self.applier, p, horizon)).collect();
        let digests: Vec<OwnerDigest> = futures_util::stream::iter(each)
            .buffered(PARALLEL)
            .filter_map(std::future::ready)
            .collect()
            .await;
        if digests.is_empty() {
            return Ok((0, 0));
        }
        let owners: HashMap<u16, Target> = digests.iter().map(|d| (d.partition, d.owner.clone())).collect();
        let ask = Compare {
            from: self.datacenter.clone(),
            horizon,
            partitions: digests.into_iter().map(|d| (d.partition, d.buckets)).collect(),
        };
        let (remote, answers) = self.ask_remote(&ask).await?;
        let compared = answers.iter().filter(|(_, a)| !matches!(a, Compared::Busy)).count();
        let mut pushed = 0;
        for (partition, answer) in answers {
            let (Compared::Differ { buckets, versions }, Some(owner)) = (answer, owners.get(&partition))
            else {
                continue;
            };
            pushed += self.push(&remote, owner, partition, horizon, buckets, versions).await?;
        }
        Ok((compared, pushed))
    }

    /// Asks the remote's connectors in turn until one answers.
    async fn ask_remote(&self, ask: &Compare) -> Result<(Target, Vec<(u16, Compared)>), String> {
        let mut errors = Vec::new();
        for addr in resolve_all(&self.addresses).await? {
            let remote = remote_target(&self.link.remote, addr);
            match self.wan.call(&remote, ask, self.ship_timeout).await {
                Ok(answers) => return Ok((remote, answers)),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// Ships the records of `partition` in `buckets` that are newer here than in
    /// `theirs`, settled and of this datacenter's origin.
    async fn push(
        &self,
        remote: &Target,
        owner: &Target,
        partition: u16,
        horizon: Horizon,
        buckets: Vec<u8>,
        theirs: Vec<(Bytes, Hlc)>,
    ) -> Result<usize, String> {
        let list = Versions { partition, buckets, horizon };
        let mine =
            self.applier.peers.call(owner, &list, self.applier.timeout).await.map_err(|e| e.to_string())?;
        let (_, push) = differences(&mine, &theirs);
        // Younger records are the cursors' to ship; they may be on their way already.
        let settled_ms = horizon.now_ms.saturating_sub(self.interval.as_millis() as u64);
        let held: HashMap<&Bytes, Hlc> = mine.iter().map(|(k, hlc)| (k, *hlc)).collect();
        let settled: Vec<Bytes> = push
            .into_iter()
            .filter(|k| held.get(k).is_some_and(|hlc| hlc.physical_ms() <= settled_ms))
            .collect();
        if settled.is_empty() {
            return Ok(0);
        }
        let read = Read { keys: settled.clone() };
        let found =
            self.applier.peers.call(owner, &read, self.applier.timeout).await.map_err(|e| e.to_string())?;
        let records: Vec<(Bytes, WireRecord)> = settled
            .into_iter()
            .zip(found)
            .filter_map(|(key, record)| {
                let record = record?;
                let own = record.decode().ok()?.origin.datacenter.as_ref() == self.datacenter;
                own.then_some((key, record))
            })
            .collect();
        if records.is_empty() {
            return Ok(0);
        }
        let (count, bytes) = (records.len(), batch_bytes(&records));
        let started = std::time::Instant::now();
        let ship = Ship { from: self.datacenter.clone(), records };
        self.wan.call(remote, &ship, self.ship_timeout).await.map_err(|e| e.to_string())?;
        tracing::info!(remote = %self.link.remote, partition, records = count, "the backstop shipped records the cursors had missed");
        self.link.shipped(count, bytes, started.elapsed(), remote.addr);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_differing_buckets_are_listed() {
        assert_eq!(differing(&[1, 2, 3], &[1, 9, 3]), vec![1]);
        assert!(differing(&[1, 2], &[1, 2]).is_empty());
        // A peer with another bucket count: everything is compared.
        assert_eq!(differing(&[1, 2], &[1, 2, 3]), vec![0, 1, 2]);
    }
}
