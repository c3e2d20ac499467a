//! The shipper: one named worker per remote datacenter that reads the changes which
//! originated in this datacenter from every data node's change sequences and ships them
//! in batches, moving its cursors only once the remote acknowledged.
//!
//! A round: ask each data node for its heads (where each partition's sequence stands);
//! for each partition whose head is past the cursor, read its changes of this origin
//! after the cursor, chunk by chunk; fill batches by the record and byte bounds; send each
//! batch until it is acknowledged (retrying with backoff while the link is down); then
//! advance the cursors the batch covered and save them. The same record is held by every
//! owner of its partition and so is read up to R times: a record already acknowledged by
//! the remote with the same or a newer HLC is not sent again ([`Recent`]).

use std::collections::{HashMap, hash_map};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use opencluster_node::cluster::messages::{Changes, Heads, WireRecord};
use opencluster_node::config::Compression;
use opencluster_node::hlc::Hlc;
use opencluster_node::membership::members::Members;
use opencluster_node::peer::{Peers, Target};
use tokio_util::sync::CancellationToken;

use crate::cursors::Cursors;
use crate::link::Link;
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
    pub advances: Vec<(u64, u16, u64)>,
}

impl Batch {
    pub fn is_full(&self, o: &ShipOptions) -> bool {
        self.records.len() >= o.batch_records || self.bytes >= o.batch_bytes
    }
}

/// Ships to one remote datacenter until `stop`.
pub struct Shipper {
    pub datacenter: String,
    pub remote: String,
    pub address: String,
    pub members: Arc<Members>,
    pub local: Arc<Peers>,
    pub wan: Arc<Peers>,
    pub link: Arc<Link>,
    pub dir: PathBuf,
    pub options: ShipOptions,
}

/// The WAN target of a remote datacenter: its id is fixed per datacenter name, so the
/// transport keeps one connection per resolved address.
fn remote_target(remote: &str, addr: std::net::SocketAddr) -> Target {
    let id = remote
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // The transport checks that the connector answering is of this datacenter.
    Target { id, name: remote.to_string(), addr }
}

impl Shipper {
    pub async fn run(self, stop: CancellationToken) {
        let mut cursors = match Cursors::load(&self.dir, &self.remote) {
            Ok(c) => c,
            Err(e) => {
                // Starting over would only send everything again; refusing to ship at all
                // would lose nothing either, but stall: start over and say so.
                tracing::error!(error = %e, "shipping starts from the beginning of every change sequence");
                self.link.failed(e.to_string(), false);
                Cursors::default()
            }
        };
        tracing::info!(remote = %self.remote, address = %self.address, cursors = cursors.len(), "shipper started");
        let mut recent = Recent::new(RECENT_KEYS);
        while !stop.is_cancelled() {
            let shipped = self.round(&mut cursors, &mut recent, &stop).await;
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

    /// One pass over every node and partition. Returns how many records it shipped.
    async fn round(&self, cursors: &mut Cursors, recent: &mut Recent, stop: &CancellationToken) -> usize {
        self.link.worker("reading");
        let mut shipped = 0;
        let mut backlog = 0;
        let mut batch = Batch::default();
        let nodes = self.members.data_nodes();
        for node in nodes {
            let target = Target { id: node.id, name: node.name.clone(), addr: node.rpc_addr };
            let heads = match self.local.call(&target, &Heads, self.options.local_timeout).await {
                Ok(h) => h,
                Err(e) => {
                    // Its records are on the other owners too; this node is read again later.
                    tracing::debug!(node = %node.name, error = %e, "cannot read a node's change heads");
                    continue;
                }
            };
            // The partitions with changes past their cursor; their first chunks are read
            // READ_AHEAD at a time (the transport sends concurrent requests together),
            // and taken in partition order.
            let dirty: Vec<(u16, u64, u64)> = heads
                .iter()
                .enumerate()
                .filter_map(|(p, &head)| {
                    let after = cursors.start(node.id, p as u16, head);
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
                        if recent.has(&key, hlc) {
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
                    batch.advances.push((node.id, partition, upto));
                    let moved = upto > after;
                    after = upto;
                    if batch.is_full(&self.options) {
                        let full = std::mem::take(&mut batch);
                        match self.send(full, cursors, stop).await {
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
                backlog += head.saturating_sub(after);
            }
        }
        if !batch.advances.is_empty() {
            match self.send(batch, cursors, stop).await {
                Some(n) => shipped += n,
                None => return shipped,
            }
        }
        self.link.round(backlog);
        shipped
    }

    /// Sends `batch` until acknowledged (an empty batch only moves cursors), then moves and
    /// saves the cursors. None when stopped first.
    async fn send(&self, batch: Batch, cursors: &mut Cursors, stop: &CancellationToken) -> Option<usize> {
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
                let result = match resolve(&self.address).await {
                    Ok(addr) => message
                        .send(
                            &self.wan,
                            &remote_target(&self.remote, addr),
                            self.options.ship_timeout,
                            plain_only,
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(_) => {
                        self.link.shipped(count, message.wire_bytes(), started.elapsed());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(remote = %self.remote, error = %e, retry_in = ?backoff, "shipping a batch failed");
                        self.link.failed(e, true);
                        self.link.worker("retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return None,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        for (node, partition, to) in batch.advances {
            cursors.advance(node, partition, to);
        }
        if let Err(e) = cursors.save(&self.dir, &self.remote) {
            // The cursor stays behind on disk: a restart sends these records again.
            tracing::warn!(error = %e, "saving cursors failed");
            self.link.failed(e.to_string(), false);
        }
        Some(count)
    }
}

/// Resolves `HOST:PORT` again (a connector's address may change).
async fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("resolving {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {address}: no address"))
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

    #[test]
    fn remote_targets_are_stable_per_datacenter() {
        let a = "127.0.0.1:1".parse().unwrap();
        assert_eq!(remote_target("dc2", a).id, remote_target("dc2", a).id);
        assert_ne!(remote_target("dc2", a).id, remote_target("dc3", a).id);
    }
}
