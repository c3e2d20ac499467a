//! Near caching as the cluster does it: what a holder does when a write goes through it,
//! when an owner is lost or placement changes, and when invalidations arrive; what an
//! owner does when it is asked for leases; and the node's clients' hook (client tracking
//! and pub/sub) with pub/sub's fan-out to every node of the datacenter.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::messages::{self, Invalidated};
use super::{Cluster, View};
use crate::cache::LocalClients;
use crate::cache::near::Applied;
use crate::hlc::unix_ms;
use crate::peer::RpcError;
use crate::placement::{NodeId, Placement, partition_of};

/// How often announced-but-missing invalidations are looked for, and broadcast-mode
/// prefixes sent again to every node.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Near-cache and pub/sub metrics.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub entries: IntGauge,
    pub bytes: IntGauge,
    pub evictions: IntCounter,
    pub invalidations_received: IntCounter,
    pub invalidations_missed: IntCounter,
    pub invalidations_sent: IntCounter,
    pub leases_granted: IntCounter,
    pub lease_keys: IntGauge,
    pub dropped_partitions: IntCounter,
    /// From the owner applying a change to the entry being dropped here.
    pub invalidation_lag: Histogram,
    pub published: IntCounter,
    /// Reads of other datacenters' home keys served by this node's copy.
    pub home_hits: IntCounter,
    /// Reads of other datacenters' home keys that went to their home.
    pub home_misses: IntCounter,
    pub home_forwarded_writes: IntCounter,
    pub home_invalidations_received: IntCounter,
    pub home_invalidations_sent: IntCounter,
}

impl CacheMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            r.register(Box::new(g.clone())).expect("metric names are unique");
            g
        };
        let invalidation_lag = Histogram::with_opts(
            HistogramOpts::new(
                "opencluster_cache_invalidation_lag_seconds",
                "Time from an owner applying a change to the near-cache entry being dropped on this node",
            )
            .buckets(vec![0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
        )
        .expect("valid histogram");
        r.register(Box::new(invalidation_lag.clone())).expect("metric names are unique");
        CacheMetrics {
            hits: counter(
                "opencluster_cache_hits_total",
                "Reads of keys owned elsewhere served by the near cache",
            ),
            misses: counter(
                "opencluster_cache_misses_total",
                "Reads of keys owned elsewhere that asked the owners (not cached, lapsed or invalidated)",
            ),
            entries: gauge("opencluster_cache_entries", "Entries in the near cache"),
            bytes: gauge(
                "opencluster_cache_bytes",
                "Weight of the near cache's entries in bytes (cache.max_bytes bounds it)",
            ),
            evictions: counter(
                "opencluster_cache_evictions_total",
                "Near-cache entries evicted to stay within cache.max_bytes",
            ),
            invalidations_received: counter(
                "opencluster_cache_invalidations_received_total",
                "Invalidations of keys this node holds leases on, received from their owners",
            ),
            invalidations_missed: counter(
                "opencluster_cache_invalidations_missed_total",
                "Invalidations found missing (sequence gaps, or announced and not arrived); each drops a partition's entries",
            ),
            invalidations_sent: counter(
                "opencluster_cache_invalidations_sent_total",
                "Invalidations this node sent as owner to holders of leases",
            ),
            leases_granted: counter(
                "opencluster_cache_leases_granted_total",
                "Interest leases this node granted as owner",
            ),
            lease_keys: gauge(
                "opencluster_cache_lease_keys",
                "Keys with interest leases held at this node as owner",
            ),
            dropped_partitions: counter(
                "opencluster_cache_dropped_partitions_total",
                "Times all of a partition's near-cache entries were dropped (placement change, lost owner, missed invalidation)",
            ),
            invalidation_lag,
            published: counter("opencluster_pubsub_messages_total", "PUBLISH commands run through this node"),
            home_hits: counter(
                "opencluster_home_cache_hits_total",
                "Reads of another datacenter's home keys served by this node's copy (within its lease)",
            ),
            home_misses: counter(
                "opencluster_home_reads_total",
                "Reads of another datacenter's home keys sent to their home through the connectors",
            ),
            home_forwarded_writes: counter(
                "opencluster_home_forwarded_writes_total",
                "Write commands on another datacenter's home keys forwarded to their home",
            ),
            home_invalidations_received: counter(
                "opencluster_home_invalidations_received_total",
                "Keys of another datacenter's home keyspace reported changed by their home",
            ),
            home_invalidations_sent: counter(
                "opencluster_home_invalidations_sent_total",
                "Changes of this datacenter's home keys reported to datacenters holding leases on them",
            ),
        }
    }
}

impl Cluster {
    /// Connects the node's clients (client tracking and pub/sub) to the cluster.
    pub fn set_clients(&self, clients: Arc<dyn LocalClients>) {
        if self.clients.set(clients).is_err() {
            tracing::warn!("the node's clients were connected to the cluster twice; kept the first");
        }
    }

    fn local_clients(&self) -> Option<&Arc<dyn LocalClients>> {
        self.clients.get()
    }

    pub(super) fn clients_track_reads(&self) -> bool {
        self.local_clients().is_some_and(|c| c.tracks_reads())
    }

    /// After a write through this node (acknowledged or not: it may be visible): keys it
    /// does not own leave its near cache, so its clients read their own writes, and its
    /// tracking clients hear of them, the writer excepted when it asked for NOLOOP. (Keys
    /// it owns are reported when it applies them, `Local::changed`.)
    pub(super) fn wrote_through(&self, keys: &[&[u8]]) {
        if self.topology.is_none() {
            return;
        }
        let view = self.view();
        let partitions = self.partitions();
        let elsewhere: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| !view.placement.is_owner(partition_of(k, partitions), self.node))
            .collect();
        if elsewhere.is_empty() {
            return;
        }
        if let Some(near) = &self.near {
            for key in &elsewhere {
                near.drop_key(key);
            }
        }
        if let Some(clients) = self.local_clients()
            && clients.wants_changes()
        {
            let keys: Vec<Bytes> = elsewhere.iter().map(|k| Bytes::copy_from_slice(k)).collect();
            clients.keys_changed(&keys, crate::cache::writer());
        }
    }

    /// Every key is gone (FLUSHDB through this node).
    pub fn flushed_through(&self) {
        if let Some(near) = &self.near {
            near.clear();
        }
        if let Some(clients) = self.local_clients() {
            clients.flushed();
        }
    }

    /// A call to an owner failed: if its connection is gone, the leases it granted may
    /// be too, so the entries it backed are dropped.
    pub(super) fn owner_unreachable(&self, owner: NodeId, e: &RpcError) {
        if let (Some(near), RpcError::Connect { .. } | RpcError::Transport { .. }) = (&self.near, e) {
            near.drop_owner(owner.0);
        }
    }

    /// Placement changed: partitions whose owners changed lose their entries (the new
    /// owners granted no leases), and holders that are gone are forgotten.
    pub(super) fn near_placement_changed(&self, before: &Placement, after: &Placement) {
        if let Some(near) = &self.near {
            for p in 0..self.partitions() {
                if before.owners(p) != after.owners(p) {
                    near.drop_partition(p);
                }
            }
        }
        self.forget_unplaced_holders(after.nodes());
    }

    /// Answers a [`messages::LeasedRead`]: grants first, then reads, so that any change
    /// applied after the read is owed to the holder.
    pub(super) fn leased_read(
        &self,
        m: messages::LeasedRead,
    ) -> Result<messages::LeasedAnswer, crate::store::StoreError> {
        let lease = Duration::from_millis(u64::from(m.lease_ms));
        let seqs = self.invalidations.grant(m.holder, &m.keys, self.partitions(), lease);
        let records = self.local.read(&m.keys)?;
        Ok(messages::LeasedAnswer {
            records: records.iter().map(|r| r.as_ref().map(messages::WireRecord::new)).collect(),
            incarnation: self.invalidations.incarnation,
            seqs,
        })
    }

    /// Applies an owner's invalidations: entries go, reservations are cancelled, gaps drop
    /// partitions, and this node's tracking clients hear of the keys.
    pub(super) fn invalidated(&self, m: messages::Invalidate) {
        let now_ms = unix_ms();
        if let Some(near) = &self.near {
            for Invalidated { key, partition, seq, applied_ms, .. } in &m.keys {
                if near.invalidate(m.owner, m.incarnation, *partition, *seq, std::slice::from_ref(key))
                    == Applied::Gap
                {
                    tracing::debug!(
                        partition,
                        seq,
                        "an invalidation was missed; the partition's entries are dropped"
                    );
                }
                let lag_ms = now_ms.saturating_sub(*applied_ms);
                self.cache_metrics.invalidation_lag.observe(lag_ms as f64 / 1000.0);
            }
        }
        if let Some(clients) = self.local_clients()
            && clients.wants_changes()
        {
            let keys: Vec<Bytes> = m.keys.into_iter().map(|i| i.key).collect();
            clients.keys_changed(&keys, None);
        }
    }

    /// Looks for announced invalidations that never came, and keeps the broadcast-mode
    /// prefixes of this node's tracking clients registered at every node, until `stop`.
    pub async fn keep_near_cache(self: Arc<Self>, stop: CancellationToken) {
        let renew_every = self.invalidations.lease / 3;
        let mut last_sent: Option<(Vec<Bytes>, Instant, (u64, u64))> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
            if let Some(near) = &self.near {
                near.check_announced(Instant::now());
            }
            let prefixes = self.local_clients().map(|c| c.watched_prefixes()).unwrap_or_default();
            let view = self.view();
            let due = match &last_sent {
                None => !prefixes.is_empty(),
                Some((sent, at, generation)) => {
                    *sent != prefixes || at.elapsed() >= renew_every || *generation != view.generation
                }
            };
            if due {
                self.watch_prefixes_everywhere(&view, &prefixes).await;
                last_sent = (!prefixes.is_empty()).then(|| (prefixes, Instant::now(), view.generation));
            }
        }
    }

    async fn watch_prefixes_everywhere(&self, view: &View, prefixes: &[Bytes]) {
        let Ok(peers) = self.peers() else { return };
        if !prefixes.is_empty() {
            self.invalidations.watch_prefixes(self.node.0, prefixes, self.invalidations.lease);
        }
        let lease_ms = u32::try_from(self.invalidations.lease.as_millis()).unwrap_or(u32::MAX);
        let calls = self.others(view).map(|target| async move {
            let msg = messages::WatchPrefixes { holder: self.node.0, prefixes: prefixes.to_vec(), lease_ms };
            if let Err(e) = peers.call(&target, &msg, self.timeout()).await {
                tracing::debug!(peer = %target.name, error = %e, "registering tracked prefixes failed");
            }
        });
        join_all(calls).await;
    }

    /// Registers `holder`'s broadcast-mode prefixes ([`messages::WatchPrefixes`]).
    pub(super) fn watch_prefixes(&self, m: messages::WatchPrefixes) {
        let lease = Duration::from_millis(u64::from(m.lease_ms));
        self.invalidations.watch_prefixes(m.holder, &m.prefixes, lease);
    }

    /// The other placed nodes, as call targets.
    fn others<'a>(&'a self, view: &'a View) -> impl Iterator<Item = crate::peer::Target> + 'a {
        view.placement.nodes().iter().filter(|&&n| n != self.node).filter_map(|&n| self.target(view, n).ok())
    }

    /// PUBLISH: delivers `message` to the subscribers of `channel` on this node and on
    /// every other node of the datacenter; returns how many received it. A node that does
    /// not answer in time counts none (pub/sub is at most once, as in Redis).
    pub async fn publish(&self, channel: &Bytes, message: &Bytes) -> usize {
        self.cache_metrics.published.inc();
        let here = self.local_clients().map_or(0, |c| c.publish(channel, message));
        let Ok(peers) = self.peers() else { return here };
        let view = self.view();
        let calls = self.others(&view).map(|target| async move {
            let msg = messages::Publish { channel: channel.clone(), message: message.clone() };
            match peers.call(&target, &msg, self.timeout()).await {
                Ok(n) => n as usize,
                Err(e) => {
                    tracing::debug!(peer = %target.name, error = %e, "publishing to a node failed");
                    0
                }
            }
        });
        here + join_all(calls).await.into_iter().sum::<usize>()
    }

    /// Delivers a message another node published to this node's subscribers.
    pub(super) fn deliver(&self, m: &messages::Publish) -> u64 {
        self.local_clients().map_or(0, |c| c.publish(&m.channel, &m.message)) as u64
    }

    /// This node's channels (matching `pattern`) with their subscriber counts, and its
    /// pattern subscriptions.
    pub(super) fn local_channels(&self, pattern: Option<&[u8]>) -> messages::ChannelCounts {
        let Some(clients) = self.local_clients() else {
            return messages::ChannelCounts { channels: Vec::new(), patterns: 0 };
        };
        messages::ChannelCounts {
            channels: clients.channels(pattern).into_iter().map(|(c, n)| (c, n as u64)).collect(),
            patterns: clients.patterns() as u64,
        }
    }

    /// PUBSUB over the whole datacenter: every channel with subscribers anywhere (matching
    /// `pattern`) with its total count, and the number of pattern subscriptions.
    pub async fn channels(&self, pattern: Option<&Bytes>) -> (Vec<(Bytes, usize)>, usize) {
        let mut all = std::collections::BTreeMap::<Bytes, usize>::new();
        let here = self.local_channels(pattern.map(|p| &p[..]));
        let mut patterns = here.patterns as usize;
        for (c, n) in here.channels {
            *all.entry(c).or_default() += n as usize;
        }
        if let Ok(peers) = self.peers() {
            let view = self.view();
            let calls = self.others(&view).map(|target| async move {
                let msg = messages::Channels { pattern: pattern.cloned() };
                peers.call(&target, &msg, self.timeout()).await
            });
            for answer in join_all(calls).await.into_iter().flatten() {
                patterns += answer.patterns as usize;
                for (c, n) in answer.channels {
                    *all.entry(c).or_default() += n as usize;
                }
            }
        }
        (all.into_iter().collect(), patterns)
    }

    /// Copies the near cache's counters into its metrics (at each scrape).
    pub fn mirror_cache_metrics(&self) {
        let m = &self.cache_metrics;
        let mirror = |c: &IntCounter, v: u64| c.inc_by(v.saturating_sub(c.get()));
        if let Some(near) = &self.near {
            let s = &near.stats;
            mirror(&m.hits, s.hits.load(Ordering::Relaxed));
            mirror(&m.misses, s.misses.load(Ordering::Relaxed));
            mirror(&m.evictions, s.evictions.load(Ordering::Relaxed));
            mirror(&m.invalidations_received, s.invalidations.load(Ordering::Relaxed));
            mirror(&m.invalidations_missed, s.missed.load(Ordering::Relaxed));
            mirror(&m.dropped_partitions, s.dropped_partitions.load(Ordering::Relaxed));
            let (entries, bytes) = near.size();
            m.entries.set(entries as i64);
            m.bytes.set(bytes as i64);
        }
        let inv = &self.invalidations;
        mirror(&m.invalidations_sent, inv.sent.load(Ordering::Relaxed));
        mirror(&m.leases_granted, inv.granted.load(Ordering::Relaxed));
        m.lease_keys.set(inv.counts().0 as i64);
    }

    /// The near cache and the leases this node granted, for `/v1/status`.
    pub fn cache_status(&self) -> Value {
        self.mirror_cache_metrics();
        let m = &self.cache_metrics;
        let (hits, misses) = (m.hits.get(), m.misses.get());
        let ratio = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        let (lease_keys, lease_partitions, prefixes, queued) = self.invalidations.counts();
        let lag = &m.invalidation_lag;
        json!({
            "enabled": self.near.is_some(),
            "max_bytes": self.near.as_ref().map(|n| n.options().max_bytes),
            "entries": m.entries.get(),
            "bytes": m.bytes.get(),
            "hits": hits,
            "misses": misses,
            "hit_ratio": ratio,
            "evictions": m.evictions.get(),
            "invalidations": {
                "received": m.invalidations_received.get(),
                "missed": m.invalidations_missed.get(),
                "sent": m.invalidations_sent.get(),
                "queued": queued,
                "lag_seconds_sum": lag.get_sample_sum(),
                "lag_count": lag.get_sample_count(),
            },
            "dropped_partitions": m.dropped_partitions.get(),
            "leases": {
                "granted": m.leases_granted.get(),
                "keys": lease_keys,
                "partition_wide": lease_partitions,
                "prefix_watches": prefixes,
                "lease_seconds": self.invalidations.lease.as_secs_f64(),
                "abandoned_holders": self.invalidations.abandoned.load(Ordering::Relaxed),
            },
            "pubsub": { "published": m.published.get() },
        })
    }
}
