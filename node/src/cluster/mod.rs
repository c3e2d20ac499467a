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

mod handoff;
mod local;
mod rebalance;
mod repair;
pub mod roster;
mod service;
mod strays;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

pub use local::Stamp;
use local::{Executed, Local};
pub use rebalance::RebalanceOptions;
use rebalance::{RebalanceStatus, Task};
pub use repair::{Horizon, RepairOptions};
pub use service::{MAX_PULL_BYTES, Service};

use crate::hlc::Clock;
use crate::membership::members::Members;
use crate::peer::messages::{self, Change, Op, Refusal, WireRecord, WriteOutcome};
use crate::peer::{Peers, RpcError, Target};
use crate::placement::{NodeId, Partition, Placement, WriteQuorum, partition_of};
use crate::record::{Origin, Record};
use crate::store::flusher::{Flusher, NotDurable};
use crate::store::{Store, StoreError, StoreStats, Write};

/// Longest pause before a coordinator decides again after a conflict; the pause grows
/// with the attempts, randomised, so that coordinators racing for one key spread out.
const MAX_CONFLICT_BACKOFF: Duration = Duration::from_millis(5);
/// Pause before a write refused by a primary that has not joined yet is sent again.
const NOT_JOINED_PAUSE: Duration = Duration::from_millis(50);

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
}

/// Cluster metrics.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// `opencluster_forwarded_total{op}`: reads and writes this node sent to other owners.
    pub forwarded: IntCounterVec,
    /// `opencluster_replication_total{outcome}`: writes this node executed as primary, by
    /// whether their quorum was met.
    pub replication: IntCounterVec,
    /// `opencluster_replicated_records_total{direction}`: records copied to (sent) or from
    /// (received) other owners.
    pub replicated_records: IntCounterVec,
    /// `opencluster_read_repairs_total`: records sent to owners a read found behind.
    pub read_repairs: IntCounter,
    /// `opencluster_rebalance_bytes_total`: bytes of records copied in by rebalance.
    pub rebalance_bytes: IntCounter,
    /// `opencluster_rebalance_failures_total`: partition copies that failed and were retried.
    pub rebalance_failures: IntCounter,
    /// `opencluster_repair_rounds_total`: anti-entropy rounds finished.
    pub repair_rounds: IntCounter,
    /// `opencluster_repair_keys_total{direction}`: records anti-entropy fetched, pushed or
    /// removed once handed over.
    pub repair_keys: IntCounterVec,
    /// `opencluster_hints_pending`: copies kept for owners that did not answer.
    pub hints_pending: prometheus::IntGauge,
    /// `opencluster_hints_delivered_total`.
    pub hints_delivered: IntCounter,
    /// `opencluster_hints_dropped_total`: hints dropped beyond `cluster.max_hint_bytes`.
    pub hints_dropped: IntCounter,
}

impl ClusterMetrics {
    pub fn register(r: &Registry) -> Self {
        let counter = |name: &str, help: &str, label: &str, values: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
            r.register(Box::new(c.clone())).expect("metric names are unique");
            for v in values {
                c.with_label_values(&[v]);
            }
            c
        };
        let read_repairs = IntCounter::new(
            "opencluster_read_repairs_total",
            "Records copied to owners that a read found holding an older version (or none)",
        )
        .expect("valid counter");
        r.register(Box::new(read_repairs.clone())).expect("metric names are unique");
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        let hints_pending = prometheus::IntGauge::new(
            "opencluster_hints_pending",
            "Copies kept for owners that did not answer",
        )
        .expect("valid gauge");
        r.register(Box::new(hints_pending.clone())).expect("metric names are unique");
        ClusterMetrics {
            hints_pending,
            hints_delivered: plain(
                "opencluster_hints_delivered_total",
                "Kept copies delivered to their owner once it answered again",
            ),
            hints_dropped: plain(
                "opencluster_hints_dropped_total",
                "Kept copies dropped because cluster.max_hint_bytes was full",
            ),
            rebalance_bytes: plain(
                "opencluster_rebalance_bytes_total",
                "Bytes of records this node copied in from other owners for partitions it gained",
            ),
            rebalance_failures: plain(
                "opencluster_rebalance_failures_total",
                "Partition copies that failed (every source unreachable) and were queued again",
            ),
            repair_rounds: plain("opencluster_repair_rounds_total", "Anti-entropy rounds this node finished"),
            repair_keys: counter(
                "opencluster_repair_keys_total",
                "Records anti-entropy copied from other owners (fetched) or to them (pushed), and records of partitions handed over to their owners and removed here (removed)",
                "direction",
                &["fetched", "pushed", "removed"],
            ),
            read_repairs,
            forwarded: counter(
                "opencluster_forwarded_total",
                "Reads and writes sent to the owners of their keys, by operation",
                "op",
                &["read", "write", "scan"],
            ),
            replication: counter(
                "opencluster_replication_total",
                "Writes executed as a partition's primary, by whether the write quorum was met",
                "outcome",
                &["quorum_met", "quorum_missed"],
            ),
            replicated_records: counter(
                "opencluster_replicated_records_total",
                "Records copied to other owners (sent) or from them (received)",
                "direction",
                &["sent", "received"],
            ),
        }
    }
}

/// How many owners a read asks (`cluster.read_quorum`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadQuorum {
    /// Enough owners to overlap every write quorum; the newest record wins.
    #[default]
    Quorum,
    /// The first owner with a record: fastest, and may miss writes after a fault.
    One,
}

/// A quorum read's result.
struct Merged {
    /// The newest record any owner asked holds.
    record: Option<Record>,
    /// Whether the key's primary answered with that record (else writes send it along).
    primary_current: bool,
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

/// One placement snapshot, rebuilt when membership changes.
struct View {
    /// (membership generation, verified-peers generation) it was built from.
    generation: (u64, u64),
    placement: Placement,
    targets: HashMap<u64, Target>,
    /// This node's identity renewals (times it rejoined after being declared down).
    renewals: u32,
    /// Data nodes the cluster is known to have (the roster, at least the placed ones).
    known: usize,
    /// Quorums counted against the known cluster, not against the placed nodes.
    quorums: roster::Quorums,
}

/// Peers proven to be who membership says they are: a Ping over mutual TLS reached them
/// at their RPC address and answered with their node id. Only verified peers are given
/// partitions, so a member that gossips with the right key but holds a certificate this
/// cluster does not trust (or runs no RPC endpoint) never owns data.
#[derive(Default)]
struct Verified {
    peers: std::sync::Mutex<std::collections::HashSet<(u64, std::net::SocketAddr)>>,
    generation: std::sync::atomic::AtomicU64,
    /// Wakes the placement watcher.
    changed: tokio::sync::Notify,
}

impl Verified {
    /// Placement must be rebuilt: the verified set (or the known cluster) changed.
    fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_one();
    }
}

/// How often unverified members are tried again.
const VERIFY_EVERY: Duration = Duration::from_millis(250);
/// How often a member that keeps failing verification is logged.
const VERIFY_LOG_EVERY: Duration = Duration::from_secs(30);

pub struct Cluster {
    local: Local,
    node: NodeId,
    topology: Option<Topology>,
    verified: Verified,
    view: RwLock<Arc<View>>,
    metrics: ClusterMetrics,
    /// Partitions to copy, for the rebalance worker (which takes the receiver).
    rebalance_tasks: tokio::sync::mpsc::UnboundedSender<Task>,
    rebalance_queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Task>>>,
    rebalance_options: RebalanceOptions,
    pub(super) rebalance_status: RebalanceStatus,
    repair_status: repair::RepairStatus,
    /// Copies an owner did not receive, for the handoff worker.
    hints: Arc<handoff::Hints>,
    /// Partitions that may hold records this node does not own, for the stray worker.
    strays: strays::Strays,
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
        let (rebalance_tasks, queue) = rebalance::queue();
        let max_hint_bytes = topology.as_ref().map_or(64 << 20, |t| t.max_hint_bytes);
        let rebalance_options = topology.as_ref().map_or(
            RebalanceOptions { max_bytes_per_sec: 64 << 20, max_parallel: 2, chunk_bytes: 256 << 10 },
            |t| t.rebalance,
        );
        Ok(Cluster {
            local: Local { store, flusher, clock, origin },
            node,
            topology,
            verified: Verified::default(),
            view: RwLock::new(Arc::new(view)),
            metrics,
            rebalance_tasks,
            rebalance_queue: std::sync::Mutex::new(Some(queue)),
            rebalance_options,
            rebalance_status: RebalanceStatus::default(),
            repair_status: repair::RepairStatus::default(),
            hints: Arc::new(handoff::Hints::new(max_hint_bytes)),
            strays: strays::Strays::default(),
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

    /// The current placement. The placement watcher ([`Cluster::watch_placement`]) keeps
    /// it up to date; the request path only reads it.
    fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the view is behind membership (a change the watcher has not taken in yet).
    fn view_is_behind(&self) -> bool {
        let Some(topology) = &self.topology else { return false };
        let generation = (
            topology.members.generation(),
            self.verified.generation.load(std::sync::atomic::Ordering::Acquire),
        );
        self.view().generation != generation
    }

    /// Rebuilds placement from membership when it changed, queues the copies the change
    /// calls for, marks the partitions it lost as strays to hand over, and updates the
    /// roster (saved to the data directory when it changed).
    fn refresh(&self) -> Arc<View> {
        let current = self.view();
        let Some(topology) = &self.topology else { return current };
        let generation = (
            topology.members.generation(),
            self.verified.generation.load(std::sync::atomic::Ordering::Acquire),
        );
        if generation == current.generation {
            return current;
        }
        let verified = self.verified.peers.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut nodes = topology.members.data_nodes();
        nodes.retain(|n| n.id == self.node.0 || verified.contains(&(n.id, n.rpc_addr)));
        let targets: HashMap<u64, Target> = nodes
            .iter()
            .map(|n| (n.id, Target { id: n.id, name: n.name.clone(), addr: n.rpc_addr }))
            .collect();
        let known = {
            let mut roster = topology.roster.lock().unwrap_or_else(|e| e.into_inner());
            if roster.observe(Instant::now(), &nodes, &topology.members.departed())
                && let Err(e) = roster.save()
            {
                tracing::warn!(error = %e, "the remembered members could not be saved");
            }
            roster.len().max(topology.expect).max(nodes.len())
        };
        let ids = nodes.iter().map(|n| NodeId(n.id)).chain([self.node]);
        let placement = Placement::new(self.partitions(), topology.replicas, ids);
        let renewals = topology.members.local_renewals();
        let quorums = roster::quorums(topology.replicas, known, topology.quorum);
        let view = Arc::new(View { generation, placement, targets, renewals, known, quorums });
        let width = view.placement.owners_per_partition();
        if width < quorums.write {
            tracing::warn!(
                placed = view.placement.nodes().len(),
                known,
                write_quorum = quorums.write,
                "placement updated: this node reaches too few of the nodes it knows to take writes; \
                 clients get CLUSTERDOWN until it reaches more"
            );
        } else {
            tracing::info!(
                nodes = view.placement.nodes().len(),
                known,
                owners_per_partition = width,
                write_quorum = quorums.write,
                owned_here = view.placement.partitions_of(self.node).len(),
                "placement updated"
            );
        }
        // Counted as queued before the view is seen: readiness never finds the new view
        // without the copies it calls for.
        let gained = self.gained_partitions(&current, &view);
        self.rebalance_status.expect(gained.len());
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view.clone();
        self.queue(gained);
        self.strays.add(
            (0..self.partitions()).filter(|&p| {
                current.placement.is_owner(p, self.node) && !view.placement.is_owner(p, self.node)
            }),
        );
        view
    }

    /// Rebuilds placement whenever membership or the set of verified peers changes (and
    /// every second, so the roster forgets nodes missing for `cluster.forget_after`), until
    /// `stop`.
    pub async fn watch_placement(self: Arc<Self>, stop: CancellationToken) {
        let Some(topology) = &self.topology else { return };
        let mut changes = topology.members.changed();
        self.refresh();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.changed() => {}
                _ = self.verified.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    let mut roster = topology.roster.lock().unwrap_or_else(|e| e.into_inner());
                    let placed = self.view().placement.nodes().to_vec();
                    let nodes: Vec<_> = topology.members.data_nodes().into_iter()
                        .filter(|n| placed.contains(&NodeId(n.id))).collect();
                    if roster.observe(Instant::now(), &nodes, &topology.members.departed()) {
                        if let Err(e) = roster.save() {
                            tracing::warn!(error = %e, "the remembered members could not be saved");
                        }
                        drop(roster);
                        // The known cluster shrank: quorums change.
                        self.verified.bump();
                    }
                }
            }
            self.refresh();
        }
    }

    /// Every partition this node owns in `next` but not in `previous`, for the rebalance
    /// worker, with where to copy it from: its owners in `previous` that are still here,
    /// or, when this node was alone before (it just started, or lost every peer) or
    /// rejoined after the others declared it down (they placed its partitions elsewhere
    /// and kept no hints for it), the partition's other owners now, since it may have
    /// missed their writes.
    fn gained_partitions(&self, previous: &View, next: &View) -> Vec<Task> {
        let was_alone = previous.placement.nodes().len() <= 1 || next.renewals > previous.renewals;
        let mut gained = Vec::new();
        for partition in next.placement.partitions_of(self.node) {
            let sources: Vec<NodeId> = if was_alone {
                next.placement.owners(partition).to_vec()
            } else if previous.placement.is_owner(partition, self.node) {
                continue;
            } else {
                previous.placement.owners(partition).to_vec()
            };
            let sources: Vec<NodeId> =
                sources.into_iter().filter(|&n| n != self.node && next.targets.contains_key(&n.0)).collect();
            if !sources.is_empty() {
                gained.push(Task { partition, sources });
            }
        }
        gained
    }

    /// Hands partitions to copy to the rebalance worker.
    fn queue(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let queued = tasks.len();
        for task in tasks {
            if self.rebalance_tasks.send(task).is_err() {
                tracing::debug!("the rebalance worker has stopped; nothing queued");
                return;
            }
        }
        tracing::info!(partitions = queued, "partitions to copy from their owners queued");
    }

    /// Partitions this node is to copy from their other owners, queued or being copied.
    /// Brings placement up to date first, so copies a membership change calls for count.
    pub fn rebalance_in_progress(&self) -> usize {
        self.rebalance_status.in_progress()
    }

    /// Why this node cannot act as a member of its cluster yet, if it cannot: placement
    /// is behind membership, or it reaches too few of the nodes it knows for a write.
    pub fn not_joined(&self) -> Option<String> {
        if self.view_is_behind() {
            return Some("placement: membership changed and placement is being rebuilt".into());
        }
        let view = self.view();
        self.check_reachable(&view, view.quorums.write.max(view.quorums.read), "write")
            .err()
            .map(|e| format!("join: {e}"))
    }

    /// The rebalance worker's progress, for `/v1/status`.
    pub fn rebalance_status(&self) -> serde_json::Value {
        self.rebalance_status.json()
    }

    /// The handoff worker's hints, for `/v1/status`.
    pub fn handoff_status(&self) -> serde_json::Value {
        self.hints.json()
    }

    /// Verifies members that placement does not use yet, every [`VERIFY_EVERY`], until
    /// `stop`; forgets members that left so that a returning one is verified again.
    pub async fn verify_peers(self: Arc<Self>, stop: CancellationToken) {
        let Some(topology) = &self.topology else { return };
        let mut logged: HashMap<u64, Instant> = HashMap::new();
        let mut changes = topology.members.changed();
        loop {
            // At once when membership changes: a member that joined or came back is
            // placed as soon as it answers.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(VERIFY_EVERY) => {}
            }
            let nodes = topology.members.data_nodes();
            let unverified: Vec<Target> = {
                let mut verified = self.verified.peers.lock().unwrap_or_else(|e| e.into_inner());
                let before = verified.len();
                verified.retain(|(id, addr)| nodes.iter().any(|n| n.id == *id && n.rpc_addr == *addr));
                if verified.len() != before {
                    self.verified.bump();
                }
                nodes
                    .iter()
                    .filter(|n| n.id != self.node.0 && !verified.contains(&(n.id, n.rpc_addr)))
                    .map(|n| Target { id: n.id, name: n.name.clone(), addr: n.rpc_addr })
                    .collect()
            };
            let pings =
                unverified.iter().map(|t| topology.peers.call(t, &messages::Ping, Duration::from_secs(1)));
            for (target, answer) in unverified.iter().zip(join_all(pings).await) {
                let failure = match answer {
                    Ok(id) if id == target.id => {
                        tracing::info!(peer = %target.name, addr = %target.addr, "peer verified over mutual TLS");
                        logged.remove(&target.id);
                        let mut verified = self.verified.peers.lock().unwrap_or_else(|e| e.into_inner());
                        verified.insert((target.id, target.addr));
                        self.verified.bump();
                        continue;
                    }
                    Ok(id) => format!("node {id:016x} answers at its RPC address"),
                    Err(e) => e.to_string(),
                };
                let due = logged.get(&target.id).is_none_or(|at| at.elapsed() >= VERIFY_LOG_EVERY);
                if due {
                    logged.insert(target.id, Instant::now());
                    tracing::warn!(
                        peer = %target.name, addr = %target.addr, error = %failure,
                        "member cannot be verified over peer RPC; it gets no partitions until it can"
                    );
                }
            }
        }
    }

    /// Partitions this node owns and is primary of, and the placement's shape, for status.
    pub fn placement_status(&self) -> serde_json::Value {
        let view = self.view();
        let p = &view.placement;
        let owned = p.partitions_of(self.node);
        let primary = owned.iter().filter(|&&q| p.primary(q) == Some(self.node)).count();
        let width = p.owners_per_partition();
        let replicas = self.topology.as_ref().map_or(1, |t| t.replicas);
        let required = view.quorums.write;
        serde_json::json!({
            "partitions": p.partitions(),
            "nodes": p.nodes().len(),
            "replicas_configured": replicas,
            "owners_per_partition": width,
            "write_quorum": required,
            "read_quorum": view.quorums.read,
            "known_nodes": view.known,
            "stray_partitions": self.strays.pending(),
            "owned": owned.len(),
            "primary": primary,
            // Every partition has all its configured owners, and a quorum survives the
            // loss of one of them.
            "replica_health": if width >= replicas { "full" } else if width > required { "degraded" } else if width >= required { "no_spare" } else { "below_quorum" },
        })
    }

    /// A key's partition and owners, primary first (for `/v1/placement?key=`).
    pub fn placement_of(&self, key: &[u8]) -> serde_json::Value {
        let view = self.view();
        let partition = partition_of(key, self.partitions());
        let owners: Vec<serde_json::Value> = view
            .placement
            .owners(partition)
            .iter()
            .map(|&n| {
                let name = view.targets.get(&n.0).map(|t| t.name.clone());
                serde_json::json!({ "id": format!("{:016x}", n.0), "name": name, "self": n == self.node })
            })
            .collect();
        serde_json::json!({ "partition": partition, "owners": owners })
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

    // ---- reads ----

    /// The stored record of `key` (tombstones and expired values included: the caller
    /// decides what is live at its own `now`).
    ///
    /// With `cluster.read_quorum = "quorum"` (the default) enough owners answer that every
    /// acknowledged write is among them, and the newest record wins; owners that answered
    /// with an older one are repaired. With `"one"` the first owner that has a record
    /// answers (this node when it owns the key).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Record>, DataError> {
        let view = self.view();
        let deadline = Instant::now() + self.timeout();
        match self.topology.as_ref().map_or(ReadQuorum::One, |t| t.read_quorum) {
            ReadQuorum::Quorum => {
                let need = self.read_required(&view);
                self.check_reachable(&view, need, "read")?;
                Ok(self.read_merged(&view, key, need, deadline).await?.record)
            }
            ReadQuorum::One => self.read_one(&view, key, deadline).await,
        }
    }

    /// Owners a quorum read must hear from: enough that any write quorum overlaps them
    /// (`owners - write quorum + 1`).
    fn read_required(&self, view: &View) -> usize {
        view.quorums.read
    }

    /// Reads `key` from `need` of its owners (this node first when it is one), takes the
    /// newest record, and repairs the owners that answered with an older one.
    async fn read_merged(
        &self,
        view: &View,
        key: &[u8],
        need: usize,
        deadline: Instant,
    ) -> Result<Merged, DataError> {
        let owners = self.owners(view, key);
        let primary = owners.first().copied();
        let mut answers: Vec<(NodeId, Option<Record>)> = Vec::with_capacity(owners.len());
        if owners.contains(&self.node) || owners.is_empty() {
            answers.push((self.node, self.local.store.get(key)?));
        }
        let mut errors = Vec::new();
        // Other owners are asked only as many at a time as are still needed, primary first,
        // the first ones with half of the time left so that a replacement fits. One more is
        // asked for each that fails, and when every answer so far is "no record": an owner
        // that gained the partition after the write has nothing, and the write may be only
        // at an owner not asked yet.
        let found = |answers: &[(NodeId, Option<Record>)]| answers.iter().any(|(_, r)| r.is_some());
        let keys = [Bytes::copy_from_slice(key)];
        let keys = &keys;
        let others: Vec<NodeId> = owners.iter().copied().filter(|&n| n != self.node).collect();
        let mut next = 0;
        let mut reads = FuturesUnordered::new();
        let ask =
            |node: NodeId, by: Instant| async move { (node, self.read_from(view, node, keys, by).await) };
        while next < others.len() && reads.len() < need.saturating_sub(answers.len()) {
            reads.push(ask(others[next], half_of(deadline)));
            next += 1;
        }
        loop {
            let enough = answers.len() >= need;
            if enough && found(&answers) {
                break;
            }
            if reads.is_empty() {
                if next == others.len() {
                    break;
                }
                // Enough answers, all "no record": ask every owner not heard yet.
                let more = if enough { others.len() - next } else { 1 };
                for &node in &others[next..next + more] {
                    reads.push(ask(node, deadline));
                }
                next += more;
            }
            match reads.next().await {
                Some((node, Ok(record))) => answers.push((node, record)),
                Some((_, Err(e))) => {
                    errors.push(e.to_string());
                    if next < others.len() {
                        reads.push(ask(others[next], deadline));
                        next += 1;
                    }
                }
                None => {}
            }
        }
        if answers.len() < need {
            return Err(DataError::Unavailable(format!(
                "read reached {} of the {need} owners it needs (cluster.read_quorum) in time: {}",
                answers.len(),
                errors.join("; ")
            )));
        }
        let mut best: Option<Record> = None;
        for (_, record) in &answers {
            if let Some(r) = record
                && r.wins_over(best.as_ref())
            {
                best = Some(r.clone());
            }
        }
        let newest = |r: &Option<Record>| best.as_ref().is_none_or(|b| !b.wins_over(r.as_ref()));
        let primary_current = answers.iter().any(|(n, r)| Some(*n) == primary && newest(r));
        if let Some(best) = &best {
            for (node, record) in &answers {
                if !best.wins_over(record.as_ref()) {
                    continue;
                }
                let copy = [(Bytes::copy_from_slice(key), best.clone())];
                if *node == self.node {
                    self.local.apply(&copy).await?;
                } else {
                    self.repair(view, *node, &copy);
                }
            }
        }
        Ok(Merged { record: best, primary_current })
    }

    /// Sends `records` to an owner that answered a read with older ones, in the background.
    fn repair(&self, view: &View, node: NodeId, records: &[(Bytes, Record)]) {
        let (Some(topology), Ok(target)) = (&self.topology, self.target(view, node)) else { return };
        let (peers, timeout) = (topology.peers.clone(), topology.timeout);
        let msg = messages::Replicate {
            records: records.iter().map(|(k, r)| (k.clone(), WireRecord::new(r))).collect(),
        };
        self.metrics.read_repairs.inc_by(records.len() as u64);
        tokio::spawn(async move {
            if let Err(e) = peers.call(&target, &msg, timeout).await {
                tracing::debug!(peer = %target.name, error = %e, "read repair failed");
            }
        });
    }

    /// `cluster.read_quorum = "one"`: this node's record when it owns the key and has one;
    /// else the primary's; when that has nothing (or fails), the newest of the others'.
    async fn read_one(
        &self,
        view: &View,
        key: &[u8],
        deadline: Instant,
    ) -> Result<Option<Record>, DataError> {
        let owners = self.owners(view, key);
        let here = owners.contains(&self.node);
        if here {
            let local = self.local.store.get(key)?;
            if local.is_some() || owners.len() == 1 {
                return Ok(local);
            }
        }
        let keys = vec![Bytes::copy_from_slice(key)];
        let mut others = owners.iter().copied().filter(|&n| n != self.node);
        let mut answered = here;
        let mut errors = Vec::new();
        // Not an owner: ask the primary alone first (usually it has the record).
        if !here && let Some(primary) = others.next() {
            match self.read_from(view, primary, &keys, half_of(deadline)).await {
                Ok(Some(record)) => return Ok(Some(record)),
                Ok(None) => answered = true,
                Err(e) => errors.push(e.to_string()),
            }
        }
        let rest: Vec<NodeId> = others.collect();
        let answers = join_all(rest.iter().map(|&n| self.read_from(view, n, &keys, deadline))).await;
        let mut best: Option<Record> = None;
        for answer in answers {
            match answer {
                Ok(found) => {
                    answered = true;
                    if let Some(r) = found
                        && r.wins_over(best.as_ref())
                    {
                        best = Some(r);
                    }
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        if !answered {
            return Err(DataError::Unavailable(format!(
                "no owner of the key answered: {}",
                errors.join("; ")
            )));
        }
        if here && let Some(record) = &best {
            self.local.apply(&[(Bytes::copy_from_slice(key), record.clone())]).await?;
        }
        Ok(best)
    }

    async fn read_from(
        &self,
        view: &View,
        node: NodeId,
        keys: &[Bytes],
        deadline: Instant,
    ) -> Result<Option<Record>, DataError> {
        let target = self.target(view, node)?;
        self.metrics.forwarded.with_label_values(&["read"]).inc();
        let msg = messages::Read { keys: keys.to_vec() };
        let answer = self.peers()?.call(&target, &msg, remaining(deadline)).await.map_err(unavailable)?;
        match answer.into_iter().next().flatten() {
            None => Ok(None),
            Some(wire) => Ok(Some(decode(&wire)?)),
        }
    }

    /// The live value of `key` at `now_ms` (GET, MGET, STRLEN, GETRANGE).
    pub async fn get_value(&self, key: &[u8], now_ms: u64) -> Result<Option<Bytes>, DataError> {
        if !self.is_clustered() {
            return Ok(self.local.store.get_value(key, now_ms)?);
        }
        Ok(self.get(key).await?.and_then(|r| r.live_value(now_ms).cloned()))
    }

    // ---- writes ----

    /// Atomically reads `keys`, lets `decide` choose writes (stamping new records with
    /// [`Stamp`]), applies them and waits until the write quorum has them on disk.
    /// Returns the number of records written.
    ///
    /// Keys whose partitions have different primaries are written by each primary on its
    /// own: such a multi-key command is not atomic across them.
    pub async fn update<F>(&self, keys: &[&[u8]], mut decide: F) -> Result<usize, DataError>
    where
        F: FnMut(&[Option<Record>], &Stamp<'_>) -> Vec<Write>,
    {
        let view = self.view();
        let primaries: Vec<NodeId> =
            keys.iter().map(|k| self.owners(&view, k).first().copied().unwrap_or(self.node)).collect();
        let deadline = Instant::now() + self.timeout();
        // Decide on the acknowledged state: read every key from a quorum of its owners
        // (just this node when it is the only one needed), whatever cluster.read_quorum says.
        let need = self.read_required(&view);
        self.check_reachable(&view, need.max(self.required(&view)), "write")?;
        let merged = join_all(keys.iter().map(|k| self.read_merged(&view, k, need, deadline))).await;
        let merged: Vec<Merged> = merged.into_iter().collect::<Result<_, _>>()?;
        if primaries.iter().all(|&p| p == self.node) {
            // The reads repaired this node's copies: decide and write in one local step.
            let written = self.local.update(keys, |current, stamp| decide(current, stamp)).await?;
            let n = written.len();
            self.replicate_as_primary(&view, written, self.required(&view)).await?;
            return Ok(n);
        }
        let owned: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
        let mut primary_current: Vec<bool> = merged.iter().map(|m| m.primary_current).collect();
        let mut current: Vec<Option<Record>> = merged.into_iter().map(|m| m.record).collect();
        for attempt in 1u32.. {
            let writes = decide(&current, &self.local.stamp());
            let ops: Vec<Op> = owned
                .iter()
                .zip(&current)
                .zip(&writes)
                .zip(&primary_current)
                .map(|(((key, cur), write), &primary_has_it)| Op {
                    key: key.clone(),
                    expect: Some(cur.as_ref().map(|r| r.hlc)),
                    change: change_of(write),
                    seen: if primary_has_it { None } else { cur.as_ref().map(WireRecord::new) },
                })
                .collect();
            if ops.iter().all(|op| op.change == Change::Keep && op.seen.is_none()) {
                return Ok(0);
            }
            match self.write_ops(&view, ops, &primaries, deadline).await? {
                Ok(written) => return Ok(written),
                Err(conflict) => {
                    if Instant::now() >= deadline {
                        return Err(DataError::Unavailable(format!(
                            "the keys kept changing under this write; gave up after {attempt} attempts"
                        )));
                    }
                    // The primary sent what it holds now (it kept what it was sent): decide
                    // again on that.
                    for (i, record) in conflict {
                        current[i] = record;
                        primary_current[i] = true;
                    }
                    let pause = MAX_CONFLICT_BACKOFF.min(Duration::from_micros(100) * attempt);
                    tokio::time::sleep(pause.mul_f64(rand::random::<f64>())).await;
                }
            }
        }
        unreachable!("the attempts never run out")
    }

    /// Writes `value` whatever the key holds now (SET without options).
    pub async fn put(&self, key: &[u8], value: Bytes, expires_at_ms: Option<u64>) -> Result<(), DataError> {
        let view = self.view();
        self.check_reachable(&view, self.required(&view), "write")?;
        let primary = self.owners(&view, key).first().copied().unwrap_or(self.node);
        if primary == self.node {
            let written = self.local.put(key, value, expires_at_ms).await?;
            return self.replicate_as_primary(&view, vec![written], self.required(&view)).await;
        }
        let op = Op {
            key: Bytes::copy_from_slice(key),
            expect: None,
            change: Change::Put { value, expires_at_ms },
            seen: None,
        };
        let deadline = Instant::now() + self.timeout();
        match self.write_ops(&view, vec![op], &[primary], deadline).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(DataError::Unavailable("unexpected conflict on an unconditional write".into())),
        }
    }

    /// Acknowledgements a write needs under the current placement.
    fn required(&self, view: &View) -> usize {
        view.quorums.write
    }

    /// Fails at once when placement gives a partition fewer owners than `need` (this node
    /// reaches too few of the nodes it knows): nothing is applied anywhere.
    fn check_reachable(&self, view: &View, need: usize, what: &str) -> Result<(), DataError> {
        let width = view.placement.owners_per_partition();
        if width >= need {
            return Ok(());
        }
        Err(DataError::Unavailable(format!(
            "this node reaches {} of the {} nodes of its cluster; a {what} needs {need} owners \
             (cluster.replicas, cluster.write_quorum) and only {width} can be placed",
            view.placement.nodes().len(),
            view.known,
        )))
    }

    /// Sends each group of ops to its primary. `Ok(Err(current))`: a conflict; `current`
    /// is what the primary holds now for the ops of its group, by op index.
    async fn write_ops(
        &self,
        view: &View,
        ops: Vec<Op>,
        primaries: &[NodeId],
        deadline: Instant,
    ) -> Result<Result<usize, Conflict>, DataError> {
        let required = self.required(view);
        let mut total = 0;
        let mut ops: Vec<Option<Op>> = ops.into_iter().map(Some).collect();
        for (primary, indexes) in group(primaries) {
            let group_ops: Vec<Op> = indexes.iter().filter_map(|&i| ops[i].take()).collect();
            if group_ops.iter().all(|op| op.change == Change::Keep && op.seen.is_none()) {
                continue;
            }
            if primary == self.node {
                match self.local.execute(&group_ops).await? {
                    Executed::Conflict(current) => {
                        return Ok(Err(indexes.into_iter().zip(current).collect()));
                    }
                    Executed::Written(written) => {
                        total += written.len();
                        self.replicate_as_primary(view, written, required).await?;
                    }
                }
                continue;
            }
            // The primary copies the records to every other owner, this node included when
            // it is one (a coordinator that gave up waiting must still get its copy).
            let msg = messages::Write {
                quorum: required as u32,
                budget_ms: (remaining(deadline).as_millis() * 3 / 4).min(u128::from(u32::MAX)) as u32,
                ops: group_ops,
            };
            let target = self.target(view, primary)?;
            self.metrics.forwarded.with_label_values(&["write"]).inc();
            let outcome = loop {
                match self.peers()?.call(&target, &msg, remaining(deadline)).await {
                    // A primary that has just joined (or come back) and does not reach its
                    // cluster yet applied nothing: it usually does within a verification
                    // round, so the write waits for it rather than failing.
                    Err(RpcError::Refused { refusal: Refusal::NotJoined(why), .. })
                        if remaining(deadline) > NOT_JOINED_PAUSE * 2 =>
                    {
                        tracing::debug!(primary = %target.name, %why, "primary not joined yet; trying again");
                        tokio::time::sleep(NOT_JOINED_PAUSE).await;
                    }
                    result => break result,
                }
            }
            .map_err(|e| match e {
                RpcError::Timeout { .. } | RpcError::Transport { .. } => {
                    DataError::Unavailable(format!("{e}; the write may or may not have been applied"))
                }
                e => unavailable(e),
            })?;
            match outcome {
                WriteOutcome::Conflict { current } => {
                    let current: Vec<Option<Record>> = current
                        .iter()
                        .map(|w| w.as_ref().map(decode).transpose())
                        .collect::<Result<_, _>>()?;
                    return Ok(Err(indexes.into_iter().zip(current).collect()));
                }
                WriteOutcome::Written { records, acks } => {
                    let records: Vec<(Bytes, Record)> = records
                        .iter()
                        .map(|(k, w)| Ok((k.clone(), decode(w)?)))
                        .collect::<Result<_, DataError>>()?;
                    total += records.len();
                    let acks = acks as usize;
                    if acks < required {
                        return Err(quorum_missed(acks, required));
                    }
                }
            }
        }
        Ok(Ok(total))
    }

    /// As primary: copies `written` to the other owners of their partitions and waits
    /// until `required` owners, this one included, have each record. Copies still in
    /// flight then complete in the background.
    async fn replicate_as_primary(
        &self,
        view: &View,
        written: Vec<(Bytes, Record)>,
        required: usize,
    ) -> Result<(), DataError> {
        let acks = self.replicate(view, written, required, self.timeout()).await?;
        if acks < required {
            return Err(quorum_missed(acks, required));
        }
        Ok(())
    }

    /// Returns the fewest owners that have any one record (this node included).
    async fn replicate(
        &self,
        view: &View,
        written: Vec<(Bytes, Record)>,
        required: usize,
        wait: Duration,
    ) -> Result<usize, DataError> {
        if written.is_empty() {
            return Ok(required.max(1));
        }
        // This node's copy is the only one when it is the only owner: one ack, whatever
        // the quorum asks for.
        let Some(topology) = self.topology.as_ref().filter(|_| view.placement.owners_per_partition() > 1)
        else {
            return Ok(1);
        };
        // Which records go to which node, and which partitions each node answers for.
        #[derive(Default)]
        struct Copies {
            records: Vec<(Bytes, WireRecord)>,
            /// The partitions of those records: an answer counts as an ack for each.
            partitions: Vec<Partition>,
        }
        let mut per_node: BTreeMap<NodeId, Copies> = BTreeMap::new();
        let mut partitions: BTreeMap<Partition, usize> = BTreeMap::new();
        for (key, record) in &written {
            let p = partition_of(key, self.partitions());
            partitions.insert(p, 1);
            for &owner in view.placement.owners(p) {
                if owner != self.node {
                    let copies = per_node.entry(owner).or_default();
                    copies.records.push((key.clone(), WireRecord::new(record)));
                    copies.partitions.push(p);
                }
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut outstanding = 0;
        for (node, Copies { records, partitions: parts }) in per_node {
            let Ok(target) = self.target(view, node) else { continue };
            let peers = topology.peers.clone();
            let (tx, timeout) = (tx.clone(), topology.timeout);
            let sent = records.len() as u64;
            self.metrics.replicated_records.with_label_values(&["sent"]).inc_by(sent);
            outstanding += 1;
            let (hints, dropped_hints) = (self.hints.clone(), self.metrics.hints_dropped.clone());
            tokio::spawn(async move {
                let msg = messages::Replicate { records };
                let result = peers.call(&target, &msg, timeout).await;
                if let Err(e) = &result {
                    tracing::debug!(peer = %target.name, error = %e, "replica copy failed; kept as a hint");
                    let dropped = hints.keep(target.id, msg.records);
                    if dropped > 0 {
                        dropped_hints.inc_by(dropped as u64);
                        tracing::warn!(
                            dropped,
                            "hint budget (cluster.max_hint_bytes) full: oldest hints dropped"
                        );
                    }
                }
                let _ = tx.send((parts, result.is_ok()));
            });
        }
        drop(tx);
        let quorum_met =
            |partitions: &BTreeMap<Partition, usize>| partitions.values().all(|&n| n >= required);
        let deadline = tokio::time::Instant::now() + wait;
        while outstanding > 0 && !quorum_met(&partitions) {
            let Ok(Some((parts, ok))) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
            outstanding -= 1;
            if ok {
                for p in parts {
                    *partitions.entry(p).or_default() += 1;
                }
            }
        }
        let acks = partitions.values().copied().min().unwrap_or(1);
        let outcome = if acks >= required { "quorum_met" } else { "quorum_missed" };
        self.metrics.replication.with_label_values(&[outcome]).inc();
        Ok(acks)
    }

    // ---- scans ----

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

fn change_of(write: &Write) -> Change {
    match write {
        Write::Keep => Change::Keep,
        Write::Put(Record { value: Some(value), expires_at_ms, .. }) => {
            Change::Put { value: value.clone(), expires_at_ms: *expires_at_ms }
        }
        Write::Put(Record { value: None, .. }) => Change::Delete,
    }
}

/// What a primary holds for the keys of a conflicting write: (key index, record).
type Conflict = Vec<(usize, Option<Record>)>;

/// Indexes grouped by node, in node order.
fn group(nodes: &[NodeId]) -> BTreeMap<NodeId, Vec<usize>> {
    let mut groups: BTreeMap<NodeId, Vec<usize>> = BTreeMap::new();
    for (i, &n) in nodes.iter().enumerate() {
        groups.entry(n).or_default().push(i);
    }
    groups
}

fn decode(wire: &WireRecord) -> Result<Record, DataError> {
    wire.decode().map_err(|e| DataError::Unavailable(format!("a peer sent an unreadable record: {e}")))
}

fn unavailable(e: RpcError) -> DataError {
    DataError::Unavailable(e.to_string())
}

fn quorum_missed(acks: usize, required: usize) -> DataError {
    DataError::Unavailable(format!(
        "write reached {acks} of the {required} owners it needs (cluster.write_quorum) in time; \
         it is kept where it was applied and may still become visible"
    ))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Halfway from now to `deadline`: the budget of a first attempt that leaves time for a
/// second.
fn half_of(deadline: Instant) -> Instant {
    Instant::now() + remaining(deadline) / 2
}
