//! The owner's side of the near cache: which nodes hold an interest lease on which keys,
//! and so must be told when a key changes.
//!
//! A node that caches a key it does not own asks the owners for a lease when it reads it
//! ([`Interest::grant`]). Every change an owner applies to the key (a write, a delete, a
//! copy arriving by repair or rebalance) consumes the key's leases and yields one
//! invalidation per holder ([`Interest::changed`]): the holder drops its entry and asks
//! again on its next read. Leases lapse on their own after `cache.lease`.
//!
//! The table is bounded (`cache.max_interest_keys`). Once full, a new lease covers the
//! key's whole partition instead: the holder is then told about every change in that
//! partition until the lease lapses. Holders may also watch key prefixes (client tracking
//! in broadcast mode), told about every change to a matching key.
//!
//! Every invalidation to a holder carries a sequence number, counted per holder and
//! partition, and each grant says where the count stands: a holder that sees a number
//! jump knows it missed one and drops the partition's entries (see `cache::near`).
//!
//! Plain data and functions of the time given: no clock, no I/O.

use std::collections::HashMap;

use bytes::Bytes;

use crate::placement::Partition;

/// A holder (a node id) and the time its lease lapses, in ms of the owner's monotonic clock.
type Lease = (u64, u64);

/// Who is to be told about a change, and the number its invalidation carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    pub holder: u64,
    pub seq: u64,
}

/// Where the holder's count of a partition's invalidations stands when a lease is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub seq: u64,
    /// The lease covers the whole partition (the key table was full).
    pub partition_wide: bool,
}

#[derive(Default)]
pub struct Interest {
    keys: HashMap<Bytes, Vec<Lease>>,
    partitions: HashMap<Partition, Vec<Lease>>,
    prefixes: Vec<(u64, Bytes, u64)>,
    seqs: HashMap<(u64, Partition), u64>,
    max_keys: usize,
}

impl Interest {
    pub fn new(max_keys: usize) -> Self {
        Interest { max_keys, ..Default::default() }
    }

    /// Gives `holder` a lease on `key` until `until_ms`.
    pub fn grant(&mut self, holder: u64, key: &[u8], partition: Partition, until_ms: u64) -> Granted {
        let seq = self.seqs.get(&(holder, partition)).copied().unwrap_or(0);
        let room = self.keys.len() < self.max_keys;
        let partition_wide = match self.keys.get_mut(key) {
            Some(leases) => {
                renew(leases, holder, until_ms);
                false
            }
            None if room => {
                self.keys.insert(Bytes::copy_from_slice(key), vec![(holder, until_ms)]);
                false
            }
            None => {
                renew(self.partitions.entry(partition).or_default(), holder, until_ms);
                true
            }
        };
        Granted { seq, partition_wide }
    }

    /// Lets `holder` hear about every change to keys starting with any of `prefixes` until
    /// `until_ms` (its earlier prefixes are replaced).
    pub fn watch_prefixes(&mut self, holder: u64, prefixes: &[Bytes], until_ms: u64) {
        self.prefixes.retain(|(h, _, _)| *h != holder);
        self.prefixes.extend(prefixes.iter().map(|p| (holder, p.clone(), until_ms)));
    }

    /// `key` changed: the holders to tell, each with its next sequence number. The key's
    /// own leases are used up; partition-wide and prefix leases stay until they lapse.
    pub fn changed(&mut self, key: &[u8], partition: Partition, now_ms: u64) -> Vec<Notice> {
        let mut holders: Vec<u64> = Vec::new();
        if let Some(leases) = self.keys.remove(key) {
            holders.extend(leases.iter().filter(|(_, until)| *until > now_ms).map(|(h, _)| *h));
        }
        if let Some(leases) = self.partitions.get_mut(&partition) {
            leases.retain(|(_, until)| *until > now_ms);
            holders.extend(leases.iter().map(|(h, _)| *h));
            if leases.is_empty() {
                self.partitions.remove(&partition);
            }
        }
        holders.extend(
            self.prefixes
                .iter()
                .filter(|(_, prefix, until)| *until > now_ms && key.starts_with(prefix))
                .map(|(h, _, _)| *h),
        );
        holders.sort_unstable();
        holders.dedup();
        holders
            .into_iter()
            .map(|holder| {
                let seq = self.seqs.entry((holder, partition)).or_insert(0);
                *seq += 1;
                Notice { holder, seq: *seq }
            })
            .collect()
    }

    /// Forgets every lease `holder` has (it went away; it drops its entries itself).
    pub fn forget(&mut self, holder: u64) {
        self.keys.retain(|_, leases| {
            leases.retain(|(h, _)| *h != holder);
            !leases.is_empty()
        });
        self.partitions.retain(|_, leases| {
            leases.retain(|(h, _)| *h != holder);
            !leases.is_empty()
        });
        self.prefixes.retain(|(h, _, _)| *h != holder);
    }

    /// Drops the leases that lapsed by `now_ms`.
    pub fn sweep(&mut self, now_ms: u64) {
        self.keys.retain(|_, leases| {
            leases.retain(|(_, until)| *until > now_ms);
            !leases.is_empty()
        });
        self.partitions.retain(|_, leases| {
            leases.retain(|(_, until)| *until > now_ms);
            !leases.is_empty()
        });
        self.prefixes.retain(|(_, _, until)| *until > now_ms);
    }

    /// Every node holding a lease or a prefix watch.
    pub fn holders(&self) -> Vec<u64> {
        let mut holders: Vec<u64> = self
            .keys
            .values()
            .chain(self.partitions.values())
            .flat_map(|leases| leases.iter().map(|(h, _)| *h))
            .chain(self.prefixes.iter().map(|(h, _, _)| *h))
            .collect();
        holders.sort_unstable();
        holders.dedup();
        holders
    }

    /// Whether any lease is held at all (the write path skips the table when not).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.partitions.is_empty() && self.prefixes.is_empty()
    }

    /// Keys with a lease, partitions with a partition-wide lease, and prefix watches.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.keys.len(), self.partitions.len(), self.prefixes.len())
    }
}

fn renew(leases: &mut Vec<Lease>, holder: u64, until_ms: u64) {
    match leases.iter_mut().find(|(h, _)| *h == holder) {
        Some(lease) => lease.1 = lease.1.max(until_ms),
        None => leases.push((holder, until_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_tells_each_holder_once_and_uses_up_the_key_leases() {
        let mut t = Interest::new(10);
        assert_eq!(t.grant(1, b"k", 7, 1000), Granted { seq: 0, partition_wide: false });
        t.grant(2, b"k", 7, 1000);
        t.grant(1, b"k", 7, 2000);
        assert_eq!(t.changed(b"k", 7, 500), vec![Notice { holder: 1, seq: 1 }, Notice { holder: 2, seq: 1 }]);
        // Used up: the next change tells nobody until someone reads the key again.
        assert!(t.changed(b"k", 7, 600).is_empty());
        assert!(t.is_empty());
        // A later grant says where the holder's count stands.
        assert_eq!(t.grant(1, b"k", 7, 3000).seq, 1);
    }

    #[test]
    fn lapsed_leases_tell_nobody() {
        let mut t = Interest::new(10);
        t.grant(1, b"k", 0, 1000);
        assert!(t.changed(b"k", 0, 1000).is_empty());
        t.grant(1, b"a", 0, 1000);
        t.sweep(1000);
        assert!(t.is_empty());
    }

    #[test]
    fn a_full_table_grants_the_whole_partition_instead() {
        let mut t = Interest::new(1);
        t.grant(1, b"a", 3, 1000);
        assert_eq!(t.grant(2, b"b", 3, 1000), Granted { seq: 0, partition_wide: true });
        // Every change in partition 3 reaches holder 2, as often as it happens.
        assert_eq!(t.changed(b"c", 3, 10), vec![Notice { holder: 2, seq: 1 }]);
        assert_eq!(t.changed(b"a", 3, 20), vec![Notice { holder: 1, seq: 1 }, Notice { holder: 2, seq: 2 }]);
        assert!(t.changed(b"c", 4, 20).is_empty());
        assert_eq!(t.counts(), (0, 1, 0));
    }

    #[test]
    fn sequence_numbers_count_per_holder_and_partition() {
        let mut t = Interest::new(10);
        for key in [&b"x"[..], b"y"] {
            t.grant(1, key, 1, 1000);
        }
        t.grant(1, b"z", 2, 1000);
        assert_eq!(t.changed(b"x", 1, 0), vec![Notice { holder: 1, seq: 1 }]);
        assert_eq!(t.changed(b"z", 2, 0), vec![Notice { holder: 1, seq: 1 }]);
        assert_eq!(t.changed(b"y", 1, 0), vec![Notice { holder: 1, seq: 2 }]);
    }

    #[test]
    fn prefix_watchers_hear_of_matching_keys_until_their_lease_lapses() {
        let mut t = Interest::new(10);
        t.watch_prefixes(5, &[Bytes::from_static(b"user:"), Bytes::new()], 100);
        t.watch_prefixes(6, &[Bytes::from_static(b"user:")], 100);
        assert_eq!(
            t.changed(b"user:1", 0, 10),
            vec![Notice { holder: 5, seq: 1 }, Notice { holder: 6, seq: 1 }]
        );
        assert_eq!(t.changed(b"other", 0, 10), vec![Notice { holder: 5, seq: 2 }]);
        // Replaced, not added to.
        t.watch_prefixes(5, &[Bytes::from_static(b"none:")], 100);
        assert_eq!(t.changed(b"other", 0, 10), vec![]);
        assert!(t.changed(b"user:1", 0, 100).is_empty());
    }

    #[test]
    fn a_holder_that_went_away_is_forgotten() {
        let mut t = Interest::new(1);
        t.grant(1, b"a", 0, 100);
        t.grant(1, b"b", 0, 100);
        t.watch_prefixes(1, &[Bytes::new()], 100);
        t.grant(2, b"a", 0, 100);
        t.forget(1);
        assert_eq!(t.changed(b"a", 0, 1), vec![Notice { holder: 2, seq: 1 }]);
        assert!(t.is_empty());
    }
}
