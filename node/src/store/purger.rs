//! The background worker that removes expired values and old tombstones from disk.
//!
//! Reads never return an expired value whether or not it was purged; purging only gives
//! the space back. Each turn removes at most a bounded batch so it never holds the store
//! long, and turns repeat at once while there is a backlog.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Store, TombstoneHold};
use crate::hlc::unix_ms;

/// Records purged per turn.
const BATCH: usize = 1_000;

#[derive(Debug, Default)]
pub struct PurgeStatus {
    pub purged: AtomicU64,
    pub last_run_ms: AtomicU64,
    pub errors: AtomicU64,
    /// Times a tombstone past its grace was kept because a remote datacenter had not got
    /// it yet.
    pub held: AtomicU64,
    /// Tombstones purged after `store.tombstone_hold` although a remote datacenter had
    /// not got them: it may keep the deleted keys.
    pub unshipped: AtomicU64,
}

pub async fn run(
    store: Arc<dyn Store>,
    hold: Arc<dyn TombstoneHold>,
    interval: Duration,
    status: Arc<PurgeStatus>,
    shutdown: CancellationToken,
) {
    loop {
        let (store, hold) = (store.clone(), hold.clone());
        let now = unix_ms();
        let result = tokio::task::spawn_blocking(move || store.purge_due(now, BATCH, &*hold)).await;
        status.last_run_ms.store(now, Ordering::Relaxed);
        let backlog = match result {
            Ok(Ok(n)) => {
                status.purged.fetch_add(n as u64, Ordering::Relaxed);
                n == BATCH
            }
            Ok(Err(e)) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "purging expired keys failed; will retry");
                false
            }
            Err(e) => {
                status.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "purge task panicked");
                false
            }
        };
        if backlog {
            if shutdown.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
