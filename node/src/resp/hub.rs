//! The node's register of its client connections that receive what they did not ask
//! for: pub/sub subscribers and clients that track keys. The cluster reaches them through
//! [`LocalClients`]; each connection has an [`Outbox`] its own task writes out.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::codec::{self, Protocol};
use super::outbox::{Outbox, OutputLimits};
use super::tracking::{self, Notice};
use crate::cache::LocalClients;
use crate::glob;

/// The channel RESP2 clients subscribe to for redirected invalidations.
pub const INVALIDATE_CHANNEL: &[u8] = b"__redis__:invalidate";

#[derive(Default)]
struct Subscriptions {
    channels: HashMap<Bytes, HashSet<u64>>,
    patterns: HashMap<Bytes, HashSet<u64>>,
    /// Per connection, how many channels and patterns (Redis's subscription count).
    counts: HashMap<u64, usize>,
}

pub struct Hub {
    outboxes: RwLock<HashMap<u64, Arc<Outbox>>>,
    subs: Mutex<Subscriptions>,
    tracking: Mutex<tracking::Table>,
    /// Whether any client tracks: the write path asks this before anything else.
    tracking_on: AtomicBool,
    limits: OutputLimits,
}

impl Hub {
    pub fn new(limits: OutputLimits, tracking_max_keys: usize) -> Self {
        Hub {
            outboxes: RwLock::new(HashMap::new()),
            subs: Mutex::new(Subscriptions::default()),
            tracking: Mutex::new(tracking::Table::new(tracking_max_keys)),
            tracking_on: AtomicBool::new(false),
            limits,
        }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, tracking::Table> {
        self.tracking.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outbox(&self, id: u64) -> Option<Arc<Outbox>> {
        self.outboxes.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    /// Registers a new connection.
    pub fn connect(&self, id: u64) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(id, self.limits));
        self.outboxes.write().unwrap_or_else(|e| e.into_inner()).insert(id, outbox.clone());
        outbox
    }

    /// Forgets a connection that closed: its subscriptions and its tracking.
    pub fn disconnect(&self, id: u64) {
        self.outboxes.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
        {
            let mut guard = self.subs();
            let subs = &mut *guard;
            subs.counts.remove(&id);
            for map in [&mut subs.channels, &mut subs.patterns] {
                map.retain(|_, ids| {
                    ids.remove(&id);
                    !ids.is_empty()
                });
            }
        }
        self.set_tracking(id, None);
    }

    /// Whether a connection with this id is open (CLIENT TRACKING ... REDIRECT checks).
    pub fn is_connected(&self, id: u64) -> bool {
        self.outbox(id).is_some()
    }

    /// Subscribes `id` to `name` (a channel, or a pattern with `pattern`); returns its
    /// subscription count afterwards.
    pub fn subscribe(&self, id: u64, name: &Bytes, pattern: bool) -> usize {
        let mut subs = self.subs();
        let map = if pattern { &mut subs.patterns } else { &mut subs.channels };
        let added = map.entry(name.clone()).or_default().insert(id);
        let count = subs.counts.entry(id).or_default();
        if added {
            *count += 1;
        }
        *count
    }

    /// The channels (or patterns) connection `id` is subscribed to.
    pub fn names_of(&self, id: u64, pattern: bool) -> Vec<Bytes> {
        let subs = self.subs();
        let map = if pattern { &subs.patterns } else { &subs.channels };
        let mut names: Vec<Bytes> =
            map.iter().filter(|(_, ids)| ids.contains(&id)).map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// Unsubscribes `id` from `name`; returns its subscription count afterwards.
    pub fn unsubscribe(&self, id: u64, name: &Bytes, pattern: bool) -> usize {
        let mut subs = self.subs();
        let map = if pattern { &mut subs.patterns } else { &mut subs.channels };
        let mut removed = false;
        if let Some(ids) = map.get_mut(name) {
            removed = ids.remove(&id);
            if ids.is_empty() {
                map.remove(name);
            }
        }
        let count = subs.counts.entry(id).or_default();
        if removed {
            *count = count.saturating_sub(1);
        }
        let count = *count;
        if count == 0 {
            subs.counts.remove(&id);
        }
        count
    }

    /// Sets (or with `None` clears) how connection `id` tracks keys.
    pub fn set_tracking(&self, id: u64, options: Option<tracking::Options>) {
        let mut table = self.table();
        match options {
            Some(o) => table.enable(id, o),
            None => table.disable(id),
        }
        self.tracking_on.store(!table.is_empty(), Ordering::Release);
    }

    pub fn tracking_options(&self, id: u64) -> Option<tracking::Options> {
        self.table().options(id).cloned()
    }

    /// Connection `id` read `keys` with tracking on.
    pub fn tracked_read(&self, id: u64, keys: &[Bytes]) {
        let notices = self.table().read(id, keys);
        self.deliver(notices);
    }

    /// Sends invalidations to their targets, each in its protocol; tells a client whose
    /// redirect target is gone.
    fn deliver(&self, notices: Vec<Notice>) {
        let now = Instant::now();
        for n in notices {
            match self.outbox(n.to) {
                Some(target) => {
                    let in_pubsub = self.subs().counts.contains_key(&n.to);
                    if let Some(frame) = invalidation(target.protocol(), in_pubsub, n.keys.as_deref()) {
                        target.push(frame, now);
                    }
                }
                None if n.to != n.client => {
                    if let Some(client) = self.outbox(n.client)
                        && client.protocol() == Protocol::Resp3
                    {
                        let mut out = BytesMut::new();
                        codec::write_push_len(&mut out, 2);
                        codec::write_bulk(&mut out, b"tracking-redir-broken");
                        codec::write_integer(&mut out, n.to as i64);
                        client.push(out.freeze(), now);
                    }
                }
                None => {}
            }
        }
    }
}

/// An invalidation frame for a connection speaking `protocol` (RESP2 only in pub/sub mode,
/// as a message on [`INVALIDATE_CHANNEL`]); `keys = None` invalidates everything.
fn invalidation(protocol: Protocol, in_pubsub: bool, keys: Option<&[Bytes]>) -> Option<Bytes> {
    let mut out = BytesMut::new();
    match protocol {
        Protocol::Resp3 => {
            codec::write_push_len(&mut out, 2);
            codec::write_bulk(&mut out, b"invalidate");
        }
        Protocol::Resp2 if in_pubsub => {
            codec::write_array_len(&mut out, 3);
            codec::write_bulk(&mut out, b"message");
            codec::write_bulk(&mut out, INVALIDATE_CHANNEL);
        }
        // RESP2 outside pub/sub has no way to receive it (Redis drops it too).
        Protocol::Resp2 => return None,
    }
    match keys {
        Some(keys) => {
            codec::write_array_len(&mut out, keys.len());
            for k in keys {
                codec::write_bulk(&mut out, k);
            }
        }
        None => codec::write_null_array(&mut out, protocol),
    }
    Some(out.freeze())
}

/// A pub/sub message frame: `message channel payload`, or `pmessage pattern channel
/// payload`.
pub fn message_frame(protocol: Protocol, pattern: Option<&[u8]>, channel: &[u8], payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(channel.len() + payload.len() + 48);
    let n = if pattern.is_some() { 4 } else { 3 };
    match protocol {
        Protocol::Resp3 => codec::write_push_len(&mut out, n),
        Protocol::Resp2 => codec::write_array_len(&mut out, n),
    }
    match pattern {
        Some(p) => {
            codec::write_bulk(&mut out, b"pmessage");
            codec::write_bulk(&mut out, p);
        }
        None => codec::write_bulk(&mut out, b"message"),
    }
    codec::write_bulk(&mut out, channel);
    codec::write_bulk(&mut out, payload);
    out.freeze()
}

impl LocalClients for Hub {
    fn wants_changes(&self) -> bool {
        self.tracking_on.load(Ordering::Acquire)
    }

    fn keys_changed(&self, keys: &[Bytes], writer: Option<u64>) {
        if !self.wants_changes() {
            return;
        }
        let notices = self.table().changed(keys, writer);
        self.deliver(notices);
    }

    fn flushed(&self) {
        if !self.wants_changes() {
            return;
        }
        let notices = self.table().flushed();
        self.deliver(notices);
    }

    fn publish(&self, channel: &[u8], message: &[u8]) -> usize {
        let targets: Vec<(u64, Option<Bytes>)> = {
            let subs = self.subs();
            let direct = subs.channels.get(channel).into_iter().flatten().map(|&id| (id, None));
            let matched = subs
                .patterns
                .iter()
                .filter(|(p, _)| glob::matches(p, channel))
                .flat_map(|(p, ids)| ids.iter().map(move |&id| (id, Some(p.clone()))));
            direct.chain(matched).collect()
        };
        let now = Instant::now();
        let mut received = 0;
        for (id, pattern) in targets {
            if let Some(outbox) = self.outbox(id) {
                let frame = message_frame(outbox.protocol(), pattern.as_deref(), channel, message);
                if outbox.push(frame, now) {
                    received += 1;
                }
            }
        }
        received
    }

    fn channels(&self, pattern: Option<&[u8]>) -> Vec<(Bytes, usize)> {
        let subs = self.subs();
        subs.channels
            .iter()
            .filter(|(c, _)| pattern.is_none_or(|p| glob::matches(p, c)))
            .map(|(c, ids)| (c.clone(), ids.len()))
            .collect()
    }

    fn patterns(&self) -> usize {
        self.subs().patterns.values().map(HashSet::len).sum()
    }

    fn watched_prefixes(&self) -> Vec<Bytes> {
        if !self.wants_changes() {
            return Vec::new();
        }
        self.table().prefixes()
    }

    fn tracks_reads(&self) -> bool {
        self.wants_changes() && self.table().tracks_reads()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn hub() -> Hub {
        Hub::new(
            OutputLimits { hard_bytes: 1 << 20, soft_bytes: 1 << 20, soft_time: Duration::from_secs(60) },
            100,
        )
    }

    fn drained(o: &Outbox) -> Vec<u8> {
        let mut out = BytesMut::new();
        o.drain_into(&mut out);
        out.to_vec()
    }

    #[test]
    fn messages_reach_channel_and_pattern_subscribers_in_their_protocol() {
        let h = hub();
        let (a, b) = (h.connect(1), h.connect(2));
        b.set_protocol(Protocol::Resp3);
        assert_eq!(h.subscribe(1, &Bytes::from_static(b"news"), false), 1);
        assert_eq!(h.subscribe(2, &Bytes::from_static(b"n*"), true), 1);
        assert_eq!(h.publish(b"news", b"hi"), 2);
        assert_eq!(drained(&a), b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
        assert_eq!(drained(&b), b">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
        assert_eq!(h.publish(b"other", b"x"), 0);
        h.disconnect(1);
        assert_eq!(h.publish(b"news", b"hi"), 1);
        assert_eq!(h.unsubscribe(2, &Bytes::from_static(b"n*"), true), 0);
        assert_eq!(h.publish(b"news", b"hi"), 0);
    }

    #[test]
    fn invalidations_go_to_resp3_clients_and_to_resp2_redirect_targets_in_pubsub() {
        let h = hub();
        let (a, b) = (h.connect(1), h.connect(2));
        a.set_protocol(Protocol::Resp3);
        h.set_tracking(1, Some(tracking::Options::default()));
        h.set_tracking(3, Some(tracking::Options { redirect: Some(2), ..Default::default() }));
        h.subscribe(2, &Bytes::from_static(INVALIDATE_CHANNEL), false);
        h.tracked_read(1, &[Bytes::from_static(b"k")]);
        h.tracked_read(3, &[Bytes::from_static(b"k")]);
        h.keys_changed(&[Bytes::from_static(b"k")], None);
        assert_eq!(drained(&a), b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n");
        assert_eq!(drained(&b), b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n");
        h.flushed();
        assert_eq!(drained(&a), b">2\r\n$10\r\ninvalidate\r\n_\r\n");
    }

    #[test]
    fn a_broken_redirect_is_reported_to_the_tracking_client() {
        let h = hub();
        let a = h.connect(1);
        a.set_protocol(Protocol::Resp3);
        h.set_tracking(1, Some(tracking::Options { redirect: Some(7), ..Default::default() }));
        h.tracked_read(1, &[Bytes::from_static(b"k")]);
        h.keys_changed(&[Bytes::from_static(b"k")], None);
        assert_eq!(drained(&a), b">2\r\n$21\r\ntracking-redir-broken\r\n:7\r\n");
    }
}
