//! LMDB through heed (a copy-on-write B-tree in one memory-mapped file; reads are page
//! cache hits or page faults, and the kernel decides what stays in memory).
//!
//! Commits skip the metadata sync (`NO_META_SYNC`): the data pages of a commit are
//! synced before its meta page is written, so a crash may undo the last commits (the
//! write buffer's log still holds them) but never tears the tree; [`Kv::flush`] syncs the
//! rest. Read-ahead is off: reads are random. LMDB lets several processes share a file,
//! so the directory is locked here to refuse a second node, as the other engines do.

use std::fs::File;
use std::ops::Bound;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

use super::{EngineOptions, Found, IN_USE, Kv, Op};
use crate::store::{StoreError, StoreOptions};

pub struct LmdbKv {
    env: Env<WithoutTls>,
    db: Database<'static, Bytes, Bytes>,
    _lock: File,
}

fn io(e: heed::Error) -> StoreError {
    match e {
        heed::Error::Mdb(heed::MdbError::MapFull) => StoreError::Io(
            "the LMDB file reached store.lmdb_map_bytes: raise it (it reserves address space, not memory)"
                .into(),
        ),
        e => StoreError::Io(e.to_string()),
    }
}

impl LmdbKv {
    #[allow(unsafe_code)]
    pub fn open(opts: &StoreOptions, engine: &EngineOptions) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: opts.path.clone(), reason };
        std::fs::create_dir_all(&opts.path).map_err(|e| open_err(e.to_string()))?;
        let lock = File::create(opts.path.join("node.lock")).map_err(|e| open_err(e.to_string()))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => open_err(IN_USE.into()),
            std::fs::TryLockError::Error(e) => open_err(e.to_string()),
        })?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(engine.lmdb_map_bytes as usize).max_dbs(1);
        // SAFETY: NO_META_SYNC keeps every commit atomic and consistent (only the last
        // commits may be undone by a crash, see the module header); the directory lock
        // taken above keeps any other node of ours from opening the file, and nothing
        // else writes to it.
        let env = unsafe {
            options.flags(EnvFlags::NO_META_SYNC | EnvFlags::NO_READ_AHEAD);
            options.open(&opts.path)
        }
        .map_err(|e| open_err(e.to_string()))?;
        let tx = env.write_txn().map_err(io)?;
        let db = env
            .create_databases_and_commit(tx, |opener, tx| {
                opener
                    .create_database::<Bytes, Bytes>(tx, Some("opencluster"))
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .map_err(io)?
            .unwrap_commit();
        Ok(LmdbKv { env, db, _lock: lock })
    }
}

impl Kv for LmdbKv {
    type Value = Vec<u8>;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.env.read_txn().map_err(io)?;
        Ok(self.db.get(&tx, key).map_err(io)?.map(<[u8]>::to_vec))
    }

    fn get_each(&self, keys: &[Vec<u8>], found: Found<'_>) -> Result<(), StoreError> {
        let tx = self.env.read_txn().map_err(io)?;
        for (i, key) in keys.iter().enumerate() {
            found(i, self.db.get(&tx, key).map_err(io)?)?;
        }
        Ok(())
    }

    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut tx = self.env.write_txn().map_err(io)?;
        for op in ops {
            match op {
                Op::Put(k, v) => self.db.put(&mut tx, k, v).map_err(io)?,
                Op::Delete(k) => {
                    self.db.delete(&mut tx, k).map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)
    }

    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let tx = self.env.read_txn().map_err(io)?;
        let range = (Bound::Included(from), Bound::Excluded(to));
        if reverse {
            for entry in self.db.rev_range(&tx, &range).map_err(io)? {
                let (k, v) = entry.map_err(io)?;
                if !visit(k, v) {
                    break;
                }
            }
        } else {
            for entry in self.db.range(&tx, &range).map_err(io)? {
                let (k, v) = entry.map_err(io)?;
                if !visit(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.env.force_sync().map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        self.env.real_disk_size().unwrap_or(0)
    }
}
