//! When writes reach the disk.
//!
//! With `fsync = "always"` a write is acknowledged only after a flush that started after
//! it completed; flushes are shared (group commit), so many concurrent writers cost one
//! disk sync. With `fsync = "interval"` the flusher syncs at most `fsync_interval` apart and
//! writers never wait: a `kill -9` loses at most that interval. Either way the flusher
//! publishes `durable_through_ms`, the instant before which every acknowledged write is
//! on disk, and a clean shutdown ends with a final flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};
use crate::hlc::unix_ms;

/// How writes are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Acknowledge a write only once it is on disk.
    Always,
    /// Flush at this interval; acknowledge at once.
    Interval(Duration),
}

#[derive(Clone, Debug, Default)]
struct Flushed {
    /// Every write with a sequence number up to this one is on disk.
    seq: u64,
    /// The last failed flush: writes up to `failed_seq` not yet covered by `seq` failed.
    failed_seq: u64,
    error: Option<Arc<str>>,
}

pub struct Flusher {
    store: Arc<dyn Store>,
    policy: FsyncPolicy,
    written: AtomicU64,
    wake: Notify,
    flushed: watch::Sender<Flushed>,
    durable_through_ms: AtomicU64,
    failures: AtomicU64,
}

/// A write was applied but could not be made durable.
#[derive(Debug, thiserror::Error)]
#[error("write not durable: flushing the store failed: {0}")]
pub struct NotDurable(pub Arc<str>);

impl FsyncPolicy {
    /// The policy `store.fsync` and `store.fsync_interval` ask for.
    pub fn of(store: &crate::config::StoreConfig) -> Self {
        match store.fsync {
            crate::config::Fsync::Always => FsyncPolicy::Always,
            crate::config::Fsync::Interval => FsyncPolicy::Interval(store.fsync_interval),
        }
    }
}

impl Flusher {
    pub fn new(store: Arc<dyn Store>, policy: FsyncPolicy) -> Arc<Self> {
        Arc::new(Flusher {
            store,
            policy,
            written: AtomicU64::new(0),
            wake: Notify::new(),
            flushed: watch::Sender::new(Flushed::default()),
            durable_through_ms: AtomicU64::new(unix_ms()),
            failures: AtomicU64::new(0),
        })
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// Every write acknowledged before this Unix-millisecond instant is on disk.
    pub fn durable_through_ms(&self) -> u64 {
        self.durable_through_ms.load(Ordering::Acquire)
    }

    /// The error of the last flush, if it failed (cleared by the next success).
    pub fn last_error(&self) -> Option<Arc<str>> {
        self.flushed.borrow().error.clone()
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Called after a write has been applied to the store. Under `Always`, returns once
    /// the write is on disk.
    pub async fn written(&self) -> Result<(), NotDurable> {
        let seq = self.written.fetch_add(1, Ordering::AcqRel) + 1;
        if self.policy != FsyncPolicy::Always {
            return Ok(());
        }
        let mut rx = self.flushed.subscribe();
        self.wake.notify_one();
        let state = rx
            .wait_for(|f| f.seq >= seq || f.failed_seq >= seq)
            .await
            .map_err(|_| NotDurable("the node is shutting down".into()))?;
        match (&state.error, state.seq >= seq) {
            (_, true) => Ok(()),
            (Some(e), false) => Err(NotDurable(e.clone())),
            (None, false) => unreachable!("wait_for returned before the condition held"),
        }
    }

    /// Runs until `shutdown`, then flushes one last time.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = match self.policy {
            FsyncPolicy::Always => Duration::from_secs(1),
            FsyncPolicy::Interval(d) => d,
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
            self.flush_once().await;
        }
        self.flush_once().await;
        tracing::info!(durable_through_ms = self.durable_through_ms(), "store flushed at shutdown");
    }

    async fn flush_once(&self) {
        let target = self.written.load(Ordering::Acquire);
        let started = unix_ms();
        if target == self.flushed.borrow().seq {
            self.durable_through_ms.store(started, Ordering::Release);
            return;
        }
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("flush task failed: {e}"))));
        match result {
            Ok(()) => {
                self.durable_through_ms.store(started, Ordering::Release);
                self.flushed.send_modify(|f| {
                    f.seq = target;
                    f.error = None;
                });
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "flushing the store failed; writes since the last flush are not durable");
                self.flushed.send_modify(|f| {
                    f.failed_seq = target;
                    f.error = Some(e.to_string().into());
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SledStore, StoreOptions};

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        Arc::new(
            SledStore::open(&StoreOptions {
                path: dir.into(),
                partitions: 4,
                cache_bytes: 1 << 20,
                tombstone_grace: Duration::from_secs(1),
                datacenter: "dc1".into(),
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn always_waits_for_a_flush_that_covers_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let f = Flusher::new(store(dir.path()), FsyncPolicy::Always);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(f.clone().run(shutdown.clone()));
        let before = f.flushed.borrow().seq;
        f.written().await.unwrap();
        assert!(f.flushed.borrow().seq > before);
        // Many concurrent writers share flushes.
        let writers: Vec<_> = (0..50)
            .map(|_| {
                let f = f.clone();
                tokio::spawn(async move { f.written().await })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        assert_eq!(f.flushed.borrow().seq, 51);
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn interval_acknowledges_at_once_and_advances_durable_through() {
        let dir = tempfile::tempdir().unwrap();
        let f = Flusher::new(store(dir.path()), FsyncPolicy::Interval(Duration::from_millis(100)));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(f.clone().run(shutdown.clone()));
        f.written().await.unwrap();
        assert_eq!(f.flushed.borrow().seq, 0);
        let mut rx = f.flushed.subscribe();
        rx.wait_for(|s| s.seq == 1).await.unwrap();
        shutdown.cancel();
        task.await.unwrap();
    }
}
