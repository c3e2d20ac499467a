//! What a node keeps for the connectors of its datacenter: where each remote datacenter
//! stands in this node's change sequences (its cursors), and which keys never leave the
//! datacenter (`keyspaces.local`).
//!
//! A cursor (this node, partition p, remote R) is a position in this node's own sequence of
//! p, so it is kept here, beside the sequence it indexes, and not in a connector: any
//! connector of the datacenter (a twin taking over, or a new one on an empty volume)
//! resumes from it. A connector tells the node what the remote acknowledged
//! ([`super::messages::Acknowledge`]); the node keeps the largest position per partition and
//! remote, durably before it answers, in a small file of its data directory
//! (`connector-cursors.json`, versioned) replaced atomically: write, fsync, rename, fsync
//! of the directory. A file rather than the store's own keys keeps the engines (and their
//! change sequences, which record every write) out of it, and costs one small write per
//! acknowledged batch. A cursor that lags only makes a connector send records again, which
//! last-writer-wins makes harmless; one that ran ahead of what the remote acknowledged
//! would lose records, so it only ever moves to a position a connector was told by the
//! remote. A cursor past the sequence's head means the sequence started over (the store
//! was lost while the file stayed): it is dropped, durably, before it is used.
//!
//! The cursors also decide when this datacenter's own tombstones may go
//! ([`UnshippedTombstones`]): a delete reaches another datacenter only as its tombstone, so
//! a tombstone purged before a remote's connector shipped it would leave the key alive
//! there for good. Such a tombstone stays past `store.tombstone_grace` until every remote
//! this node has cursors for is past it, for at most `store.tombstone_hold`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hlc::unix_ms;
use crate::placement::Partition;
use crate::record::Record;
use crate::store::TombstoneHold;
use crate::store::purger::PurgeStatus;

/// The version of the cursor file's format.
pub const CURSORS_V1: u32 = 1;

/// Most remote datacenters a node keeps cursors for (a bound on what connectors may make it
/// store; a cluster has a handful).
pub const MAX_REMOTES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot read the connectors' cursors from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot save the connectors' cursors to {path}: {source}")]
    Save { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// Remote datacenter -> (partition, position) of every cursor past 0.
    remotes: BTreeMap<String, Vec<(Partition, u64)>>,
}

#[derive(Default)]
struct State {
    /// Remote datacenter -> position per partition.
    acked: BTreeMap<String, Vec<u64>>,
    /// Changed since the file was last written.
    dirty: bool,
}

/// The cursors of every remote datacenter at this node, and the local keyspaces.
pub struct Outbound {
    path: PathBuf,
    partitions: Partition,
    local: Vec<Vec<u8>>,
    state: Mutex<State>,
    /// One save at a time; a save covers every change made before it took its snapshot.
    save: tokio::sync::Mutex<()>,
}

impl Outbound {
    /// The cursor file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("connector-cursors.json")
    }

    /// Reads the cursors kept in `dir`, dropping any past `heads` (the store's sequences as
    /// opened: one behind its cursor started over). No file yet is no cursors.
    pub fn load(dir: &Path, heads: &[u64], local: Vec<Vec<u8>>) -> Result<Outbound, OutboundError> {
        let path = Self::path(dir);
        let fail = |reason: String| OutboundError::Load { path: path.clone(), reason };
        let mut state = State::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: File = serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?;
                if file.version != CURSORS_V1 {
                    return Err(fail(format!("format version {} is not {CURSORS_V1}", file.version)));
                }
                for (remote, positions) in file.remotes {
                    let at = state.acked.entry(remote).or_insert_with(|| vec![0; heads.len()]);
                    for (p, position) in positions {
                        match heads.get(p as usize) {
                            Some(&head) if position <= head => at[p as usize] = position,
                            // A partition the store no longer has, or a sequence that
                            // started over: the cursor is dropped.
                            _ => state.dirty = true,
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let outbound = Outbound {
            path,
            partitions: heads.len() as Partition,
            local,
            state: Mutex::new(state),
            save: tokio::sync::Mutex::new(()),
        };
        if outbound.lock().dirty {
            outbound.write_now()?;
        }
        Ok(outbound)
    }

    /// No cursors (the file in `dir` could not be read; the next save replaces it).
    pub fn empty(dir: &Path, partitions: usize, local: Vec<Vec<u8>>) -> Outbound {
        Outbound {
            path: Self::path(dir),
            partitions: partitions as Partition,
            local,
            state: Mutex::new(State::default()),
            save: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` is in a local keyspace: it never leaves this datacenter.
    pub fn is_local(&self, key: &[u8]) -> bool {
        self.local.iter().any(|p| key.starts_with(p))
    }

    /// Moves `remote`'s cursors forward to `positions` (never back) and saves them before
    /// returning.
    pub async fn acknowledge(
        &self,
        remote: &str,
        positions: &[(Partition, u64)],
    ) -> Result<(), OutboundError> {
        if let Some((p, _)) = positions.iter().find(|(p, _)| *p >= self.partitions) {
            return Err(OutboundError::Invalid(format!("no partition {p}")));
        }
        {
            let mut s = self.lock();
            if !s.acked.contains_key(remote) && s.acked.len() >= MAX_REMOTES {
                return Err(OutboundError::Invalid(format!(
                    "cursors of {MAX_REMOTES} remote datacenters are kept already"
                )));
            }
            let partitions = self.partitions as usize;
            let at = s.acked.entry(remote.to_string()).or_insert_with(|| vec![0; partitions]);
            let mut moved = false;
            for &(p, position) in positions {
                if position > at[p as usize] {
                    at[p as usize] = position;
                    moved = true;
                }
            }
            s.dirty |= moved;
        }
        self.flush().await
    }

    /// `remote`'s cursors against `heads` (this node's sequences now): a cursor past its
    /// head is dropped, durably, before it is returned as 0. A remote asked for the first
    /// time is kept from then on, with its cursors at 0: this node's tombstones wait for it.
    pub async fn positions(&self, remote: &str, heads: &[u64]) -> Result<Vec<u64>, OutboundError> {
        let (acked, dropped) = {
            let mut s = self.lock();
            if !s.acked.contains_key(remote) {
                if s.acked.len() >= MAX_REMOTES {
                    return Ok(vec![0; heads.len()]);
                }
                s.acked.insert(remote.to_string(), vec![0; self.partitions as usize]);
                s.dirty = true;
            }
            let at = s.acked.get_mut(remote).expect("inserted above");
            let mut dropped = false;
            for (position, &head) in at.iter_mut().zip(heads) {
                if *position > head {
                    *position = 0;
                    dropped = true;
                }
            }
            let acked = at.clone();
            s.dirty |= dropped;
            (acked, dropped)
        };
        if dropped {
            tracing::warn!(%remote, "a change sequence is behind its cursor (the store started over): shipping it again from the start");
        }
        self.flush().await?;
        Ok(acked)
    }

    /// The remote datacenters whose connector has not yet shipped change `seq` of
    /// `partition`.
    pub fn unshipped(&self, partition: Partition, seq: u64) -> Vec<String> {
        let s = self.lock();
        let behind = s.acked.iter().filter(|(_, at)| at.get(partition as usize).is_some_and(|&a| a < seq));
        behind.map(|(remote, _)| remote.clone()).collect()
    }

    /// Whether some remote datacenter's connector has not yet shipped change `seq` of
    /// `partition` ([`Self::unshipped`] without naming them).
    pub fn is_unshipped(&self, partition: Partition, seq: u64) -> bool {
        self.lock().acked.values().any(|at| at.get(partition as usize).is_some_and(|&a| a < seq))
    }

    /// Writes the cursors if they changed: one save at a time, each covering every change
    /// made before it started.
    async fn flush(&self) -> Result<(), OutboundError> {
        let _one = self.save.lock().await;
        if !self.lock().dirty {
            return Ok(());
        }
        let (path, text) = (self.path.clone(), self.snapshot());
        // Small (a few bytes per cursor), but fsync blocks: off the async workers.
        let written = tokio::task::spawn_blocking(move || write_file(&path, &text))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        self.saved(written)
    }

    /// Writes the current cursors now, durably.
    fn write_now(&self) -> Result<(), OutboundError> {
        let text = self.snapshot();
        self.saved(write_file(&self.path, &text))
    }

    /// The file's bytes for the cursors as they are; they count as saved from here on.
    fn snapshot(&self) -> Vec<u8> {
        let mut s = self.lock();
        s.dirty = false;
        let file = File {
            version: CURSORS_V1,
            remotes: s
                .acked
                .iter()
                .map(|(remote, at)| {
                    let set = at.iter().enumerate().filter(|(_, s)| **s > 0);
                    (remote.clone(), set.map(|(p, &s)| (p as Partition, s)).collect())
                })
                .collect(),
        };
        serde_json::to_vec(&file).expect("cursors serialise")
    }

    fn saved(&self, written: std::io::Result<()>) -> Result<(), OutboundError> {
        written.map_err(|source| {
            // Written again by the next save.
            self.lock().dirty = true;
            OutboundError::Save { path: self.path.clone(), source }
        })
    }
}

/// Keeps this datacenter's tombstones until every remote datacenter's connector has
/// shipped them (see the module's notes), for at most `longest` past their grace.
pub struct UnshippedTombstones {
    pub outbound: Arc<Outbound>,
    /// This datacenter: tombstones of deletes made elsewhere were shipped by their own.
    pub datacenter: Arc<str>,
    pub grace: Duration,
    pub longest: Duration,
    pub status: Arc<PurgeStatus>,
}

impl TombstoneHold for UnshippedTombstones {
    fn holds(&self, partition: Partition, seq: u64, key: &[u8], tombstone: &Record) -> bool {
        if tombstone.origin.datacenter != self.datacenter || self.outbound.is_local(key) {
            return false;
        }
        if !self.outbound.is_unshipped(partition, seq) {
            return false;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let overdue = unix_ms().saturating_sub(tombstone.hlc.physical_ms().saturating_add(ms(self.grace)));
        if overdue < ms(self.longest) {
            self.status.held.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let purged = self.status.unshipped.fetch_add(1, Ordering::Relaxed) + 1;
        if purged % 1000 == 1 {
            tracing::warn!(
                partition, key = %String::from_utf8_lossy(key), remotes = ?self.outbound.unshipped(partition, seq), purged,
                "purging tombstones these datacenters have not got after store.tombstone_hold: they may keep the deleted keys"
            );
        }
        false
    }
}

/// Replaces `path` with `text` atomically and durably.
fn write_file(path: &Path, text: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(dir: &Path, heads: &[u64]) -> Outbound {
        Outbound::load(dir, heads, Vec::new()).unwrap()
    }

    #[tokio::test]
    async fn cursors_survive_a_restart_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let heads = [100, 100, 100, 100];
        let o = load(dir.path(), &heads);
        assert_eq!(o.positions("dc2", &heads).await.unwrap(), [0, 0, 0, 0]);
        o.acknowledge("dc2", &[(1, 10), (3, 50)]).await.unwrap();
        o.acknowledge("dc2", &[(1, 7)]).await.unwrap();
        o.acknowledge("dc3", &[(0, 99)]).await.unwrap();
        assert_eq!(o.positions("dc2", &heads).await.unwrap(), [0, 10, 0, 50]);
        // Another process on the same directory: what was acknowledged is there.
        let back = load(dir.path(), &heads);
        assert_eq!(back.positions("dc2", &heads).await.unwrap(), [0, 10, 0, 50]);
        assert_eq!(back.positions("dc3", &heads).await.unwrap(), [99, 0, 0, 0]);
        let e = back.acknowledge("dc2", &[(4, 1)]).await.unwrap_err().to_string();
        assert!(e.contains("no partition 4"), "{e}");
    }

    #[tokio::test]
    async fn a_sequence_behind_its_cursor_is_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let o = load(dir.path(), &[60, 60]);
        o.acknowledge("dc2", &[(0, 50), (1, 40)]).await.unwrap();
        assert_eq!(o.positions("dc2", &[60, 60]).await.unwrap(), [50, 40]);
        // Partition 0's sequence started over while the node ran: dropped, durably.
        assert_eq!(o.positions("dc2", &[5, 60]).await.unwrap(), [0, 40]);
        assert_eq!(load(dir.path(), &[70, 70]).positions("dc2", &[70, 70]).await.unwrap(), [0, 40]);
        // The store was lost while the node was down: its heads at open are behind.
        let o = load(dir.path(), &[0, 0]);
        assert_eq!(o.positions("dc2", &[3, 3]).await.unwrap(), [0, 0]);
        assert_eq!(load(dir.path(), &[90, 90]).positions("dc2", &[90, 90]).await.unwrap(), [0, 0]);
    }

    #[test]
    fn the_version_one_format_reads() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version":1,"remotes":{"dc2":[[7,42]]}}"#;
        std::fs::write(Outbound::path(dir.path()), v1).unwrap();
        let o = load(dir.path(), &[50; 8]);
        assert_eq!(o.lock().acked["dc2"][7], 42);
        std::fs::write(Outbound::path(dir.path()), v1.replace("\"version\":1", "\"version\":9")).unwrap();
        let e = Outbound::load(dir.path(), &[50; 8], Vec::new()).err().unwrap().to_string();
        assert!(e.contains("version 9") && e.contains("connector-cursors.json"), "{e}");
    }

    #[tokio::test]
    async fn own_tombstones_wait_for_every_remote_that_asked_for_at_most_the_hold() {
        use crate::hlc::Hlc;
        use crate::record::Origin;
        let dir = tempfile::tempdir().unwrap();
        let heads = [100, 100];
        let outbound = Arc::new(Outbound::load(dir.path(), &heads, vec![b"tmp/".to_vec()]).unwrap());
        let status = Arc::new(PurgeStatus::default());
        let hold = UnshippedTombstones {
            outbound: outbound.clone(),
            datacenter: "dc1".into(),
            grace: Duration::from_secs(60),
            longest: Duration::from_secs(3600),
            status: status.clone(),
        };
        let deleted_ms = unix_ms() - 61_000; // just past its grace
        let tombstone = |dc: &str, at_ms: u64| Record {
            value: None,
            hlc: Hlc::new(at_ms, 0),
            origin: Origin { datacenter: dc.into(), node: 7 },
            expires_at_ms: None,
        };
        let t = tombstone("dc1", deleted_ms);
        // No connector ever asked: nothing to wait for.
        assert!(!hold.holds(0, 50, b"k", &t));
        // dc2's and dc3's connectors asked for their cursors, and kept them across a restart.
        outbound.positions("dc2", &heads).await.unwrap();
        outbound.positions("dc3", &heads).await.unwrap();
        let outbound = Arc::new(Outbound::load(dir.path(), &heads, vec![b"tmp/".to_vec()]).unwrap());
        let hold = UnshippedTombstones { outbound: outbound.clone(), ..hold };
        assert!(hold.holds(0, 50, b"k", &t));
        assert_eq!(outbound.unshipped(0, 50), ["dc2", "dc3"]);
        outbound.acknowledge("dc2", &[(0, 50)]).await.unwrap();
        assert!(hold.holds(0, 50, b"k", &t), "dc3 has not got it");
        outbound.acknowledge("dc3", &[(0, 60)]).await.unwrap();
        assert!(!hold.holds(0, 50, b"k", &t), "both remotes are past it");
        assert!(hold.holds(0, 51, b"k", &t), "dc2 is not past 51");
        // Deletes made in another datacenter, and keys that never leave this one, do not wait.
        assert!(!hold.holds(0, 51, b"k", &tombstone("dc2", deleted_ms)));
        assert!(!hold.holds(0, 51, b"tmp/k", &t));
        assert_eq!(status.held.load(Ordering::Relaxed), 3);
        // Past the hold, it goes, and is counted as such.
        let long_ago = tombstone("dc1", unix_ms() - 60_000 - 3_600_000);
        assert!(!hold.holds(0, 51, b"k", &long_ago));
        assert_eq!(status.unshipped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn local_keyspaces_match_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let o = Outbound::load(dir.path(), &[0], vec![b"session:".to_vec(), b"tmp/".to_vec()]).unwrap();
        assert!(o.is_local(b"session:42") && o.is_local(b"tmp/x") && o.is_local(b"session:"));
        assert!(!o.is_local(b"sessions") && !o.is_local(b"user:1"));
    }
}
