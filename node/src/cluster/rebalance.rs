//! Rebalance: a node that becomes an owner of a partition copies it from the owners that
//! had it, in the background, throttled.
//!
//! When placement changes, every partition this node gained is queued with the nodes to
//! copy it from (its previous owners that are still here; when this node had no cluster
//! before — it just started or was alone — the partition's other current owners). A
//! worker copies up to `rebalance.max_parallel` partitions at once, each as a series of
//! [`messages::PullAfter`] chunks that follow the source's change sequence (every key once,
//! with its current record, in the order of its last change), applied by
//! last-writer-wins, so writes that arrive meanwhile are never overwritten by older
//! copies; a key written at the source while its partition is copied moves to the end of
//! the sequence and comes in a later chunk. A source of an older version is copied with
//! [`messages::Pull`] chunks in HLC order instead. The bytes copied per second, over all
//! partitions, stay under `rebalance.max_bytes_per_sec`.
//!
//! While a partition is arriving, reads and writes do not wait for it: this node's own
//! answer for its keys is completed from the copy's sources (`arriving.rs`), and writes
//! are decided on what a quorum holds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prometheus::IntGauge;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::messages;
use super::{Cluster, DataError, decode};
use crate::hlc::Hlc;
use crate::peer::messages::{Kind, Refusal};
use crate::peer::{RpcError, Target};
use crate::placement::{NodeId, Partition};
use crate::record::Record;

/// How long a partition whose sources all failed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Records asked for per chunk, besides `rebalance.chunk_bytes`: bounds the per-record
/// work of a chunk of small values (what `rebalance.chunk_records` used to default to).
const CHUNK_RECORDS: u32 = 1_000;

/// Rebalance settings, from config.
#[derive(Clone, Copy, Debug)]
pub struct RebalanceOptions {
    pub max_bytes_per_sec: u64,
    pub max_parallel: usize,
    /// Bytes of keys and values asked for per chunk.
    pub chunk_bytes: u32,
}

/// A partition to copy and where from, best source first (node ids: their addresses are
/// looked up at each attempt, so a source that moved is reached where it is now).
#[derive(Debug, PartialEq, Eq)]
pub struct Task {
    pub partition: Partition,
    pub sources: Vec<NodeId>,
}

/// What the worker reports in `/v1/status` and logs.
#[derive(Default)]
pub struct RebalanceStatus {
    inner: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    /// Handed to the worker and not yet taken by it.
    queued: usize,
    pending: usize,
    active: usize,
    done: u64,
    failed_attempts: u64,
    keys: u64,
    bytes: u64,
    /// When the current round of work started, and its totals at that time.
    round: Option<(Instant, u64, u64, u64)>,
}

impl RebalanceStatus {
    fn update(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// `n` more partitions are about to be handed to the worker.
    pub fn expect(&self, n: usize) {
        self.update(|p| p.queued += n);
    }

    /// `n` of the partitions expected were queued already (their entries were replaced).
    pub fn coalesced(&self, n: usize) {
        self.update(|p| p.queued = p.queued.saturating_sub(n));
    }

    /// Whether partitions are queued or being copied.
    pub fn busy(&self) -> bool {
        self.in_progress() > 0
    }

    /// Partitions queued or being copied.
    pub fn in_progress(&self) -> usize {
        let p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.queued + p.pending + p.active
    }

    /// For `/v1/status`'s workers list.
    pub fn json(&self) -> Value {
        let p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let pending = p.queued + p.pending;
        let running = pending + p.active > 0;
        // This round: partitions done since it started, and the time left at that pace.
        let (round_done, eta) = match p.round {
            Some((started, done, _, _)) => {
                let round_done = p.done - done;
                let elapsed = started.elapsed().as_secs_f64();
                let left = (pending + p.active) as f64;
                let eta = (round_done > 0).then(|| (left * elapsed / round_done as f64).ceil() as u64);
                (round_done, eta)
            }
            None => (0, None),
        };
        json!({
            "round_partitions_done": round_done,
            "eta_seconds": eta,
            "name": "rebalance",
            "state": if running { "running" } else { "idle" },
            "partitions_pending": pending,
            "partitions_active": p.active,
            "partitions_done": p.done,
            "failed_attempts": p.failed_attempts,
            "keys_moved": p.keys,
            "bytes_moved": p.bytes,
        })
    }
}

/// Paces copying to a byte rate shared by every partition being copied.
struct Throttle {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Throttle {
    /// How long to wait after moving `bytes` so that the rate stays under the limit.
    fn pause_for(&self, bytes: usize) -> Duration {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
        next.saturating_duration_since(now)
    }
}

impl Cluster {
    /// The rebalance worker: copies the partitions queued by placement changes until `stop`.
    pub async fn rebalance(self: Arc<Self>, stop: CancellationToken) {
        let options = self.rebalance_options;
        let throttle = Throttle {
            bytes_per_sec: options.max_bytes_per_sec.max(1) as f64,
            next: Mutex::new(Instant::now()),
        };
        let throttle = &throttle;
        let mut queue: VecDeque<Task> = VecDeque::new();
        let mut active = FuturesUnordered::new();
        loop {
            let idle = queue.is_empty() && active.is_empty();
            tokio::select! {
                _ = stop.cancelled() => return,
                task = self.rebalance_tasks.next() => {
                    self.rebalance_status.update(|p| {
                        p.queued = p.queued.saturating_sub(1);
                        if idle {
                            p.round = Some((Instant::now(), p.done, p.keys, p.bytes));
                        }
                    });
                    if idle {
                        tracing::info!("rebalance started");
                    }
                    // A partition queued again replaces its older entry (newer sources).
                    queue.retain(|t: &Task| t.partition != task.partition);
                    queue.push_back(task);
                },
                Some((task, result)) = active.next(), if !active.is_empty() => {
                    let task: Task = task;
                    match result {
                        Ok((keys, bytes)) => {
                            self.arriving.done(task.partition);
                            self.rebalance_status.update(|p| {
                                p.done += 1;
                                p.keys += keys;
                                p.bytes += bytes;
                            })
                        }
                        Err(e) => {
                            tracing::warn!(partition = task.partition, error = %e, "copying a partition failed; will retry");
                            self.rebalance_status.update(|p| p.failed_attempts += 1);
                            self.metrics.rebalance_failures.inc();
                            queue.push_back(task);
                        }
                    }
                }
            }
            while active.len() < options.max_parallel.max(1)
                && let Some(task) = queue.pop_front()
            {
                let attempt = self.clone();
                active.push(async move {
                    let result = attempt.copy_partition(&task, options.chunk_bytes, throttle).await;
                    if result.is_err() {
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                    (task, result)
                });
            }
            self.rebalance_status.update(|p| {
                p.pending = queue.len();
                p.active = active.len();
            });
            if queue.is_empty() && active.is_empty() && !idle {
                self.rebalance_status.update(|p| {
                    if let Some((started, done, keys, bytes)) = p.round.take() {
                        tracing::info!(
                            partitions = p.done - done,
                            keys = p.keys - keys,
                            bytes = p.bytes - bytes,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "rebalance finished"
                        );
                    }
                });
            }
        }
    }

    /// Copies one partition from the first of its sources that answers; returns the keys
    /// and bytes received. Skips a partition this node no longer owns.
    async fn copy_partition(
        &self,
        task: &Task,
        chunk_bytes: u32,
        throttle: &Throttle,
    ) -> Result<(u64, u64), DataError> {
        let Some(topology) = &self.topology else { return Ok((0, 0)) };
        let mut errors = Vec::new();
        let mut copy = Copy { limit: CHUNK_RECORDS, max_bytes: chunk_bytes.max(1), keys: 0, bytes: 0 };
        // Where the copy in HLC order stands, kept from one source to the next: HLCs, unlike
        // change numbers, are the same on every owner.
        let mut from = Hlc::ZERO;
        for &node in &task.sources {
            let Ok(source) = self.target(&self.view(), node) else {
                errors.push(format!("node {node} is no longer a member"));
                continue;
            };
            let copied = match self.pull_in_sequence(topology, task, &source, &mut copy, throttle).await {
                Err(Pulled::Refused) => {
                    tracing::info!(source = %node, partition = task.partition, "the source does not take pull_after: copying in HLC order");
                    self.pull_in_hlc_order(topology, task, &source, &mut copy, &mut from, throttle).await
                }
                other => other,
            };
            match copied {
                Ok(()) => return Ok((copy.keys, copy.bytes)),
                Err(Pulled::Failed(e)) => errors.push(e),
                Err(Pulled::Refused) => errors.push("refused pull_after and pull".into()),
                Err(Pulled::Data(e)) => return Err(e),
            }
        }
        Err(DataError::Unavailable(format!(
            "no source of partition {} answered: {}",
            task.partition,
            errors.join("; ")
        )))
    }

    /// Copies the partition from `source` by its change sequence ([`messages::PullAfter`]),
    /// from position 0, until a chunk says there is no more or this node stops owning it.
    async fn pull_in_sequence(
        &self,
        topology: &super::Topology,
        task: &Task,
        source: &Target,
        copy: &mut Copy,
        throttle: &Throttle,
    ) -> Result<(), Pulled> {
        let mut after = 0;
        loop {
            if !self.view().placement.is_owner(task.partition, self.node) {
                return Ok(());
            }
            let msg = messages::PullAfter {
                partition: task.partition,
                after,
                limit: copy.limit,
                max_bytes: copy.max_bytes,
            };
            let chunk = match topology.peers.call(source, &msg, topology.timeout).await {
                Ok(chunk) => chunk,
                Err(RpcError::Refused { refusal: Refusal::UnknownKind(k), .. })
                    if k == Kind::PullAfter as u8 =>
                {
                    return Err(Pulled::Refused);
                }
                Err(e) => return Err(Pulled::Failed(e.to_string())),
            };
            self.apply_chunk(&chunk.records, copy, throttle).await?;
            if !chunk.more {
                return Ok(());
            }
            after = chunk.upto.max(after);
        }
    }

    /// Copies the partition from `source` in HLC order ([`messages::Pull`]), for a source
    /// of a version before [`messages::PullAfter`], resuming at `from`.
    async fn pull_in_hlc_order(
        &self,
        topology: &super::Topology,
        task: &Task,
        source: &Target,
        copy: &mut Copy,
        from: &mut Hlc,
        throttle: &Throttle,
    ) -> Result<(), Pulled> {
        let (mut limit, mut max_bytes) = (copy.limit, copy.max_bytes);
        loop {
            if !self.view().placement.is_owner(task.partition, self.node) {
                return Ok(());
            }
            let msg = messages::Pull { partition: task.partition, from: *from, limit, max_bytes };
            let chunk = topology
                .peers
                .call(source, &msg, topology.timeout)
                .await
                .map_err(|e| Pulled::Failed(e.to_string()))?;
            self.apply_chunk(&chunk.records, copy, throttle).await?;
            let Some(next) = chunk.next else { return Ok(()) };
            // The next chunk starts where the source said (inclusive: records sharing
            // that HLC are sent again rather than skipped); a chunk that got no further
            // needs a larger one to get past records sharing one HLC.
            if next <= *from {
                limit = limit.saturating_mul(2);
                max_bytes = max_bytes.saturating_mul(2);
            } else {
                (limit, max_bytes) = (copy.limit, copy.max_bytes);
            }
            *from = next.max(*from);
        }
    }

    /// Applies one chunk (by last-writer-wins), counts it and waits as the throttle says.
    async fn apply_chunk(
        &self,
        wire: &[(Bytes, messages::WireRecord)],
        copy: &mut Copy,
        throttle: &Throttle,
    ) -> Result<(), Pulled> {
        let size: usize = wire.iter().map(|(k, w)| k.len() + w.0.len()).sum();
        let records: Vec<(Bytes, Record)> =
            wire.iter().map(|(k, w)| Ok((k.clone(), decode(w)?))).collect::<Result<_, DataError>>()?;
        let count = records.len();
        self.local.apply_batch(records).await?;
        copy.keys += count as u64;
        copy.bytes += size as u64;
        self.metrics.rebalance_bytes.inc_by(size as u64);
        tokio::time::sleep(throttle.pause_for(size)).await;
        Ok(())
    }
}

/// A partition's copy: the chunk sizes asked for, and what has arrived.
struct Copy {
    limit: u32,
    max_bytes: u32,
    keys: u64,
    bytes: u64,
}

/// Why a copy from one source stopped short.
enum Pulled {
    /// The source does not know the message (a node of an older version).
    Refused,
    /// The source did not answer; the next source is tried.
    Failed(String),
    /// A chunk could not be decoded or applied here: the copy stops.
    Data(DataError),
}

impl From<DataError> for Pulled {
    fn from(e: DataError) -> Self {
        Pulled::Data(e)
    }
}

/// The partitions handed to the rebalance worker by the placement watcher.
///
/// It holds at most one task per partition: a partition queued again replaces its older
/// task (newer sources), in its place, as the worker does with the tasks it took. So it
/// never holds more than `store.partitions` tasks (at most 65536), and the watcher, which
/// must never wait, never waits here nor drops a task. Its depth is
/// `opencluster_queue_depth{queue="rebalance_tasks"}`.
pub struct TaskQueue {
    tasks: Mutex<Tasks>,
    ready: Notify,
    depth: IntGauge,
}

#[derive(Default)]
struct Tasks {
    order: VecDeque<Partition>,
    by_partition: HashMap<Partition, Task>,
}

impl TaskQueue {
    pub fn new(depth: IntGauge) -> Self {
        TaskQueue { tasks: Mutex::default(), ready: Notify::new(), depth }
    }

    /// Queues `tasks`; returns how many of them replaced a task of their partition.
    pub fn push(&self, tasks: Vec<Task>) -> usize {
        let mut q = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = 0;
        for task in tasks {
            let partition = task.partition;
            if q.by_partition.insert(partition, task).is_some() {
                replaced += 1;
            } else {
                q.order.push_back(partition);
            }
        }
        self.depth.set(q.by_partition.len() as i64);
        drop(q);
        // One consumer: a wake-up given while it is not waiting is kept for its next wait.
        self.ready.notify_one();
        replaced
    }

    fn pop(&self) -> Option<Task> {
        let mut q = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let task = loop {
            let partition = q.order.pop_front()?;
            if let Some(task) = q.by_partition.remove(&partition) {
                break task;
            }
        };
        self.depth.set(q.by_partition.len() as i64);
        Some(task)
    }

    /// The oldest task, waiting for one. Cancel-safe: a task is only taken when returned.
    pub async fn next(&self) -> Task {
        loop {
            if let Some(task) = self.pop() {
                return task;
            }
            self.ready.notified().await;
        }
    }

    /// Tasks queued now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).by_partition.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(partition: Partition, source: u64) -> Task {
        Task { partition, sources: vec![NodeId(source)] }
    }

    #[tokio::test]
    async fn a_partition_queued_again_replaces_its_task_and_the_queue_never_outgrows_the_partitions() {
        let depth = IntGauge::new("depth", "test").unwrap();
        let queue = TaskQueue::new(depth.clone());
        assert_eq!(queue.push(vec![task(1, 10), task(2, 10)]), 0);
        // A second placement change before the worker took anything: partition 1 again,
        // with newer sources, keeps its place; the queue holds one task per partition.
        assert_eq!(queue.push(vec![task(1, 11), task(3, 11)]), 1);
        assert_eq!((queue.len(), depth.get()), (3, 3));
        let all: Vec<u16> = (0..1024).collect();
        for _ in 0..3 {
            queue.push(all.iter().map(|&p| task(p, 12)).collect());
        }
        assert_eq!((queue.len(), depth.get()), (1024, 1024));
        assert_eq!(queue.next().await, task(1, 12));
        assert_eq!(queue.next().await, task(2, 12));
        assert_eq!(depth.get(), 1022);
        // A wait ends when a task is pushed.
        let queue = std::sync::Arc::new(TaskQueue::new(IntGauge::new("d", "t").unwrap()));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        // On this single-threaded test runtime one yield runs the waiter until it parks.
        tokio::task::yield_now().await;
        queue.push(vec![task(7, 1)]);
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap(), task(7, 1));
    }

    #[test]
    fn the_throttle_paces_bytes_to_the_rate() {
        let throttle = Throttle { bytes_per_sec: 1000.0, next: Mutex::new(Instant::now()) };
        // 500 bytes at 1000 B/s: the next may start half a second later.
        let first = throttle.pause_for(500);
        assert!(first <= Duration::from_millis(500) && first >= Duration::from_millis(490), "{first:?}");
        let second = throttle.pause_for(500);
        assert!(second >= Duration::from_millis(990) && second <= Duration::from_secs(1), "{second:?}");
    }
}
