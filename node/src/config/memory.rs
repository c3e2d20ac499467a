//! One memory budget, and every buffer the node keeps sized from it.
//!
//! The budget is `memory_budget` when set; otherwise, in a container (a cgroup with a
//! memory limit: v2 `memory.max`, v1 `memory.limit_in_bytes`), the limit minus headroom,
//! in both modes; otherwise, in lean mode, [`LEAN_DEFAULT_BUDGET`]; in standard mode with
//! no limit there is no budget and the built-in defaults stand.
//!
//! From the budget come the storage engine's cache, the write buffer, hinted-handoff
//! memory, the peer QUIC windows, queue and batch bounds, the client count, the runtime's
//! worker threads, and the share a near cache may use ([`MemoryBudget::near_cache_bytes`]).
//! A setting given explicitly (file, env or flag) is never overridden. Lean mode gives each
//! a fixed share of the budget; standard mode only lowers the defaults to fit it. The
//! shares leave room for what is not sized here (code, stacks, allocator slack, the
//! engine's own overhead above its cache): see `docs/configuration.md`, "Memory".

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ByteSize, Config};

/// The engine of standard mode when the store holds no data yet ([`default_engine`]).
pub const STANDARD_DEFAULT: super::StoreEngine = super::StoreEngine::Lmdb;

/// The budget in lean mode when no limit is known and none is configured.
pub const LEAN_DEFAULT_BUDGET: u64 = 64 << 20;
/// The part of a cgroup limit kept out of the budget: a quarter, at most this much. The
/// page cache charged to the cgroup is reclaimable and lives in that headroom.
pub const MAX_HEADROOM: u64 = 512 << 20;

/// `mode`: how the node spends memory.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Built-in sizes, lowered to fit the budget when there is one.
    #[default]
    Standard,
    /// Everything sized from the budget; the data lives on disk and in the page cache.
    Lean,
}

/// Where the budget came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// `memory_budget`.
    Configured,
    /// The cgroup's memory limit minus headroom.
    Cgroup,
    /// Lean mode's default, with no limit known.
    LeanDefault,
}

/// The budget and what was sized from it (shown in `/v1/status`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryBudget {
    pub mode: Mode,
    /// Bytes the node plans to stay within; `None`: no budget (standard mode, no limit).
    pub bytes: Option<u64>,
    pub source: Option<BudgetSource>,
    /// The cgroup's memory limit, when it has one.
    pub cgroup_limit: Option<u64>,
    /// Runtime worker threads; `None`: one per core.
    pub worker_threads: Option<usize>,
    near_cache: u64,
}

impl MemoryBudget {
    /// Bytes a near cache may hold by default: a share of the budget (a tenth in lean
    /// mode, a fifth in standard), or 64 MiB with no budget. `cache.max_bytes` defaults to it.
    pub fn near_cache_bytes(&self) -> u64 {
        self.near_cache
    }

    /// RSS above which the node applies backpressure (shrinks its write buffer and gives
    /// freed memory back): nine tenths of the budget.
    pub fn pressure_bytes(&self) -> Option<u64> {
        self.bytes.map(|b| b / 10 * 9)
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            mode: Mode::Standard,
            bytes: None,
            source: None,
            cgroup_limit: None,
            worker_threads: None,
            near_cache: 64 << 20,
        }
    }
}

/// The memory limit of this process's cgroup, if it has one, read under `root`
/// (`/sys/fs/cgroup`): the smallest limit on the way from the cgroup to the root, for v2
/// (`memory.max`) and v1 (`memory/memory.limit_in_bytes`). Inside a container the
/// cgroup is usually mounted as the root; on a host it is the path in `/proc/self/cgroup`.
pub fn cgroup_limit(root: &Path, proc_self_cgroup: &str) -> Option<u64> {
    let mut limits = Vec::new();
    let mut read = |file: &Path| {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(n) = text.trim().parse::<u64>()
            // v1 reports "no limit" as a huge page-aligned number.
            && n < 1 << 60
        {
            limits.push(n);
        }
    };
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (dir, file) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), "memory.limit_in_bytes")
        } else {
            continue;
        };
        let mut at = Path::new(path.trim());
        loop {
            read(&dir.join(at.strip_prefix("/").unwrap_or(at)).join(file));
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
    }
    // A container that sees its own cgroup at the root but a host path in /proc.
    read(&root.join("memory.max"));
    read(&root.join("memory/memory.limit_in_bytes"));
    limits.into_iter().min()
}

/// The limit of the cgroup this process runs in.
pub fn own_cgroup_limit() -> Option<u64> {
    let me = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_limit(Path::new("/sys/fs/cgroup"), &me)
}

/// The budget for `mode`, a configured size and a cgroup limit.
pub fn budget_of(
    mode: Mode,
    configured: Option<u64>,
    cgroup: Option<u64>,
) -> (Option<u64>, Option<BudgetSource>) {
    match (configured, cgroup, mode) {
        (Some(b), _, _) => (Some(b), Some(BudgetSource::Configured)),
        (None, Some(limit), _) => {
            let headroom = (limit / 4).min(MAX_HEADROOM);
            (Some(limit - headroom), Some(BudgetSource::Cgroup))
        }
        (None, None, Mode::Lean) => (Some(LEAN_DEFAULT_BUDGET), Some(BudgetSource::LeanDefault)),
        (None, None, Mode::Standard) => (None, None),
    }
}

/// The engine a node uses when `store.engine` is not set: the one whose data the store
/// directory already holds (the engine cannot change once data exists, so a node keeps
/// working on its data when the default changes), else the mode's default, the storage
/// study's winner for it (docs/storage-study.md): LMDB in lean mode, [`STANDARD_DEFAULT`]
/// in standard mode. Every engine stays selectable.
pub fn default_engine(mode: Mode, store_dir: &Path) -> super::StoreEngine {
    if let Some(found) = crate::store::engines::written_by(store_dir) {
        return found.setting();
    }
    match mode {
        Mode::Lean => super::StoreEngine::Lmdb,
        Mode::Standard => STANDARD_DEFAULT,
    }
}

/// Budgets below this are small containers for the engine warnings ([`engine_warning`]).
const SMALL_BUDGET: u64 = 128 << 20;

/// A warning for an engine the storage study saw fail in this mode and budget
/// (docs/storage-study.md): chosen explicitly it still runs, but the operator is told.
pub fn engine_warning(mode: Mode, engine: super::StoreEngine, budget: Option<u64>) -> Option<&'static str> {
    use super::StoreEngine as E;
    let small = budget.is_some_and(|b| b < SMALL_BUDGET);
    match (mode, engine) {
        (Mode::Lean, E::Sled) => Some(
            "store.engine = sled in lean mode: sled's memory is not bounded by its cache and it was OOM-killed \
             under a 64 MiB limit in the storage study; lmdb (lean mode's default), fjall or redb stay within the budget",
        ),
        (Mode::Standard, E::Sled) if small => Some(
            "store.engine = sled with a memory budget under 128 MiB: sled's memory is not bounded by its cache and it \
             was OOM-killed under a 64 MiB limit in both modes in the storage study; lmdb (the default) stays within it",
        ),
        (Mode::Standard, E::Fjall) if small => Some(
            "store.engine = fjall in standard mode with a memory budget under 128 MiB: it was OOM-killed under a \
             64 MiB limit in the storage study (in lean mode it was not); use mode = lean, or lmdb (the default)",
        ),
        _ => None,
    }
}

/// Sizes `config` from its budget, leaving every setting named in `explicit` alone, and
/// returns the budget. `cgroup` is the container's limit ([`own_cgroup_limit`]).
pub fn apply(config: &mut Config, explicit: &HashMap<String, String>, cgroup: Option<u64>) -> MemoryBudget {
    let mode = config.mode;
    let (bytes, source) = budget_of(mode, config.memory_budget.map(|b| b.0), cgroup);
    let mut budget = MemoryBudget { mode, bytes, source, cgroup_limit: cgroup, ..MemoryBudget::default() };
    let lean = mode == Mode::Lean;
    if !explicit.contains_key("store.engine") {
        config.store.engine = default_engine(mode, &config.data_dir.join("store"));
    }
    let Some(b) = bytes else { return budget };
    // Lean: a share of the budget. Standard: the default, lowered to that share.
    let size = |current: u64, share: u64, floor: u64| -> u64 {
        let fit = (b / share).max(floor);
        if lean { fit } else { current.min(fit) }
    };
    let set = |key: &str, slot: &mut ByteSize, share: u64, floor: u64| {
        if !explicit.contains_key(key) {
            *slot = ByteSize(size(slot.0, share, floor));
        }
    };
    let s = &mut config.store;
    // The engine's cache: a fifth (the engine's own overhead runs above it). LMDB caches
    // in the kernel's page cache, outside the process: its setting bounds the page copies
    // its commits hold (`Engine::apply_batch`), and what it leaves is page cache.
    let cache_share = if s.engine == super::StoreEngine::Lmdb { 32 } else { 5 };
    set("store.cache_bytes", &mut s.cache_bytes, cache_share, 1 << 20);
    // The write buffer: past it writers wait (backpressure). It holds memory only while
    // writes outrun the engine, and the applier's rate grows with it once the engine's
    // pages no longer fit in memory: in a 340 MiB container under sustained SETs, 0.20x of
    // redis-server with a tenth of the budget, 0.39x with half (docs/storage-study.md).
    // Lean mode keeps a tenth: least memory first.
    set("store.write_buffer_bytes", &mut s.write_buffer_bytes, if lean { 10 } else { 2 }, 1 << 20);
    set("cluster.max_hint_bytes", &mut config.cluster.max_hint_bytes, 20, 1 << 20);
    let r = &mut config.rpc;
    set("rpc.stream_window", &mut r.stream_window, 256, 16 << 10);
    set("rpc.connection_window", &mut r.connection_window, 32, 64 << 10);
    if r.connection_window.0 < r.stream_window.0 {
        r.connection_window = r.stream_window;
    }
    set("rpc.max_batch_bytes", &mut r.max_batch_bytes, 64, 64 << 10);
    set("rebalance.chunk_bytes", &mut config.rebalance.chunk_bytes, 64, 64 << 10);
    let count = |current: u32, each: u64, floor: u32| -> u32 {
        let fit = u32::try_from(b / 20 / each).unwrap_or(u32::MAX).max(floor);
        if lean { fit.min(current) } else { current.min(fit) }
    };
    // Queued peer requests hold their payload: about 4 KiB each on average.
    if !explicit.contains_key("rpc.max_queued_requests") {
        r.max_queued_requests = count(r.max_queued_requests, 4 << 10, 64);
    }
    // A connected client holds read and write buffers: about 64 KiB when busy.
    if !explicit.contains_key("limits.max_clients") {
        config.limits.max_clients = count(config.limits.max_clients, 64 << 10, 16);
    }
    budget.worker_threads = lean.then_some(if b < 256 << 20 { 1 } else { 2 });
    budget.near_cache = if lean { b / 10 } else { b / 5 };
    budget
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explicit(keys: &[&str]) -> HashMap<String, String> {
        keys.iter().map(|k| (k.to_string(), "test".to_string())).collect()
    }

    #[test]
    fn engines_that_failed_in_the_study_are_warned_about_where_they_failed() {
        use crate::config::StoreEngine as E;
        let small = Some(48 << 20);
        let large = Some(192 << 20);
        assert!(engine_warning(Mode::Lean, E::Sled, large).is_some_and(|w| w.contains("lean mode")));
        assert!(engine_warning(Mode::Standard, E::Sled, small).is_some_and(|w| w.contains("sled")));
        assert!(engine_warning(Mode::Standard, E::Fjall, small).is_some_and(|w| w.contains("mode = lean")));
        for quiet in [
            (Mode::Standard, E::Sled, large),
            (Mode::Standard, E::Sled, None),
            (Mode::Standard, E::Fjall, large),
            (Mode::Lean, E::Fjall, small),
            (Mode::Lean, E::Redb, small),
            (Mode::Standard, E::Redb, small),
            (Mode::Lean, E::Lmdb, small),
            (Mode::Standard, E::Lmdb, small),
        ] {
            assert_eq!(engine_warning(quiet.0, quiet.1, quiet.2), None, "{quiet:?}");
        }
    }

    #[test]
    fn the_budget_comes_from_the_setting_the_cgroup_or_lean_mode() {
        assert_eq!(budget_of(Mode::Standard, None, None), (None, None));
        assert_eq!(budget_of(Mode::Lean, None, None), (Some(64 << 20), Some(BudgetSource::LeanDefault)));
        assert_eq!(
            budget_of(Mode::Lean, Some(10 << 20), Some(1 << 30)),
            (Some(10 << 20), Some(BudgetSource::Configured))
        );
        // A quarter of a small limit is kept as headroom, at most 512 MiB of a large one.
        assert_eq!(
            budget_of(Mode::Standard, None, Some(64 << 20)),
            (Some(48 << 20), Some(BudgetSource::Cgroup))
        );
        assert_eq!(
            budget_of(Mode::Lean, None, Some(8 << 30)),
            (Some((8 << 30) - (512 << 20)), Some(BudgetSource::Cgroup))
        );
    }

    #[test]
    fn lean_mode_sizes_everything_from_a_small_budget() {
        let mut c = Config {
            mode: Mode::Lean,
            memory_budget: Some(ByteSize(40 << 20)),
            insecure_no_client_password: true,
            ..Config::default()
        };
        let b = apply(&mut c, &HashMap::new(), None);
        assert_eq!(b.bytes, Some(40 << 20));
        // LMDB's share: its page copies; its cache is the page cache, outside the budget.
        assert_eq!(c.store.cache_bytes, ByteSize((40 << 20) / 32));
        assert_eq!(crate::store::Engine::Lmdb.apply_batch(c.store.cache_bytes.0), 53);
        assert_eq!(crate::store::Engine::Lmdb.apply_batch(64 << 20), 2730, "standard mode's default cache");
        // redb writes out what does not fit its cache: its batches need not shrink with it.
        assert_eq!(
            crate::store::Engine::Redb.apply_batch(1 << 20),
            crate::store::Engine::Redb.apply_batch(1 << 30)
        );
        assert_eq!(crate::store::Engine::Fjall.apply_batch(1 << 20), crate::store::buffered::APPLY_BATCH);
        assert_eq!(c.store.write_buffer_bytes, ByteSize(4 << 20));
        assert_eq!(c.cluster.max_hint_bytes, ByteSize(2 << 20));
        assert_eq!(c.rpc.stream_window, ByteSize(160 << 10));
        assert_eq!(c.rpc.connection_window, ByteSize(1280 << 10));
        assert_eq!(c.limits.max_clients, 32);
        assert_eq!(b.worker_threads, Some(1));
        assert_eq!(b.near_cache_bytes(), 4 << 20);
        assert_eq!(c.store.engine, crate::config::StoreEngine::Lmdb, "lean mode's default engine");
        assert_eq!(b.pressure_bytes(), Some((40 << 20) / 10 * 9));
        c.validate().expect("the sized config is valid");
        // The sized parts add up to well under the budget, leaving room for the rest.
        let sized = c.store.cache_bytes.0
            + c.store.write_buffer_bytes.0
            + c.cluster.max_hint_bytes.0
            + b.near_cache_bytes();
        assert!(sized < (40 << 20) / 2, "{sized}");
    }

    #[test]
    fn the_default_engine_is_the_one_whose_data_the_store_holds() {
        use crate::config::StoreEngine;
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        assert_eq!(default_engine(Mode::Lean, &store), StoreEngine::Lmdb, "no directory yet");
        assert_eq!(default_engine(Mode::Standard, &store), STANDARD_DEFAULT);
        std::fs::create_dir_all(&store).unwrap();
        assert_eq!(default_engine(Mode::Lean, &store), StoreEngine::Lmdb, "an empty directory");
        // Data from before the engine marker is sled's.
        std::fs::write(store.join("conf"), "x").unwrap();
        assert_eq!(default_engine(Mode::Lean, &store), StoreEngine::Sled);
        std::fs::write(store.join("ENGINE"), "redb").unwrap();
        assert_eq!(default_engine(Mode::Lean, &store), StoreEngine::Redb);
        assert_eq!(default_engine(Mode::Standard, &store), StoreEngine::Redb);
        // An explicit setting wins (the open then refuses the mismatch, naming the setting).
        let mut c = Config {
            mode: Mode::Lean,
            data_dir: dir.path().to_path_buf(),
            store: crate::config::StoreConfig { engine: StoreEngine::Fjall, ..Default::default() },
            ..Config::default()
        };
        apply(&mut c, &explicit(&["store.engine"]), None);
        assert_eq!(c.store.engine, StoreEngine::Fjall);
        c.store.engine = StoreEngine::Fjall;
        apply(&mut c, &HashMap::new(), None);
        assert_eq!(c.store.engine, StoreEngine::Redb);
    }

    #[test]
    fn the_floors_keep_a_tiny_budget_valid() {
        let mut c = Config {
            mode: Mode::Lean,
            memory_budget: Some(ByteSize(4 << 20)),
            insecure_no_client_password: true,
            ..Config::default()
        };
        apply(&mut c, &HashMap::new(), None);
        assert_eq!(c.store.cache_bytes, ByteSize(1 << 20));
        assert_eq!(c.rpc.stream_window, ByteSize(16 << 10));
        c.validate().expect("valid");
    }

    #[test]
    fn standard_mode_only_lowers_the_defaults_and_explicit_settings_stand() {
        let mut c = Config::default();
        let b = apply(&mut c, &HashMap::new(), None);
        assert_eq!((b.bytes, c.store.cache_bytes), (None, ByteSize(64 << 20)));
        // In a 128 MiB container: 96 MiB budget, the cache lowered to a fifth of it (to
        // a thirty-second with LMDB, the default engine, whose cache is the page cache).
        let mut c = Config::default();
        c.store.write_buffer_bytes = ByteSize(48 << 20);
        let b = apply(&mut c, &explicit(&["store.write_buffer_bytes"]), Some(128 << 20));
        assert_eq!(b.bytes, Some(96 << 20));
        assert_eq!(c.store.cache_bytes.0, (96 << 20) / 32);
        assert_eq!(c.store.write_buffer_bytes, ByteSize(48 << 20), "explicit, kept");
        assert_eq!(b.worker_threads, None);
        // Unset, the write buffer is half the budget, and never above its default.
        let mut c = Config::default();
        apply(&mut c, &HashMap::new(), Some(128 << 20));
        assert_eq!(c.store.write_buffer_bytes, ByteSize(48 << 20));
        let mut c = Config::default();
        apply(&mut c, &HashMap::new(), Some(1 << 30));
        assert_eq!(c.store.write_buffer_bytes, ByteSize(128 << 20), "768 MiB of budget: the default");
        let mut c = Config {
            store: crate::config::StoreConfig {
                engine: crate::config::StoreEngine::Redb,
                ..Default::default()
            },
            ..Config::default()
        };
        apply(&mut c, &explicit(&["store.engine"]), Some(128 << 20));
        assert_eq!(c.store.cache_bytes.0, (96 << 20) / 5);
        // In a large one the defaults stand.
        let mut c = Config::default();
        apply(&mut c, &HashMap::new(), Some(16 << 30));
        assert_eq!(c, Config::default());
    }

    #[test]
    fn cgroup_limits_are_read_for_v1_and_v2_and_the_smallest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let v1 = root.join("memory/docker/abc");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(root.join("memory/memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "67108864\n").unwrap();
        assert_eq!(cgroup_limit(root, "4:memory:/docker/abc\n3:cpu:/x\n"), Some(64 << 20));
        assert_eq!(cgroup_limit(root, "4:cpu,cpuacct:/x\n"), None);
        let v2 = root.join("kubepods/pod1");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(root.join("kubepods/memory.max"), "max\n").unwrap();
        std::fs::write(v2.join("memory.max"), "268435456\n").unwrap();
        assert_eq!(cgroup_limit(root, "0::/kubepods/pod1\n"), Some(256 << 20));
        // Inside a container its own cgroup is the root.
        std::fs::write(root.join("memory.max"), "134217728\n").unwrap();
        assert_eq!(cgroup_limit(root, "0::/\n"), Some(128 << 20));
    }
}
