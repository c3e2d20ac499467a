//! The `home` keyspace's two tables, plain and driven with the time as an argument:
//!
//! - [`HomeCache`]: what a node keeps of keys whose home is another datacenter, each
//!   entry for as long as the lease the home granted on it. A lapsed entry is never
//!   served: that is the staleness bound when the WAN is cut.
//! - [`RemoteLeases`]: what a node of the home datacenter remembers of the leases other
//!   datacenters hold on its keys, and the invalidations it owes them.
//!
//! `cluster::home` drives both; docs/multi-datacenter.md describes the protocol.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::record::Record;

struct Entry {
    record: Option<Record>,
    home: Arc<str>,
    until: Instant,
    weight: usize,
    /// The reservation it was filled under: tells its place in `HomeCache::order`.
    token: u64,
}

/// What an entry is counted as beside its key and value (the map's slot, the record's
/// HLC, origin and expiry).
pub const ENTRY_OVERHEAD: usize = 96;

fn weight(key: &[u8], record: &Option<Record>) -> usize {
    key.len() + record.as_ref().and_then(|r| r.value.as_ref()).map_or(0, |v| v.len()) + ENTRY_OVERHEAD
}

/// Records of other datacenters' home keys, kept while their leases last.
pub struct HomeCache {
    entries: HashMap<Bytes, Entry>,
    /// Entries in the order they were filled, by key and token (some gone or refilled
    /// since: skipped). The oldest fill goes first when room is needed: every lease is as
    /// long, so its lease ends first.
    order: VecDeque<(Bytes, u64)>,
    /// Reads in flight, by key: a fill counts only if its reservation is still here (a
    /// write or invalidation of the key in between cancels it).
    pending: HashMap<Bytes, u64>,
    next_token: u64,
    bytes: usize,
    max_bytes: usize,
    max_entry_bytes: usize,
}

impl HomeCache {
    /// A cache of at most `max_bytes` (keys, values and [`ENTRY_OVERHEAD`] each), keeping
    /// no entry over `max_entry_bytes`.
    pub fn new(max_bytes: usize, max_entry_bytes: usize) -> Self {
        HomeCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            pending: HashMap::new(),
            next_token: 0,
            bytes: 0,
            max_bytes,
            max_entry_bytes,
        }
    }

    /// The cached record of `key` (`Some(None)`: cached as absent), if its lease runs
    /// past `now`.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<Option<Record>> {
        self.entries.get(key).filter(|e| e.until > now).map(|e| e.record.clone())
    }

    /// A reservation for a read of `key` about to be sent.
    pub fn reserve(&mut self, key: &[u8]) -> u64 {
        self.next_token += 1;
        self.pending.insert(Bytes::copy_from_slice(key), self.next_token);
        self.next_token
    }

    /// Keeps what a read under `token` returned until `until`, unless the key was written
    /// or invalidated since the reservation. Returns the keys evicted to make room.
    pub fn fill(
        &mut self,
        key: &[u8],
        token: u64,
        record: Option<Record>,
        home: Arc<str>,
        until: Instant,
    ) -> (bool, Vec<Bytes>) {
        if self.pending.get(key) != Some(&token) {
            return (false, Vec::new());
        }
        let key =
            self.pending.remove_entry(key).map(|(k, _)| k).unwrap_or_else(|| Bytes::copy_from_slice(key));
        self.remove(&key);
        let weight = weight(&key, &record);
        if weight > self.max_entry_bytes.min(self.max_bytes) {
            return (false, Vec::new());
        }
        let mut evicted = Vec::new();
        while self.bytes + weight > self.max_bytes {
            let Some((victim, filled)) = self.order.pop_front() else { break };
            if self.entries.get(&victim).is_some_and(|e| e.token == filled) {
                self.remove(&victim);
                evicted.push(victim);
            }
        }
        self.bytes += weight;
        self.entries.insert(key.clone(), Entry { record, home, until, weight, token });
        self.order.push_back((key, token));
        // Entries dropped otherwise leave their place behind: shed those now and then.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(k, t)| entries.get(k).is_some_and(|e| e.token == *t));
        }
        (true, evicted)
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.weight;
        }
    }

    /// `key` changed (written through this node, or invalidated by its home).
    pub fn drop_key(&mut self, key: &[u8]) {
        self.remove(key);
        self.pending.remove(key);
    }

    /// Drops every entry whose home is `home`; returns their keys.
    pub fn drop_home(&mut self, home: &str) -> Vec<Bytes> {
        let keys: Vec<Bytes> =
            self.entries.iter().filter(|(_, e)| &*e.home == home).map(|(k, _)| k.clone()).collect();
        for k in &keys {
            self.remove(k);
        }
        keys
    }

    /// Drops the entries whose lease lapsed by `now`; returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<Bytes> {
        let keys: Vec<Bytes> =
            self.entries.iter().filter(|(_, e)| e.until <= now).map(|(k, _)| k.clone()).collect();
        for k in &keys {
            self.remove(k);
        }
        keys
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the entries are counted as.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// At a home datacenter's node: the leases other datacenters hold on its keys, and the
/// invalidations owed to them. A lease is used up by the first change it reports (the
/// other datacenter reads again, and takes a new one).
pub struct RemoteLeases {
    leases: HashMap<Bytes, Vec<(Arc<str>, Instant)>>,
    owed: BTreeMap<Arc<str>, HashMap<Bytes, Instant>>,
    max_keys: usize,
}

impl RemoteLeases {
    pub fn new(max_keys: usize) -> Self {
        RemoteLeases { leases: HashMap::new(), owed: BTreeMap::new(), max_keys }
    }

    /// Datacenter `dc` holds a lease on `key` until `until`. False when the table is full
    /// (after dropping lapsed leases): the caller must not promise invalidations.
    pub fn grant(&mut self, dc: &str, key: &[u8], until: Instant, now: Instant) -> bool {
        if !self.leases.contains_key(key) && self.leases.len() >= self.max_keys {
            self.sweep(now);
            if self.leases.len() >= self.max_keys {
                return false;
            }
        }
        let holders = self.leases.entry(Bytes::copy_from_slice(key)).or_default();
        match holders.iter_mut().find(|(d, _)| &**d == dc) {
            Some((_, u)) => *u = (*u).max(until),
            None => holders.push((Arc::from(dc), until)),
        }
        true
    }

    /// `keys` changed here: each live lease on them becomes an invalidation owed to its
    /// datacenter (until the lease would have lapsed). Returns whether any is owed.
    pub fn applied<'a>(&mut self, keys: impl Iterator<Item = &'a [u8]>, now: Instant) -> bool {
        if self.leases.is_empty() {
            return false;
        }
        let mut any = false;
        for key in keys {
            let Some((key, holders)) = self.leases.remove_entry(key) else { continue };
            for (dc, until) in holders.into_iter().filter(|(_, u)| *u > now) {
                self.owed.entry(dc).or_default().insert(key.clone(), until);
                any = true;
            }
        }
        any
    }

    /// Every key with a lease held on it.
    pub fn leased_keys(&self) -> Vec<Bytes> {
        self.leases.keys().cloned().collect()
    }

    /// What is owed now, per datacenter, at most `max` keys each; owed keys whose lease
    /// lapsed are given up (the other datacenter no longer serves them).
    pub fn owed(&mut self, now: Instant, max: usize) -> Vec<(Arc<str>, Vec<Bytes>)> {
        self.owed.retain(|_, keys| {
            keys.retain(|_, until| *until > now);
            !keys.is_empty()
        });
        self.owed.iter().map(|(dc, keys)| (dc.clone(), keys.keys().take(max).cloned().collect())).collect()
    }

    /// `keys` reached datacenter `dc`.
    pub fn delivered(&mut self, dc: &str, keys: &[Bytes]) {
        if let Some(owed) = self.owed.get_mut(dc) {
            for k in keys {
                owed.remove(k);
            }
            if owed.is_empty() {
                self.owed.remove(dc);
            }
        }
    }

    /// Lets lapsed leases go.
    pub fn sweep(&mut self, now: Instant) {
        self.leases.retain(|_, holders| {
            holders.retain(|(_, u)| *u > now);
            !holders.is_empty()
        });
    }

    /// Keys with leases held, and invalidations owed.
    pub fn counts(&self) -> (usize, usize) {
        (self.leases.len(), self.owed.values().map(HashMap::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hlc::Hlc;
    use crate::record::Origin;

    fn record(v: &'static [u8]) -> Option<Record> {
        Some(Record {
            value: Some(Bytes::from_static(v)),
            hlc: Hlc::new(1, 0),
            origin: Origin { datacenter: "dc1".into(), node: 1 },
            expires_at_ms: None,
        })
    }

    #[test]
    fn an_entry_is_served_until_its_lease_lapses_and_never_after() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(10);
        let mut c = HomeCache::new(1 << 20, 1 << 20);
        let token = c.reserve(b"k");
        assert!(c.fill(b"k", token, record(b"v"), "dc1".into(), t0 + lease).0);
        assert_eq!(c.get(b"k", t0 + lease - Duration::from_millis(1)), Some(record(b"v")));
        assert_eq!(c.get(b"k", t0 + lease), None, "a lapsed lease is never served");
        assert_eq!(c.expire(t0 + lease), vec![Bytes::from_static(b"k")]);
        assert!(c.is_empty());
    }

    #[test]
    fn a_change_during_the_read_cancels_its_fill() {
        let t0 = Instant::now();
        let mut c = HomeCache::new(1 << 20, 1 << 20);
        let token = c.reserve(b"k");
        c.drop_key(b"k");
        assert!(!c.fill(b"k", token, record(b"old"), "dc1".into(), t0 + Duration::from_secs(1)).0);
        assert_eq!(c.get(b"k", t0), None);
        // A newer read's reservation wins over an older one.
        let first = c.reserve(b"k");
        let second = c.reserve(b"k");
        assert!(!c.fill(b"k", first, record(b"a"), "dc1".into(), t0 + Duration::from_secs(1)).0);
        assert!(c.fill(b"k", second, record(b"b"), "dc1".into(), t0 + Duration::from_secs(1)).0);
    }

    #[test]
    fn a_full_cache_evicts_and_says_which_and_a_home_drops_alone() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(1);
        // Room for two entries of one-byte keys and no value.
        let mut c = HomeCache::new(2 * (1 + ENTRY_OVERHEAD), 1024);
        for (k, home) in [(&b"a"[..], "dc1"), (b"b", "dc3")] {
            let t = c.reserve(k);
            c.fill(k, t, None, home.into(), until);
        }
        let t = c.reserve(b"c");
        let (filled, evicted) = c.fill(b"c", t, None, "dc1".into(), until);
        assert!(filled);
        assert_eq!(evicted, [Bytes::from_static(b"a")], "the oldest fill goes first");
        assert_eq!((c.len(), c.bytes()), (2, 2 * (1 + ENTRY_OVERHEAD)));
        // Too large for one entry: not kept.
        let t = c.reserve(b"big");
        assert!(!c.fill(b"big", t, record(&[0; 2000]), "dc1".into(), until).0);
        let dropped = c.drop_home("dc1");
        assert!(dropped.contains(&Bytes::from_static(b"c")));
        assert!(c.drop_home("dc1").is_empty());
        assert_eq!(c.bytes(), 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn refilled_and_dropped_entries_neither_evict_twice_nor_pile_up_in_the_order() {
        let until = Instant::now() + Duration::from_secs(1);
        let mut c = HomeCache::new(2 * (1 + ENTRY_OVERHEAD), 1024);
        for k in [&b"a"[..], b"b", b"a"] {
            let t = c.reserve(k);
            c.fill(k, t, None, "dc1".into(), until);
        }
        // "a" was filled again after "b": "b" is now the oldest fill.
        let t = c.reserve(b"c");
        assert_eq!(c.fill(b"c", t, None, "dc1".into(), until).1, [Bytes::from_static(b"b")]);
        // Churn that never fills the cache leaves no growing trail behind.
        for i in 0..10_000u32 {
            let k = i.to_be_bytes();
            let t = c.reserve(&k);
            c.fill(&k, t, None, "dc1".into(), until);
            c.drop_key(&k);
        }
        assert!(c.order.len() <= 2 * c.len() + 65, "{} places for {} entries", c.order.len(), c.len());
    }

    #[test]
    fn a_lease_owes_one_invalidation_until_delivered_or_lapsed() {
        let t0 = Instant::now();
        let lease = Duration::from_secs(10);
        let mut l = RemoteLeases::new(100);
        assert!(l.grant("dc2", b"k", t0 + lease, t0));
        assert!(l.grant("dc3", b"k", t0 + lease, t0));
        assert!(!l.applied([&b"other"[..]].into_iter(), t0));
        assert!(l.applied([&b"k"[..]].into_iter(), t0));
        let owed = l.owed(t0, 100);
        assert_eq!(owed.len(), 2);
        assert_eq!(owed[0].1, vec![Bytes::from_static(b"k")]);
        // Used up: a second change owes nothing more.
        assert!(!l.applied([&b"k"[..]].into_iter(), t0));
        l.delivered("dc2", &[Bytes::from_static(b"k")]);
        assert_eq!(l.owed(t0, 100).len(), 1);
        // Undelivered past the lease: given up.
        assert!(l.owed(t0 + lease, 100).is_empty());
        assert_eq!(l.counts(), (0, 0));
    }

    #[test]
    fn a_full_table_refuses_a_lease_once_lapsed_ones_are_gone() {
        let t0 = Instant::now();
        let mut l = RemoteLeases::new(1);
        assert!(l.grant("dc2", b"a", t0 + Duration::from_secs(1), t0));
        assert!(!l.grant("dc2", b"b", t0 + Duration::from_secs(1), t0));
        assert!(l.grant("dc2", b"b", t0 + Duration::from_secs(2), t0 + Duration::from_secs(1)));
    }
}
