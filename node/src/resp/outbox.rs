//! What a connection is sent without asking: pub/sub messages and key invalidations,
//! queued by other tasks and written by the connection between replies.
//!
//! The queue is bounded like Redis's `client-output-buffer-limit pubsub`: a client with
//! more than `limits.pubsub_output_hard_bytes` queued, or more than
//! `limits.pubsub_output_soft_bytes` for longer than `limits.pubsub_output_soft_time`, is
//! disconnected (with a log line) instead of making the node grow.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use super::codec::Protocol;

/// Output limits of one client.
#[derive(Clone, Copy, Debug)]
pub struct OutputLimits {
    pub hard_bytes: usize,
    pub soft_bytes: usize,
    pub soft_time: Duration,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    over_soft_since: Option<Instant>,
}

pub struct Outbox {
    pub id: u64,
    queue: Mutex<Queue>,
    ready: Notify,
    /// Set once the client went over a limit: the connection closes.
    overflowed: AtomicBool,
    cut: tokio_util::sync::CancellationToken,
    resp3: AtomicBool,
    limits: OutputLimits,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Outbox {
    pub fn new(id: u64, limits: OutputLimits) -> Self {
        Outbox {
            id,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            overflowed: AtomicBool::new(false),
            cut: tokio_util::sync::CancellationToken::new(),
            resp3: AtomicBool::new(false),
            limits,
        }
    }

    /// The protocol pushes are encoded in (the connection's, as HELLO last set it).
    pub fn protocol(&self) -> Protocol {
        if self.resp3.load(Ordering::Relaxed) { Protocol::Resp3 } else { Protocol::Resp2 }
    }

    pub fn set_protocol(&self, p: Protocol) {
        self.resp3.store(p == Protocol::Resp3, Ordering::Relaxed);
    }

    /// Queues `frame` (encoded RESP); false when the client went over its limits (it is
    /// being disconnected and the frame is dropped).
    pub fn push(&self, frame: Bytes, now: Instant) -> bool {
        if self.overflowed.load(Ordering::Acquire) {
            return false;
        }
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.bytes += frame.len();
        q.frames.push_back(frame);
        let over_soft = q.bytes > self.limits.soft_bytes;
        let since = if over_soft { *q.over_soft_since.get_or_insert(now) } else { now };
        if !over_soft {
            q.over_soft_since = None;
        }
        let overflowed =
            q.bytes > self.limits.hard_bytes || now.duration_since(since) >= self.limits.soft_time;
        if overflowed {
            q.frames.clear();
            let queued = std::mem::take(&mut q.bytes);
            drop(q);
            self.overflowed.store(true, Ordering::Release);
            self.cut.cancel();
            tracing::warn!(
                client = self.id,
                queued_bytes = queued,
                "disconnecting a client that does not read its pub/sub messages or invalidations fast enough \
                 (limits.pubsub_output_hard_bytes / pubsub_output_soft_bytes)"
            );
        } else {
            drop(q);
        }
        self.ready.notify_one();
        !overflowed
    }

    /// Moves everything queued into `out`.
    pub fn drain_into(&self, out: &mut BytesMut) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for frame in q.frames.drain(..) {
            out.extend_from_slice(&frame);
        }
        q.bytes = 0;
        q.over_soft_since = None;
    }

    /// Waits until something is queued (or the client overflowed).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Completes once the client went over its limits.
    pub async fn cut_off(&self) {
        self.cut.cancelled().await;
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Outbox {
        Outbox::new(1, OutputLimits { hard_bytes: 100, soft_bytes: 50, soft_time: Duration::from_secs(10) })
    }

    #[test]
    fn frames_come_out_in_order_and_free_their_room() {
        let o = outbox();
        let now = Instant::now();
        assert!(o.push(Bytes::from_static(b"one"), now));
        assert!(o.push(Bytes::from_static(b"two"), now));
        let mut out = BytesMut::new();
        o.drain_into(&mut out);
        assert_eq!(&out[..], b"onetwo");
        for _ in 0..30 {
            assert!(o.push(Bytes::from_static(b"abc"), now));
            o.drain_into(&mut out);
        }
        assert!(!o.overflowed());
    }

    #[test]
    fn over_the_hard_limit_the_client_is_cut_off() {
        let o = outbox();
        let now = Instant::now();
        assert!(o.push(Bytes::from(vec![b'x'; 90]), now));
        assert!(!o.push(Bytes::from(vec![b'x'; 20]), now));
        assert!(o.overflowed());
        assert!(!o.push(Bytes::from_static(b"more"), now));
        let mut out = BytesMut::new();
        o.drain_into(&mut out);
        assert!(out.is_empty(), "what was queued is dropped");
    }

    #[test]
    fn over_the_soft_limit_for_too_long_the_client_is_cut_off() {
        let o = outbox();
        let t0 = Instant::now();
        assert!(o.push(Bytes::from(vec![b'x'; 60]), t0));
        assert!(o.push(Bytes::from_static(b"y"), t0 + Duration::from_secs(9)));
        assert!(!o.push(Bytes::from_static(b"z"), t0 + Duration::from_secs(10)));
        // Reading in time resets the clock.
        let o = outbox();
        assert!(o.push(Bytes::from(vec![b'x'; 60]), t0));
        o.drain_into(&mut BytesMut::new());
        assert!(o.push(Bytes::from(vec![b'x'; 60]), t0 + Duration::from_secs(11)));
    }
}
