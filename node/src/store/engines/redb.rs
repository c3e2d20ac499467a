//! redb (a copy-on-write B-tree read with pread through its own cache).
//!
//! Batches commit with `Durability::None`: redb then keeps the last durable commit as its
//! recovery point, so a crash loses the batches since the last [`Kv::flush`] (which the
//! write buffer's log still holds) and never leaves a torn tree.

use std::path::PathBuf;

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Found, IN_USE, Kv, Op};
use crate::store::{StoreError, StoreOptions};

/// One entry of a range read.
type RangeEntry<'a> =
    Result<(redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, &'static [u8]>), redb::StorageError>;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("opencluster");

pub struct RedbKv {
    db: redb::Database,
    file: PathBuf,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl RedbKv {
    pub fn open(opts: &StoreOptions) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: opts.path.clone(), reason };
        std::fs::create_dir_all(&opts.path).map_err(|e| open_err(e.to_string()))?;
        let file = opts.path.join("data.redb");
        let db = redb::Database::builder().set_cache_size(opts.cache_bytes as usize).create(&file).map_err(
            |e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => open_err(IN_USE.into()),
                e => open_err(e.to_string()),
            },
        )?;
        let tx = db.begin_write().map_err(io)?;
        tx.open_table(TABLE).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(RedbKv { db, file })
    }
}

impl Kv for RedbKv {
    type Value = Vec<u8>;

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(TABLE).map_err(io)?;
        Ok(table.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    fn get_each(&self, keys: &[Vec<u8>], found: Found<'_>) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(TABLE).map_err(io)?;
        for (i, key) in keys.iter().enumerate() {
            match table.get(&key[..]).map_err(io)? {
                Some(value) => found(i, Some(value.value()))?,
                None => found(i, None)?,
            }
        }
        Ok(())
    }

    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(io)?;
        tx.set_durability(Durability::None).map_err(io)?;
        {
            let mut table = tx.open_table(TABLE).map_err(io)?;
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        table.insert(&k[..], &v[..]).map_err(io)?;
                    }
                    Op::Delete(k) => {
                        table.remove(&k[..]).map_err(io)?;
                    }
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
        let tx = self.db.begin_read().map_err(io)?;
        let table = tx.open_table(TABLE).map_err(io)?;
        let range = table.range(from..to).map_err(io)?;
        let mut step = |entry: RangeEntry<'_>| {
            let (k, v) = entry.map_err(io)?;
            Ok::<bool, StoreError>(visit(k.value(), v.value()))
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
        let mut tx = self.db.begin_write().map_err(io)?;
        tx.set_durability(Durability::Immediate).map_err(io)?;
        tx.commit().map_err(io)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0)
    }
}
