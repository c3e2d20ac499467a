//! Watching the node's memory against its budget, and backing off under pressure.
//!
//! The sizes come from `config::memory` at load; this is the running part. Every
//! [`SAMPLE_INTERVAL`] the watcher reads the process's resident memory and the page
//! cache charged to its cgroup (`memory.stat`), publishes both with the budget in
//! `/metrics` and `/v1/status`, and, when its anonymous RSS (RSS less the file pages it
//! maps: an engine that maps its file, LMDB, has page cache in its RSS, which the kernel
//! reclaims) passes nine tenths of the budget, applies
//! backpressure: the write buffer holds a quarter of its limit (writers wait sooner, the
//! applier moves smaller batches) and freed heap is given back at once. Pressure ends
//! below eight tenths. Page cache is not counted against the budget: the kernel reclaims
//! clean pages before it OOM-kills (`docs/storage-study.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge, Registry};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, MemoryBudget};
use crate::store::Store;

/// How often memory is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

/// The memory gauges of `/metrics`.
#[derive(Clone)]
pub struct MemoryMetrics {
    pub rss: IntGauge,
    pub anon: IntGauge,
    pub page_cache: IntGauge,
    pub budget: IntGauge,
    pub pressure: IntGauge,
    pub pressure_total: IntCounter,
}

impl MemoryMetrics {
    pub fn register(r: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            r.register(Box::new(g.clone())).expect("metric names are unique");
            g
        };
        let pressure_total = IntCounter::new(
            "opencluster_memory_pressure_total",
            "Times the node's RSS passed nine tenths of its memory budget and it applied backpressure",
        )
        .expect("valid counter");
        r.register(Box::new(pressure_total.clone())).expect("metric names are unique");
        MemoryMetrics {
            rss: gauge(
                "opencluster_process_resident_memory_bytes",
                "Resident memory of the node process (RSS)",
            ),
            anon: gauge(
                "opencluster_process_anon_memory_bytes",
                "Resident memory of the node process less the file pages it maps (what the budget counts)",
            ),
            page_cache: gauge(
                "opencluster_cgroup_page_cache_bytes",
                "Page cache charged to the node's cgroup (memory.stat: file on cgroup v2, total_cache on v1)",
            ),
            budget: gauge(
                "opencluster_memory_budget_bytes",
                "The memory budget the node sizes itself from (0: none)",
            ),
            pressure: gauge(
                "opencluster_memory_pressure",
                "1 while the node applies backpressure for memory",
            ),
            pressure_total,
        }
    }
}

/// The watcher's latest readings.
pub struct MemoryWatch {
    pub budget: MemoryBudget,
    /// What was sized from the budget, for status.
    sized: Value,
    rss: AtomicU64,
    anon: AtomicU64,
    page_cache: AtomicU64,
    pressure: AtomicBool,
    pressure_total: AtomicU64,
    stat_file: Option<PathBuf>,
}

impl MemoryWatch {
    pub fn new(config: &Config) -> Arc<Self> {
        let sized = json!({
            "store_cache_bytes": config.store.cache_bytes.0,
            "write_buffer_bytes": config.store.write_buffer_bytes.0,
            "hint_bytes": config.cluster.max_hint_bytes.0,
            "near_cache_bytes": config.budget.near_cache_bytes(),
            "rpc_stream_window": config.rpc.stream_window.0,
            "rpc_connection_window": config.rpc.connection_window.0,
            "rpc_max_batch_bytes": config.rpc.max_batch_bytes.0,
            "rpc_max_queued_requests": config.rpc.max_queued_requests,
            "rebalance_chunk_bytes": config.rebalance.chunk_bytes.0,
            "max_clients": config.limits.max_clients,
            "worker_threads": config.budget.worker_threads,
        });
        let me = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Arc::new(MemoryWatch {
            budget: config.budget.clone(),
            sized,
            rss: AtomicU64::new(crate::metrics::process_rss_bytes()),
            anon: AtomicU64::new(anon_rss_bytes()),
            page_cache: AtomicU64::new(0),
            pressure: AtomicBool::new(false),
            pressure_total: AtomicU64::new(0),
            stat_file: memory_stat_file(Path::new("/sys/fs/cgroup"), &me),
        })
    }

    /// Samples memory until `stop`, applying backpressure to `store`'s write buffer.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        metrics: MemoryMetrics,
        stop: CancellationToken,
    ) {
        metrics.budget.set(self.budget.bytes.unwrap_or(0) as i64);
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let rss = crate::metrics::process_rss_bytes();
            self.rss.store(rss, Ordering::Relaxed);
            metrics.rss.set(rss as i64);
            let anon = anon_rss_bytes();
            self.anon.store(anon, Ordering::Relaxed);
            metrics.anon.set(anon as i64);
            if let Some(cache) = self.stat_file.as_deref().and_then(page_cache_bytes) {
                self.page_cache.store(cache, Ordering::Relaxed);
                metrics.page_cache.set(cache as i64);
            }
            let Some(high) = self.budget.pressure_bytes() else { continue };
            let was = self.pressure.load(Ordering::Relaxed);
            let now = pressure_after(was, anon, high);
            if now != was {
                self.pressure.store(now, Ordering::Relaxed);
                metrics.pressure.set(i64::from(now));
                if let Some(budget) = store.write_budget() {
                    budget.set_pressure(now);
                }
                if now {
                    self.pressure_total.fetch_add(1, Ordering::Relaxed);
                    metrics.pressure_total.inc();
                    tracing::warn!(
                        rss,
                        anon,
                        budget = self.budget.bytes,
                        "memory pressure: shrinking the write buffer"
                    );
                } else {
                    tracing::info!(rss, anon, "memory pressure over");
                }
            }
            if now && tokio::task::spawn_blocking(crate::heap::trim).await.is_err() {
                return;
            }
        }
    }

    /// The `memory` object of `/v1/status`.
    pub fn status(&self) -> Value {
        json!({
            "mode": self.budget.mode,
            "budget_bytes": self.budget.bytes,
            "budget_source": self.budget.source,
            "cgroup_limit_bytes": self.budget.cgroup_limit,
            "rss_bytes": self.rss.load(Ordering::Relaxed),
            "rss_anon_bytes": self.anon.load(Ordering::Relaxed),
            "page_cache_bytes": self.page_cache.load(Ordering::Relaxed),
            "pressure": self.pressure.load(Ordering::Relaxed),
            "pressure_events": self.pressure_total.load(Ordering::Relaxed),
            "sized": self.sized,
        })
    }
}

/// Resident memory less the file-backed pages mapped (`/proc/self/statm`: resident minus
/// shared), 0 where unavailable.
pub fn anon_rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut fields = statm.split_whitespace().skip(1).map(|f| f.parse::<u64>().unwrap_or(0));
    let (resident, shared) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
    resident.saturating_sub(shared) * 4096
}

/// Pressure starts above `high` and ends below eight ninths of it (so it does not flap).
pub fn pressure_after(was: bool, rss: u64, high: u64) -> bool {
    if was { rss >= high / 9 * 8 } else { rss > high }
}

/// The `memory.stat` of this process's cgroup: its own directory when mounted at its
/// path (a host), else the root's (a container sees its cgroup as the root).
pub fn memory_stat_file(root: &Path, proc_self_cgroup: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim().trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(rel).join("memory.stat"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(root.join("memory").join(rel).join("memory.stat"));
        }
    }
    candidates.push(root.join("memory.stat"));
    candidates.push(root.join("memory/memory.stat"));
    candidates.into_iter().find(|p| p.is_file())
}

/// Page cache charged to the cgroup: `file` (v2) or `total_cache`/`cache` (v1).
pub fn page_cache_bytes(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    parse_page_cache(&text)
}

fn parse_page_cache(text: &str) -> Option<u64> {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
        })
    };
    field("file").or_else(|| field("total_cache")).or_else(|| field("cache"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_has_hysteresis() {
        assert!(!pressure_after(false, 900, 900));
        assert!(pressure_after(false, 901, 900));
        assert!(pressure_after(true, 800, 900));
        assert!(!pressure_after(true, 799, 900));
    }

    #[test]
    fn page_cache_is_read_from_v1_and_v2_memory_stat() {
        assert_eq!(parse_page_cache("anon 10\nfile 4096\nfile_mapped 0\n"), Some(4096));
        assert_eq!(parse_page_cache("cache 100\nrss 5\ntotal_cache 300\n"), Some(300));
        assert_eq!(parse_page_cache("cache 100\nrss 5\n"), Some(100));
        assert_eq!(parse_page_cache("rss 5\n"), None);
    }

    #[test]
    fn the_stat_file_of_the_own_cgroup_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("memory/test/a")).unwrap();
        std::fs::write(root.join("memory/memory.stat"), "cache 1\n").unwrap();
        std::fs::write(root.join("memory/test/a/memory.stat"), "cache 2\n").unwrap();
        assert_eq!(
            memory_stat_file(root, "9:memory:/test/a\n"),
            Some(root.join("memory/test/a/memory.stat"))
        );
        assert_eq!(memory_stat_file(root, "9:memory:/elsewhere\n"), Some(root.join("memory/memory.stat")));
    }
}
