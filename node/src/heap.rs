//! Giving freed heap memory back to the operating system.
//!
//! glibc's malloc keeps what a program frees for reuse. The storage engine allocates and
//! frees many buffers of a few KiB (values read, pages decoded and evicted), and the free
//! space ends up scattered between blocks still in use, where malloc never returns it: a
//! node that wrote and then read back 4 KiB values was measured at 250 to 270 MB resident
//! without trimming and about 175 MB with it (`docs/benchmarks.md`, "Memory"). Under a
//! container memory limit that is the difference between running and being OOM-killed. `malloc_trim(0)` hands every free
//! page back to the kernel (`madvise`), which takes a few milliseconds when much is free
//! and next to nothing otherwise, so the node calls it on a short interval
//! (`memory_trim_interval`).
//!
//! Built against another C library, [`trim`] does nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Returns free heap pages to the kernel every `interval` until `stop` is cancelled.
pub async fn trim_periodically(interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        // It walks the allocator's arenas under their locks: off the runtime's workers.
        if tokio::task::spawn_blocking(trim).await.is_err() {
            return;
        }
    }
}

/// Gives free heap pages back to the kernel now.
#[allow(unsafe_code)]
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes the allocator's own locks and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
