//! Hybrid logical clock.
//!
//! Every record carries an [`Hlc`] timestamp so that replicas and datacenters can order
//! writes without synchronised clocks: 48 bits of wall-clock milliseconds and 16 bits of a
//! logical counter that breaks ties within one millisecond and absorbs clock skew from
//! peers. The value is a plain `u64`, so it sorts, encodes big-endian into index keys, and
//! compares in one instruction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;

/// A hybrid logical clock timestamp: `physical_ms << 16 | logical`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    pub const ZERO: Hlc = Hlc(0);

    pub fn new(physical_ms: u64, logical: u16) -> Self {
        Hlc((physical_ms << LOGICAL_BITS) | u64::from(logical))
    }

    /// Wall-clock milliseconds since the Unix epoch.
    pub fn physical_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.physical_ms(), self.logical())
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The process-wide clock. Lock-free: one compare-and-swap per timestamp.
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A timestamp greater than every timestamp this clock has issued or observed.
    pub fn now(&self) -> Hlc {
        self.tick(unix_ms(), Hlc::ZERO)
    }

    /// A timestamp greater than `after` and than every timestamp issued so far: used for a
    /// local write over a record that may carry a timestamp from a clock running ahead.
    pub fn now_after(&self, after: Hlc) -> Hlc {
        self.tick(unix_ms(), after)
    }

    /// Records a timestamp seen from a peer so later local timestamps order after it.
    pub fn observe(&self, seen: Hlc) {
        self.last.fetch_max(seen.0, Ordering::AcqRel);
    }

    /// The core of the clock, with the wall time as an argument so it can be tested.
    pub fn tick(&self, wall_ms: u64, after: Hlc) -> Hlc {
        let wall = Hlc::new(wall_ms, 0).0;
        let mut prev = self.last.load(Ordering::Acquire);
        loop {
            let floor = prev.max(after.0);
            let next = if wall > floor { wall } else { floor + 1 };
            match self.last.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Hlc(next),
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_wall_clock_when_it_advances() {
        let clock = Clock::new();
        let a = clock.tick(1_000, Hlc::ZERO);
        let b = clock.tick(2_000, Hlc::ZERO);
        assert_eq!(a, Hlc::new(1_000, 0));
        assert_eq!(b, Hlc::new(2_000, 0));
    }

    #[test]
    fn counts_logically_when_wall_clock_stalls_or_goes_back() {
        let clock = Clock::new();
        let a = clock.tick(1_000, Hlc::ZERO);
        let b = clock.tick(1_000, Hlc::ZERO);
        let c = clock.tick(900, Hlc::ZERO);
        assert_eq!(b, Hlc::new(1_000, 1));
        assert_eq!(c, Hlc::new(1_000, 2));
        assert!(a < b && b < c);
    }

    #[test]
    fn orders_after_observed_and_given_timestamps() {
        let clock = Clock::new();
        clock.observe(Hlc::new(5_000, 7));
        assert_eq!(clock.tick(1_000, Hlc::ZERO), Hlc::new(5_000, 8));
        assert_eq!(clock.tick(1_000, Hlc::new(9_000, 0)), Hlc::new(9_000, 1));
    }

    #[test]
    fn timestamps_are_unique_across_threads() {
        let clock = std::sync::Arc::new(Clock::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| clock.now()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<Hlc> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }
}
