//! The placement view: which nodes own which partitions, as this node sees it.
//!
//! Membership and the set of peers verified over mutual TLS change in the background; the
//! placement watcher turns each change into a new [`View`] (queuing the partitions this
//! node gained for rebalance and marking the ones it lost as strays), and the request
//! paths only ever read the current snapshot. Which partitions a change makes this node
//! copy, and from whom, is decided by [`gained_partitions`], a pure function.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::rebalance::Task;
use super::{Cluster, DataError, roster};
use crate::peer::Target;
use crate::peer::messages;
use crate::placement::{NodeId, Placement, partition_of};

/// One placement snapshot, rebuilt when membership changes.
pub(super) struct View {
    /// (membership generation, verified-peers generation) it was built from.
    pub(super) generation: (u64, u64),
    pub(super) placement: Placement,
    pub(super) targets: HashMap<u64, Target>,
    /// This node's identity renewals (times it rejoined after being declared down).
    pub(super) renewals: u32,
    /// Data nodes the cluster is known to have (the roster, at least the placed ones).
    pub(super) known: usize,
    /// Quorums counted against the known cluster, not against the placed nodes.
    pub(super) quorums: roster::Quorums,
}

/// Peers proven to be who membership says they are: a Ping over mutual TLS reached them
/// at their RPC address and answered with their node id. Only verified peers are given
/// partitions, so a member that gossips with the right key but holds a certificate this
/// cluster does not trust (or runs no RPC endpoint) never owns data.
#[derive(Default)]
pub(super) struct Verified {
    pub(super) peers: std::sync::Mutex<std::collections::HashSet<(u64, std::net::SocketAddr)>>,
    pub(super) generation: std::sync::atomic::AtomicU64,
    /// Wakes the placement watcher.
    pub(super) changed: tokio::sync::Notify,
}

impl Verified {
    /// Placement must be rebuilt: the verified set (or the known cluster) changed.
    pub(super) fn bump(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_one();
    }
}

/// How often unverified members are tried again.
const VERIFY_EVERY: Duration = Duration::from_millis(250);
/// How often a member that keeps failing verification is logged.
const VERIFY_LOG_EVERY: Duration = Duration::from_secs(30);

impl Cluster {
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
    pub(super) fn refresh(&self) -> Arc<View> {
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
        let gained = gained_partitions(
            self.node,
            &current.placement,
            &view.placement,
            view.renewals > current.renewals,
            &view.targets,
        );
        self.rebalance_status.expect(gained.len());
        self.arriving.retain(|p| view.placement.is_owner(p, self.node));
        self.arriving.start(gained.iter().map(|t| (t.partition, t.sources.clone())));
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view.clone();
        self.near_placement_changed(&current.placement, &view.placement);
        self.home_placement_changed(&current.placement, &view.placement);
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

    /// Hands partitions to copy to the rebalance worker.
    fn queue(&self, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let queued = tasks.len();
        let replaced = self.rebalance_tasks.push(tasks);
        // Those were counted when first queued: the worker takes each partition once.
        self.rebalance_status.coalesced(replaced);
        tracing::info!(partitions = queued, replaced, "partitions to copy from their owners queued");
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

    /// Fails at once when placement gives a partition fewer owners than `need` (this node
    /// reaches too few of the nodes it knows): nothing is applied anywhere.
    pub(super) fn check_reachable(&self, view: &View, need: usize, what: &str) -> Result<(), DataError> {
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
}

/// Every partition `node` owns in `next` but not in `previous`, for the rebalance worker,
/// with where to copy it from: its owners in `previous` that are still here, or, when
/// `node` was alone before (it just started, or lost every peer) or was `renewed` (it
/// rejoined after the others declared it down: they placed its partitions elsewhere and
/// kept no hints for it), every partition it owns, from the partition's other owners
/// now, since it may have missed their writes. Only sources with a peer address in
/// `targets` are listed; a partition with none is left out.
fn gained_partitions(
    node: NodeId,
    previous: &Placement,
    next: &Placement,
    renewed: bool,
    targets: &HashMap<u64, Target>,
) -> Vec<Task> {
    let was_alone = previous.nodes().len() <= 1 || renewed;
    let mut gained = Vec::new();
    for partition in next.partitions_of(node) {
        let sources: Vec<NodeId> = if was_alone {
            next.owners(partition).to_vec()
        } else if previous.is_owner(partition, node) {
            continue;
        } else {
            previous.owners(partition).to_vec()
        };
        let sources: Vec<NodeId> =
            sources.into_iter().filter(|&n| n != node && targets.contains_key(&n.0)).collect();
        if !sources.is_empty() {
            gained.push(Task { partition, sources });
        }
    }
    gained
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);
    const PARTITIONS: u16 = 64;

    fn placement(replicas: usize, nodes: &[NodeId]) -> Placement {
        Placement::new(PARTITIONS, replicas, nodes.iter().copied())
    }

    fn targets(nodes: &[NodeId]) -> HashMap<u64, Target> {
        nodes
            .iter()
            .map(|n| {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 7000 + n.0 as u16));
                (n.0, Target { id: n.0, name: format!("n{}", n.0), addr })
            })
            .collect()
    }

    #[test]
    fn a_joining_node_copies_what_it_gains_from_the_previous_owners() {
        let (previous, next) = (placement(2, &[A, B]), placement(2, &[A, B, C]));
        let tasks = gained_partitions(C, &previous, &next, false, &targets(&[A, B, C]));
        let owned = next.partitions_of(C);
        assert!(!owned.is_empty());
        assert_eq!(tasks.iter().map(|t| t.partition).collect::<Vec<_>>(), owned);
        for task in &tasks {
            assert_eq!(task.sources, previous.owners(task.partition).to_vec());
        }
    }

    #[test]
    fn partitions_already_owned_are_not_copied() {
        // With two replicas on two nodes, A owned everything: C joining gains A nothing.
        let (previous, next) = (placement(2, &[A, B]), placement(2, &[A, B, C]));
        assert_eq!(gained_partitions(A, &previous, &next, false, &targets(&[A, B, C])), vec![]);
        // C leaves: A gains only the partitions B and C held, copied from B (C is gone).
        let (previous, next) = (placement(2, &[A, B, C]), placement(2, &[A, B]));
        let tasks = gained_partitions(A, &previous, &next, false, &targets(&[A, B]));
        assert!(!tasks.is_empty());
        for task in &tasks {
            assert!(!previous.is_owner(task.partition, A));
            assert_eq!(task.sources, vec![B]);
        }
        let kept = next.partitions_of(A).into_iter().filter(|&p| previous.is_owner(p, A)).count();
        assert_eq!(tasks.len() + kept, next.partitions_of(A).len());
    }

    #[test]
    fn a_node_that_was_alone_copies_everything_it_owns_from_the_other_owners() {
        let (previous, next) = (placement(2, &[A]), placement(2, &[A, B, C]));
        let tasks = gained_partitions(A, &previous, &next, false, &targets(&[A, B, C]));
        assert_eq!(tasks.iter().map(|t| t.partition).collect::<Vec<_>>(), next.partitions_of(A));
        for task in &tasks {
            let others: Vec<NodeId> =
                next.owners(task.partition).iter().copied().filter(|&n| n != A).collect();
            assert_eq!(task.sources, others);
        }
    }

    #[test]
    fn a_renewed_node_copies_everything_it_owns_even_partitions_it_kept() {
        let (previous, next) = (placement(2, &[A, B, C]), placement(2, &[A, B, C]));
        assert_eq!(gained_partitions(A, &previous, &next, false, &targets(&[A, B, C])), vec![]);
        let tasks = gained_partitions(A, &previous, &next, true, &targets(&[A, B, C]));
        assert_eq!(tasks.iter().map(|t| t.partition).collect::<Vec<_>>(), next.partitions_of(A));
        assert!(tasks.iter().all(|t| t.sources.len() == 1 && !t.sources.contains(&A)));
    }

    #[test]
    fn sources_without_a_peer_address_are_left_out() {
        let (previous, next) = (placement(2, &[A]), placement(3, &[A, B, C]));
        // B is placed but has no target: only C is a source, and every partition has it.
        let tasks = gained_partitions(A, &previous, &next, false, &targets(&[A, C]));
        assert_eq!(tasks.len(), next.partitions_of(A).len());
        assert!(tasks.iter().all(|t| t.sources == vec![C]));
        // No source reachable at all: nothing to copy.
        assert_eq!(gained_partitions(A, &previous, &next, false, &targets(&[A])), vec![]);
    }
}
