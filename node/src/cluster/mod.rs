//! The read and write paths every client command goes through, on whichever node the
//! client is connected to.
//!
//! Each key belongs to a partition; each partition has owners (rendezvous hashing over
//! the alive data nodes, [`crate::placement`]), the first of which is its **primary**.
//!
//! - **Writes** are decided where the client is (the command's logic runs on the records
//!   a quorum of owners holds) and executed by the primary: it takes in any newer record
//!   the coordinator found elsewhere, checks that the records it holds are still the ones
//!   the decision was made on (their HLCs), stamps the new records with its clock, applies
//!   them, copies them to the other owners and answers once the write quorum has them on
//!   disk. A conflict (the key changed in between) makes the coordinator decide again on
//!   the fresh records, so read-modify-write commands (INCR, APPEND, SETNX...) on one key
//!   are serialised at its primary. When this node is the primary of every key of a
//!   command, the decision and the write are one local atomic step.
//! - **Reads** ask enough owners to overlap every write quorum (this node first when it
//!   owns the key), take the newest record and repair the owners found behind
//!   (`cluster.read_quorum = "one"`: the first owner with a record answers).
//! - Only members **verified** over mutual TLS are given partitions.
//!
//! Without membership (or alone in its cluster) a node owns everything and every path is
//! local.
//!
//! The paths live in their own files: `view` (placement and who owns what), `read`,
//! `write` and `scan`, and the messages they send to peers in `messages`; the background workers that keep owners in step are `rebalance`,
//! `repair` (anti-entropy), `handoff` and `strays`; `service` answers the peers.

mod arriving;
mod handoff;
pub mod home;
mod invalidate;
mod local;
pub mod messages;
mod metrics;
mod near;
pub mod outbound;
mod read;
mod rebalance;
mod repair;
pub mod roster;
mod scan;
mod service;
mod strays;
mod view;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

pub use local::Stamp;
use local::{Executed, Local};
use messages::WireRecord;
pub use metrics::ClusterMetrics;
pub use near::CacheMetrics;
pub use read::ReadQuorum;
pub use rebalance::RebalanceOptions;
use rebalance::RebalanceStatus;
pub use repair::{Horizon, RepairOptions, differences};
pub use service::{MAX_PULL_BYTES, Service};
use view::{Verified, View};

use crate::cache::LocalClients;
use crate::cache::near::{NearCache, NearOptions};
use crate::hlc::Clock;
use crate::membership::members::Members;
use crate::peer::{Peers, RpcError, Target};
use crate::placement::{NodeId, Placement, WriteQuorum, partition_of};
use crate::record::{Origin, Record};
use crate::store::flusher::{Flusher, NotDurable};
use crate::store::{Store, StoreError, StoreStats};

/// Why a read or write did not happen (or, for `NotDurable`, may not survive a crash).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
    /// The owners needed could not be reached in time: the client gets `-CLUSTERDOWN`.
    #[error("{0}")]
    Unavailable(String),
    /// A write was applied but reached fewer owners than `cluster.write_quorum` asks for
    /// in time: the client gets `-CLUSTERDOWN`, and the write may still become visible.
    #[error(
        "write reached {acks} of the {required} owners it needs (cluster.write_quorum) in time; \
         it is kept where it was applied and may still become visible"
    )]
    QuorumMissed { acks: usize, required: usize },
    /// A key's home datacenter (`keyspaces.home`) could not be reached or did not answer:
    /// the client gets `-TRYAGAIN`, with whether the write may have been applied there.
    #[error("{0}")]
    HomeUnavailable(String),
}

/// How this node reaches the rest of its datacenter.
pub struct Topology {
    pub members: Arc<Members>,
    pub peers: Arc<Peers>,
    pub replicas: usize,
    pub quorum: WriteQuorum,
    pub read_quorum: ReadQuorum,
    pub timeout: Duration,
    pub rebalance: RebalanceOptions,
    pub repair: RepairOptions,
    /// Bytes of undelivered copies kept for owners that did not answer.
    pub max_hint_bytes: usize,
    /// The data nodes this node knows its cluster to have (kept in the data directory).
    pub roster: std::sync::Mutex<roster::Roster>,
    /// The fewest data nodes the cluster is expected to have whatever the roster says:
    /// `cluster.bootstrap_expect`, and 2 when this node was told to `join` another.
    pub expect: usize,
}

pub struct Cluster {
    local: Local,
    node: NodeId,
    topology: Option<Topology>,
    verified: Verified,
    view: RwLock<Arc<View>>,
    metrics: ClusterMetrics,
    /// Partitions to copy, for the rebalance worker.
    rebalance_tasks: rebalance::TaskQueue,
    rebalance_options: RebalanceOptions,
    pub(super) rebalance_status: RebalanceStatus,
    repair_status: repair::RepairStatus,
    /// Copies an owner did not receive, for the handoff worker.
    hints: Arc<handoff::Hints>,
    /// Partitions that may hold records this node does not own, for the stray worker.
    strays: strays::Strays,
    /// Partitions being copied in, answered from their sources too.
    arriving: arriving::Arriving,
    /// Records of keys owned elsewhere, kept after reads (`None`: `cache.enabled = false`).
    near: Option<NearCache>,
    /// Leases this node granted as owner and the invalidations it owes their holders.
    invalidations: Arc<invalidate::Invalidations>,
    /// This node's clients that follow changes and messages (client tracking, pub/sub).
    clients: Arc<OnceLock<Arc<dyn LocalClients>>>,
    cache_metrics: CacheMetrics,
    /// Keys whose home is one datacenter (`keyspaces.home`).
    home: home::Home,
}

/// Near-cache settings (`[cache]`).
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// `None`: no near cache (leases are still granted, and taken for tracking clients).
    pub near: Option<NearOptions>,
    pub lease: Duration,
    pub max_interest_keys: usize,
    pub max_queued_invalidations: usize,
    /// Test hook: invalidations are numbered but never sent.
    pub drop_invalidations: bool,
    /// `keyspaces.home`.
    pub home: home::HomeOptions,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            near: None,
            lease: Duration::from_secs(30),
            max_interest_keys: 100_000,
            max_queued_invalidations: 65_536,
            drop_invalidations: false,
            home: home::HomeOptions::default(),
        }
    }
}

impl Cluster {
    /// The clock starts above every stored HLC, so new local writes order after all of
    /// them (which lets a blind SET write without reading first).
    pub fn new(
        store: Arc<dyn Store>,
        flusher: Arc<Flusher>,
        origin: Origin,
        topology: Option<Topology>,
        metrics: ClusterMetrics,
        cache: CacheOptions,
        cache_metrics: CacheMetrics,
    ) -> Result<Self, StoreError> {
        let clock = Clock::new();
        clock.observe(store.max_hlc()?);
        let node = NodeId(origin.node);
        let partitions = store.partitions();
        let known = topology.as_ref().map_or(1, |t| {
            let roster = t.roster.lock().unwrap_or_else(|e| e.into_inner()).len();
            roster.max(t.expect).max(1)
        });
        let quorums = match &topology {
            Some(t) => roster::quorums(t.replicas, known, t.quorum),
            None => roster::Quorums { replicas: 1, write: 1, read: 1 },
        };
        let view = View {
            generation: (0, 0),
            placement: Placement::new(partitions, 1, [node]),
            targets: HashMap::new(),
            renewals: 0,
            known,
            quorums,
        };
        let rebalance_tasks = rebalance::TaskQueue::new(metrics.rebalance_depth.clone());
        let max_hint_bytes = topology.as_ref().map_or(64 << 20, |t| t.max_hint_bytes);
        let rebalance_options = topology.as_ref().map_or(
            RebalanceOptions { max_bytes_per_sec: 64 << 20, max_parallel: 2, chunk_bytes: 256 << 10 },
            |t| t.rebalance,
        );
        let invalidations = Arc::new(invalidate::Invalidations::new(
            cache.lease,
            cache.max_interest_keys,
            cache.max_queued_invalidations,
            cache.drop_invalidations,
        ));
        let clients: Arc<OnceLock<Arc<dyn LocalClients>>> = Arc::default();
        // A node without peers owns every key: nothing to cache.
        let home = home::Home::new(&origin.datacenter, cache.home.clone());
        let near =
            cache.near.filter(|_| topology.is_some()).map(|options| NearCache::new(partitions, options));
        Ok(Cluster {
            local: Local {
                store,
                flusher,
                clock,
                origin,
                invalidations: invalidations.clone(),
                clients: clients.clone(),
                home_leases: home.leases.clone(),
            },
            node,
            topology,
            verified: Verified::default(),
            view: RwLock::new(Arc::new(view)),
            metrics,
            rebalance_tasks,
            rebalance_options,
            rebalance_status: RebalanceStatus::default(),
            repair_status: repair::RepairStatus::default(),
            hints: Arc::new(handoff::Hints::new(max_hint_bytes)),
            strays: strays::Strays::default(),
            arriving: arriving::Arriving::default(),
            near,
            invalidations,
            clients,
            cache_metrics,
            home,
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.local.store
    }

    pub fn flusher(&self) -> &Arc<Flusher> {
        &self.local.flusher
    }

    pub fn partitions(&self) -> u16 {
        self.local.store.partitions()
    }

    pub fn stats(&self) -> StoreStats {
        self.local.store.stats()
    }

    /// [`Self::stats`] off the async workers: counting may read the engine once for each
    /// buffered write not counted yet (a full write buffer under sustained writes).
    pub async fn stats_off_workers(&self) -> StoreStats {
        let store = self.local.store.clone();
        tokio::task::spawn_blocking(move || store.stats()).await.unwrap_or_else(|_| self.stats())
    }

    /// Whether partitions are placed on the node with id `node` (a data node that is alive
    /// or suspect and was verified over mutual TLS), as this node sees it.
    pub fn places(&self, node: u64) -> bool {
        self.view().placement.nodes().binary_search(&NodeId(node)).is_ok()
    }

    /// Whether other nodes take part: false for a node whose known cluster is itself
    /// alone (a node that knows of others but reaches none is still clustered: it must
    /// not answer from its own store as if it were alone).
    pub fn is_clustered(&self) -> bool {
        let view = self.view();
        view.placement.nodes().len() > 1 || view.known > 1
    }

    /// How many nodes the current placement uses, this one included.
    pub fn placed_nodes(&self) -> usize {
        self.view().placement.nodes().len()
    }

    /// The current placement. The placement watcher ([`Cluster::watch_placement`]) keeps
    /// it up to date; the request path only reads it.
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Partitions this node is to copy from their other owners, queued or being copied.
    /// Brings placement up to date first, so copies a membership change calls for count.
    pub fn rebalance_in_progress(&self) -> usize {
        self.rebalance_status.in_progress()
    }

    /// The rebalance worker's progress, for `/v1/status`.
    pub fn rebalance_status(&self) -> serde_json::Value {
        self.rebalance_status.json()
    }

    /// The handoff worker's hints, for `/v1/status`.
    pub fn handoff_status(&self) -> serde_json::Value {
        self.hints.json()
    }

    fn timeout(&self) -> Duration {
        self.topology.as_ref().map_or(Duration::from_secs(2), |t| t.timeout)
    }

    fn owners(&self, view: &View, key: &[u8]) -> Vec<NodeId> {
        view.placement.owners(partition_of(key, self.partitions())).to_vec()
    }

    fn target(&self, view: &View, node: NodeId) -> Result<Target, DataError> {
        view.targets
            .get(&node.0)
            .cloned()
            .ok_or_else(|| DataError::Unavailable(format!("node {:016x} has no peer address", node.0)))
    }

    fn peers(&self) -> Result<&Arc<Peers>, DataError> {
        self.topology
            .as_ref()
            .map(|t| &t.peers)
            .ok_or_else(|| DataError::Unavailable("this node has no peers".into()))
    }
}

fn decode(wire: &WireRecord) -> Result<Record, DataError> {
    wire.decode().map_err(|e| DataError::Unavailable(format!("a peer sent an unreadable record: {e}")))
}

fn unavailable(e: RpcError) -> DataError {
    DataError::Unavailable(e.to_string())
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Halfway from now to `deadline`: the budget of a first attempt that leaves time for a
/// second.
fn half_of(deadline: Instant) -> Instant {
    Instant::now() + remaining(deadline) / 2
}
