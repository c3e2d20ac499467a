//! Hinted handoff: copies a primary could not deliver to an owner are kept and delivered
//! when that owner answers again, so its copy catches up without waiting for a full pass
//! of anti-entropy.
//!
//! Hints live in memory, up to `cluster.max_hint_bytes` over all owners (the oldest are
//! dropped beyond it, and counted); a primary that stops loses its hints. They are only
//! a shortcut: the records are on a write quorum already.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::messages::{self, WireRecord};
use super::{Cluster, NodeId};

/// How often undelivered hints are tried again.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Most records sent to one owner in one delivery.
const DELIVERY_RECORDS: usize = 1000;

type Copy = (Bytes, WireRecord);

fn size(copy: &Copy) -> usize {
    copy.0.len() + copy.1.0.len()
}

/// Undelivered copies, per owner node id.
pub struct Hints {
    state: Mutex<State>,
    max_bytes: usize,
}

/// `records` and `bytes` count every undelivered copy, queued or out for delivery, so
/// that `/v1/status` never shows a copy as gone before its owner has it.
#[derive(Default)]
struct State {
    queues: HashMap<u64, VecDeque<Copy>>,
    bytes: usize,
    records: usize,
    delivered: u64,
    dropped: u64,
}

impl Hints {
    pub fn new(max_bytes: usize) -> Self {
        Hints { state: Mutex::new(State::default()), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `copies` for `node`; drops the oldest hints (of the owner with the most)
    /// beyond the byte budget. Returns how many were dropped.
    pub fn keep(&self, node: u64, copies: Vec<Copy>) -> usize {
        let mut s = self.lock();
        let added: usize = copies.iter().map(size).sum();
        s.bytes += added;
        s.records += copies.len();
        s.queues.entry(node).or_default().extend(copies);
        let mut dropped = 0;
        while s.bytes > self.max_bytes {
            let Some(largest) = s.queues.iter().max_by_key(|(_, q)| q.len()).map(|(n, _)| *n) else { break };
            let Some(oldest) = s.queues.get_mut(&largest).and_then(VecDeque::pop_front) else { break };
            s.bytes -= size(&oldest);
            s.records -= 1;
            dropped += 1;
        }
        s.dropped += dropped as u64;
        s.queues.retain(|_, q| !q.is_empty());
        dropped
    }

    /// Takes up to `max` of `node`'s hints, oldest first, for delivery: they still count
    /// as pending until [`Hints::delivered`] or [`Hints::give_back`].
    fn take(&self, node: u64, max: usize) -> Vec<Copy> {
        let mut s = self.lock();
        let Some(queue) = s.queues.get_mut(&node) else { return Vec::new() };
        let n = queue.len().min(max);
        let taken: Vec<Copy> = queue.drain(..n).collect();
        s.queues.retain(|_, q| !q.is_empty());
        taken
    }

    /// Puts back hints whose delivery failed, in front (they are the oldest).
    fn give_back(&self, node: u64, copies: Vec<Copy>) {
        let mut s = self.lock();
        let queue = s.queues.entry(node).or_default();
        for copy in copies.into_iter().rev() {
            queue.push_front(copy);
        }
    }

    /// Counts `copies` as delivered.
    fn delivered(&self, copies: &[Copy]) {
        let mut s = self.lock();
        s.bytes -= copies.iter().map(size).sum::<usize>();
        s.records -= copies.len();
        s.delivered += copies.len() as u64;
    }

    fn nodes(&self) -> Vec<u64> {
        self.lock().queues.keys().copied().collect()
    }

    /// Pending records, for the metrics gauge.
    pub fn pending(&self) -> usize {
        self.lock().records
    }

    /// For `/v1/status`'s workers list.
    pub fn json(&self) -> Value {
        let s = self.lock();
        json!({
            "name": "handoff",
            "state": if s.records > 0 { "holding" } else { "idle" },
            "owners_waiting": s.queues.len(),
            "records_pending": s.records,
            "bytes_pending": s.bytes,
            "records_delivered": s.delivered,
            "records_dropped": s.dropped,
        })
    }
}

impl Cluster {
    /// Delivers hints to owners that answer again, every [`RETRY_EVERY`], until `stop`.
    pub async fn hand_off(self: Arc<Self>, stop: CancellationToken) {
        let Some(topology) = &self.topology else { return };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_EVERY) => {}
            }
            self.metrics.hints_pending.set(self.hints.pending() as i64);
            let view = self.view();
            for node in self.hints.nodes() {
                // Only to a member that placement uses again (alive and verified).
                let Ok(target) = self.target(&view, NodeId(node)) else { continue };
                loop {
                    let copies = self.hints.take(node, DELIVERY_RECORDS);
                    if copies.is_empty() {
                        break;
                    }
                    let msg = messages::Replicate { records: copies.clone() };
                    match topology.peers.call(&target, &msg, topology.timeout).await {
                        Ok(()) => {
                            self.hints.delivered(&copies);
                            self.metrics.hints_delivered.inc_by(copies.len() as u64);
                        }
                        Err(e) => {
                            tracing::debug!(peer = %target.name, error = %e, "hinted handoff failed; will retry");
                            self.hints.give_back(node, copies);
                            break;
                        }
                    }
                }
            }
            self.metrics.hints_pending.set(self.hints.pending() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(key: &str, len: usize) -> Copy {
        (Bytes::copy_from_slice(key.as_bytes()), WireRecord(Bytes::from(vec![0u8; len])))
    }

    #[test]
    fn hints_are_kept_in_order_bounded_and_given_back_in_front() {
        let hints = Hints::new(100);
        assert_eq!(hints.keep(1, vec![copy("a", 19), copy("b", 19)]), 0);
        assert_eq!(hints.keep(2, vec![copy("c", 19)]), 0);
        assert_eq!(hints.pending(), 3);
        // 101 bytes > 100: the oldest of the longest queue (node 1's "a") goes.
        assert_eq!(hints.keep(1, vec![copy("d", 40)]), 1);
        let taken = hints.take(1, 10);
        let keys: Vec<&[u8]> = taken.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(keys, [&b"b"[..], &b"d"[..]]);
        // Out for delivery is still pending.
        assert_eq!(hints.pending(), 3);
        hints.give_back(1, taken);
        let first = hints.take(1, 1);
        assert_eq!(first[0].0, Bytes::from_static(b"b"));
        hints.delivered(&first);
        let status = hints.json();
        assert_eq!(status["records_dropped"], 1);
        assert_eq!(status["records_delivered"], 1);
        assert_eq!(status["records_pending"], 2);
    }
}
