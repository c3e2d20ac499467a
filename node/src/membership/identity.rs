//! Who a member is on the gossip wire: the foca [`Identity`] of this node and its peers.
//!
//! An identity carries what every member needs to know about another without asking it:
//! its node id, the gossip address peers reach it on, when this process started (with a
//! renewal counter), and small metadata (name, datacenter, role, version, client and RPC addresses).
//! It is sent in every gossip message, so it stays small: about 60 bytes plus the name and
//! datacenter (at most about 400 bytes with the longest names configuration accepts), of a
//! 1363-byte packet.
//!
//! Two identities with the same gossip address are the same member seen at two different
//! times (a restart, or a renewal after being declared down): the newer one wins, so a
//! restarted node is never shadowed by its stale previous self.

use std::net::SocketAddr;

use foca::Identity;
use serde::{Deserialize, Serialize};

/// What kind of process a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A data node: holds partitions and serves clients.
    Node,
    /// A connector between datacenters.
    Connector,
}

impl Role {
    /// The name shown by the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Connector => "connector",
        }
    }
}

/// Facts about a member that do not change while its process runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The node's name, unique in its datacenter.
    pub name: String,
    /// The datacenter it belongs to.
    pub datacenter: String,
    /// Node or connector.
    pub role: Role,
    /// The build's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Where it serves RESP clients, if over TCP.
    pub client_addr: Option<SocketAddr>,
    /// Where its peer QUIC endpoint listens, if it has one.
    pub rpc_addr: Option<SocketAddr>,
}

/// A member's identity in foca.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's persistent id (kept in its data directory).
    pub id: u64,
    /// The gossip address peers send to: foca's `Identity::Addr`.
    pub addr: SocketAddr,
    /// When this process started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How many times this process renewed its identity after being declared down.
    pub renewals: u32,
    /// Name, datacenter, role, version, client address.
    pub meta: Metadata,
}

impl NodeIdentity {
    /// Which of two identities for the same address is newer: the later process, then the
    /// later renewal. The id breaks exact ties so that both sides agree on a winner.
    fn generation(&self) -> (u64, u32, u64) {
        (self.started_ms, self.renewals, self.id)
    }

    /// The encoded size of a membership update about this identity, as sent in packets.
    pub fn encoded_len(&self) -> usize {
        use foca::Codec;
        let mut buf = Vec::new();
        match foca::PostcardCodec.encode_member(&foca::Member::alive(self.clone()), &mut buf) {
            Ok(()) => buf.len(),
            Err(_) => usize::MAX,
        }
    }
}

impl Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        let mut next = self.clone();
        match self.renewals.checked_add(1) {
            Some(renewals) => next.renewals = renewals,
            // Four billion renewals in one process: restart the count from a later start.
            None => {
                next.renewals = 0;
                next.started_ms = self.started_ms + 1;
            }
        }
        Some(next)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation() > adversary.generation()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn identity(id: u64, port: u16, started_ms: u64) -> NodeIdentity {
        NodeIdentity {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            started_ms,
            renewals: 0,
            meta: Metadata {
                name: format!("node-{id}"),
                datacenter: "dc1".into(),
                role: Role::Node,
                version: "0.1.0".into(),
                client_addr: Some(SocketAddr::from(([127, 0, 0, 1], 6379))),
                rpc_addr: Some(SocketAddr::from(([127, 0, 0, 1], 7947))),
            },
        }
    }

    #[test]
    fn renewal_wins_over_the_identity_it_renews() {
        let old = identity(1, 7946, 1_000);
        let renewed = old.renew().unwrap();
        assert_eq!(renewed.addr(), old.addr());
        assert_eq!((renewed.id, renewed.renewals), (1, 1));
        assert!(renewed.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&renewed));
        let twice = renewed.renew().unwrap();
        assert!(twice.win_addr_conflict(&renewed));
    }

    #[test]
    fn a_restarted_process_wins_over_its_previous_self() {
        let before = identity(1, 7946, 1_000).renew().unwrap().renew().unwrap();
        let restarted = identity(1, 7946, 2_000);
        assert!(restarted.win_addr_conflict(&before));
        assert!(!before.win_addr_conflict(&restarted));
        // Another node reusing the address later wins too, and exact ties have one winner.
        let other = identity(2, 7946, 2_000);
        assert!(other.win_addr_conflict(&restarted) != restarted.win_addr_conflict(&other));
    }

    #[test]
    fn the_last_renewal_moves_the_start_time() {
        let mut id = identity(1, 7946, 1_000);
        id.renewals = u32::MAX;
        let next = id.renew().unwrap();
        assert_eq!((next.started_ms, next.renewals), (1_001, 0));
        assert!(next.win_addr_conflict(&id));
    }

    #[test]
    fn an_identity_is_small() {
        let id = identity(u64::MAX, 65535, u64::MAX);
        assert!(id.encoded_len() < 110, "{}", id.encoded_len());
    }
}
