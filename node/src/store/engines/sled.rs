//! sled (a B-tree with its own page cache and log): the first engine, kept selectable.
//!
//! `cache_capacity` bounds sled's page cache on disk-page size, not its memory: real use
//! runs well above it (see `docs/storage-study.md`).

use super::{IN_USE, Kv, Op};
use crate::store::{StoreError, StoreOptions};

pub struct SledKv {
    db: sled::Db,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledKv {
    pub fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: opts.path.clone(), reason };
        std::fs::create_dir_all(&opts.path).map_err(|e| open_err(e.to_string()))?;
        let db = sled::Config::new()
            .path(&opts.path)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(None)
            .open()
            .map_err(|e| {
                // sled reports a held lock as an I/O error mentioning the lock.
                let text = e.to_string();
                if text.contains("could not acquire lock") || text.contains("WouldBlock") {
                    open_err(IN_USE.into())
                } else {
                    open_err(text)
                }
            })?;
        // The first layout kept its marker in a tree of its own; its records have no
        // change sequence and cannot be read as this layout's.
        if db.tree_names().iter().any(|n| &n[..] == b"meta") {
            return Err(open_err(
                "it holds the first store layout (before the change sequence): move it away and let the node copy its partitions from the other owners".into(),
            ));
        }
        Ok(SledKv { db })
    }
}

impl Kv for SledKv {
    type Value = sled::IVec;

    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        self.db.get(key).map_err(io)
    }

    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(&k[..], &v[..]),
                Op::Delete(k) => batch.remove(&k[..]),
            }
        }
        self.db.apply_batch(batch).map_err(io)
    }

    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let range = self.db.range(from..to);
        let mut step = |entry: sled::Result<(sled::IVec, sled::IVec)>| -> Result<bool, StoreError> {
            let (k, v) = entry.map_err(io)?;
            Ok(visit(&k, &v))
        };
        if reverse {
            for entry in range.rev() {
                if !step(entry)? {
                    break;
                }
            }
        } else {
            for entry in range {
                if !step(entry)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
