//! Polling with a deadline, used instead of sleeps: a condition that becomes true
//! early ends the wait early, and one that never does fails the test at the deadline.

use std::time::{Duration, Instant};

/// Polls `cond` every 10 ms until it is true (returns true) or `deadline` has passed
/// (returns false). Callers assert on the result with a message saying what was awaited.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Blocks until `instant` has passed. For tests whose condition is time itself (a TTL
/// that must have run out), where there is nothing else to poll.
pub fn wait_past(instant: Instant) {
    let now = Instant::now();
    if instant > now {
        std::thread::sleep(instant - now);
    }
}

/// Milliseconds since the Unix epoch, as the node reports `durable_through_ms`.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis()
        as u64
}
