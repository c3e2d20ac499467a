//! The roster: the data nodes this node knows its cluster to have, kept in the data
//! directory (`members.json`) so that a restarted node knows how large its cluster is and
//! where to find it.
//!
//! Two rules depend on it:
//!
//! - **Quorums never shrink to what one node sees.** Write and read quorums are counted
//!   against the replicas the known cluster can hold (`min(replicas, known nodes)`), not
//!   against the nodes this node happens to reach. A node that restarts alone, resumes
//!   from a pause or is cut off still needs the same number of real owners to
//!   acknowledge a write, so it answers `-CLUSTERDOWN` instead of acknowledging what
//!   only it holds.
//! - **A restarted node finds its cluster by itself.** Its gossip layer announces it to
//!   the remembered addresses (never feeding them to foca as alive members, which could
//!   resurrect dead ones), with or without `join`.
//!
//! A node leaves the roster when it leaves the cluster on purpose (SIGTERM), or after it
//! has been missing for `cluster.forget_after` while this process ran (a host lost for
//! good). Time spent stopped does not count: a node restarted after a week still expects
//! every member it knew.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::membership::members::DataNode;

/// The file's format version.
const VERSION: u32 = 1;

/// Why the roster could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("{path}: cannot read the remembered members: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path}: not a member list this version understands ({reason}); move it away to start \
         without the remembered members (the node then rejoins through `join` only)"
    )]
    Format { path: PathBuf, reason: String },
    #[error("{path}: cannot write the remembered members: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// One remembered data node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    pub id: u64,
    pub name: String,
    pub gossip_addr: SocketAddr,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    members: Vec<Known>,
}

/// The remembered members and, for those not placed now, since when (this process's
/// clock) they have been missing.
#[derive(Debug)]
pub struct Roster {
    path: Option<PathBuf>,
    members: BTreeMap<u64, Known>,
    missing_since: BTreeMap<u64, Instant>,
    forget_after: Duration,
}

impl Roster {
    /// A roster kept nowhere (tests, a node without a data directory of its own).
    pub fn in_memory(forget_after: Duration) -> Self {
        Roster { path: None, members: BTreeMap::new(), missing_since: BTreeMap::new(), forget_after }
    }

    /// Loads `path`; a missing file is an empty roster (a new node).
    pub fn load(path: &Path, forget_after: Duration) -> Result<Self, RosterError> {
        let mut roster = Roster { path: Some(path.to_path_buf()), ..Roster::in_memory(forget_after) };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(roster),
            Err(source) => return Err(RosterError::Read { path: path.to_path_buf(), source }),
        };
        let format = |reason: String| RosterError::Format { path: path.to_path_buf(), reason };
        let file: File = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        if file.version != VERSION {
            return Err(format(format!("version {}, expected {VERSION}", file.version)));
        }
        roster.members = file.members.into_iter().map(|k| (k.id, k)).collect();
        Ok(roster)
    }

    /// How many data nodes the cluster is known to have, this one included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.members.keys().copied()
    }

    /// Gossip addresses to announce this node to, its own left out.
    pub fn seeds(&self, own_id: u64) -> Vec<SocketAddr> {
        let mut seeds: Vec<SocketAddr> =
            self.members.values().filter(|k| k.id != own_id).map(|k| k.gossip_addr).collect();
        seeds.sort_unstable();
        seeds.dedup();
        seeds
    }

    /// Takes in what placement uses now (`placed`) and who left on purpose (`departed`):
    /// placed nodes are remembered (at their current address), departed ones forgotten,
    /// and those missing for longer than `forget_after` too. Returns whether anything
    /// changed that [`Roster::save`] should write.
    pub fn observe(&mut self, now: Instant, placed: &[DataNode], departed: &[u64]) -> bool {
        let mut changed = false;
        for node in placed {
            let known = Known { id: node.id, name: node.name.clone(), gossip_addr: node.gossip_addr };
            if self.members.get(&node.id) != Some(&known) {
                self.members.insert(node.id, known);
                changed = true;
            }
            self.missing_since.remove(&node.id);
        }
        for id in departed {
            if !placed.iter().any(|n| n.id == *id) && self.members.remove(id).is_some() {
                self.missing_since.remove(id);
                changed = true;
            }
        }
        let missing: Vec<u64> =
            self.members.keys().copied().filter(|id| !placed.iter().any(|n| n.id == *id)).collect();
        for id in missing {
            let since = *self.missing_since.entry(id).or_insert(now);
            if now.saturating_duration_since(since) >= self.forget_after {
                self.members.remove(&id);
                self.missing_since.remove(&id);
                changed = true;
            }
        }
        self.missing_since.retain(|id, _| self.members.contains_key(id));
        changed
    }

    /// Writes the roster to its file (write, fsync, rename).
    pub fn save(&self) -> Result<(), RosterError> {
        let Some(path) = &self.path else { return Ok(()) };
        let file = File { version: VERSION, members: self.members.values().cloned().collect() };
        let text = serde_json::to_string_pretty(&file).expect("the roster serialises");
        let write = || -> io::Result<()> {
            let tmp = path.with_extension("json.tmp");
            {
                let mut f = std::fs::File::create(&tmp)?;
                io::Write::write_all(&mut f, text.as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| RosterError::Write { path: path.clone(), source })
    }
}

/// The quorums of one placement, counted against the cluster this node knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorums {
    /// Owners a partition should have: `min(replicas, known nodes)`.
    pub replicas: usize,
    /// Owners that must have a write before it is acknowledged.
    pub write: usize,
    /// Owners a quorum read must hear from, so that it overlaps every write quorum.
    pub read: usize,
}

/// The quorums for `replicas` configured copies in a cluster known to have `known` data
/// nodes (at least one: this node). They depend on what is known, not on what is
/// reachable: a partition whose reachable owners are fewer than `write` cannot take
/// writes.
pub fn quorums(replicas: usize, known: usize, quorum: crate::placement::WriteQuorum) -> Quorums {
    let replicas = replicas.min(known).max(1);
    let write = quorum.required(replicas);
    Quorums { replicas, write, read: (replicas + 1).saturating_sub(write).max(1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::WriteQuorum;

    fn node(id: u64) -> DataNode {
        DataNode {
            id,
            rpc_addr: SocketAddr::from(([127, 0, 0, 1], 8000 + id as u16)),
            name: format!("n{id}"),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
        }
    }

    #[test]
    fn quorums_count_the_known_cluster_not_the_reachable_part() {
        let majority = WriteQuorum::Majority;
        // A lone node that knows of five still needs two owners for a write.
        assert_eq!(quorums(3, 5, majority), Quorums { replicas: 3, write: 2, read: 2 });
        assert_eq!(quorums(3, 1, majority), Quorums { replicas: 1, write: 1, read: 1 });
        assert_eq!(quorums(3, 2, majority), Quorums { replicas: 2, write: 2, read: 1 });
        assert_eq!(quorums(5, 9, majority), Quorums { replicas: 5, write: 3, read: 3 });
        assert_eq!(quorums(3, 4, WriteQuorum::All), Quorums { replicas: 3, write: 3, read: 1 });
        assert_eq!(quorums(3, 4, WriteQuorum::One), Quorums { replicas: 3, write: 1, read: 3 });
    }

    proptest::proptest! {
        /// Every read quorum overlaps every write quorum, and neither exceeds the owners.
        #[test]
        fn read_and_write_quorums_overlap(replicas in 1usize..8, known in 1usize..20, w in 0usize..4) {
            let quorum = match w {
                0 => WriteQuorum::Majority,
                1 => WriteQuorum::All,
                2 => WriteQuorum::One,
                _ => WriteQuorum::Count(std::num::NonZeroUsize::new(2).unwrap()),
            };
            let q = quorums(replicas, known, quorum);
            proptest::prop_assert!(q.write + q.read > q.replicas);
            proptest::prop_assert!(q.write <= q.replicas && q.read <= q.replicas);
            proptest::prop_assert!(q.write >= 1 && q.read >= 1);
        }
    }

    #[test]
    fn placed_nodes_are_remembered_and_departed_ones_forgotten() {
        let t0 = Instant::now();
        let mut roster = Roster::in_memory(Duration::from_secs(60));
        assert!(roster.observe(t0, &[node(1), node(2), node(3)], &[]));
        assert_eq!(roster.len(), 3);
        assert!(!roster.observe(t0, &[node(1), node(2), node(3)], &[]), "nothing new");
        // Node 3 crashed: still expected.
        assert!(!roster.observe(t0 + Duration::from_secs(59), &[node(1), node(2)], &[]));
        assert_eq!(roster.len(), 3);
        // Node 2 left on purpose: no longer expected.
        assert!(roster.observe(t0 + Duration::from_secs(59), &[node(1)], &[2]));
        assert_eq!(roster.ids().collect::<Vec<_>>(), [1, 3]);
        // Node 3, first seen missing at 59 s, is forgotten once missing for forget_after.
        assert!(!roster.observe(t0 + Duration::from_secs(118), &[node(1)], &[]));
        assert!(roster.observe(t0 + Duration::from_secs(119), &[node(1)], &[]));
        assert_eq!(roster.ids().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn a_node_back_before_forget_after_is_kept_and_its_clock_starts_again() {
        let t0 = Instant::now();
        let mut roster = Roster::in_memory(Duration::from_secs(60));
        roster.observe(t0, &[node(1), node(2)], &[]);
        roster.observe(t0 + Duration::from_secs(1), &[node(1)], &[]);
        roster.observe(t0 + Duration::from_secs(50), &[node(1), node(2)], &[]);
        roster.observe(t0 + Duration::from_secs(55), &[node(1)], &[]);
        assert!(!roster.observe(t0 + Duration::from_secs(100), &[node(1)], &[]));
        assert_eq!(roster.len(), 2, "missing 45s of the 60s, not 99s");
    }

    #[test]
    fn a_moved_node_is_remembered_at_its_new_address() {
        let mut roster = Roster::in_memory(Duration::from_secs(60));
        roster.observe(Instant::now(), &[node(1), node(2)], &[]);
        let mut moved = node(2);
        moved.gossip_addr = SocketAddr::from(([127, 0, 0, 2], 7002));
        assert!(roster.observe(Instant::now(), &[node(1), moved.clone()], &[]));
        assert_eq!(roster.seeds(1), [moved.gossip_addr]);
    }

    #[test]
    fn the_file_survives_a_restart_and_a_bad_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.json");
        let mut roster = Roster::load(&path, Duration::from_secs(60)).unwrap();
        assert!(roster.is_empty(), "no file: a new node");
        roster.observe(Instant::now(), &[node(1), node(2), node(3)], &[]);
        roster.save().unwrap();
        let again = Roster::load(&path, Duration::from_secs(60)).unwrap();
        assert_eq!(again.len(), 3);
        assert_eq!(again.seeds(2), [node(1).gossip_addr, node(3).gossip_addr]);

        std::fs::write(&path, "{\"version\": 9, \"members\": []}").unwrap();
        let e = Roster::load(&path, Duration::from_secs(60)).unwrap_err().to_string();
        assert!(e.contains("members.json") && e.contains("version 9"), "{e}");
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(Roster::load(&path, Duration::from_secs(60)), Err(RosterError::Format { .. })));
    }
}
