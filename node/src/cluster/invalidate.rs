//! The owner's side of near caching, driven: leases granted with reads, and the
//! invalidations this node owes the holders after every change it applies (a write as
//! primary, a replica's copy, read repair, rebalance, anti-entropy, hand-over).
//!
//! Each change is queued at once for every holder with a live lease on the key
//! ([`crate::cache::interest`]); one sender per holder takes whatever is queued and sends
//! it in one [`messages::Invalidate`], so a lone change leaves at once and a busy owner
//! batches without waiting. One batch per holder is in flight at a time, so a holder sees
//! each partition's numbers in order. A batch that fails is sent again until the leases it
//! covers have lapsed; a holder whose queue overflows
//! (`cache.max_queued_invalidations`) has its leases forgotten, and sees a gap in the
//! numbers on the next invalidation (or a grant announcing more than it received) and drops
//! the partitions concerned.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::messages::{self, Invalidated};
use crate::cache::interest::Interest;
use crate::hlc::Hlc;
use crate::placement::{NodeId, partition_of};

/// Most invalidations sent in one message.
const MAX_BATCH: usize = 4096;
/// Pause before a failed batch is sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a holder is owed.
#[derive(Default)]
struct Owed {
    queue: VecDeque<Invalidated>,
    in_flight: bool,
    /// When the oldest unsent batch first failed: given up once its leases have lapsed.
    failing_since: Option<Instant>,
}

pub struct Invalidations {
    pub(super) incarnation: u64,
    pub(super) lease: Duration,
    interest: Mutex<Interest>,
    /// Whether any lease is held: the write path skips the table when not.
    active: AtomicBool,
    owed: Mutex<HashMap<u64, Owed>>,
    wake: Notify,
    max_queued: usize,
    started: Instant,
    /// Invalidations sent, and holders given up on (queue full or unreachable too long).
    pub(super) sent: AtomicU64,
    pub(super) granted: AtomicU64,
    pub(super) abandoned: AtomicU64,
    /// A test hook (`cache.drop_invalidations`): changes are numbered but never sent.
    drop_all: bool,
}

impl Invalidations {
    pub fn new(lease: Duration, max_keys: usize, max_queued: usize, drop_all: bool) -> Self {
        Invalidations {
            incarnation: rand::random::<u64>() | 1,
            lease,
            interest: Mutex::new(Interest::new(max_keys)),
            active: AtomicBool::new(false),
            owed: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            max_queued,
            started: Instant::now(),
            sent: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            drop_all,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Grants `holder` leases on `keys` (of `partitions` partitions); returns where its
    /// count of each key's partition stands.
    pub fn grant(&self, holder: u64, keys: &[Bytes], partitions: u16, lease: Duration) -> Vec<u64> {
        let until = self.now_ms() + lease.min(self.lease).as_millis() as u64;
        let mut interest = self.interest();
        let seqs =
            keys.iter().map(|k| interest.grant(holder, k, partition_of(k, partitions), until).seq).collect();
        self.active.store(true, Ordering::Release);
        self.granted.fetch_add(keys.len() as u64, Ordering::Relaxed);
        seqs
    }

    pub fn watch_prefixes(&self, holder: u64, prefixes: &[Bytes], lease: Duration) {
        let until = self.now_ms() + lease.min(self.lease).as_millis() as u64;
        self.interest().watch_prefixes(holder, prefixes, until);
        self.active.store(true, Ordering::Release);
    }

    /// Records applied here: queues an invalidation for every holder of a lease on them.
    pub fn applied<'a>(&self, written: impl Iterator<Item = (&'a [u8], Hlc)>, partitions: u16) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let now = self.now_ms();
        let applied_ms = crate::hlc::unix_ms();
        let mut interest = self.interest();
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let mut woke = false;
        for (key, hlc) in written {
            let partition = partition_of(key, partitions);
            for notice in interest.changed(key, partition, now) {
                if self.drop_all {
                    continue;
                }
                let o = owed.entry(notice.holder).or_default();
                if o.queue.len() >= self.max_queued {
                    // The holder finds the gap in the numbers and drops what it cannot trust.
                    o.queue.clear();
                    interest.forget(notice.holder);
                    self.abandoned.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        holder = format_args!("{:016x}", notice.holder),
                        "invalidations for a near-cache holder overflowed cache.max_queued_invalidations; its leases are forgotten"
                    );
                    continue;
                }
                o.queue.push_back(Invalidated {
                    key: Bytes::copy_from_slice(key),
                    partition,
                    hlc,
                    seq: notice.seq,
                    applied_ms,
                });
                woke = true;
            }
        }
        if interest.is_empty() {
            self.active.store(false, Ordering::Release);
        }
        drop(owed);
        drop(interest);
        if woke {
            self.wake.notify_one();
        }
    }

    /// Forgets a holder that is no longer placed (it went down or left).
    pub fn forget(&self, holder: u64) {
        self.interest().forget(holder);
        self.owed.lock().unwrap_or_else(|e| e.into_inner()).remove(&holder);
    }

    /// Keys with leases, partitions with partition-wide leases, prefix watches, and
    /// invalidations queued.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let (keys, partitions, prefixes) = self.interest().counts();
        let queued =
            self.owed.lock().unwrap_or_else(|e| e.into_inner()).values().map(|o| o.queue.len()).sum();
        (keys, partitions, prefixes, queued)
    }

    /// Takes the next batch for each holder that has one and none in flight.
    fn take_batches(&self, now: Instant) -> Vec<(u64, Vec<Invalidated>)> {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let mut batches = Vec::new();
        for (&holder, o) in owed.iter_mut() {
            if o.in_flight || o.queue.is_empty() {
                continue;
            }
            if o.failing_since.is_some_and(|since| now.duration_since(since) < RETRY_PAUSE) {
                continue;
            }
            let n = o.queue.len().min(MAX_BATCH);
            o.in_flight = true;
            batches.push((holder, o.queue.iter().take(n).cloned().collect()));
        }
        owed.retain(|_, o| o.in_flight || !o.queue.is_empty());
        batches
    }

    /// A batch's outcome: delivered batches leave the queue; failed ones stay at its front
    /// until the leases they cover have lapsed.
    fn finished(&self, holder: u64, sent: usize, ok: bool, now: Instant) {
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = owed.get_mut(&holder) else { return };
        o.in_flight = false;
        if ok {
            o.queue.drain(..sent.min(o.queue.len()));
            o.failing_since = None;
            self.sent.fetch_add(sent as u64, Ordering::Relaxed);
            return;
        }
        let since = *o.failing_since.get_or_insert(now);
        if now.duration_since(since) >= self.lease {
            // Every lease these covered has lapsed: the holder no longer serves the keys.
            owed.remove(&holder);
            drop(owed);
            self.interest().forget(holder);
            self.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Cluster {
    /// Sends the invalidations this node owes, until `stop`; also lets lapsed leases go.
    pub async fn send_invalidations(self: Arc<Self>, stop: CancellationToken) {
        let inv = &self.invalidations;
        let mut sweep = tokio::time::interval(inv.lease.max(Duration::from_secs(1)));
        loop {
            let batches = inv.take_batches(Instant::now());
            for (holder, batch) in batches {
                let me = self.clone();
                tokio::spawn(async move {
                    let n = batch.len();
                    let ok = me.send_invalidation(holder, batch).await;
                    me.invalidations.finished(holder, n, ok, Instant::now());
                    me.invalidations.wake.notify_one();
                });
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = inv.wake.notified() => {}
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = sweep.tick() => {
                    let now = inv.now_ms();
                    inv.interest().sweep(now);
                }
            }
        }
    }

    async fn send_invalidation(&self, holder: u64, keys: Vec<Invalidated>) -> bool {
        let view = self.view();
        let (Ok(target), Ok(peers)) = (self.target(&view, NodeId(holder)), self.peers()) else {
            return false;
        };
        let msg =
            messages::Invalidate { owner: self.node.0, incarnation: self.invalidations.incarnation, keys };
        match peers.call(&target, &msg, self.timeout()).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %target.name, error = %e, "sending invalidations failed; will retry");
                false
            }
        }
    }

    /// Forgets the leases of holders that are no longer placed.
    pub(super) fn forget_unplaced_holders(&self, placed: &[NodeId]) {
        let holders = self.invalidations.interest().holders();
        for h in holders {
            if placed.binary_search(&NodeId(h)).is_err() {
                self.invalidations.forget(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(batch: &[Invalidated]) -> Vec<(&[u8], u64)> {
        batch.iter().map(|i| (&i.key[..], i.seq)).collect()
    }

    #[test]
    fn changes_are_owed_in_order_one_batch_in_flight_per_holder() {
        let inv = Invalidations::new(Duration::from_secs(30), 100, 100, false);
        inv.grant(7, &[Bytes::from_static(b"a"), Bytes::from_static(b"b")], 1, Duration::from_secs(30));
        inv.applied([(&b"a"[..], Hlc(1)), (&b"b"[..], Hlc(2)), (&b"c"[..], Hlc(3))].into_iter(), 1);
        let now = Instant::now();
        let batches = inv.take_batches(now);
        assert_eq!(batches.len(), 1);
        assert_eq!(keys(&batches[0].1), vec![(&b"a"[..], 1), (&b"b"[..], 2)]);
        // In flight: nothing more for that holder until it finishes.
        inv.grant(7, &[Bytes::from_static(b"a")], 1, Duration::from_secs(30));
        inv.applied([(&b"a"[..], Hlc(4))].into_iter(), 1);
        assert!(inv.take_batches(now).is_empty());
        inv.finished(7, 2, true, now);
        let next = inv.take_batches(now);
        assert_eq!(keys(&next[0].1), vec![(&b"a"[..], 3)]);
        assert_eq!(inv.sent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_failed_batch_is_sent_again_until_its_leases_have_lapsed() {
        let lease = Duration::from_secs(30);
        let inv = Invalidations::new(lease, 100, 100, false);
        inv.grant(7, &[Bytes::from_static(b"a")], 1, lease);
        inv.applied([(&b"a"[..], Hlc(1))].into_iter(), 1);
        let t0 = Instant::now();
        let batch = inv.take_batches(t0);
        inv.finished(7, batch[0].1.len(), false, t0);
        assert!(inv.take_batches(t0).is_empty(), "not at once: after a pause");
        let again = inv.take_batches(t0 + RETRY_PAUSE);
        assert_eq!(keys(&again[0].1), vec![(&b"a"[..], 1)], "the same batch, same number");
        inv.finished(7, 1, false, t0 + lease);
        assert!(inv.take_batches(t0 + lease + RETRY_PAUSE).is_empty(), "given up");
        assert_eq!(inv.abandoned.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_overflowing_holder_is_forgotten_and_finds_the_gap() {
        let inv = Invalidations::new(Duration::from_secs(30), 100, 2, false);
        let all: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("k{i}"))).collect();
        inv.grant(7, &all, 1, Duration::from_secs(30));
        inv.applied(all.iter().map(|k| (&k[..], Hlc(1))), 1);
        assert_eq!(inv.abandoned.load(Ordering::Relaxed), 1);
        // The leases are gone: later changes are not owed.
        let (lease_keys, _, _, _) = inv.counts();
        assert_eq!(lease_keys, 0);
    }

    #[test]
    fn the_test_hook_numbers_changes_but_sends_none() {
        let inv = Invalidations::new(Duration::from_secs(30), 100, 100, true);
        inv.grant(7, &[Bytes::from_static(b"a"), Bytes::from_static(b"b")], 1, Duration::from_secs(30));
        inv.applied([(&b"a"[..], Hlc(1))].into_iter(), 1);
        assert!(inv.take_batches(Instant::now()).is_empty());
        // The next grant announces the lost number.
        assert_eq!(inv.grant(7, &[Bytes::from_static(b"a")], 1, Duration::from_secs(30)), vec![1]);
    }
}
