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
//!
//! [`page_out_executable`] is lean mode's other hint: once started, the node asks the
//! kernel to drop the pages of its own executable it has mapped. Start-up (flags, config,
//! TLS, opening the store) runs code that is not needed again, and the kernel maps the
//! pages around each one it faults in (64 KiB), so a freshly started node had about 9.6
//! MB of its executable resident against 1.3 MB of its own heap. The pages are clean and
//! backed by the file: what the node runs again faults back in from the page cache.

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

/// Asks the kernel to page out this process's read-only mappings of its own executable
/// (`MADV_PAGEOUT`, Linux 5.4 and later). Returns how many bytes it covered; 0 when the
/// executable cannot be told from `/proc/self/maps` or the kernel refuses the hint (the
/// pages then stay, which costs nothing but memory).
#[allow(unsafe_code)]
pub fn page_out_executable() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else { return 0 };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return 0 };
        let mut covered = 0;
        for line in maps.lines() {
            // `start-end perms offset dev inode path`
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
            if fields.nth(3).map(std::path::Path::new) != Some(exe.as_path()) || perms.contains('w') {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else { continue };
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
            else {
                continue;
            };
            // SAFETY: the range is a whole mapping of this process, read from its own maps,
            // and MADV_PAGEOUT never changes what the memory holds: a clean file-backed page
            // that is dropped is read back from the file when it is next touched.
            let advised =
                unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
            if advised == 0 {
                covered += end - start;
            }
        }
        covered
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_executable_is_paged_out_and_still_runs() {
        let covered = super::page_out_executable();
        assert!(covered > 0, "no mapping of the executable was advised");
        // The code runs on: what is dropped faults back in.
        let words: Vec<String> = (0..1000).map(|i| format!("{i:x}")).collect();
        assert_eq!(words.iter().filter(|w| w.len() == 3).count(), 1000 - 256);
    }
}
