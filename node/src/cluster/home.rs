//! The `home` keyspace (`keyspaces.home`): keys that live in one datacenter.
//!
//! In their home datacenter they are ordinary keys that the connectors never ship. In any
//! other datacenter this node holds no copy of them:
//!
//! - a **write** command on them is sent whole, as the client sent it, to a connector of
//!   this datacenter, which passes it over the WAN to a connector of the home, which has a
//!   node there run it through the normal write path ([`HomeCommand`]); the client gets
//!   the home's reply, or an error, never an answer the home did not give;
//! - a **read** goes the same way to the key's primary owner in the home
//!   ([`HomeRead`]), which promises, for `keyspaces.home_lease`, to report the key's next
//!   change; this node keeps the record for that long ([`HomeCache`]) and no longer;
//! - the owner reports the change to its connector, which passes it over the WAN to a
//!   connector here, which tells every node ([`HomeInvalidate`]): each drops its copy and
//!   tells its tracking clients.
//!
//! The decisions (what is cached until when, which leases are owed) are in
//! `cache::home`; this file sends and answers the messages.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::messages::{HomeCommand, HomeInvalidate, HomeRead, HomeRecords, WireRecord};
use super::{Cluster, DataError, decode};
use crate::cache::home::{HomeCache, RemoteLeases};
use crate::peer::{BoxFuture, RpcError, Target};
use crate::placement::partition_of;
use crate::record::Record;

/// Most keys of one invalidation message.
const MAX_INVALIDATION_KEYS: usize = 512;
/// Pause before owed invalidations that failed are sent again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Runs a client command as this node's own clients' commands run: implemented by `resp`,
/// so that a command forwarded from another datacenter goes through the same code.
pub trait HomeCommands: Send + Sync {
    /// The command's RESP reply (RESP3 when `resp3`), errors included.
    fn run(&self, resp3: bool, args: Vec<Bytes>) -> BoxFuture<'_, Bytes>;
}

/// `keyspaces.home` as this node uses it.
#[derive(Clone, Debug, Default)]
pub struct HomeOptions {
    /// (prefix, home datacenter).
    pub prefixes: Vec<(String, String)>,
    pub lease: Duration,
    /// Most bytes of the cache of other datacenters' home keys, and of one entry.
    pub max_bytes: usize,
    pub max_entry_bytes: usize,
    /// Most keys other datacenters may hold leases on at this node.
    pub max_leases: usize,
}

/// The leases other datacenters hold at this node, shared with the write path that
/// reports changes ([`super::local::Local`]).
pub struct HomeLeases {
    table: Mutex<RemoteLeases>,
    wake: Notify,
}

impl HomeLeases {
    /// Keys just stored here: the invalidations their leases call for become owed.
    pub(super) fn applied<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) {
        let owed = self.table.lock().unwrap_or_else(|e| e.into_inner()).applied(keys, Instant::now());
        if owed {
            self.wake.notify_one();
        }
    }
}

pub(super) struct Home {
    own: Arc<str>,
    prefixes: Vec<(Vec<u8>, Arc<str>)>,
    lease: Duration,
    cache: Mutex<HomeCache>,
    pub(super) leases: Arc<HomeLeases>,
    commands: OnceLock<Arc<dyn HomeCommands>>,
}

impl Home {
    pub(super) fn new(own: &str, options: HomeOptions) -> Self {
        Home {
            own: Arc::from(own),
            prefixes: options
                .prefixes
                .into_iter()
                .map(|(p, dc)| (p.into_bytes(), Arc::from(dc.as_str())))
                .collect(),
            lease: options.lease,
            cache: Mutex::new(HomeCache::new(options.max_bytes, options.max_entry_bytes)),
            leases: Arc::new(HomeLeases {
                table: Mutex::new(RemoteLeases::new(options.max_leases)),
                wake: Notify::new(),
            }),
            commands: OnceLock::new(),
        }
    }

    /// The home datacenter of `key`, if it is in a home keyspace.
    fn home_of(&self, key: &[u8]) -> Option<&Arc<str>> {
        self.prefixes.iter().find(|(p, _)| key.starts_with(p)).map(|(_, dc)| dc)
    }

    /// The home datacenter of `key` when it is another datacenter.
    fn elsewhere(&self, key: &[u8]) -> Option<&Arc<str>> {
        self.home_of(key).filter(|dc| **dc != self.own)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HomeCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why the keys of one command cannot be served together.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MixedHomes(pub String);

impl Cluster {
    /// Connects the node's command runner, for commands forwarded from other datacenters.
    pub fn set_home_commands(&self, commands: Arc<dyn HomeCommands>) {
        if self.home.commands.set(commands).is_err() {
            tracing::warn!("the home command runner was set twice; kept the first");
        }
    }

    /// Where a command on `keys` must run: `None` here, `Some(dc)` in home datacenter
    /// `dc` (every key's home is that other datacenter). Keys of several homes, or of
    /// another datacenter's home with keys that are not, cannot be run together.
    pub fn home_route<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Option<Arc<str>>, MixedHomes> {
        let mut route: Option<Option<&Arc<str>>> = None;
        for key in keys {
            let here = self.home.elsewhere(key);
            match route {
                None => route = Some(here),
                Some(r) if r == here => {}
                Some(_) => {
                    return Err(MixedHomes(
                        "CROSSSLOT Keys in request don't live in the same datacenter (keyspaces.home)".into(),
                    ));
                }
            }
        }
        Ok(route.flatten().cloned())
    }

    /// Whether `key` lives in another datacenter.
    pub(super) fn home_elsewhere(&self, key: &[u8]) -> Option<Arc<str>> {
        self.home.elsewhere(key).cloned()
    }

    /// The error for a write that reached this node's own write path for a key whose home
    /// is elsewhere (commands forward such writes before they get here).
    pub(super) fn refuse_home_write(&self, keys: &[&[u8]]) -> Result<(), DataError> {
        match keys.iter().find_map(|k| self.home.elsewhere(k)) {
            Some(home) => Err(DataError::HomeUnavailable(format!(
                "a key of this write lives in datacenter {home} (keyspaces.home); it was not written here"
            ))),
            None => Ok(()),
        }
    }

    /// This datacenter's connectors, as peers to call.
    fn connector_targets(&self) -> Result<Vec<Target>, DataError> {
        let members = &self.topology.as_ref().ok_or_else(|| no_connector("this node has no peers"))?.members;
        let targets: Vec<Target> = members
            .connector_nodes()
            .into_iter()
            .map(|n| Target { id: n.id, name: n.name, addr: n.rpc_addr })
            .collect();
        if targets.is_empty() {
            return Err(no_connector("no connector of this datacenter is alive"));
        }
        Ok(targets)
    }

    /// Time a request to another datacenter may take: the connectors' hops each get less
    /// (see the connector's `home` module).
    fn home_timeout(&self) -> Duration {
        self.timeout() * 3
    }

    /// Runs a client's write command in the home datacenter `home`; its RESP reply.
    ///
    /// It is sent to one connector only, and not again: a command whose answer was lost
    /// may have run, and running INCR twice is worse than an error. Only a connector that
    /// could not be reached at all (nothing was sent) is replaced by the next.
    pub async fn forward_home_command(
        &self,
        home: &str,
        resp3: bool,
        args: Vec<Bytes>,
        keys: &[&[u8]],
    ) -> Result<Bytes, DataError> {
        self.cache_metrics.home_forwarded_writes.inc();
        let msg = HomeCommand { home: home.to_string(), from: self.home.own.to_string(), resp3, args };
        let peers = self.peers()?;
        let mut last = None;
        let mut result = None;
        for target in self.connector_targets()? {
            match peers.call(&target, &msg, self.home_timeout()).await {
                Err(e @ RpcError::Connect { .. }) => last = Some(e),
                other => {
                    result = Some(other);
                    break;
                }
            }
        }
        // Whatever happened, this node's copy and its clients' copies may be stale now.
        self.home_changed(keys, crate::cache::writer());
        match result {
            Some(Ok(reply)) => Ok(reply.reply),
            Some(Err(e)) => {
                self.home_unreachable(home);
                Err(DataError::HomeUnavailable(format!(
                    "the write was sent toward datacenter {home}, the home of its keys, and got no answer \
                     ({e}); it may or may not have been applied there"
                )))
            }
            None => Err(DataError::HomeUnavailable(format!(
                "no connector of this datacenter answered ({}); the write was not sent to datacenter {home}",
                last.map(|e| e.to_string()).unwrap_or_default()
            ))),
        }
    }

    /// The record of `key`, whose home is datacenter `home`: from this node's cache while
    /// its lease lasts, else from the home, kept for one lease.
    pub(super) async fn home_get(&self, key: &[u8], home: &str) -> Result<Option<Record>, DataError> {
        if let Some(hit) = self.home.cache().get(key, Instant::now()) {
            self.cache_metrics.home_hits.inc();
            return Ok(hit);
        }
        self.cache_metrics.home_misses.inc();
        let token = self.home.cache().reserve(key);
        // The lease at the home starts when it answers, after this: kept no longer here.
        let sent = Instant::now();
        let msg = HomeRead {
            home: home.to_string(),
            from: self.home.own.to_string(),
            keys: vec![Bytes::copy_from_slice(key)],
            lease_ms: self.home.lease.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let answer = self.call_connector(&msg).await.inspect_err(|_| self.home_unreachable(home))?;
        let record = match answer.records.first() {
            Some(Some(wire)) => Some(decode(wire)?),
            _ => None,
        };
        if answer.leased {
            let (_, evicted) =
                self.home.cache().fill(key, token, record.clone(), Arc::from(home), sent + self.home.lease);
            self.tell_clients(&evicted, None);
        } else {
            self.home.cache().drop_key(key);
        }
        Ok(record)
    }

    /// Calls a connector of this datacenter, the next one when one fails (for requests
    /// that may be sent twice).
    async fn call_connector<M: crate::peer::messages::Message>(
        &self,
        msg: &M,
    ) -> Result<M::Response, DataError> {
        let peers = self.peers()?;
        let mut errors = Vec::new();
        for target in self.connector_targets()? {
            match peers.call(&target, msg, self.home_timeout()).await {
                Ok(answer) => return Ok(answer),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(DataError::HomeUnavailable(format!(
            "the home datacenter of this key did not answer through the connectors: {}",
            errors.join("; ")
        )))
    }

    /// Keys of another datacenter changed (written through this node, or reported by
    /// their home): this node's copies go, and its tracking clients hear of them.
    fn home_changed(&self, keys: &[&[u8]], writer: Option<u64>) {
        {
            let mut cache = self.home.cache();
            for k in keys {
                cache.drop_key(k);
            }
        }
        let keys: Vec<Bytes> = keys.iter().map(|k| Bytes::copy_from_slice(k)).collect();
        self.tell_clients(&keys, writer);
    }

    fn tell_clients(&self, keys: &[Bytes], writer: Option<u64>) {
        if keys.is_empty() {
            return;
        }
        if let Some(clients) = self.clients.get()
            && clients.wants_changes()
        {
            clients.keys_changed(keys, writer);
        }
    }

    /// The home did not answer: what it may have changed meanwhile cannot be known, so
    /// nothing of it is served from the cache any more.
    fn home_unreachable(&self, home: &str) {
        let dropped = self.home.cache().drop_home(home);
        self.tell_clients(&dropped, None);
    }

    /// Placement changed: leases on keys whose partition's primary is no longer this node
    /// are reported as changes, since the new primary does not know of them and would
    /// report nothing; the other datacenters read those keys again from it.
    pub(super) fn home_placement_changed(
        &self,
        before: &crate::placement::Placement,
        after: &crate::placement::Placement,
    ) {
        let partitions = self.partitions();
        let mut table = self.home.leases.table.lock().unwrap_or_else(|e| e.into_inner());
        let moved: Vec<Bytes> = table
            .leased_keys()
            .into_iter()
            .filter(|k| {
                let p = partition_of(k, partitions);
                before.owners(p).first() != after.owners(p).first()
            })
            .collect();
        if table.applied(moved.iter().map(|k| &k[..]), Instant::now()) {
            drop(table);
            self.home.leases.wake.notify_one();
        }
    }

    /// Answers a [`HomeInvalidate`] from this datacenter's connector.
    pub(super) fn home_invalidated(&self, m: HomeInvalidate) {
        self.cache_metrics.home_invalidations_received.inc_by(m.keys.len() as u64);
        let keys: Vec<&[u8]> = m.keys.iter().map(|k| &k[..]).collect();
        self.home_changed(&keys, None);
    }

    /// Answers a [`HomeRead`] from another datacenter, as an owner of the keys in their
    /// home: leases first, then the read, so that any change after the read is owed.
    pub(super) async fn home_read(&self, m: HomeRead) -> Result<HomeRecords, DataError> {
        if *m.home != *self.home.own {
            return Err(DataError::Unavailable(format!(
                "a read for home datacenter {} reached datacenter {}",
                m.home, self.home.own
            )));
        }
        if let Some(key) = m.keys.iter().find(|k| self.home.home_of(k).is_none_or(|h| *h != self.home.own)) {
            return Err(DataError::Unavailable(format!(
                "key {key:?} is not in a home keyspace of datacenter {} here: keyspaces.home differs between datacenters",
                self.home.own
            )));
        }
        let view = self.view();
        let now = Instant::now();
        let until = now + Duration::from_millis(u64::from(m.lease_ms)).min(self.home.lease);
        let mut leased = self.topology.is_none()
            || m.keys.iter().all(|k| view.placement.is_owner(partition_of(k, self.partitions()), self.node));
        if leased {
            let mut table = self.home.leases.table.lock().unwrap_or_else(|e| e.into_inner());
            for k in &m.keys {
                leased &= table.grant(&m.from, k, until, now);
            }
        }
        let mut records = Vec::with_capacity(m.keys.len());
        for k in &m.keys {
            records.push(self.get(k).await?.as_ref().map(WireRecord::new));
        }
        Ok(HomeRecords { records, leased })
    }

    /// Runs a [`HomeCommand`] from another datacenter here, its home.
    pub(super) async fn home_command(&self, m: HomeCommand) -> Result<Bytes, DataError> {
        if *m.home != *self.home.own {
            return Err(DataError::Unavailable(format!(
                "a command for home datacenter {} reached datacenter {}",
                m.home, self.home.own
            )));
        }
        let runner = self
            .home
            .commands
            .get()
            .ok_or_else(|| DataError::Unavailable("this node does not run commands yet".into()))?;
        Ok(runner.run(m.resp3, m.args).await)
    }

    /// Sends the invalidations other datacenters' leases call for, and lets lapsed cache
    /// entries and leases go, until `stop`.
    pub async fn keep_home(self: Arc<Self>, stop: CancellationToken) {
        if self.home.prefixes.is_empty() {
            return;
        }
        let sweep_every = (self.home.lease / 4).max(Duration::from_millis(50));
        let mut last_sweep = Instant::now();
        loop {
            let owed = self
                .home
                .leases
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .owed(Instant::now(), MAX_INVALIDATION_KEYS);
            let mut failed = false;
            for (dc, keys) in owed {
                let msg = HomeInvalidate { home: self.home.own.to_string(), to: dc.to_string(), keys };
                match self.call_connector(&msg).await {
                    Ok(()) => {
                        self.cache_metrics.home_invalidations_sent.inc_by(msg.keys.len() as u64);
                        self.home
                            .leases
                            .table
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .delivered(&dc, &msg.keys);
                    }
                    Err(e) => {
                        tracing::debug!(to = %dc, error = %e, "home invalidations not delivered; will retry while their leases last");
                        failed = true;
                    }
                }
            }
            let now = Instant::now();
            if now.duration_since(last_sweep) >= sweep_every {
                last_sweep = now;
                self.home.leases.table.lock().unwrap_or_else(|e| e.into_inner()).sweep(now);
                let lapsed = self.home.cache().expire(now);
                // A tracking client's copy is good only while this node would hear of a
                // change: no longer than the lease.
                self.tell_clients(&lapsed, None);
            }
            let pause = if failed { RETRY_PAUSE } else { sweep_every };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.home.leases.wake.notified(), if !failed => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// For `/v1/status`: the cache of other datacenters' keys and the leases held here.
    pub fn home_status(&self) -> serde_json::Value {
        let (lease_keys, owed) = self.home.leases.table.lock().unwrap_or_else(|e| e.into_inner()).counts();
        serde_json::json!({
            "cached_keys": self.home.cache().len(),
            "cached_bytes": self.home.cache().bytes(),
            "remote_lease_keys": lease_keys,
            "owed_invalidations": owed,
        })
    }
}

fn no_connector(why: &str) -> DataError {
    DataError::HomeUnavailable(format!("{why}: keys of another datacenter's home keyspace are out of reach"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(own: &str) -> Home {
        Home::new(
            own,
            HomeOptions {
                prefixes: vec![("acct:".into(), "dc1".into()), ("orders:".into(), "dc2".into())],
                lease: Duration::from_secs(10),
                max_bytes: 1 << 20,
                max_entry_bytes: 1 << 20,
                max_leases: 10,
            },
        )
    }

    #[test]
    fn a_key_lives_in_the_home_its_prefix_names() {
        let h = home("dc2");
        assert_eq!(h.home_of(b"acct:7").map(|d| &**d), Some("dc1"));
        assert_eq!(h.elsewhere(b"acct:7").map(|d| &**d), Some("dc1"));
        assert_eq!(h.home_of(b"orders:1").map(|d| &**d), Some("dc2"));
        assert_eq!(h.elsewhere(b"orders:1"), None, "dc2's own home keys live here");
        assert_eq!(h.home_of(b"plain"), None);
        assert_eq!(h.elsewhere(b"acct"), None, "a prefix matches whole");
    }
}
