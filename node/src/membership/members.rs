//! The member table: what the rest of the node (admin API, metrics, later placement)
//! reads about the cluster. The membership task is its only writer; it replaces the
//! table from foca's state after every turn that changed something.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::identity::NodeIdentity;

/// A member's state as shown to operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answers probes.
    Alive,
    /// Missed probes; declared down unless it refutes the suspicion in time.
    Suspect,
    /// Declared down by the cluster: crashed or cut off.
    Down,
    /// Left the cluster on purpose (stopped with SIGTERM), as its left notice told.
    Left,
}

impl MemberState {
    /// Every state, for metrics labels.
    pub const ALL: [MemberState; 4] =
        [MemberState::Alive, MemberState::Suspect, MemberState::Down, MemberState::Left];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

impl From<foca::State> for MemberState {
    fn from(state: foca::State) -> Self {
        match state {
            foca::State::Alive => MemberState::Alive,
            foca::State::Suspect => MemberState::Suspect,
            foca::State::Down => MemberState::Down,
        }
    }
}

/// One member, as `GET /v1/members` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    pub name: String,
    /// The node id in hex, as `/v1/status` shows `node_id`.
    pub id: String,
    pub datacenter: String,
    pub role: &'static str,
    pub state: MemberState,
    pub gossip_addr: SocketAddr,
    pub client_addr: Option<SocketAddr>,
    pub rpc_addr: Option<SocketAddr>,
    pub version: String,
    /// Whether this entry is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}

impl MemberView {
    fn new(identity: &NodeIdentity, state: MemberState, is_self: bool) -> Self {
        MemberView {
            name: identity.meta.name.clone(),
            id: format!("{:016x}", identity.id),
            datacenter: identity.meta.datacenter.clone(),
            role: identity.meta.role.as_str(),
            state,
            gossip_addr: identity.addr,
            client_addr: identity.meta.client_addr,
            rpc_addr: identity.meta.rpc_addr,
            version: identity.meta.version.clone(),
            is_self,
        }
    }
}

/// How many members are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub alive: usize,
    pub suspect: usize,
    pub down: usize,
    pub left: usize,
}

impl Counts {
    /// The count for one state.
    pub fn get(&self, state: MemberState) -> usize {
        match state {
            MemberState::Alive => self.alive,
            MemberState::Suspect => self.suspect,
            MemberState::Down => self.down,
            MemberState::Left => self.left,
        }
    }
}

#[derive(Debug)]
struct Table {
    local: NodeIdentity,
    local_state: MemberState,
    peers: BTreeMap<SocketAddr, (NodeIdentity, MemberState)>,
}

/// A data node that partitions can be placed on: role node, alive or suspect (a suspicion
/// does not move data; only a confirmed failure does), with a peer RPC address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DataNode {
    pub id: u64,
    pub rpc_addr: SocketAddr,
    pub name: String,
    /// Where it gossips: what a restarted node announces itself to.
    pub gossip_addr: SocketAddr,
}

/// The shared table. Readers take a short read lock and copy what they need.
#[derive(Debug)]
pub struct Members {
    table: RwLock<Table>,
    /// Bumped whenever the set of [`DataNode`]s changes, so that readers rebuild their
    /// placement only then (one atomic load per request otherwise).
    generation: AtomicU64,
    /// Tells waiters ([`Members::changed`]) that the generation moved.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Members {
    /// A table that knows only this node.
    pub fn new(local: NodeIdentity) -> Self {
        Members {
            table: RwLock::new(Table { local, local_state: MemberState::Alive, peers: BTreeMap::new() }),
            generation: AtomicU64::new(1),
            changes: tokio::sync::watch::Sender::new(1),
        }
    }

    /// A receiver that sees every change of [`Members::generation`]: the placement watcher
    /// rebuilds placement on it, so requests never do.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Changes whenever [`Members::data_nodes`] or [`Members::departed`] would return
    /// another set, or this node renewed its identity ([`Members::local_renewals`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many times this node renewed its identity because the cluster had declared it
    /// down: each time, it may have missed writes to every partition it owns.
    pub fn local_renewals(&self) -> u32 {
        self.table.read().unwrap_or_else(|e| e.into_inner()).local.renewals
    }

    /// The nodes partitions are placed on, this node included while it is alive, by id.
    pub fn data_nodes(&self) -> Vec<DataNode> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        data_nodes(&table)
    }

    /// Replaces what is known: this node's identity and state and every peer foca knows.
    ///
    /// A node that restarted at another address (a container with a new IP) is known to
    /// foca twice, its old identity down and its new one alive: only the newest process of
    /// each node id is kept, so operators see one entry per node.
    pub fn replace(
        &self,
        local: NodeIdentity,
        local_state: MemberState,
        peers: impl IntoIterator<Item = (NodeIdentity, MemberState)>,
    ) {
        let mut newest: BTreeMap<u64, (NodeIdentity, MemberState)> = BTreeMap::new();
        for (id, state) in peers {
            if id.id == local.id {
                // This node's own previous process, at another address.
                continue;
            }
            let generation = |i: &NodeIdentity| (i.started_ms, i.renewals);
            match newest.get(&id.id) {
                Some((held, _)) if generation(held) >= generation(&id) => {}
                _ => {
                    newest.insert(id.id, (id, state));
                }
            }
        }
        let peers = newest.into_values().map(|(id, state)| (id.addr, (id, state))).collect();
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let before = (data_nodes(&table), departed(&table), table.local.renewals);
        *table = Table { local, local_state, peers };
        if (data_nodes(&table), departed(&table), table.local.renewals) != before {
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            self.changes.send_replace(generation);
        }
    }

    /// Every member, this node first, then peers by gossip address.
    pub fn list(&self) -> Vec<MemberView> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        std::iter::once(MemberView::new(&table.local, table.local_state, true))
            .chain(table.peers.values().map(|(id, state)| MemberView::new(id, *state, false)))
            .collect()
    }

    /// The connectors of this datacenter that are alive or suspect (a suspicion moves no
    /// share; only a confirmed failure does), this process included if it is one, as
    /// (id, name) by id: the twins that share the shipping of its partitions.
    pub fn connectors(&self) -> Vec<(u64, String)> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(u64, String)> = std::iter::once((&table.local, table.local_state))
            .chain(table.peers.values().map(|(id, state)| (id, *state)))
            .filter(|(id, state)| {
                id.meta.role == super::identity::Role::Connector
                    && matches!(state, MemberState::Alive | MemberState::Suspect)
            })
            .map(|(id, _)| (id.id, id.meta.name.clone()))
            .collect();
        out.sort();
        out.dedup_by_key(|c| c.0);
        out
    }

    /// The alive connectors of this datacenter other than this process, with their peer
    /// addresses (a node forwards home-keyspace requests to them), by id.
    pub fn connector_nodes(&self) -> Vec<DataNode> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<DataNode> = table
            .peers
            .values()
            .filter(|(id, state)| {
                id.meta.role == super::identity::Role::Connector && *state == MemberState::Alive
            })
            .filter_map(|(id, _)| {
                Some(DataNode {
                    id: id.id,
                    rpc_addr: id.meta.rpc_addr?,
                    name: id.meta.name.clone(),
                    gossip_addr: id.addr,
                })
            })
            .collect();
        out.sort_by_key(|n| n.id);
        out
    }

    /// Members by state, this node included.
    pub fn counts(&self) -> Counts {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut counts = Counts::default();
        let states = std::iter::once(table.local_state).chain(table.peers.values().map(|(_, s)| *s));
        for state in states {
            match state {
                MemberState::Alive => counts.alive += 1,
                MemberState::Suspect => counts.suspect += 1,
                MemberState::Down => counts.down += 1,
                MemberState::Left => counts.left += 1,
            }
        }
        counts
    }

    /// Ids of the nodes whose newest process left the cluster on purpose (SIGTERM): they
    /// are no longer expected back.
    pub fn departed(&self) -> Vec<u64> {
        departed(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Peers that are alive or suspect: whether this node is part of a cluster.
    pub fn active_peers(&self) -> usize {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.peers.values().filter(|(_, s)| matches!(s, MemberState::Alive | MemberState::Suspect)).count()
    }
}

fn departed(table: &Table) -> Vec<u64> {
    table.peers.values().filter(|(_, s)| *s == MemberState::Left).map(|(id, _)| id.id).collect()
}

fn data_nodes(table: &Table) -> Vec<DataNode> {
    let placeable = |id: &NodeIdentity, state: MemberState| {
        let usable = id.meta.role == super::identity::Role::Node
            && matches!(state, MemberState::Alive | MemberState::Suspect);
        id.meta.rpc_addr.filter(|_| usable).map(|rpc_addr| DataNode {
            id: id.id,
            rpc_addr,
            name: id.meta.name.clone(),
            gossip_addr: id.addr,
        })
    };
    let mut nodes: Vec<DataNode> = std::iter::once((&table.local, table.local_state))
        .chain(table.peers.values().map(|(id, state)| (id, *state)))
        .filter_map(|(id, state)| placeable(id, state))
        .collect();
    nodes.sort();
    nodes.dedup_by_key(|n| n.id);
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::identity::tests::identity;

    #[test]
    fn lists_self_first_and_counts_states() {
        let members = Members::new(identity(1, 7001, 0));
        assert_eq!(members.counts(), Counts { alive: 1, ..Counts::default() });
        assert_eq!(members.active_peers(), 0);
        members.replace(
            identity(1, 7001, 0),
            MemberState::Alive,
            [(identity(3, 7003, 0), MemberState::Down), (identity(2, 7002, 0), MemberState::Suspect)],
        );
        let list = members.list();
        let summary: Vec<_> = list.iter().map(|m| (m.name.as_str(), m.state, m.is_self)).collect();
        assert_eq!(
            summary,
            [
                ("node-1", MemberState::Alive, true),
                ("node-2", MemberState::Suspect, false),
                ("node-3", MemberState::Down, false)
            ]
        );
        assert_eq!(members.counts(), Counts { alive: 1, suspect: 1, down: 1, left: 0 });
        assert_eq!(members.active_peers(), 1);
        // Placement sees the alive and suspect nodes, not the down one.
        let ids: Vec<u64> = members.data_nodes().iter().map(|n| n.id).collect();
        assert_eq!(ids, [1, 2]);
        assert!(members.connectors().is_empty());
        let generation = members.generation();
        members.replace(
            identity(1, 7001, 0),
            MemberState::Alive,
            [(identity(3, 7003, 0), MemberState::Down), (identity(2, 7002, 0), MemberState::Alive)],
        );
        assert_eq!(members.generation(), generation, "suspect -> alive moves nothing");
        members.replace(
            identity(1, 7001, 0),
            MemberState::Alive,
            [(identity(2, 7002, 0), MemberState::Down)],
        );
        assert_ne!(members.generation(), generation);
        assert_eq!(members.data_nodes().len(), 1);
        // Declared down and back with a renewed identity: same nodes, a new generation.
        let (generation, mut renewed) = (members.generation(), identity(1, 7001, 0));
        renewed.renewals = 1;
        members.replace(renewed, MemberState::Alive, [(identity(2, 7002, 0), MemberState::Down)]);
        assert_eq!((members.data_nodes().len(), members.local_renewals()), (1, 1));
        assert_ne!(members.generation(), generation);

        // Node 2 restarted at another address: one entry, the new process.
        let mut moved = identity(2, 7012, 5);
        moved.meta.name = "node-2".into();
        members.replace(
            identity(1, 7001, 0),
            MemberState::Alive,
            [(identity(2, 7002, 0), MemberState::Down), (moved, MemberState::Alive)],
        );
        let list = members.list();
        let entries: Vec<_> = list.iter().map(|m| (m.name.as_str(), m.gossip_addr.port(), m.state)).collect();
        assert_eq!(entries, [("node-1", 7001, MemberState::Alive), ("node-2", 7012, MemberState::Alive)]);
        let json = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(json["id"], "0000000000000001");
        assert_eq!(json["state"], "alive");
        assert_eq!(json["role"], "node");
        assert_eq!(json["gossip_addr"], "127.0.0.1:7001");
        assert_eq!(json["self"], true);
    }

    #[test]
    fn connectors_are_the_live_members_with_the_connector_role() {
        let with_role = |id: u64, port: u16| {
            let mut i = identity(id, port, 0);
            i.meta.role = crate::membership::identity::Role::Connector;
            i
        };
        let members = Members::new(with_role(5, 7005));
        members.replace(
            with_role(5, 7005),
            MemberState::Alive,
            [
                (identity(1, 7001, 0), MemberState::Alive),
                (with_role(3, 7003), MemberState::Suspect),
                (with_role(4, 7004), MemberState::Down),
            ],
        );
        let ids: Vec<u64> = members.connectors().iter().map(|c| c.0).collect();
        assert_eq!(ids, [3, 5]);
        assert_eq!(members.data_nodes().len(), 1, "a connector is never a data node");
    }
}
