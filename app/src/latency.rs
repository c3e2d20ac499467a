//! The latency log: one line per write the load attempts, so that a benchmark can cut the
//! run into windows of its own choosing (before, during and after a cluster change) and
//! take exact percentiles of each, instead of trusting a per-window summary.
//!
//! A line is `<unix µs when the write was due> TAB <latency µs> TAB <ok|error>`. Latency
//! counts from when the write was due by the load's schedule, not from when it was sent:
//! a write held back by a slow one before it carries that wait too (the load uses one
//! connection, so a stall would otherwise hide in fewer writes rather than in slower ones).

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where latency lines go, and the clock pair that turns an [`Instant`] into Unix time.
pub struct LatencyLog {
    out: Box<dyn Write>,
    start: Instant,
    start_unix_us: u64,
}

impl LatencyLog {
    pub fn new(out: Box<dyn Write>) -> LatencyLog {
        let start_unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        LatencyLog { out, start: Instant::now(), start_unix_us }
    }

    /// Records one write that was due at `due` and was answered (or failed) at `done`.
    pub fn record(&mut self, due: Instant, done: Instant, ok: bool) -> std::io::Result<()> {
        self.out.write_all(self.line(due, done, ok).as_bytes())
    }

    fn line(&self, due: Instant, done: Instant, ok: bool) -> String {
        let at = if due >= self.start {
            self.start_unix_us + due.duration_since(self.start).as_micros() as u64
        } else {
            self.start_unix_us - self.start.duration_since(due).as_micros() as u64
        };
        let latency = done.saturating_duration_since(due).as_micros();
        format!("{at}\t{latency}\t{}\n", if ok { "ok" } else { "error" })
    }

    pub fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_line_has_the_due_time_the_latency_and_the_outcome() {
        let log = LatencyLog::new(Box::new(std::io::sink()));
        let due = log.start + Duration::from_millis(3);
        let line = log.line(due, due + Duration::from_micros(1500), true);
        assert_eq!(line, format!("{}\t1500\tok\n", log.start_unix_us + 3000));
        let early = log.start - Duration::from_millis(1);
        let line = log.line(early, early + Duration::from_micros(20), false);
        assert_eq!(line, format!("{}\t20\terror\n", log.start_unix_us - 1000));
    }
}
