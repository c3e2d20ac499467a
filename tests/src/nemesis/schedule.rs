//! The nemesis's plan: a seeded, reproducible list of faults, one at a time, each over
//! before the next begins.
//!
//! The random numbers come from a splitmix64 of our own rather than `rand`'s `StdRng`,
//! whose algorithm may change between releases: the seed a failing run prints must plan
//! the same faults when the run is repeated months later.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

/// What the nemesis does to one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL, then a restart on the same data dir and ports after `hold` (1–4 s).
    Kill,
    /// SIGSTOP for `hold` (2–6 s), then SIGCONT.
    Stop,
    /// SIGTERM, wait for the exit, restart at once.
    Term,
    /// The node's gossip and peer RPC UDP ports dropped for `hold` (5–15 s); its client
    /// port keeps serving.
    Cut,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] = [FaultKind::Kill, FaultKind::Stop, FaultKind::Term, FaultKind::Cut];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Stop => "stop",
            FaultKind::Term => "term",
            FaultKind::Cut => "cut",
        }
    }

    /// `all`, or a comma list of `kill`, `stop`, `term`, `cut`.
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        if text.trim() == "all" {
            return Ok(FaultKind::ALL.to_vec());
        }
        let mut kinds = Vec::new();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let kind = FaultKind::ALL.into_iter().find(|k| k.name() == word).ok_or_else(|| {
                format!("unknown fault {word:?}: expected `all` or a list of kill,stop,term,cut")
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err(format!("no fault in {text:?}: expected `all` or a list of kill,stop,term,cut"));
        }
        Ok(kinds)
    }

    /// How long the fault lasts (for `Term`, nothing: the restart follows the exit).
    fn hold(self) -> Range<Duration> {
        let s = Duration::from_secs;
        match self {
            FaultKind::Kill => s(1)..s(4),
            FaultKind::Stop => s(2)..s(6),
            FaultKind::Term => Duration::ZERO..Duration::ZERO,
            FaultKind::Cut => s(5)..s(15),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Calm time before each fault.
const PAUSE: Range<Duration> = Duration::from_secs(2)..Duration::from_secs(5);
/// Least calm time after the last fault, so that writes right after it are checked too.
const LEAST_TAIL: Duration = Duration::from_secs(2);

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Calm time before it.
    pub pause: Duration,
    pub kind: FaultKind,
    /// Index of the target node (0 is n1, the node the others joined).
    pub node: usize,
    /// How long it lasts (see [`FaultKind`]).
    pub hold: Duration,
}

/// The whole plan of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub faults: Vec<Fault>,
    /// Calm time after the last fault, before the writers stop.
    pub tail: Duration,
}

impl Schedule {
    /// Faults of `kinds` on random nodes among `nodes`, as many as fit in `duration`
    /// (pauses and holds; restarts take longer in real time), then the rest of `duration`
    /// (at least 2 s) calm.
    pub fn plan(seed: u64, duration: Duration, nodes: usize, kinds: &[FaultKind]) -> Schedule {
        assert!(nodes > 0 && !kinds.is_empty(), "a plan needs nodes and fault kinds");
        let mut rng = SplitMix64(seed);
        let mut faults = Vec::new();
        let mut planned = Duration::ZERO;
        loop {
            let pause = rng.between(PAUSE);
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            let node = rng.below(nodes as u64) as usize;
            let hold = rng.between(kind.hold());
            if planned + pause + hold > duration {
                break;
            }
            planned += pause + hold;
            faults.push(Fault { pause, kind, node, hold });
        }
        Schedule { faults, tail: duration.saturating_sub(planned).max(LEAST_TAIL) }
    }

    /// The kinds of fault the plan holds.
    pub fn kinds(&self) -> BTreeSet<FaultKind> {
        self.faults.iter().map(|f| f.kind).collect()
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): one u64 of state, good enough spread for a plan.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (the modulo bias is below 1e-15 for the small `n` used here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration in `range`, to the millisecond (the start when the range is empty).
    fn between(&mut self, range: Range<Duration>) -> Duration {
        let (lo, hi) = (range.start.as_millis() as u64, range.end.as_millis() as u64);
        if hi <= lo {
            return range.start;
        }
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_plans_the_same_faults() {
        let plan = |seed| Schedule::plan(seed, Duration::from_secs(120), 5, &FaultKind::ALL);
        assert_eq!(plan(7), plan(7));
        assert_ne!(plan(7), plan(8));
        // Pinned (the published splitmix64 vector for seed 0): a change of the generator
        // would make the seeds of earlier runs plan other faults.
        assert_eq!(SplitMix64(0).next(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn faults_stay_in_their_ranges_and_fit_the_duration() {
        for seed in 0..50 {
            let s = Schedule::plan(seed, Duration::from_secs(60), 4, &FaultKind::ALL);
            let total: Duration = s.faults.iter().map(|f| f.pause + f.hold).sum();
            assert!(total <= Duration::from_secs(60));
            assert!(s.tail >= LEAST_TAIL);
            for f in &s.faults {
                assert!(f.node < 4);
                assert!(PAUSE.contains(&f.pause) || f.pause == PAUSE.end);
                let hold = f.kind.hold();
                assert!(f.hold >= hold.start && f.hold <= hold.end, "{f:?}");
            }
        }
    }

    #[test]
    fn one_kind_alone_plans_only_that_kind() {
        let s = Schedule::plan(3, Duration::from_secs(60), 5, &[FaultKind::Stop]);
        assert!(!s.faults.is_empty());
        assert_eq!(s.kinds().into_iter().collect::<Vec<_>>(), vec![FaultKind::Stop]);
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(FaultKind::parse_list("all").unwrap(), FaultKind::ALL.to_vec());
        assert_eq!(FaultKind::parse_list("cut, kill").unwrap(), vec![FaultKind::Cut, FaultKind::Kill]);
        assert!(FaultKind::parse_list("kill,nap").unwrap_err().contains("nap"));
        assert!(FaultKind::parse_list("").is_err());
    }
}
