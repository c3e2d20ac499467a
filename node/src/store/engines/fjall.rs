//! fjall (an LSM tree: a journal, memtables and sorted tables, with a block cache).
//!
//! The journal is persisted by hand (`manual_journal_persist`): a batch reaches the OS at
//! commit and the disk at [`Kv::flush`], like the other engines.

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{EngineOptions, IN_USE, Kv, Op};
use crate::store::{StoreError, StoreOptions};

pub struct FjallKv {
    db: Database,
    tree: Keyspace,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl FjallKv {
    pub fn open(opts: &StoreOptions, engine: &EngineOptions) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: opts.path.clone(), reason };
        std::fs::create_dir_all(&opts.path).map_err(|e| open_err(e.to_string()))?;
        let db = Database::builder(&opts.path)
            .cache_size(opts.cache_bytes)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => open_err(IN_USE.into()),
                e => open_err(e.to_string()),
            })?;
        // A memtable at least 1 MiB (fjall's floor for write buffers).
        let memtable = engine.write_buffer_bytes.max(1 << 20);
        let tree = db
            .keyspace("opencluster", || KeyspaceCreateOptions::default().max_memtable_size(memtable))
            .map_err(|e| open_err(e.to_string()))?;
        Ok(FjallKv { db, tree })
    }
}

impl Kv for FjallKv {
    type Value = fjall::Slice;

    fn get(&self, key: &[u8]) -> Result<Option<fjall::Slice>, StoreError> {
        self.tree.get(key).map_err(io)
    }

    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(&self.tree, &k[..], &v[..]),
                Op::Delete(k) => batch.remove(&self.tree, &k[..]),
            }
        }
        batch.commit().map_err(io)
    }

    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let range = self.tree.range(from..to);
        let mut step = |guard: fjall::Guard| {
            let (k, v) = guard.into_inner().map_err(io)?;
            Ok::<bool, StoreError>(visit(&k, &v))
        };
        if reverse {
            for guard in range.rev() {
                if !step(guard)? {
                    break;
                }
            }
        } else {
            for guard in range {
                if !step(guard)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.persist(PersistMode::SyncAll).map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}
