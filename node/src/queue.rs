//! Bounded, labelled queues whose depth is a metric.
//!
//! Every queue between tasks has a capacity (a full queue makes its producer wait or
//! refuse, never grow without bound) and a label under which its depth is exported as
//! `opencluster_queue_depth{queue="..."}`, so a queue that fills up shows on a dashboard
//! before it shows as latency. The labels are listed in [`QUEUES`].

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::mpsc;

/// Requests waiting for a stream to their peer, over all peers (`peer`).
pub const PEER_REQUESTS: &str = "peer_requests";
/// Answers of replica copies a primary is waiting for (`cluster::write`).
pub const REPLICA_ACKS: &str = "replica_acks";
/// Partitions handed to the rebalance worker and not yet taken by it (`cluster::rebalance`).
pub const REBALANCE_TASKS: &str = "rebalance_tasks";

/// Every `queue` label of `opencluster_queue_depth`.
pub const QUEUES: &[&str] = &[PEER_REQUESTS, REPLICA_ACKS, REBALANCE_TASKS];

/// Registers `opencluster_queue_depth{queue}`, every label listed at zero from the start.
pub fn register_depths(r: &Registry) -> IntGaugeVec {
    let depths = IntGaugeVec::new(
        Opts::new("opencluster_queue_depth", "Items waiting in an internal queue, by queue"),
        &["queue"],
    )
    .expect("valid gauge");
    r.register(Box::new(depths.clone())).expect("metric names are unique");
    for queue in QUEUES {
        depths.with_label_values(&[queue]);
    }
    depths
}

/// A channel of `capacity` items whose depth is kept in `depth` (one gauge may count
/// several channels, e.g. one per peer).
pub fn bounded<T>(capacity: usize, depth: IntGauge) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Sender { inner: tx, depth: depth.clone() }, Receiver { inner: rx, depth })
}

pub struct Sender<T> {
    inner: mpsc::Sender<T>,
    depth: IntGauge,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender { inner: self.inner.clone(), depth: self.depth.clone() }
    }
}

impl<T> Sender<T> {
    /// Sends at once if there is room; gives the item back otherwise (full or closed).
    pub fn try_send(&self, item: T) -> Result<(), mpsc::error::TrySendError<T>> {
        match self.inner.try_reserve() {
            Ok(permit) => {
                self.depth.inc();
                permit.send(item);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(mpsc::error::TrySendError::Full(item)),
            Err(mpsc::error::TrySendError::Closed(())) => Err(mpsc::error::TrySendError::Closed(item)),
        }
    }

    /// Waits for room, then queues `item`. Cancel-safe: a send given up while waiting
    /// takes no room. Fails (giving `item` back) when the receiver is gone.
    pub async fn send(&self, item: T) -> Result<(), mpsc::error::SendError<T>> {
        match self.inner.reserve().await {
            Ok(permit) => {
                // Counted before the receiver can take it, so the depth never dips below zero.
                self.depth.inc();
                permit.send(item);
                Ok(())
            }
            Err(_) => Err(mpsc::error::SendError(item)),
        }
    }
}

pub struct Receiver<T> {
    inner: mpsc::Receiver<T>,
    depth: IntGauge,
}

impl<T> Receiver<T> {
    pub async fn recv(&mut self) -> Option<T> {
        let item = self.inner.recv().await;
        if item.is_some() {
            self.depth.dec();
        }
        item
    }

    pub fn try_recv(&mut self) -> Result<T, mpsc::error::TryRecvError> {
        let item = self.inner.try_recv();
        if item.is_ok() {
            self.depth.dec();
        }
        item
    }
}

impl<T> Drop for Receiver<T> {
    /// What was still queued goes with the receiver: its items are dropped (their senders
    /// see the channel closed) and no longer counted.
    fn drop(&mut self) {
        self.inner.close();
        while self.inner.try_recv().is_ok() {
            self.depth.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn depth_follows_the_items_and_a_full_queue_makes_the_sender_wait() {
        let depths = register_depths(&Registry::new());
        let depth = depths.with_label_values(&[PEER_REQUESTS]);
        let (tx, mut rx) = bounded(2, depth.clone());
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        assert_eq!(depth.get(), 2);
        // Full: the third waits (and, given up, takes no room).
        assert!(tokio::time::timeout(Duration::from_millis(20), tx.send(3)).await.is_err());
        assert_eq!(depth.get(), 2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(depth.get(), 1);
        tx.send(3).await.unwrap();
        assert_eq!(rx.try_recv().unwrap(), 2);
        assert_eq!(depth.get(), 1);
        // Dropping the receiver forgets what it still held; senders see it closed.
        drop(rx);
        assert_eq!(depth.get(), 0);
        assert!(tx.send(4).await.is_err());
        assert_eq!(depth.get(), 0);
    }
}
