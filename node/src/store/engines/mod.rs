//! The embedded key-value engines a node can keep its data in, behind one small trait.
//!
//! [`Kv`] is what [`super::ordered::OrderedStore`] needs from an engine: point reads,
//! atomic batches, ordered range scans both ways, a durability point and a size. The
//! record layout, the indexes and the per-partition change sequence live once, in
//! `ordered`; an engine file here only translates. Which engine a node uses is the
//! setting `store.engine`; `docs/storage-study.md` measures them against each other.

pub mod fjall;
pub mod lmdb;
pub mod redb;
pub mod sled;

use super::StoreError;

/// One change in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

impl Op {
    /// The key the operation changes.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
}

/// What [`Kv::get_each`] shows each key's value to: the key's index and its value.
pub type Found<'a> = &'a mut dyn FnMut(usize, Option<&[u8]>) -> Result<(), StoreError>;

/// An ordered key-value engine. Batches are atomic: after a crash either all of a batch
/// is there or none of it. A batch is not durable until [`Kv::flush`] returns.
pub trait Kv: Send + Sync + 'static {
    /// A value read; engines hand out their own buffer type where they have one.
    type Value: AsRef<[u8]>;

    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StoreError>;

    /// Reads `keys` and shows each one's value (`None`: absent) to `found`, with the key's
    /// index, in order; an error from `found` ends the reads. Engines with read
    /// transactions read them all in one, instead of one transaction per key as [`Kv::get`].
    fn get_each(&self, keys: &[Vec<u8>], found: Found<'_>) -> Result<(), StoreError> {
        for (i, key) in keys.iter().enumerate() {
            found(i, self.get(key)?.as_ref().map(AsRef::as_ref))?;
        }
        Ok(())
    }

    /// Applies `ops` in order, atomically.
    fn write(&self, ops: &[Op]) -> Result<(), StoreError>;

    /// Calls `visit` for the entries with `from <= key < to`, in key order (descending when
    /// `reverse`), until it returns false.
    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Makes every batch written so far durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Bytes the engine's files take on disk.
    fn size_on_disk(&self) -> u64;
}

/// The engines, as `store.engine` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sled,
    Redb,
    Fjall,
    Lmdb,
}

impl Engine {
    pub const ALL: [Engine; 4] = [Engine::Sled, Engine::Redb, Engine::Fjall, Engine::Lmdb];

    /// The engine `store.engine` names.
    pub fn of(setting: crate::config::StoreEngine) -> Self {
        use crate::config::StoreEngine as S;
        match setting {
            S::Sled => Engine::Sled,
            S::Redb => Engine::Redb,
            S::Fjall => Engine::Fjall,
            S::Lmdb => Engine::Lmdb,
        }
    }

    /// The `store.engine` value naming this engine.
    pub fn setting(self) -> crate::config::StoreEngine {
        use crate::config::StoreEngine as S;
        match self {
            Engine::Sled => S::Sled,
            Engine::Redb => S::Redb,
            Engine::Fjall => S::Fjall,
            Engine::Lmdb => S::Lmdb,
        }
    }

    /// Most records the write buffer should apply to this engine in one batch, when the
    /// engine may use `cache_bytes` of memory. LMDB's cache is the kernel's page cache; its
    /// own memory is the copy it makes of every page a commit changes, and it keeps the
    /// copies of its largest commit for reuse until it closes. A record changes at most
    /// about six pages (its data, index and sequence entries, the ones it replaces, the
    /// purge entry), so LMDB's batches are sized to keep those copies within
    /// `cache_bytes` (64 MiB, the default: 2,730 records; LMDB syncs at every commit, and
    /// sustained writes ran 15% faster with such batches than with 512 records). The
    /// other engines bound their memory by their cache setting: redb writes the pages a
    /// commit changes out to its file early once they fill half its cache, so a larger
    /// batch costs it no memory, and a commit copies a branch page changed by several of
    /// its records once (2,048 records sustained 6% to 8% more SET/s than 512, in both
    /// orders of one run; `docs/storage-study.md`).
    pub fn apply_batch(self, cache_bytes: u64) -> usize {
        const PAGES_PER_RECORD: u64 = 6;
        const PAGE: u64 = 4096;
        const REDB_BATCH: usize = 2048;
        match self {
            Engine::Lmdb => (cache_bytes / (PAGES_PER_RECORD * PAGE))
                .clamp(16, super::buffered::APPLY_BATCH_MAX as u64) as usize,
            Engine::Redb => REDB_BATCH,
            Engine::Sled | Engine::Fjall => super::buffered::APPLY_BATCH,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Redb => "redb",
            Engine::Fjall => "fjall",
            Engine::Lmdb => "lmdb",
        }
    }
}

/// Engine-specific sizes that the common [`super::StoreOptions`] do not cover.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    pub engine: Engine,
    /// LMDB: the largest the data file may grow (address space reserved, not memory).
    pub lmdb_map_bytes: u64,
    /// fjall: memory for tables being written before they go to disk (memtables).
    pub write_buffer_bytes: u64,
}

impl EngineOptions {
    pub fn new(engine: Engine) -> Self {
        EngineOptions { engine, lmdb_map_bytes: 64 << 30, write_buffer_bytes: 16 << 20 }
    }
}

/// The file in the store directory that names the engine which wrote it.
const ENGINE_FILE: &str = "ENGINE";

/// The engine whose data `store_dir` holds: the one its marker names, sled for data from
/// before the marker; `None` for an empty or missing directory (or an unknown name, which
/// [`open`] refuses with its own message).
pub fn written_by(store_dir: &std::path::Path) -> Option<Engine> {
    match std::fs::read_to_string(store_dir.join(ENGINE_FILE)) {
        Ok(found) => Engine::ALL.into_iter().find(|e| e.name() == found.trim()),
        Err(_) => std::fs::read_dir(store_dir).ok()?.next().is_some().then_some(Engine::Sled),
    }
}

/// Opens the engine `engine.engine` with the common options. A directory written by
/// another engine is refused: the new engine would find it empty and serve no data.
pub fn open(
    opts: &super::StoreOptions,
    engine: &EngineOptions,
) -> Result<std::sync::Arc<dyn super::Store>, StoreError> {
    use super::ordered::OrderedStore;
    use std::sync::Arc;
    let open_err = |reason: String| StoreError::Open { path: opts.path.clone(), reason };
    let marker = opts.path.join(ENGINE_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == engine.engine.name() => {}
        Ok(found) => {
            return Err(open_err(format!(
                "it was written by the {} engine but store.engine is {} (the engine cannot change once data exists)",
                found.trim(),
                engine.engine.name()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let has_data = std::fs::read_dir(&opts.path).map(|mut d| d.next().is_some()).unwrap_or(false);
            if has_data && engine.engine != Engine::Sled {
                // Only the first layout (sled, before this marker) leaves data unmarked.
                return Err(open_err(format!(
                    "it holds data of an unnamed engine (sled) but store.engine is {}",
                    engine.engine.name()
                )));
            }
            std::fs::create_dir_all(&opts.path).map_err(|e| open_err(e.to_string()))?;
            std::fs::write(&marker, engine.engine.name()).map_err(|e| open_err(e.to_string()))?;
        }
        Err(e) => return Err(open_err(e.to_string())),
    }
    Ok(match engine.engine {
        Engine::Sled => Arc::new(OrderedStore::with_kv(self::sled::SledKv::open(opts)?, opts, "sled")?),
        Engine::Redb => Arc::new(OrderedStore::with_kv(self::redb::RedbKv::open(opts)?, opts, "redb")?),
        Engine::Fjall => {
            Arc::new(OrderedStore::with_kv(self::fjall::FjallKv::open(opts, engine)?, opts, "fjall")?)
        }
        Engine::Lmdb => {
            Arc::new(OrderedStore::with_kv(self::lmdb::LmdbKv::open(opts, engine)?, opts, "lmdb")?)
        }
    })
}

/// The end of the range of keys starting with `prefix`: `prefix` with its last byte
/// raised (the bytes 0xff at its end dropped first); `None` when every key is past it.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The message of an open failure caused by another process holding the directory.
pub(crate) const IN_USE: &str = "it is in use by another process (is another node running on this data_dir?)";

/// For tests: a redb engine that shows each batch to `before_write` before writing it, to
/// record the batches or to hold one while the test steps in.
#[cfg(test)]
pub(crate) struct HookedKv<F> {
    pub kv: redb::RedbKv,
    pub before_write: F,
}

#[cfg(test)]
impl<F: Fn(&[Op]) + Send + Sync + 'static> Kv for HookedKv<F> {
    type Value = <redb::RedbKv as Kv>::Value;
    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, StoreError> {
        self.kv.get(key)
    }
    fn write(&self, ops: &[Op]) -> Result<(), StoreError> {
        (self.before_write)(ops);
        self.kv.write(ops)
    }
    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        self.kv.scan(from, to, reverse, visit)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.kv.flush()
    }
    fn size_on_disk(&self) -> u64 {
        self.kv.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_the_prefix() {
        assert_eq!(prefix_end(b"d\x00\x01"), Some(b"d\x00\x02".to_vec()));
        assert_eq!(prefix_end(b"d\x00\xff"), Some(b"d\x01".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
