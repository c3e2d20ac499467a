//! Failure-detection timing: the `gossip.*` settings turned into foca's `Config`, and the
//! bound on how long the cluster takes to see a crashed member as down.
//!
//! # How long a `kill -9` takes to be seen
//!
//! With P = `gossip.probe_interval`, S = `gossip.suspicion_timeout` and
//! G = `gossip.interval`, a member that crashes is seen down by every other member after:
//!
//! 1. **waiting to be probed**, at most about P: each of the N - 1 live members probes one
//!    member per P, walking a shuffled list, so the dead one is probed about once per P
//!    (a single prober may skip it for up to two cycles when its list is reshuffled; with
//!    several probers that is rarely the one that matters);
//! 2. **the failed probe**, P: no direct answer within `gossip.probe_timeout`, then no
//!    answer through the `gossip.indirect_probes` helpers either, by the end of the
//!    interval: the prober marks it suspect;
//! 3. **suspicion**, S: time for a member that is merely slow to hear of the suspicion and
//!    refute it; then the prober declares it down;
//! 4. **dissemination**, about G per hop: the prober sends the news to `gossip.fanout`
//!    members every G (and on its next probe), and they pass it on. Up to fanout + 1
//!    members one hop is enough; each further hop multiplies the reach by fanout + 1.
//!
//! Defaults (P = 500 ms, S = 1 s, G = 200 ms, fanout 3, up to 4 members): 0.5 + 0.5 + 1 +
//! 0.2 = 2.2 s in the bad case, about 1.8 s on average; 2.4 s up to 16 members: under 3 s.
//! memberlist's `DefaultLANConfig` (P = 1 s, probe timeout 500 ms, S = 4 s for up to 10
//! members, G = 200 ms) gives
//! 1 + 1 + 4 + 0.2 = 6.2 s; `tests/bench/gossip-detection.sh` measures both. Measured with
//! 4 nodes on loopback (docs/benchmarks.md, 14 rounds each): the defaults 1.75 s to 2.3 s,
//! median 1.8 s; memberlist's timing 5.75 s to 6.8 s. Rounds past the bound are step 1
//! taking two intervals rather than one; an earlier run on a loaded machine had rounds of
//! 3.3 s, three intervals.
//!
//! The price of short timeouts is false suspicion: a member that cannot answer for longer
//! than P + S (a paused VM, a starved container) is declared down. It notices, renews its
//! identity and is alive again within a probe interval or two (see `identity`).

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::config::GossipConfig;

/// The cluster size foca's retransmission count is tuned for: news is piggybacked
/// `4 x log10(size + 1)` times (3 for 8 members), as memberlist does.
const EXPECTED_CLUSTER_SIZE: u32 = 8;
/// How many down members each `gossip.reconnect_interval` announces to.
const RECONNECT_MEMBERS: u32 = 2;
/// How long foca remembers a member declared down before forgetting it.
pub const REMOVE_DOWN_AFTER: Duration = Duration::from_secs(24 * 3600);

/// foca's configuration for these settings, producing packets of at most `max_packet_size`.
pub fn foca_config(gossip: &GossipConfig, max_packet_size: NonZeroUsize) -> foca::Config {
    let size = NonZeroU32::new(EXPECTED_CLUSTER_SIZE).unwrap_or(NonZeroU32::MIN);
    let count = |n: u32| NonZeroUsize::new(n as usize).unwrap_or(NonZeroUsize::MIN);
    // The LAN preset supplies what is not a setting: retransmissions, the periodic
    // announces that heal partitions, and telling a member it was declared down.
    let mut config = foca::Config::new_lan(size);
    config.probe_period = gossip.probe_interval;
    config.probe_rtt = gossip.probe_timeout;
    config.num_indirect_probes = count(gossip.indirect_probes);
    config.suspect_to_down_after = gossip.suspicion_timeout;
    config.periodic_gossip =
        Some(foca::PeriodicParams { frequency: gossip.interval, num_members: count(gossip.fanout) });
    config.remove_down_after = Some(REMOVE_DOWN_AFTER);
    // foca's LAN preset tries down members every 65 s: a network partition would stay
    // split, each side serving an older copy, for about that long after it healed.
    config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: gossip.reconnect_interval,
        num_members: count(RECONNECT_MEMBERS),
    });
    config.max_packet_size = max_packet_size;
    config
}

/// The bad-case time from a crash to every other member of a cluster of `members` seeing it
/// down (the sum in the module header), not counting packet delays.
pub fn detection_bound(gossip: &GossipConfig, members: u32) -> Duration {
    let mut hops = 1;
    let mut reach = u64::from(gossip.fanout) + 1;
    while reach < u64::from(members) {
        hops += 1;
        reach = reach.saturating_mul(u64::from(gossip.fanout) + 1);
    }
    2 * gossip.probe_interval + gossip.suspicion_timeout + hops * gossip.interval
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_reach_foca() {
        let gossip = GossipConfig {
            probe_interval: Duration::from_millis(700),
            probe_timeout: Duration::from_millis(300),
            indirect_probes: 2,
            suspicion_timeout: Duration::from_secs(2),
            interval: Duration::from_millis(150),
            fanout: 4,
            reconnect_interval: Duration::from_secs(3),
        };
        let c = foca_config(&gossip, NonZeroUsize::new(1363).unwrap());
        assert_eq!((c.probe_period, c.probe_rtt), (Duration::from_millis(700), Duration::from_millis(300)));
        assert_eq!((c.num_indirect_probes.get(), c.suspect_to_down_after), (2, Duration::from_secs(2)));
        let periodic = c.periodic_gossip.unwrap();
        assert_eq!((periodic.frequency, periodic.num_members.get()), (Duration::from_millis(150), 4));
        assert_eq!((c.max_packet_size.get(), c.remove_down_after), (1363, Some(REMOVE_DOWN_AFTER)));
        let reconnect = c.periodic_announce_to_down_members.unwrap();
        assert_eq!((reconnect.frequency, reconnect.num_members.get()), (Duration::from_secs(3), 2));
    }

    #[test]
    fn defaults_detect_a_crash_in_under_three_seconds() {
        let defaults = GossipConfig::default();
        assert_eq!(detection_bound(&defaults, 4), Duration::from_millis(2200));
        assert!(detection_bound(&defaults, 16) < Duration::from_secs(3));
        // One more hop per factor of the fanout.
        assert_eq!(detection_bound(&defaults, 5), Duration::from_millis(2400));
        assert_eq!(detection_bound(&defaults, 17), Duration::from_millis(2600));
        let memberlist = GossipConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_timeout: Duration::from_secs(4),
            ..defaults
        };
        assert_eq!(detection_bound(&memberlist, 3), Duration::from_millis(6200));
    }
}
