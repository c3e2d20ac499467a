//! Client-side caching as Redis documents it (`CLIENT TRACKING`): which clients read
//! which keys, and whom to tell when a key changes.
//!
//! - **Default mode**: every key a client reads is remembered; when it changes the client
//!   is sent one invalidation and the key is forgotten (the client reads it again to be
//!   told again). `OPTIN` remembers only the reads of a command after `CLIENT CACHING
//!   yes`; `OPTOUT` all but those after `CLIENT CACHING no` (the connection decides).
//! - **Broadcast mode** (`BCAST`, with `PREFIX`es, none meaning every key): the client is
//!   told of every change to a matching key, read or not.
//! - `NOLOOP`: changes the client makes itself are not reported to it.
//! - `REDIRECT id`: invalidations go to another connection (for RESP2, which has no
//!   push messages: that connection subscribes to `__redis__:invalidate`).
//!
//! The table of remembered keys is bounded (`limits.tracking_max_keys`): beyond it, keys
//! are forgotten and their clients told, as Redis does. Changes come from the whole
//! datacenter: writes through this node, changes applied here as owner, and owners'
//! invalidations of keys this node holds leases on (`cluster::near`).
//!
//! Plain data: the hub (`resp::hub`) delivers what this decides.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

/// How a client tracks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub bcast: bool,
    pub prefixes: Vec<Bytes>,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
    /// The connection invalidations go to, when not the client's own.
    pub redirect: Option<u64>,
}

impl Options {
    /// Redis's check on overlapping broadcast prefixes: one may not be a prefix of another.
    pub fn overlapping_prefixes(&self) -> Option<(Bytes, Bytes)> {
        for (i, a) in self.prefixes.iter().enumerate() {
            for b in &self.prefixes[i + 1..] {
                if a.starts_with(b) || b.starts_with(a) {
                    return Some((a.clone(), b.clone()));
                }
            }
        }
        None
    }
}

/// Who is to be told that keys changed: `to` (a connection id) gets `keys`, or, with
/// `keys = None`, an invalidation of everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub to: u64,
    /// The tracking client, when `to` is its redirect target (a broken redirect is
    /// reported to it).
    pub client: u64,
    pub keys: Option<Vec<Bytes>>,
}

#[derive(Default)]
pub struct Table {
    clients: HashMap<u64, Options>,
    keys: HashMap<Bytes, HashSet<u64>>,
    max_keys: usize,
}

impl Table {
    pub fn new(max_keys: usize) -> Self {
        Table { max_keys, ..Default::default() }
    }

    pub fn enable(&mut self, client: u64, options: Options) {
        self.clients.insert(client, options);
    }

    pub fn disable(&mut self, client: u64) {
        self.clients.remove(&client);
    }

    pub fn options(&self, client: u64) -> Option<&Options> {
        self.clients.get(&client)
    }

    /// Whether any client remembers the keys it reads (not only broadcast mode).
    pub fn tracks_reads(&self) -> bool {
        self.clients.values().any(|o| !o.bcast)
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Every broadcast prefix (an empty one stands for all keys).
    pub fn prefixes(&self) -> Vec<Bytes> {
        let mut all: Vec<Bytes> = self
            .clients
            .values()
            .filter(|o| o.bcast)
            .flat_map(|o| if o.prefixes.is_empty() { vec![Bytes::new()] } else { o.prefixes.clone() })
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// `client` read `keys` (the caller decided the read counts: default mode, or OPTIN /
    /// OPTOUT as the connection's CLIENT CACHING says). Returns the notices of keys
    /// forgotten to stay within the table's bound.
    pub fn read(&mut self, client: u64, keys: &[Bytes]) -> Vec<Notice> {
        if self.clients.get(&client).is_none_or(|o| o.bcast) {
            return Vec::new();
        }
        let mut notices = Vec::new();
        for key in keys {
            if !self.keys.contains_key(key) && self.keys.len() >= self.max_keys.max(1) {
                // A forgotten key is reported as changed: its readers drop it.
                if let Some(old) = self.keys.keys().next().cloned() {
                    notices.extend(self.changed(std::slice::from_ref(&old), None));
                }
            }
            self.keys.entry(key.clone()).or_default().insert(client);
        }
        notices
    }

    /// `keys` changed, by connection `writer` if it was one of this node's: whom to tell.
    pub fn changed(&mut self, keys: &[Bytes], writer: Option<u64>) -> Vec<Notice> {
        let mut per_target: HashMap<(u64, u64), Vec<Bytes>> = HashMap::new();
        for key in keys {
            for (to, client) in self.notices_for(key, writer) {
                per_target.entry((to, client)).or_default().push(key.clone());
            }
        }
        let mut notices: Vec<Notice> = per_target
            .into_iter()
            .map(|((to, client), keys)| Notice { to, client, keys: Some(keys) })
            .collect();
        notices.sort_by_key(|n| (n.to, n.client));
        notices
    }

    /// The (target, client) pairs to tell about `key`; forgets the key's readers.
    fn notices_for(&mut self, key: &Bytes, writer: Option<u64>) -> Vec<(u64, u64)> {
        let readers = self.keys.remove(key).unwrap_or_default();
        let mut to = Vec::new();
        for (&client, o) in &self.clients {
            let interested = if o.bcast {
                o.prefixes.is_empty() || o.prefixes.iter().any(|p| key.starts_with(p))
            } else {
                readers.contains(&client)
            };
            if interested && !(o.noloop && writer == Some(client)) {
                to.push((o.redirect.unwrap_or(client), client));
            }
        }
        to
    }

    /// Every key is gone (FLUSHDB): every tracking client is told to drop everything.
    pub fn flushed(&mut self) -> Vec<Notice> {
        self.keys.clear();
        let mut notices: Vec<Notice> = self
            .clients
            .iter()
            .map(|(&client, o)| Notice { to: o.redirect.unwrap_or(client), client, keys: None })
            .collect();
        notices.sort_by_key(|n| (n.to, n.client));
        notices
    }

    /// Keys remembered for reads.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn keys(n: &Notice) -> Vec<Bytes> {
        n.keys.clone().unwrap_or_default()
    }

    #[test]
    fn a_reader_is_told_once_then_forgotten() {
        let mut t = Table::new(100);
        t.enable(1, Options::default());
        t.enable(2, Options::default());
        t.read(1, &[b("a"), b("b")]);
        let n = t.changed(&[b("a")], None);
        assert_eq!(n, vec![Notice { to: 1, client: 1, keys: Some(vec![b("a")]) }]);
        assert!(t.changed(&[b("a")], None).is_empty(), "told once");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn noloop_spares_the_writer_only() {
        let mut t = Table::new(100);
        t.enable(1, Options { noloop: true, ..Default::default() });
        t.enable(2, Options::default());
        t.read(1, &[b("k")]);
        t.read(2, &[b("k")]);
        let n = t.changed(&[b("k")], Some(1));
        assert_eq!(n.iter().map(|n| n.to).collect::<Vec<_>>(), vec![2]);
        // Without NOLOOP the writer hears of its own write.
        t.read(2, &[b("k")]);
        assert_eq!(t.changed(&[b("k")], Some(2)).len(), 1);
    }

    #[test]
    fn broadcast_clients_hear_of_matching_keys_read_or_not() {
        let mut t = Table::new(100);
        t.enable(1, Options { bcast: true, prefixes: vec![b("user:")], ..Default::default() });
        t.enable(2, Options { bcast: true, ..Default::default() });
        let n = t.changed(&[b("user:1"), b("x")], None);
        assert_eq!(keys(&n[0]), vec![b("user:1")]);
        assert_eq!(n[0].to, 1);
        assert_eq!(keys(&n[1]), vec![b("user:1"), b("x")]);
        assert_eq!(t.changed(&[b("user:1")], None).len(), 2, "not forgotten");
        assert_eq!(t.prefixes(), vec![Bytes::new(), b("user:")]);
        assert!(!t.tracks_reads());
    }

    #[test]
    fn redirected_invalidations_go_to_the_target() {
        let mut t = Table::new(100);
        t.enable(1, Options { redirect: Some(9), ..Default::default() });
        t.read(1, &[b("k")]);
        assert_eq!(t.changed(&[b("k")], None), vec![Notice { to: 9, client: 1, keys: Some(vec![b("k")]) }]);
        assert_eq!(t.flushed(), vec![Notice { to: 9, client: 1, keys: None }]);
    }

    #[test]
    fn the_table_stays_within_its_bound_by_invalidating_keys() {
        let mut t = Table::new(2);
        t.enable(1, Options::default());
        assert!(t.read(1, &[b("a"), b("b")]).is_empty());
        let n = t.read(1, &[b("c")]);
        assert_eq!(n.len(), 1);
        assert_eq!(keys(&n[0]).len(), 1, "one key forgotten and reported");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn overlapping_prefixes_are_found() {
        let o = Options { bcast: true, prefixes: vec![b("a"), b("b"), b("ab")], ..Default::default() };
        assert_eq!(o.overlapping_prefixes(), Some((b("a"), b("ab"))));
        let o = Options { bcast: true, prefixes: vec![b("a:"), b("b:")], ..Default::default() };
        assert_eq!(o.overlapping_prefixes(), None);
    }

    #[test]
    fn disabled_clients_are_not_told() {
        let mut t = Table::new(10);
        t.enable(1, Options::default());
        t.read(1, &[b("k")]);
        t.disable(1);
        assert!(t.changed(&[b("k")], None).is_empty());
        assert!(t.is_empty());
    }
}
