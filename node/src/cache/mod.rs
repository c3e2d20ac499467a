//! Near caching and the news clients want: the data structures behind the near cache
//! (kept by a node for keys it does not own), the owners' interest leases, and the hook
//! through which the node's own clients hear about changed keys and published messages
//! (client tracking and pub/sub, in `resp`).
//!
//! The structures here are plain: they take the time as an argument and do no I/O. The
//! cluster drives them (`cluster::invalidate` sends what an owner owes its holders;
//! `cluster::read` fills and serves the near cache; `cluster::service` applies
//! invalidations), and `docs/architecture.md` ("Near cache and invalidation") describes
//! the protocol and the staleness it allows.

pub mod home;
pub mod interest;
pub mod near;

use bytes::Bytes;

tokio::task_local! {
    /// The client connection whose command is running (its `CLIENT ID`): a change it makes
    /// is not reported back to it when it tracks keys with `NOLOOP`.
    pub static WRITER: u64;
}

/// The client connection running the current command, if any.
pub fn writer() -> Option<u64> {
    WRITER.try_with(|w| *w).ok()
}

/// This node's clients that follow changes and messages: implemented by `resp` (client
/// tracking and pub/sub), called by the cluster. Every method is quick and never blocks:
/// it queues what each client is to be sent.
pub trait LocalClients: Send + Sync {
    /// Whether any client follows changes at all (the write path skips the rest when not).
    fn wants_changes(&self) -> bool;
    /// `keys` changed: written through this node by client `writer`, applied here as
    /// their owner, or invalidated by their owner.
    fn keys_changed(&self, keys: &[Bytes], writer: Option<u64>);
    /// Every key is gone (FLUSHDB).
    fn flushed(&self);
    /// Delivers a published message to this node's subscribers; returns how many got it.
    fn publish(&self, channel: &[u8], message: &[u8]) -> usize;
    /// Channels with subscribers here, and how many (PUBSUB NUMSUB, CHANNELS).
    fn channels(&self, pattern: Option<&[u8]>) -> Vec<(Bytes, usize)>;
    /// Pattern subscriptions here (PUBSUB NUMPAT).
    fn patterns(&self) -> usize;
    /// The key prefixes clients watch in broadcast mode (`CLIENT TRACKING ON BCAST`): the
    /// owners must report every change to matching keys.
    fn watched_prefixes(&self) -> Vec<Bytes>;
    /// Whether any client tracks the keys it reads (reads then take leases at the owners
    /// even for keys the near cache does not keep).
    fn tracks_reads(&self) -> bool;
}
