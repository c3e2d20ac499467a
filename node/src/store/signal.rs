//! A wake-up for those waiting on the change sequences: the connectors' long polls
//! ([`crate::cluster::messages::Follow`]) wait here for a write instead of asking again
//! every few milliseconds.
//!
//! Writers pay one relaxed load per record while nobody waits. A waiter registers (a
//! `Notified` future, then the `waiting` flag) before it looks at the sequences; a writer
//! hands a number out under its partition's shard lock and looks at the flag after that
//! lock, and the waiter reads the heads under the same locks: either the waiter sees the
//! new number, or the writer sees the flag and wakes it. A missed wake-up would only make
//! the waiter wait its timeout, never lose a record.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct ChangeSignal {
    notify: Notify,
    waiting: AtomicBool,
}

impl ChangeSignal {
    /// A change number was handed out (called after the shard lock is released).
    pub fn wake(&self) {
        if self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Waits until `moved` is true or `deadline` passes; returns `moved` as last seen.
    pub async fn wait_until(&self, moved: impl Fn() -> bool, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if moved() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return moved();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_wakes_on_a_change_and_otherwise_at_its_deadline() {
        let signal = Arc::new(ChangeSignal::default());
        let head = Arc::new(AtomicU64::new(5));
        // Nothing moves: the deadline ends the wait, with nothing moved.
        let started = tokio::time::Instant::now();
        let moved =
            signal.wait_until(|| head.load(Ordering::SeqCst) > 5, started + Duration::from_millis(50)).await;
        assert!(!moved && started.elapsed() >= Duration::from_millis(50));
        // A writer moves the head while the waiter waits: it wakes well before its deadline.
        let (s, h) = (signal.clone(), head.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            h.store(6, Ordering::SeqCst);
            s.wake();
        });
        let started = tokio::time::Instant::now();
        let moved =
            signal.wait_until(|| head.load(Ordering::SeqCst) > 5, started + Duration::from_secs(30)).await;
        assert!(moved && started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        writer.await.unwrap();
        // Already moved: no wait at all.
        assert!(signal.wait_until(|| true, tokio::time::Instant::now()).await);
    }
}
