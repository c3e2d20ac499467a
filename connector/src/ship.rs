//! The shipper: one named worker per remote datacenter that reads the changes which
//! originated in this datacenter from every data node's change sequences and ships them
//! in batches, moving the cursors (kept at the nodes, see [`crate::cursors`]) only once
//! the remote acknowledged.
//!
//! A round: work out this connector's share of the partitions among its live twins
//! ([`crate::share`]); ask each data node for its heads and this remote's cursors
//! ([`Positions`]); for each partition of the share whose head is past its cursor, read
//! its changes of this origin after the cursor, chunk by chunk; fill batches by the record
//! and byte bounds; send each batch until it is acknowledged (retrying with backoff, and
//! through the remote's next address, while the link is down); then tell each node how
//! far its cursors moved ([`Acknowledge`]). The same record is held by every owner of its
//! partition and so is read up to R times: a record already shipped with the same or a
//! newer HLC is not sent again ([`Recent`]).

use std::collections::{HashMap, hash_map};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use opencluster_node::cluster::messages::{Changes, Positions, WireRecord};
use opencluster_node::config::Compression;
use opencluster_node::hlc::Hlc;
use opencluster_node::membership::members::Members;
use opencluster_node::peer::{Peers, Target};
use tokio_util::sync::CancellationToken;

use crate::cursors::Advances;
use crate::link::Link;
use crate::share::{Share, owned};
use crate::wan::Outgoing;

/// Keys a link remembers as shipped (with their HLC) to skip other owners' copies: about
/// 100 bytes each plus the key, so a few MiB for usual keys.
const RECENT_KEYS: usize = 1 << 16;

/// First chunks of partitions read from one node at once.
const READ_AHEAD: usize = 32;

/// Bounds and timings of shipping, from `[connector]`.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    pub batch_records: usize,
    pub batch_bytes: usize,
    pub poll_interval: Duration,
    pub ship_timeout: Duration,
    /// Timeout of a request to a node of this datacenter.
    pub local_timeout: Duration,
    pub compression: Compression,
}

/// The keys this link shipped lately with their HLC, to skip the copies other owners hold.
/// Bounded: when full it starts over, which only means some copies are sent again.
pub struct Recent {
    shipped: HashMap<Bytes, Hlc>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent { shipped: HashMap::new(), capacity }
    }

    /// Whether the remote already has this record or a newer one of the key from us.
    pub fn has(&self, key: &[u8], hlc: Hlc) -> bool {
        self.shipped.get(key).is_some_and(|&h| h >= hlc)
    }

    pub fn note(&mut self, key: Bytes, hlc: Hlc) {
        if self.shipped.len() >= self.capacity && !self.shipped.contains_key(&key) {
            self.shipped.clear();
        }
        match self.shipped.entry(key) {
            hash_map::Entry::Occupied(mut e) => {
                if *e.get() < hlc {
                    e.insert(hlc);
                }
            }
            hash_map::Entry::Vacant(e) => {
                e.insert(hlc);
            }
        }
    }
}

/// A batch being filled: its records and the cursor moves it makes once acknowledged.
#[derive(Default)]
pub struct Batch {
    pub records: Vec<(Bytes, WireRecord)>,
    pub bytes: usize,
    pub advances: Advances,
}

impl Batch {
    pub fn is_full(&self, o: &ShipOptions) -> bool {
        self.records.len() >= o.batch_records || self.bytes >= o.batch_bytes
    }
}

/// Ships to one remote datacenter until `stop`.
pub struct Shipper {
    pub datacenter: String,
    /// This connector's id in gossip: its standing in the share.
    pub node_id: u64,
    pub remote: String,
    /// The remote's connectors (`HOST:PORT`, re-resolved on every dial; a name may stand for
    /// several), tried in turn.
    pub addresses: Vec<String>,
    pub partitions: u16,
    pub members: Arc<Members>,
    pub local: Arc<Peers>,
    pub wan: Arc<Peers>,
    pub link: Arc<Link>,
    pub share: Arc<Share>,
    pub options: ShipOptions,
    /// Which of the resolved addresses to send to: moves to the next on a failure.
    pub pick: AtomicUsize,
}

/// The WAN target of a remote datacenter: its id is fixed per datacenter name, so the
/// transport keeps one connection per resolved address.
pub(crate) fn remote_target(remote: &str, addr: SocketAddr) -> Target {
    let id = remote
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // The transport checks that the connector answering is of this datacenter.
    Target { id, name: remote.to_string(), addr }
}

impl Shipper {
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(remote = %self.remote, addresses = ?self.addresses, "shipper started");
        let mut recent = Recent::new(RECENT_KEYS);
        while !stop.is_cancelled() {
            let shipped = self.round(&mut recent, &stop).await;
            if shipped == 0 {
                self.link.worker("idle");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(self.options.poll_interval) => {}
                }
            }
        }
        self.link.worker("stopped");
        tracing::info!(remote = %self.remote, "shipper stopped");
    }

    /// One pass over every node and the partitions of this connector's share. Returns how
    /// many records it shipped.
    async fn round(&self, recent: &mut Recent, stop: &CancellationToken) -> usize {
        self.link.worker("reading");
        let twins = self.members.connectors();
        let ids: Vec<u64> = twins.iter().map(|(id, _)| *id).collect();
        let mine = owned(self.node_id, &ids, self.partitions);
        self.share
            .set(mine.iter().filter(|&&m| m).count(), twins.into_iter().map(|(_, name)| name).collect());
        let mut shipped = 0;
        let mut backlog = 0;
        let mut batch = Batch::default();
        let nodes = self.members.data_nodes();
        for node in nodes {
            let target = Target { id: node.id, name: node.name.clone(), addr: node.rpc_addr };
            let asked = Positions { remote: self.remote.clone() };
            let positions = match self.local.call(&target, &asked, self.options.local_timeout).await {
                Ok(h) => h,
                Err(e) => {
                    // Its records are on the other owners too; this node is read again later.
                    tracing::debug!(node = %node.name, error = %e, "cannot read a node's change heads");
                    continue;
                }
            };
            // The partitions of the share with changes past their cursor; their first
            // chunks are read READ_AHEAD at a time (the transport sends concurrent
            // requests together), and taken in partition order.
            let dirty: Vec<(u16, u64, u64)> = positions
                .heads
                .iter()
                .enumerate()
                .filter(|(p, _)| mine.get(*p).copied().unwrap_or(false))
                .filter_map(|(p, &head)| {
                    let after = positions.acked.get(p).copied().unwrap_or(0);
                    (after < head).then_some((p as u16, after, head))
                })
                .collect();
            let ask = |partition: u16, after: u64| Changes {
                partition,
                after,
                origin: self.datacenter.clone(),
                limit: self.options.batch_records as u32,
                max_bytes: self.options.batch_bytes as u32,
            };
            let target = &target;
            let mut first = futures_util::stream::iter(dirty.into_iter().map(|(partition, after, head)| {
                let message = ask(partition, after);
                async move {
                    let result = self.local.call(target, &message, self.options.local_timeout).await;
                    (partition, after, head, result)
                }
            }))
            .buffered(READ_AHEAD);
            while let Some((partition, mut after, head, mut result)) = first.next().await {
                if stop.is_cancelled() {
                    return shipped;
                }
                loop {
                    let chunk = match result {
                        Ok(c) => c,
                        Err(e) => {
                            self.link.failed(
                                format!("reading changes of partition {partition} at {}: {e}", node.name),
                                false,
                            );
                            break;
                        }
                    };
                    for (_, key, record) in chunk.records {
                        let hlc = match record.decode() {
                            Ok(r) => r.hlc,
                            Err(e) => {
                                self.link
                                    .failed(format!("record of key {key:?} at {}: {e}", node.name), false);
                                continue;
                            }
                        };
                        if recent.has(&key, hlc) || skipped_by_test(&key) {
                            continue;
                        }
                        // Noted now, not once acknowledged: another owner's copy later in
                        // this round is skipped too. A batch is sent until acknowledged or
                        // the shipper stops (and forgets `recent`), and its copy precedes
                        // the cursor moves of later batches, so nothing is skipped unsent.
                        recent.note(key.clone(), hlc);
                        batch.bytes += key.len() + record.0.len();
                        batch.records.push((key, record));
                    }
                    // A last chunk covers everything up to the head read before it (a number
                    // is visible only once all below it are), even numbers whose records
                    // were purged since.
                    let upto = if chunk.more { chunk.upto } else { chunk.upto.max(head) };
                    batch.advances.push(target, partition, upto);
                    let moved = upto > after;
                    after = upto;
                    if batch.is_full(&self.options) {
                        let full = std::mem::take(&mut batch);
                        match self.send(full, stop).await {
                            Some(n) => shipped += n,
                            None => return shipped,
                        }
                    }
                    if !chunk.more || !moved || stop.is_cancelled() {
                        break;
                    }
                    result =
                        self.local.call(target, &ask(partition, after), self.options.local_timeout).await;
                }
                backlog += opencluster_node::store::buffered::positions_between(after, head);
            }
        }
        if !batch.advances.is_empty() {
            match self.send(batch, stop).await {
                Some(n) => shipped += n,
                None => return shipped,
            }
        }
        self.link.round(backlog);
        shipped
    }

    /// Sends `batch` until acknowledged (an empty batch only moves cursors), then tells the
    /// nodes how far their cursors moved. None when stopped first.
    async fn send(&self, batch: Batch, stop: &CancellationToken) -> Option<usize> {
        let count = batch.records.len();
        if count > 0 {
            self.link.worker("shipping");
            let plain_only = &self.link.plain_only;
            let mut message = Outgoing::new(
                self.datacenter.clone(),
                batch.records,
                self.options.compression,
                plain_only.load(std::sync::atomic::Ordering::Relaxed),
            );
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = Instant::now();
                let result = match resolve_all(&self.addresses).await {
                    Ok(addrs) => {
                        let addr = addrs[self.pick.load(Ordering::Relaxed) % addrs.len()];
                        message
                            .send(
                                &self.wan,
                                &remote_target(&self.remote, addr),
                                self.options.ship_timeout,
                                plain_only,
                            )
                            .await
                            .map(|_| addr)
                            .map_err(|e| format!("{addr}: {e}"))
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(addr) => {
                        self.link.shipped(count, message.wire_bytes(), started.elapsed(), addr);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(remote = %self.remote, error = %e, retry_in = ?backoff, "shipping a batch failed");
                        self.link.failed(e, true);
                        self.link.worker("retrying");
                        // The next attempt goes to the remote's next address, if it has one.
                        self.pick.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        let told = batch.advances.messages(&self.remote).into_iter().map(|(target, message)| async move {
            let result = self.local.call(&target, &message, self.options.local_timeout).await;
            (target, result)
        });
        for (target, result) in join_all(told).await {
            if let Err(e) = result {
                // The node's cursors stay behind: these records are sent again.
                tracing::warn!(node = %target.name, error = %e, "moving the node's cursors failed");
                self.link.failed(format!("moving the cursors at {}: {e}", target.name), false);
            }
        }
        Some(count)
    }
}

/// Test hook: `OPENCLUSTER_TEST_SHIP_SKIP_PREFIX` makes the shipper pass over the
/// records of keys with that prefix as if they were shipped, the way a lost cursor would,
/// so tests can show the backstop delivers them.
fn skipped_by_test(key: &[u8]) -> bool {
    static PREFIX: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    PREFIX
        .get_or_init(|| std::env::var_os("OPENCLUSTER_TEST_SHIP_SKIP_PREFIX").map(|p| p.into_encoded_bytes()))
        .as_deref()
        .is_some_and(|p| key.starts_with(p))
}

/// Resolves every `HOST:PORT` again (a connector's address may change, and a name may
/// stand for several connectors), in the order given.
pub(crate) async fn resolve_all(addresses: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for address in addresses {
        match tokio::net::lookup_host(address).await {
            Ok(found) => {
                for a in found {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => errors.push(format!("resolving {address}: {e}")),
        }
    }
    if out.is_empty() {
        errors.push(format!("no address for {}", addresses.join(", ")));
        return Err(errors.join("; "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_skips_only_what_the_remote_has_and_stays_bounded() {
        let mut r = Recent::new(2);
        let k = Bytes::from_static(b"k");
        r.note(k.clone(), Hlc(10));
        assert!(r.has(b"k", Hlc(10)) && r.has(b"k", Hlc(9)));
        assert!(!r.has(b"k", Hlc(11)));
        r.note(k.clone(), Hlc(5));
        assert!(r.has(b"k", Hlc(10)), "an older copy never lowers what was shipped");
        r.note(Bytes::from_static(b"a"), Hlc(1));
        r.note(Bytes::from_static(b"b"), Hlc(1));
        assert!(r.shipped.len() <= 2);
    }

    #[tokio::test]
    async fn every_address_of_every_remote_connector_is_tried_once_in_order() {
        let names = ["127.0.0.2:7948", "127.0.0.1:7948", "127.0.0.2:7948"].map(String::from);
        let found = resolve_all(&names).await.unwrap();
        let expected: Vec<SocketAddr> =
            vec!["127.0.0.2:7948".parse().unwrap(), "127.0.0.1:7948".parse().unwrap()];
        assert_eq!(found, expected);
        let e = resolve_all(&["127.0.0.1".to_string()]).await.unwrap_err();
        assert!(e.contains("resolving 127.0.0.1"), "{e}");
    }

    #[test]
    fn remote_targets_are_stable_per_datacenter() {
        let a = "127.0.0.1:1".parse().unwrap();
        assert_eq!(remote_target("dc2", a).id, remote_target("dc2", a).id);
        assert_ne!(remote_target("dc2", a).id, remote_target("dc3", a).id);
    }
}
