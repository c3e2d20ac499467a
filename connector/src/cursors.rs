//! Where shipping to one remote datacenter stands: one cursor per (node, partition), a
//! position in that node's local change sequence of that partition, kept in a file.
//!
//! Why per node and not per partition: each node numbers the changes it applies itself,
//! so a position means something only at the node that handed it out (see
//! docs/multi-datacenter.md, "Cursors"). A cursor moves only after the remote datacenter
//! acknowledged the records before it, and the file is replaced atomically (write,
//! fsync, rename, fsync of the directory), so after a `kill -9` shipping resumes at or
//! before where it stopped: records may be sent twice, which last-writer-wins makes
//! harmless, and none is skipped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the cursor file's format.
pub const CURSORS_V1: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the cursors of {remote} from {path}: {reason}")]
    Load { remote: String, path: PathBuf, reason: String },
    #[error("cannot save the cursors of {remote} to {path}: {source}")]
    Save { remote: String, path: PathBuf, source: std::io::Error },
}

/// The cursors of one remote datacenter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursors {
    /// (node id, partition) -> the last change number shipped and acknowledged.
    at: BTreeMap<(u64, u16), u64>,
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    remote: String,
    /// (node id in hex, partition, position).
    cursors: Vec<(String, u16, u64)>,
}

impl Cursors {
    /// The file of `remote`'s cursors in `dir`.
    pub fn path(dir: &Path, remote: &str) -> PathBuf {
        dir.join(format!("cursors-{remote}.json"))
    }

    /// Reads the cursors of `remote`; none yet (a first start) is an empty set.
    pub fn load(dir: &Path, remote: &str) -> Result<Cursors, CursorError> {
        let path = Self::path(dir, remote);
        let fail = |reason: String| CursorError::Load { remote: remote.into(), path: path.clone(), reason };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cursors::default()),
            Err(e) => return Err(fail(e.to_string())),
        };
        let file: File = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if file.version != CURSORS_V1 {
            return Err(fail(format!("format version {} is not {CURSORS_V1}", file.version)));
        }
        if file.remote != remote {
            return Err(fail(format!("the file is for datacenter {:?}", file.remote)));
        }
        let mut at = BTreeMap::new();
        for (node, partition, seq) in file.cursors {
            let node = u64::from_str_radix(&node, 16).map_err(|e| fail(format!("node id {node:?}: {e}")))?;
            at.insert((node, partition), seq);
        }
        Ok(Cursors { at })
    }

    /// Replaces the file of `remote` with these cursors, durably.
    pub fn save(&self, dir: &Path, remote: &str) -> Result<(), CursorError> {
        let path = Self::path(dir, remote);
        let file = File {
            version: CURSORS_V1,
            remote: remote.into(),
            cursors: self.at.iter().map(|(&(n, p), &s)| (format!("{n:016x}"), p, s)).collect(),
        };
        let text = serde_json::to_vec(&file).expect("cursors serialise");
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|source| CursorError::Save { remote: remote.into(), path: path.clone(), source })
    }

    /// The last position shipped of `partition` at `node` (0: nothing yet).
    pub fn get(&self, node: u64, partition: u16) -> u64 {
        self.at.get(&(node, partition)).copied().unwrap_or(0)
    }

    /// Where to read from, given where the node's sequence stands now (`head`): the
    /// cursor, or 0 when the node's sequence is behind it (its store was lost and started
    /// over: everything it holds now is read again).
    pub fn start(&mut self, node: u64, partition: u16, head: u64) -> u64 {
        let at = self.get(node, partition);
        if head < at {
            self.at.remove(&(node, partition));
            return 0;
        }
        at
    }

    /// Moves a cursor forward (never back) once what precedes `to` is acknowledged.
    pub fn advance(&mut self, node: u64, partition: u16, to: u64) {
        let at = self.at.entry((node, partition)).or_insert(0);
        *at = (*at).max(to);
    }

    /// Changes still to look at, given every node's heads: positions, not records (records
    /// of other origins and overwritten keys count too), so an upper bound.
    pub fn backlog(&self, node: u64, heads: &[u64]) -> u64 {
        heads.iter().enumerate().map(|(p, &h)| h.saturating_sub(self.get(node, p as u16))).sum()
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }

    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_survive_a_save_and_load_and_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Cursors::load(dir.path(), "dc2").unwrap(), Cursors::default());
        let mut c = Cursors::default();
        c.advance(0xabc, 3, 10);
        c.advance(0xabc, 3, 7);
        c.advance(u64::MAX, 1023, 1);
        assert_eq!(c.get(0xabc, 3), 10);
        c.save(dir.path(), "dc2").unwrap();
        let back = Cursors::load(dir.path(), "dc2").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get(u64::MAX, 1023), 1);
        assert_eq!(back.get(1, 1), 0);
        // Another datacenter's file is not mistaken for this one's.
        std::fs::copy(Cursors::path(dir.path(), "dc2"), Cursors::path(dir.path(), "dc3")).unwrap();
        let e = Cursors::load(dir.path(), "dc3").unwrap_err().to_string();
        assert!(e.contains("dc3") && e.contains("\"dc2\""), "{e}");
    }

    #[test]
    fn a_node_whose_sequence_went_back_is_read_from_the_start() {
        let mut c = Cursors::default();
        c.advance(1, 0, 50);
        assert_eq!(c.start(1, 0, 60), 50);
        assert_eq!(c.start(1, 0, 50), 50);
        // Its store was lost: it numbers from 1 again.
        assert_eq!(c.start(1, 0, 5), 0);
        assert_eq!(c.get(1, 0), 0);
        assert_eq!(c.backlog(1, &[5, 2]), 7);
    }

    #[test]
    fn the_version_one_format_reads() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version":1,"remote":"dc2","cursors":[["00000000000000ff",7,42]]}"#;
        std::fs::write(Cursors::path(dir.path(), "dc2"), v1).unwrap();
        assert_eq!(Cursors::load(dir.path(), "dc2").unwrap().get(255, 7), 42);
        std::fs::write(Cursors::path(dir.path(), "dc2"), v1.replace("\"version\":1", "\"version\":9"))
            .unwrap();
        assert!(Cursors::load(dir.path(), "dc2").unwrap_err().to_string().contains("version 9"));
    }
}
