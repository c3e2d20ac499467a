//! The shipper: one named worker per remote datacenter that follows the changes which
//! originated in this datacenter in every data node's change sequences and ships them
//! in batches, moving the cursors (kept at the nodes, see [`crate::cursors`]) only once
//! the remote acknowledged.
//!
//! It runs as a pipeline:
//! - A reader per data node holds a long poll ([`Follow`]) on the partitions of this
//!   connector's share ([`crate::share`]) after its positions in them: the node answers as
//!   soon as one of them has a change, with the changes of many partitions at once, so a
//!   write waits for no round and no poll interval. A node that predates `Follow` is read
//!   with [`Positions`] and [`Changes`], every `poll_interval` when idle. A reader starts
//!   from the node's cursors and then goes on from what it has read (in flight or
//!   acknowledged), not from the cursors, which move only once batches are acknowledged.
//! - The batcher takes what the readers read, skips records the remote already has from
//!   another owner ([`Recent`]), fills batches by the record and byte bounds, and sends a
//!   batch as soon as it is full or nothing more is waiting to be read. Up to
//!   `connector.batches_in_flight` batches are on the WAN at once ([`Window`]); each is
//!   sent until acknowledged (retrying with backoff, through the remote's next address,
//!   while the link is down).
//! - Acknowledgements are taken in the order the batches were sent, whatever order they
//!   come in: a batch's cursor moves are told to the nodes (`Acknowledge`) only once it
//!   and every batch before it were acknowledged, so a cursor never passes a record that
//!   is still on its way. The moves of batches acknowledged together are told in one
//!   message per node, at most every 100 ms (each costs the node an fsync).
//!
//! The same record is held by every owner of its partition and so is read up to R times:
//! a record already shipped with the same or a newer HLC is not sent again ([`Recent`]).

use std::collections::{HashMap, hash_map};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, join_all};
use futures_util::stream::FuturesOrdered;
use opencluster_node::cluster::messages::{
    Changes, Follow, Followed, FollowedChunk, Positions, PositionsAnswer, WireRecord,
};
use opencluster_node::config::Compression;
use opencluster_node::hlc::Hlc;
use opencluster_node::membership::members::Members;
use opencluster_node::peer::messages::{Kind, Refusal};
use opencluster_node::peer::{Peers, RpcError, Target};
use opencluster_node::store::buffered::positions_between;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::cursors::Advances;
use crate::link::Link;
use crate::share::{Share, owned};
use crate::wan::Outgoing;

/// Keys a link remembers as shipped (with their HLC) to skip other owners' copies: about
/// 100 bytes each plus the key, so a few MiB for usual keys.
const RECENT_KEYS: usize = 1 << 16;

/// Chunks read and not yet taken by the batcher, per link: the readers wait beyond it.
const READ_QUEUE: usize = 16;

/// Cursor moves are told to the nodes at most this often (those of the batches
/// acknowledged meanwhile together): each `Acknowledge` costs a node an fsync of its cursor
/// file, and a cursor told late only means records sent again after a crash.
const TELL_EVERY: Duration = Duration::from_millis(100);

/// How often the batcher looks at the membership (readers of nodes that came or went)
/// and the share, and reports the backlog.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Bounds and timings of shipping, from `[connector]`.
#[derive(Clone, Debug)]
pub struct ShipOptions {
    pub batch_records: usize,
    pub batch_bytes: usize,
    /// How often a node that predates `Follow` is asked for new changes when idle, and the
    /// first pause after a failed read.
    pub poll_interval: Duration,
    pub ship_timeout: Duration,
    /// Timeout of a request to a node of this datacenter.
    pub local_timeout: Duration,
    pub compression: Compression,
    /// Batches sent and not yet acknowledged at once (`connector.batches_in_flight`).
    pub batches_in_flight: usize,
    /// How long a node holds a `Follow` that finds nothing new (`connector.follow_wait`).
    pub follow_wait: Duration,
}

/// The keys this link shipped lately with their HLC, to skip the copies other owners hold.
/// Bounded: when full it starts over, which only means some copies are sent again.
pub struct Recent {
    shipped: HashMap<Bytes, Hlc>,
    capacity: usize,
}

impl Recent {
    pub fn new(capacity: usize) -> Recent {
        Recent { shipped: HashMap::new(), capacity }
    }

    /// Whether the remote already has this record or a newer one of the key from us.
    pub fn has(&self, key: &[u8], hlc: Hlc) -> bool {
        self.shipped.get(key).is_some_and(|&h| h >= hlc)
    }

    pub fn note(&mut self, key: Bytes, hlc: Hlc) {
        if self.shipped.len() >= self.capacity && !self.shipped.contains_key(&key) {
            self.shipped.clear();
        }
        match self.shipped.entry(key) {
            hash_map::Entry::Occupied(mut e) => {
                if *e.get() < hlc {
                    e.insert(hlc);
                }
            }
            hash_map::Entry::Vacant(e) => {
                e.insert(hlc);
            }
        }
    }
}

/// A batch being filled: its records and the cursor moves it makes once acknowledged.
#[derive(Default)]
pub struct Batch {
    pub records: Vec<(Bytes, WireRecord)>,
    pub bytes: usize,
    pub advances: Advances,
}

impl Batch {
    pub fn is_full(&self, o: &ShipOptions) -> bool {
        self.records.len() >= o.batch_records || self.bytes >= o.batch_bytes
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.advances.is_empty()
    }
}

/// The batches on the WAN, in the order sent: each resolves to the records it carried and
/// its cursor moves once acknowledged (None if the shipper stopped first). They are handed
/// back strictly in that order, so the moves of a batch acknowledged early wait for every
/// batch before it.
pub struct Window {
    sent: FuturesOrdered<BoxFuture<'static, Option<(usize, Advances)>>>,
    records: usize,
}

impl Window {
    pub fn new() -> Window {
        Window { sent: FuturesOrdered::new(), records: 0 }
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Records on the WAN and not yet acknowledged in order.
    pub fn records(&self) -> usize {
        self.records
    }

    pub fn push(&mut self, records: usize, acknowledged: BoxFuture<'static, Option<(usize, Advances)>>) {
        self.records += records;
        self.sent.push_back(acknowledged);
    }

    /// The next batch in sending order once it and all before it are acknowledged: its
    /// cursor moves. None when the shipper stopped before it was (or nothing is in flight).
    pub async fn next_acknowledged(&mut self) -> Option<Advances> {
        let (records, advances) = self.sent.next().await??;
        self.records -= records;
        Some(advances)
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

/// What a reader read: records of `partition` at `node`, covering its sequence up to `upto`.
struct Read {
    node: Target,
    partition: u16,
    records: Vec<(u64, Bytes, WireRecord)>,
    upto: u64,
}

/// Ships to one remote datacenter until `stop`.
pub struct Shipper {
    pub datacenter: String,
    /// This connector's id in gossip: its standing in the share.
    pub node_id: u64,
    pub remote: String,
    /// The remote's connectors (`HOST:PORT`, re-resolved on every dial; a name may stand for
    /// several), tried in turn.
    pub addresses: Vec<String>,
    pub partitions: u16,
    pub members: Arc<Members>,
    pub local: Arc<Peers>,
    pub wan: Arc<Peers>,
    pub link: Arc<Link>,
    pub share: Arc<Share>,
    pub options: ShipOptions,
    /// Which of the resolved addresses to send to: moves to the next on a failure.
    pub pick: AtomicUsize,
}

/// The WAN target of a remote datacenter: its id is fixed per datacenter name, so the
/// transport keeps one connection per resolved address.
pub(crate) fn remote_target(remote: &str, addr: SocketAddr) -> Target {
    let id = remote
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // The transport checks that the connector answering is of this datacenter.
    Target { id, name: remote.to_string(), addr }
}

/// A data node's reader as the batcher keeps it.
struct Reader {
    stop: CancellationToken,
    /// Positions of its sequences not read yet (its part of the backlog).
    backlog: Arc<AtomicU64>,
}

impl Shipper {
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(remote = %self.remote, addresses = ?self.addresses, "shipper started");
        let this = Arc::new(self);
        let (read_tx, mut reads) = mpsc::channel::<Read>(READ_QUEUE);
        let (acked_tx, acked_rx) = mpsc::unbounded_channel::<Advances>();
        let acker = tokio::spawn(this.clone().tell_nodes(acked_rx));
        let (share_tx, share_rx) = watch::channel(Arc::new(this.look_at_share()));
        let mut readers: HashMap<u64, Reader> = HashMap::new();
        let mut recent = Recent::new(RECENT_KEYS);
        let mut window = Window::new();
        let mut batch = Batch::default();
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let room = this.options.batches_in_flight.max(1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                acked = window.next_acknowledged(), if !window.is_empty() => match acked {
                    // In sending order: every batch before it was acknowledged too.
                    Some(advances) => {
                        if acked_tx.send(advances).is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                // While the window is full, reads still fill the next batch up to its bounds:
                // batches grow when the WAN is the bottleneck instead of queueing small.
                read = reads.recv(), if window.len() < room || !batch.is_full(&this.options) => {
                    let Some(read) = read else { break };
                    this.take(read, &mut batch, &mut recent);
                    // Whatever else is waiting joins the batch.
                    loop {
                        if batch.is_full(&this.options) {
                            if window.len() >= room {
                                break;
                            }
                            this.dispatch(std::mem::take(&mut batch), &mut window, &stop);
                        }
                        match reads.try_recv() {
                            Ok(read) => this.take(read, &mut batch, &mut recent),
                            Err(_) => break,
                        }
                    }
                }
                _ = look.tick() => {
                    let mine = this.look_at_share();
                    if **share_tx.borrow() != mine {
                        share_tx.send_replace(Arc::new(mine));
                    }
                    this.look_at_nodes(&mut readers, &read_tx, &share_rx, &stop);
                    let backlog: u64 = readers.values().map(|r| r.backlog.load(Ordering::Relaxed)).sum();
                    this.link.round(backlog + window.records() as u64);
                }
            }
            // A batch goes once full, or as soon as nothing more is waiting to join it: a
            // lone write waits for no other.
            if !batch.is_empty() && window.len() < room && (batch.is_full(&this.options) || reads.is_empty())
            {
                this.dispatch(std::mem::take(&mut batch), &mut window, &stop);
            }
            this.link.worker(if window.is_empty() { "idle" } else { "shipping" });
        }
        for reader in readers.values() {
            reader.stop.cancel();
        }
        drop(acked_tx);
        // What was acknowledged is still told to the nodes, within a request's timeout.
        if tokio::time::timeout(this.options.local_timeout, acker).await.is_err() {
            tracing::warn!(remote = %this.remote, "telling the nodes the last acknowledged positions timed out");
        }
        this.link.worker("stopped");
        tracing::info!(remote = %this.remote, "shipper stopped");
    }

    /// This connector's share of the partitions among its live twins, as gossip shows them.
    fn look_at_share(&self) -> Vec<bool> {
        let twins = self.members.connectors();
        let ids: Vec<u64> = twins.iter().map(|(id, _)| *id).collect();
        let mine = owned(self.node_id, &ids, self.partitions);
        self.share
            .set(mine.iter().filter(|&&m| m).count(), twins.into_iter().map(|(_, name)| name).collect());
        mine
    }

    /// Starts a reader for each data node that has none, and stops those of nodes gone.
    fn look_at_nodes(
        self: &Arc<Self>,
        readers: &mut HashMap<u64, Reader>,
        reads: &mpsc::Sender<Read>,
        share: &watch::Receiver<Arc<Vec<bool>>>,
        stop: &CancellationToken,
    ) {
        let nodes = self.members.data_nodes();
        readers.retain(|id, r| {
            let alive = nodes.iter().any(|n| n.id == *id);
            if !alive {
                r.stop.cancel();
            }
            alive
        });
        for node in nodes {
            if let hash_map::Entry::Vacant(e) = readers.entry(node.id) {
                let target = Target { id: node.id, name: node.name.clone(), addr: node.rpc_addr };
                let reader = Reader { stop: stop.child_token(), backlog: Arc::default() };
                tokio::spawn(self.clone().read_node(
                    target,
                    reads.clone(),
                    share.clone(),
                    reader.backlog.clone(),
                    reader.stop.clone(),
                ));
                e.insert(reader);
            }
        }
    }

    /// Puts what a reader read into `batch`, skipping what the remote already has.
    fn take(&self, read: Read, batch: &mut Batch, recent: &mut Recent) {
        for (_, key, record) in read.records {
            let hlc = match record.decode() {
                Ok(r) => r.hlc,
                Err(e) => {
                    self.link.failed(format!("record of key {key:?} at {}: {e}", read.node.name), false);
                    continue;
                }
            };
            if recent.has(&key, hlc) || skipped_by_test(&key) {
                continue;
            }
            // Noted now, not once acknowledged: another owner's copy read later is skipped
            // too. A batch is sent until acknowledged or the shipper stops (and forgets
            // `recent`), and cursor moves are told in sending order, so the copy's batch
            // is acknowledged before any later batch moves a cursor past the other copies.
            recent.note(key.clone(), hlc);
            batch.bytes += key.len() + record.0.len();
            batch.records.push((key, record));
        }
        batch.advances.push(&read.node, read.partition, read.upto);
    }

    /// Puts `batch` on the WAN, in the window.
    fn dispatch(self: &Arc<Self>, batch: Batch, window: &mut Window, stop: &CancellationToken) {
        let (this, stop) = (self.clone(), stop.clone());
        let count = batch.records.len();
        window.push(
            count,
            Box::pin(async move {
                let sent = this.send(batch.records, &stop).await?;
                Some((sent, batch.advances))
            }),
        );
    }

    /// Sends `records` until acknowledged (nothing to send is acknowledged at once).
    /// None when stopped first.
    async fn send(&self, records: Vec<(Bytes, WireRecord)>, stop: &CancellationToken) -> Option<usize> {
        let count = records.len();
        if count == 0 {
            return Some(0);
        }
        let plain_only = &self.link.plain_only;
        let mut message = Outgoing::new(
            self.datacenter.clone(),
            records,
            self.options.compression,
            plain_only.load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let result = match resolve_all(&self.addresses).await {
                Ok(addrs) => {
                    let addr = addrs[self.pick.load(Ordering::Relaxed) % addrs.len()];
                    message
                        .send(
                            &self.wan,
                            &remote_target(&self.remote, addr),
                            self.options.ship_timeout,
                            plain_only,
                        )
                        .await
                        .map(|_| addr)
                        .map_err(|e| format!("{addr}: {e}"))
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(addr) => {
                    self.link.shipped(count, message.wire_bytes(), started.elapsed(), addr);
                    return Some(count);
                }
                Err(e) => {
                    tracing::warn!(remote = %self.remote, error = %e, retry_in = ?backoff, "shipping a batch failed");
                    self.link.failed(e, true);
                    self.link.worker("retrying");
                    // The next attempt goes to the remote's next address, if it has one.
                    self.pick.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Tells the nodes how far their cursors moved, batch after batch in sending order;
    /// the moves of batches acknowledged meanwhile are told together. Ends once the
    /// batcher is gone and everything it handed over was told.
    async fn tell_nodes(self: Arc<Self>, mut acked: mpsc::UnboundedReceiver<Advances>) {
        while let Some(mut advances) = acked.recv().await {
            let started = Instant::now();
            while let Ok(later) = acked.try_recv() {
                advances.merge(later);
            }
            let this = &*self;
            let told = advances.messages(&self.remote).into_iter().map(|(target, message)| async move {
                let result = this.local.call(&target, &message, this.options.local_timeout).await;
                (target, result)
            });
            for (target, result) in join_all(told).await {
                if let Err(e) = result {
                    // The node's cursors stay behind: these records are sent again by
                    // whichever connector reads from the cursors next.
                    tracing::warn!(node = %target.name, error = %e, "moving the node's cursors failed");
                    self.link.failed(format!("moving the cursors at {}: {e}", target.name), false);
                }
            }
            tokio::time::sleep(TELL_EVERY.saturating_sub(started.elapsed())).await;
        }
    }

    /// Follows the sequences of one data node until `stop`, handing what it reads to the
    /// batcher. `at` is where it has read to in each partition: the node's cursors at the
    /// start (and whenever the share grows or a read failed), then what it read since.
    async fn read_node(
        self: Arc<Self>,
        node: Target,
        reads: mpsc::Sender<Read>,
        mut share: watch::Receiver<Arc<Vec<bool>>>,
        backlog: Arc<AtomicU64>,
        stop: CancellationToken,
    ) {
        let mut at: Option<Vec<u64>> = None;
        let mut mine = share.borrow_and_update().clone();
        let mut follows = true;
        let mut start = 0usize;
        let mut pause = self.options.poll_interval;
        while !stop.is_cancelled() {
            if share.has_changed().unwrap_or(false) {
                let now = share.borrow_and_update().clone();
                // Partitions gained may have moved on under a twin: read from the cursors.
                if now.iter().zip(mine.iter()).any(|(n, m)| *n && !*m) {
                    at = None;
                }
                mine = now;
            }
            let positions = match &mut at {
                Some(at) => at,
                None => match self.positions(&node).await {
                    Ok(p) => at.insert(p.acked),
                    Err(e) => {
                        tracing::debug!(node = %node.name, error = %e, "cannot read a node's cursors");
                        self.link.failed(format!("reading the cursors at {}: {e}", node.name), false);
                        self.pause(&mut pause, &stop).await;
                        continue;
                    }
                },
            };
            let read = async {
                if follows {
                    self.follow(&node, positions, &mine, &mut start, &reads, &backlog).await
                } else {
                    self.read_changes(&node, positions, &mine, &reads, &backlog).await
                }
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                result = read => result,
            };
            match result {
                Ok(Some(_)) => pause = self.options.poll_interval,
                Ok(None) => return, // the batcher is gone
                Err(RpcError::Refused { refusal: Refusal::UnknownKind(k), .. })
                    if follows && k == Kind::Follow as u8 =>
                {
                    tracing::info!(node = %node.name, "the node does not take long polls (an older version): reading it every connector.poll_interval");
                    follows = false;
                }
                Err(e) => {
                    tracing::debug!(node = %node.name, error = %e, "cannot read a node's changes");
                    self.link.failed(format!("reading the changes at {}: {e}", node.name), false);
                    // Its records are on the other owners too; this node is read again
                    // from its cursors (records read meanwhile are skipped by `recent`).
                    at = None;
                    self.pause(&mut pause, &stop).await;
                }
            }
        }
    }

    async fn pause(&self, pause: &mut Duration, stop: &CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(*pause) => {}
        }
        *pause = (*pause * 2).min(Duration::from_secs(2));
    }

    async fn positions(&self, node: &Target) -> Result<PositionsAnswer, RpcError> {
        let asked = Positions { remote: self.remote.clone() };
        let mut p = self.local.call(node, &asked, self.options.local_timeout).await?;
        p.acked.resize(self.partitions as usize, 0);
        p.heads.resize(self.partitions as usize, 0);
        Ok(p)
    }

    /// One long poll of `node`. Some(records read), or None when the batcher is gone.
    async fn follow(
        &self,
        node: &Target,
        at: &mut [u64],
        mine: &[bool],
        start: &mut usize,
        reads: &mpsc::Sender<Read>,
        backlog: &AtomicU64,
    ) -> Result<Option<usize>, RpcError> {
        let followed: Vec<u16> =
            (0..self.partitions).filter(|&p| mine.get(p as usize) == Some(&true)).collect();
        if followed.is_empty() {
            // Nothing of this node is ours to ship (twins took it all): wait for the share.
            tokio::time::sleep(self.options.follow_wait).await;
            backlog.store(0, Ordering::Relaxed);
            return Ok(Some(0));
        }
        let first = *start % followed.len();
        let order: Vec<u16> = followed[first..].iter().chain(&followed[..first]).copied().collect();
        let asked = Follow {
            origin: self.datacenter.clone(),
            after: order.iter().map(|&p| (p, at[p as usize])).collect(),
            limit: self.options.batch_records as u32,
            max_bytes: self.options.batch_bytes as u32,
            wait_ms: self.options.follow_wait.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let Followed { heads, chunks } =
            self.local.call(node, &asked, self.options.local_timeout + self.options.follow_wait).await?;
        if heads.len() != order.len() {
            return Err(RpcError::Transport {
                peer: node.name.clone(),
                reason: format!("{} heads for {} partitions asked", heads.len(), order.len()),
            });
        }
        // A sequence behind where it was read to started over (the node lost its store):
        // read it again from the node's cursors, which it dropped.
        if order.iter().zip(&heads).any(|(&p, &head)| head < at[p as usize]) {
            return Err(RpcError::Transport {
                peer: node.name.clone(),
                reason: "a change sequence started over".into(),
            });
        }
        // The next poll starts after the last partition read to its end, so that under a
        // steady load every partition gets its turn.
        if let Some(last) = chunks.last() {
            let i = order.iter().position(|&p| p == last.partition).unwrap_or(0);
            *start = first + i + usize::from(!last.more);
        }
        let mut count = 0;
        for FollowedChunk { partition, records, upto, .. } in chunks {
            let Some(position) = at.get_mut(partition as usize) else { continue };
            count += records.len();
            *position = (*position).max(upto);
            if reads.send(Read { node: node.clone(), partition, records, upto }).await.is_err() {
                return Ok(None);
            }
        }
        let left: u64 =
            order.iter().zip(&heads).map(|(&p, &head)| positions_between(at[p as usize], head)).sum();
        backlog.store(left, Ordering::Relaxed);
        Ok(Some(count))
    }

    /// The way to read a node that predates [`Follow`]: its heads, then each partition of
    /// the share past its position, chunk by chunk; a pause of `poll_interval` when none is.
    async fn read_changes(
        &self,
        node: &Target,
        at: &mut [u64],
        mine: &[bool],
        reads: &mpsc::Sender<Read>,
        backlog: &AtomicU64,
    ) -> Result<Option<usize>, RpcError> {
        let PositionsAnswer { heads, .. } = self.positions(node).await?;
        let mut count = 0;
        for p in 0..self.partitions {
            let i = p as usize;
            if heads[i] < at[i] {
                return Err(RpcError::Transport {
                    peer: node.name.clone(),
                    reason: "a change sequence started over".into(),
                });
            }
            if !mine[i] || heads[i] == at[i] {
                continue;
            }
            loop {
                let asked = Changes {
                    partition: p,
                    after: at[i],
                    origin: self.datacenter.clone(),
                    limit: self.options.batch_records as u32,
                    max_bytes: self.options.batch_bytes as u32,
                };
                let chunk = self.local.call(node, &asked, self.options.local_timeout).await?;
                // A last chunk covers everything up to the head read before it (a number
                // is visible only once all below it are), even numbers purged since.
                let upto = if chunk.more { chunk.upto } else { chunk.upto.max(heads[i]) };
                let moved = upto > at[i];
                at[i] = at[i].max(upto);
                count += chunk.records.len();
                let read = Read { node: node.clone(), partition: p, records: chunk.records, upto };
                if reads.send(read).await.is_err() {
                    return Ok(None);
                }
                if !chunk.more || !moved {
                    break;
                }
            }
        }
        let left: u64 = (0..self.partitions as usize)
            .filter(|&i| mine[i])
            .map(|i| positions_between(at[i], heads[i]))
            .sum();
        backlog.store(left, Ordering::Relaxed);
        if count == 0 {
            tokio::time::sleep(self.options.poll_interval).await;
        }
        Ok(Some(count))
    }
}

/// Test hook: `OPENCLUSTER_TEST_SHIP_SKIP_PREFIX` makes the shipper pass over the
/// records of keys with that prefix as if they were shipped, the way a lost cursor would,
/// so tests can show the backstop delivers them.
fn skipped_by_test(key: &[u8]) -> bool {
    static PREFIX: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    PREFIX
        .get_or_init(|| std::env::var_os("OPENCLUSTER_TEST_SHIP_SKIP_PREFIX").map(|p| p.into_encoded_bytes()))
        .as_deref()
        .is_some_and(|p| key.starts_with(p))
}

/// Resolves every `HOST:PORT` again (a connector's address may change, and a name may
/// stand for several connectors), in the order given.
pub(crate) async fn resolve_all(addresses: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for address in addresses {
        match tokio::net::lookup_host(address).await {
            Ok(found) => {
                for a in found {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => errors.push(format!("resolving {address}: {e}")),
        }
    }
    if out.is_empty() {
        errors.push(format!("no address for {}", addresses.join(", ")));
        return Err(errors.join("; "));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_skips_only_what_the_remote_has_and_stays_bounded() {
        let mut r = Recent::new(2);
        let k = Bytes::from_static(b"k");
        r.note(k.clone(), Hlc(10));
        assert!(r.has(b"k", Hlc(10)) && r.has(b"k", Hlc(9)));
        assert!(!r.has(b"k", Hlc(11)));
        r.note(k.clone(), Hlc(5));
        assert!(r.has(b"k", Hlc(10)), "an older copy never lowers what was shipped");
        r.note(Bytes::from_static(b"a"), Hlc(1));
        r.note(Bytes::from_static(b"b"), Hlc(1));
        assert!(r.shipped.len() <= 2);
    }

    #[tokio::test]
    async fn every_address_of_every_remote_connector_is_tried_once_in_order() {
        let names = ["127.0.0.2:7948", "127.0.0.1:7948", "127.0.0.2:7948"].map(String::from);
        let found = resolve_all(&names).await.unwrap();
        let expected: Vec<SocketAddr> =
            vec!["127.0.0.2:7948".parse().unwrap(), "127.0.0.1:7948".parse().unwrap()];
        assert_eq!(found, expected);
        let e = resolve_all(&["127.0.0.1".to_string()]).await.unwrap_err();
        assert!(e.contains("resolving 127.0.0.1"), "{e}");
    }

    fn target(id: u64) -> Target {
        Target { id, name: format!("n{id}"), addr: ([127, 0, 0, 1], 7000 + id as u16).into() }
    }

    /// A batch of `records` moving partition 0 of node 1 to `to`, acknowledged when `ack`
    /// fires (or never, if it is dropped: the shipper stopped first).
    fn batch(window: &mut Window, records: usize, to: u64) -> tokio::sync::oneshot::Sender<bool> {
        let (ack, acked) = tokio::sync::oneshot::channel::<bool>();
        let mut advances = Advances::default();
        advances.push(&target(1), 0, to);
        window.push(
            records,
            Box::pin(async move { acked.await.ok().filter(|&ok| ok).map(|_| (records, advances)) }),
        );
        ack
    }

    fn moved_to(a: Advances) -> u64 {
        a.messages("dc2")[0].1.positions[0].1
    }

    #[tokio::test]
    async fn batches_acknowledged_out_of_order_move_cursors_in_sending_order_only() {
        use futures_util::FutureExt;
        let mut window = Window::new();
        let first = batch(&mut window, 10, 100);
        let second = batch(&mut window, 20, 200);
        let third = batch(&mut window, 5, 300);
        assert_eq!((window.len(), window.records()), (3, 35));
        // The second and third are acknowledged first: no cursor may move past the first.
        second.send(true).unwrap();
        third.send(true).unwrap();
        assert!(window.next_acknowledged().now_or_never().is_none(), "moved past an unacknowledged batch");
        first.send(true).unwrap();
        assert_eq!(window.next_acknowledged().await.map(moved_to), Some(100));
        assert_eq!(window.next_acknowledged().await.map(moved_to), Some(200));
        assert_eq!(window.next_acknowledged().await.map(moved_to), Some(300));
        assert!(window.is_empty() && window.records() == 0);
        // A batch that never gets through (the shipper stopped while it was retried):
        // the batches after it, acknowledged or not, move nothing.
        let lost = batch(&mut window, 1, 400);
        let after = batch(&mut window, 1, 500);
        after.send(true).unwrap();
        drop(lost);
        assert!(window.next_acknowledged().await.is_none());
    }

    #[test]
    fn remote_targets_are_stable_per_datacenter() {
        let a = "127.0.0.1:1".parse().unwrap();
        assert_eq!(remote_target("dc2", a).id, remote_target("dc2", a).id);
        assert_ne!(remote_target("dc2", a).id, remote_target("dc3", a).id);
    }
}
