//! The holder's side of the near cache: records of keys this node does not own, kept
//! after a read so that the next read of a hot key costs no round trip.
//!
//! An entry is served only while all of these hold:
//! - its **lease** has not lapsed: the owners promised to send an invalidation on every
//!   change for `cache.lease`, counted from when this node sent the read (so the owners'
//!   count ends later than ours). Past half the lease a hit becomes a miss: the read asks
//!   again and renews the lease;
//! - its partition's **epoch** has not moved: placement changed, an owner went away or
//!   restarted, or an invalidation was missed (its sequence number jumped, or a grant said
//!   more were sent than arrived within `cache.invalidation_grace`): every entry of the
//!   partition is dropped at once by bumping the epoch;
//! - no invalidation for the key arrived.
//!
//! A read reserves its key before it asks the owners; an invalidation (or a dropped
//! partition) cancels the reservation, and the answer is then not stored: an answer that
//! an invalidation overtook is never served.
//!
//! Memory is bounded by `cache.max_bytes` (each entry weighs its key, value and a fixed
//! overhead); admission and eviction are moka's TinyLFU, which keeps a hot working set
//! against a scan of cold keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::placement::Partition;
use crate::record::Record;

/// What an entry costs beyond its key and value: moka's node, the Arc, the record.
pub const ENTRY_OVERHEAD: usize = 192;

/// How the near cache treats keys.
#[derive(Clone, Debug)]
pub struct NearOptions {
    pub max_bytes: u64,
    /// Largest entry (key and value) cached, unless a prefix rule says otherwise.
    pub max_entry_bytes: usize,
    pub lease: Duration,
    /// How long invalidations that a grant announced may take to arrive.
    pub grace: Duration,
    /// Per key prefix: `None` never caches matching keys, `Some(n)` caches entries up to
    /// `n` bytes. The longest matching prefix wins.
    pub rules: Vec<(Bytes, Option<usize>)>,
}

impl NearOptions {
    /// The largest entry cached for `key`, or `None` when keys like it are never cached.
    pub fn max_entry_for(&self, key: &[u8]) -> Option<usize> {
        self.rules
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map_or(Some(self.max_entry_bytes), |(_, rule)| *rule)
    }
}

/// A cached record (`None`: the owners have no record of the key).
pub struct Entry {
    pub record: Option<Record>,
    epoch: u64,
    partition: Partition,
    renew_after: Instant,
}

/// A read's claim on a key, taken before it asks the owners.
#[derive(Clone, Copy, Debug)]
pub struct Reservation {
    token: u64,
    epoch: u64,
    sent_at: Instant,
}

/// One owner's answer to a leased read: who it is and where its count stood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub owner: u64,
    pub incarnation: u64,
    pub seq: u64,
}

/// What this node knows of one owner's invalidations for one partition.
#[derive(Clone, Copy, Debug)]
struct Track {
    last: u64,
    /// A grant said invalidations up to this number were sent; they must arrive by then.
    expect: Option<(u64, Instant)>,
}

#[derive(Default)]
struct State {
    reserved: HashMap<Bytes, u64>,
    tracks: HashMap<(u64, Partition), Track>,
    /// Each owner's incarnation as last heard: another one means it restarted and forgot
    /// every lease it granted.
    incarnations: HashMap<u64, u64>,
}

/// Counters the metrics read.
#[derive(Default)]
pub struct NearStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills: AtomicU64,
    pub invalidations: AtomicU64,
    /// Invalidations found missing (sequence gaps, or announced and never arrived).
    pub missed: AtomicU64,
    pub dropped_partitions: AtomicU64,
    pub evictions: Arc<AtomicU64>,
}

pub struct NearCache {
    entries: moka::sync::Cache<Bytes, Arc<Entry>>,
    epochs: Box<[AtomicU64]>,
    state: Mutex<State>,
    next_token: AtomicU64,
    options: NearOptions,
    pub stats: NearStats,
}

/// What an invalidation batch did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    InOrder,
    /// A number was skipped (or the owner restarted): the partition was dropped.
    Gap,
}

impl NearCache {
    pub fn new(partitions: u16, options: NearOptions) -> Self {
        let stats = NearStats::default();
        let evictions = stats.evictions.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(options.max_bytes)
            .weigher(|key: &Bytes, entry: &Arc<Entry>| {
                let value = entry.record.as_ref().and_then(|r| r.value.as_ref()).map_or(0, |v| v.len());
                u32::try_from(key.len() + value + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        NearCache {
            entries,
            epochs: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            state: Mutex::new(State::default()),
            next_token: AtomicU64::new(1),
            options,
            stats,
        }
    }

    pub fn options(&self) -> &NearOptions {
        &self.options
    }

    fn epoch(&self, partition: Partition) -> u64 {
        self.epochs.get(usize::from(partition)).map_or(0, |e| e.load(Ordering::Acquire))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached record of `key` if it may be served at `now` (`Some(None)`: cached as
    /// absent). Counts a hit or a miss.
    pub fn get(&self, key: &[u8], now: Instant) -> Option<Option<Record>> {
        let found =
            self.entries.get(key).filter(|e| e.epoch == self.epoch(e.partition) && now < e.renew_after);
        match found {
            Some(entry) => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Some(entry.record.clone())
            }
            None => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Claims `key` before a read asks its owners; `None` when keys like it are not cached.
    pub fn reserve(&self, key: &[u8], partition: Partition, now: Instant) -> Option<Reservation> {
        self.options.max_entry_for(key)?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch(partition);
        self.state().reserved.insert(Bytes::copy_from_slice(key), token);
        Some(Reservation { token, epoch, sent_at: now })
    }

    /// Stores what the owners answered for a reserved key, unless an invalidation or a
    /// dropped partition cancelled the reservation meanwhile. `grants` are the owners'
    /// leases; without one there is nothing to keep the entry fresh, so nothing is stored.
    /// Returns whether it was stored.
    pub fn fill(
        &self,
        key: &[u8],
        partition: Partition,
        reservation: Reservation,
        record: Option<Record>,
        grants: &[Grant],
        now: Instant,
    ) -> bool {
        let mut state = self.state();
        if state.reserved.get(key) != Some(&reservation.token) {
            return false;
        }
        state.reserved.remove(key);
        for grant in grants {
            self.note_grant(&mut state, partition, *grant, now);
        }
        // Checked under the lock that invalidations and drops take too.
        if grants.is_empty() || reservation.epoch != self.epoch(partition) {
            return false;
        }
        let value = record.as_ref().and_then(|r| r.value.as_ref()).map_or(0, |v| v.len());
        if self.options.max_entry_for(key).is_none_or(|max| key.len() + value > max) {
            return false;
        }
        let entry = Entry {
            record,
            epoch: reservation.epoch,
            partition,
            renew_after: reservation.sent_at + self.options.lease / 2,
        };
        self.entries.insert(Bytes::copy_from_slice(key), Arc::new(entry));
        self.stats.fills.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn note_grant(&self, state: &mut State, partition: Partition, grant: Grant, now: Instant) {
        self.note_incarnation(state, grant.owner, grant.incarnation);
        match state.tracks.get_mut(&(grant.owner, partition)) {
            Some(t) => {
                if grant.seq > t.last {
                    // Sent before this answer and not here yet: in flight, or lost.
                    let by = now + self.options.grace;
                    t.expect = Some(t.expect.map_or((grant.seq, by), |(seq, at)| (seq.max(grant.seq), at)));
                }
            }
            None => {
                state.tracks.insert((grant.owner, partition), Track { last: grant.seq, expect: None });
            }
        }
    }

    /// Drops what `owner` backed if it restarted since it was last heard from; returns
    /// whether it did.
    fn note_incarnation(&self, state: &mut State, owner: u64, incarnation: u64) -> bool {
        match state.incarnations.insert(owner, incarnation) {
            Some(known) if known != incarnation => {
                self.drop_owner_locked(state, owner);
                true
            }
            _ => false,
        }
    }

    /// An owner's invalidation of `keys` in `partition`, numbered `seq`.
    pub fn invalidate(
        &self,
        owner: u64,
        incarnation: u64,
        partition: Partition,
        seq: u64,
        keys: &[Bytes],
    ) -> Applied {
        let mut state = self.state();
        for key in keys {
            state.reserved.remove(key);
            self.entries.invalidate(key);
        }
        self.stats.invalidations.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let restarted = self.note_incarnation(&mut state, owner, incarnation);
        let gap = restarted || state.tracks.get(&(owner, partition)).is_some_and(|t| seq > t.last + 1);
        if gap {
            self.stats.missed.fetch_add(1, Ordering::Relaxed);
            self.drop_partition(partition);
        }
        let t = state.tracks.entry((owner, partition)).or_insert(Track { last: 0, expect: None });
        t.last = t.last.max(seq);
        if t.expect.is_some_and(|(want, _)| t.last >= want) {
            t.expect = None;
        }
        if gap { Applied::Gap } else { Applied::InOrder }
    }

    /// Drops the partitions whose announced invalidations did not arrive in time.
    pub fn check_announced(&self, now: Instant) {
        let mut state = self.state();
        let late: Vec<(u64, Partition)> = state
            .tracks
            .iter()
            .filter(|(_, t)| t.expect.is_some_and(|(want, by)| t.last < want && now >= by))
            .map(|(k, _)| *k)
            .collect();
        for (owner, partition) in late {
            self.stats.missed.fetch_add(1, Ordering::Relaxed);
            self.drop_partition(partition);
            if let Some(t) = state.tracks.get_mut(&(owner, partition)) {
                // Numbered from here on: what was missed is covered by the drop.
                t.last = t.expect.map_or(t.last, |(want, _)| want);
                t.expect = None;
            }
        }
    }

    /// Drops `key` (this node wrote it: its own client must read the new value).
    pub fn drop_key(&self, key: &[u8]) {
        let mut state = self.state();
        state.reserved.remove(key);
        self.entries.invalidate(key);
    }

    /// Drops every entry of `partition` and cancels its reservations: entries remember the
    /// epoch their reservation was taken at, so an entry stored after the bump (its fill
    /// raced with it) is never served either. Needs no lock.
    pub fn drop_partition(&self, partition: Partition) {
        if let Some(epoch) = self.epochs.get(usize::from(partition)) {
            epoch.fetch_add(1, Ordering::AcqRel);
            self.stats.dropped_partitions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every partition `owner` granted leases in (it went down, its connection
    /// dropped, or it restarted).
    pub fn drop_owner(&self, owner: u64) {
        let mut state = self.state();
        self.drop_owner_locked(&mut state, owner);
    }

    fn drop_owner_locked(&self, state: &mut State, owner: u64) {
        let partitions: Vec<Partition> =
            state.tracks.keys().filter(|(o, _)| *o == owner).map(|(_, p)| *p).collect();
        for p in partitions {
            state.tracks.remove(&(owner, p));
            self.drop_partition(p);
        }
    }

    /// Drops everything (FLUSHDB).
    pub fn clear(&self) {
        for epoch in self.epochs.iter() {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.entries.invalidate_all();
    }

    /// Entries and their weight in bytes (moka's counts, settled first).
    pub fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::record::Origin;

    fn options() -> NearOptions {
        NearOptions {
            max_bytes: 1 << 20,
            max_entry_bytes: 1024,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(1),
            rules: vec![(Bytes::from_static(b"nc:"), None), (Bytes::from_static(b"nc:big:"), Some(4096))],
        }
    }

    fn record(v: &str) -> Option<Record> {
        Some(Record {
            value: Some(Bytes::from(v.to_string())),
            hlc: Hlc(1),
            origin: Origin { datacenter: Arc::from("dc1"), node: 1 },
            expires_at_ms: None,
        })
    }

    const G: Grant = Grant { owner: 7, incarnation: 1, seq: 0 };

    fn cached(c: &NearCache, key: &[u8], now: Instant) -> Option<Option<Record>> {
        c.get(key, now)
    }

    fn filled(c: &NearCache, key: &[u8], p: Partition, now: Instant) -> bool {
        let r = c.reserve(key, p, now).unwrap();
        c.fill(key, p, r, record("v"), &[G], now)
    }

    #[test]
    fn a_filled_key_is_served_until_half_its_lease() {
        let c = NearCache::new(4, options());
        let t0 = Instant::now();
        assert!(cached(&c, b"k", t0).is_none());
        assert!(filled(&c, b"k", 1, t0));
        assert_eq!(cached(&c, b"k", t0 + Duration::from_secs(14)), Some(record("v")));
        assert!(cached(&c, b"k", t0 + Duration::from_secs(15)).is_none());
        assert_eq!(c.stats.hits.load(Ordering::Relaxed), 1);
        assert_eq!(c.stats.misses.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn an_invalidation_that_overtakes_the_answer_cancels_the_fill() {
        let c = NearCache::new(4, options());
        let now = Instant::now();
        let r = c.reserve(b"k", 1, now).unwrap();
        assert_eq!(c.invalidate(7, 1, 1, 1, &[Bytes::from_static(b"k")]), Applied::InOrder);
        assert!(!c.fill(b"k", 1, r, record("old"), &[G], now));
        assert!(cached(&c, b"k", now).is_none());
    }

    #[test]
    fn an_invalidation_drops_the_key_only() {
        let c = NearCache::new(4, options());
        let now = Instant::now();
        assert!(filled(&c, b"a", 1, now) && filled(&c, b"b", 1, now));
        assert_eq!(c.invalidate(7, 1, 1, 1, &[Bytes::from_static(b"a")]), Applied::InOrder);
        assert!(cached(&c, b"a", now).is_none());
        assert!(cached(&c, b"b", now).is_some());
    }

    #[test]
    fn a_sequence_gap_drops_the_whole_partition() {
        let c = NearCache::new(4, options());
        let now = Instant::now();
        assert!(filled(&c, b"a", 1, now) && filled(&c, b"b", 1, now) && filled(&c, b"c", 2, now));
        // Number 1 was lost; 2 arrives.
        assert_eq!(c.invalidate(7, 1, 1, 2, &[Bytes::from_static(b"zzz")]), Applied::Gap);
        assert!(cached(&c, b"a", now).is_none() && cached(&c, b"b", now).is_none());
        assert!(cached(&c, b"c", now).is_some(), "other partitions stay");
        assert_eq!(c.stats.missed.load(Ordering::Relaxed), 1);
        // In order from there on.
        assert_eq!(c.invalidate(7, 1, 1, 3, &[]), Applied::InOrder);
    }

    #[test]
    fn announced_invalidations_must_arrive_within_the_grace() {
        let c = NearCache::new(4, options());
        let now = Instant::now();
        assert!(filled(&c, b"a", 1, now));
        // A later grant says the owner has sent 1 invalidation this node has not seen.
        let r = c.reserve(b"b", 1, now).unwrap();
        assert!(c.fill(b"b", 1, r, record("v"), &[Grant { seq: 1, ..G }], now));
        c.check_announced(now + Duration::from_millis(500));
        assert!(cached(&c, b"a", now).is_some(), "still within the grace");
        c.check_announced(now + Duration::from_secs(1));
        assert!(cached(&c, b"a", now).is_none() && cached(&c, b"b", now).is_none());
        // Had it arrived in time, nothing would have been dropped.
        assert!(filled(&c, b"a", 1, now));
        let r = c.reserve(b"b", 1, now).unwrap();
        c.fill(b"b", 1, r, record("v"), &[Grant { seq: 2, ..G }], now);
        assert_eq!(c.invalidate(7, 1, 1, 2, &[Bytes::from_static(b"x")]), Applied::InOrder);
        c.check_announced(now + Duration::from_secs(5));
        assert!(cached(&c, b"a", now).is_some());
    }

    #[test]
    fn an_owner_that_restarted_or_went_away_takes_its_partitions_with_it() {
        let c = NearCache::new(4, options());
        let now = Instant::now();
        assert!(filled(&c, b"a", 1, now) && filled(&c, b"b", 2, now));
        let r = c.reserve(b"c", 3, now).unwrap();
        assert!(c.fill(b"c", 3, r, record("v"), &[Grant { owner: 8, ..G }], now));
        // Owner 7 answers with a new incarnation: it lost its leases.
        let r = c.reserve(b"d", 0, now).unwrap();
        c.fill(b"d", 0, r, record("v"), &[Grant { incarnation: 2, ..G }], now);
        assert!(cached(&c, b"a", now).is_none() && cached(&c, b"b", now).is_none());
        assert!(cached(&c, b"c", now).is_some());
        c.drop_owner(8);
        assert!(cached(&c, b"c", now).is_none());
    }

    #[test]
    fn prefix_rules_decide_what_is_cached() {
        let c = NearCache::new(4, options());
        let now = Instant::now();
        assert!(c.reserve(b"nc:x", 0, now).is_none());
        let big = Some(Record { value: Some(Bytes::from(vec![b'x'; 2000])), ..record("v").unwrap() });
        let r = c.reserve(b"nc:big:1", 0, now).unwrap();
        assert!(c.fill(b"nc:big:1", 0, r, big.clone(), &[G], now));
        let r = c.reserve(b"other", 0, now).unwrap();
        assert!(!c.fill(b"other", 0, r, big, &[G], now), "over cache.max_entry_bytes");
        let r = c.reserve(b"none", 0, now).unwrap();
        assert!(!c.fill(b"none", 0, r, record("v"), &[], now), "no lease, no entry");
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget() {
        let c = NearCache::new(1, NearOptions { max_bytes: 64 << 10, ..options() });
        let now = Instant::now();
        let value = Some(Record { value: Some(Bytes::from(vec![b'v'; 500])), ..record("v").unwrap() });
        for i in 0..1000 {
            let key = format!("key{i}");
            let r = c.reserve(key.as_bytes(), 0, now).unwrap();
            c.fill(key.as_bytes(), 0, r, value.clone(), &[G], now);
        }
        let (entries, bytes) = c.size();
        assert!(bytes <= 64 << 10, "{bytes} bytes in {entries} entries");
        assert!(entries > 0);
    }
}
