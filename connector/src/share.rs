//! Twins: the connectors of one datacenter share the shipping of its partitions by
//! rendezvous hashing over the live connectors in gossip (role `connector`, alive or
//! suspect), each shipping only the partitions it wins. When one is declared down, the
//! others win its partitions and resume them from the cursors kept at the nodes; when it
//! returns, they move back. Only the partitions of the connector that came or went move.
//!
//! Two connectors may disagree for a moment about who is live (gossip is not instant): a
//! partition may then be shipped by both, or by the one that is about to lose it for the
//! rest of its round. Both read from the cursors at the nodes and move them only forward,
//! so that sends duplicates (harmless under last-writer-wins) and never leaves a gap.

use std::sync::Mutex;

use opencluster_node::placement::{NodeId, Placement};
use prometheus::{IntGauge, Registry};
use serde_json::{Value, json};

/// Which of `partitions` the connector `me` ships, given the live `connectors` (`me` counts
/// even when gossip does not list it yet).
pub fn owned(me: u64, connectors: &[u64], partitions: u16) -> Vec<bool> {
    let mut ids: Vec<NodeId> = connectors.iter().map(|&c| NodeId(c)).collect();
    if !connectors.contains(&me) {
        ids.push(NodeId(me));
    }
    let placement = Placement::new(partitions, 1, ids);
    (0..partitions).map(|p| placement.primary(p) == Some(NodeId(me))).collect()
}

/// This connector's share, for status and metrics.
pub struct Share {
    owned: IntGauge,
    live: IntGauge,
    state: Mutex<(usize, Vec<String>)>,
}

impl Share {
    pub fn register(r: &Registry) -> Share {
        let owned = IntGauge::new(
            "opencluster_connector_partitions_owned",
            "Partitions this connector ships (its share among the live connectors of its datacenter)",
        )
        .expect("valid gauge");
        let live = IntGauge::new(
            "opencluster_connector_live_connectors",
            "Connectors of this datacenter alive in gossip, this one included: the twins sharing the partitions",
        )
        .expect("valid gauge");
        r.register(Box::new(owned.clone())).expect("metric names are unique");
        r.register(Box::new(live.clone())).expect("metric names are unique");
        Share { owned, live, state: Mutex::new((0, Vec::new())) }
    }

    /// The share a round worked with: how many partitions, and the live connectors' names.
    pub fn set(&self, owned: usize, connectors: Vec<String>) {
        self.owned.set(owned as i64);
        self.live.set(connectors.len() as i64);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (owned, connectors);
    }

    pub fn status(&self) -> Value {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        json!({ "partitions_owned": s.0, "connectors": s.1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(v: &[bool]) -> usize {
        v.iter().filter(|&&b| b).count()
    }

    #[test]
    fn twins_split_the_partitions_and_a_survivor_takes_all() {
        let (a, b, c) = (0x1111, 0x2222, 0x3333);
        let of_a = owned(a, &[a, b], 1024);
        let of_b = owned(b, &[a, b], 1024);
        // Every partition has exactly one shipper, and the split is about even.
        assert!(of_a.iter().zip(&of_b).all(|(x, y)| x ^ y));
        assert!((400..=624).contains(&count(&of_a)), "{}", count(&of_a));
        // b is gone: a ships everything; a alone, before gossip lists it, too.
        assert_eq!(count(&owned(a, &[a], 1024)), 1024);
        assert_eq!(count(&owned(a, &[], 1024)), 1024);
        // A third one arrives: only partitions moving to it change hands.
        let of_a3 = owned(a, &[a, b, c], 1024);
        assert!(of_a3.iter().zip(&of_a).all(|(now, before)| !now || *before));
        assert!(count(&of_a3) < count(&of_a));
    }

    #[test]
    fn status_shows_the_share() {
        let share = Share::register(&Registry::new());
        share.set(512, vec!["c1".into(), "c2".into()]);
        assert_eq!(share.status(), json!({ "partitions_owned": 512, "connectors": ["c1", "c2"] }));
    }
}
