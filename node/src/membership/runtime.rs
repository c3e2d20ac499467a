//! The membership task: the one owner of the `Foca` value.
//!
//! Three tasks, one owner:
//! - the **receiver** reads UDP datagrams, opens the sealed envelope and checks it against
//!   the replay filter, then hands the plaintext to the owner (a bounded channel: when the
//!   owner falls behind, packets are dropped and counted, as UDP would);
//! - the **joiner** resolves `join` targets and asks the owner to announce to them, with
//!   backoff, while this node knows no other member;
//! - the **owner** feeds foca packets, timers (from one ordered queue, [`Timers`]) and
//!   join/leave requests, then seals and sends what foca wrote and refreshes the member
//!   table. Every turn is short: nothing in it waits on the network.
//!
//! On shutdown the owner leaves the cluster (foca marks itself down and gossips it) and
//! sends those packets before it returns, within [`LEAVE_FLUSH_TIMEOUT`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use foca::{AccumulatingRuntime, Foca, OwnedNotification, PostcardCodec, Timer};
use opencluster_pki::Keyring;
use prometheus::{IntCounterVec, IntGaugeVec};
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::identity::NodeIdentity;
use super::join::{self, Backoff};
use super::left::{LeftNotice, LeftNotices};
use super::members::{MemberState, Members};
use super::seal::{self, OVERHEAD, ReplayFilter, Sealer};
use super::timers::Timers;
use super::timing;
use crate::config::GossipConfig;

/// Largest datagram sent or read, sealed envelope included.
pub const MAX_DATAGRAM: usize = 1400;
/// How often packets refused from one host are logged at `warn`.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(60);
/// Hosts remembered for that (a flood from many addresses is counted, not logged).
const REFUSED_LOG_SENDERS: usize = 1024;
/// Capacity of the owner's input channel.
const INPUT_CAPACITY: usize = 1024;
/// Longest a stopping node spends sending its leave packets.
pub const LEAVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the joiner checks whether the node is alone again.
const ALONE_CHECK: Duration = Duration::from_secs(1);
/// How long the replay filter remembers a silent sender: past
/// [`timing::REMOVE_DOWN_AFTER`].
const REPLAY_MEMORY: Duration = Duration::from_secs(25 * 3600);

type Gossip = Foca<NodeIdentity, PostcardCodec, StdRng, LeftNotices>;

/// What the other tasks ask of the owner.
#[derive(Debug)]
pub enum Input {
    /// An authenticated, fresh gossip payload.
    Packet(Vec<u8>, SocketAddr),
    /// Announce this node to these addresses.
    Join(Vec<SocketAddr>),
}

/// Everything the membership task needs.
pub struct Settings {
    /// This node's identity (its advertised address inside).
    pub identity: NodeIdentity,
    /// The bound gossip socket.
    pub socket: UdpSocket,
    /// The gossip keyring, as it changes: packets are sealed with its primary key and
    /// opened with any of its keys.
    pub keyring: watch::Receiver<Keyring>,
    /// The cluster name packets are bound to.
    pub cluster: String,
    /// `join` targets.
    pub join: Vec<String>,
    /// Sealer sender id: random, drawn at every start.
    pub sender: u64,
    /// Failure-detection timing.
    pub timing: GossipConfig,
}

/// Gossip metrics.
#[derive(Clone)]
pub struct GossipMetrics {
    /// `opencluster_gossip_packets_dropped_total{reason}`.
    pub dropped: IntCounterVec,
    /// `opencluster_gossip_packets_total{direction}`.
    pub packets: IntCounterVec,
    /// `opencluster_members{state}`.
    pub members: IntGaugeVec,
}

/// Starts the membership tasks on `tasks`; they stop when `stop` is cancelled (after
/// leaving the cluster). Returns the member table they keep up to date.
pub fn start(
    settings: Settings,
    metrics: GossipMetrics,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Arc<Members> {
    let members = Arc::new(Members::new(settings.identity.clone()));
    let socket = Arc::new(settings.socket);
    let (input, inputs) = mpsc::channel(INPUT_CAPACITY);
    // The receiver and joiner stop as soon as the owner has left; the owner on `stop`.
    let done = CancellationToken::new();
    tasks.spawn(receive(
        socket.clone(),
        settings.keyring.clone(),
        settings.cluster.clone(),
        input.clone(),
        metrics.clone(),
        done.clone(),
    ));
    tasks.spawn(join_while_alone(
        settings.join,
        settings.identity.addr,
        members.clone(),
        input,
        done.clone(),
    ));

    let config = timing::foca_config(&settings.timing, max_payload());
    let rng: StdRng = rand::make_rng();
    let left = LeftNotices::default();
    let first_keyring = settings.keyring.borrow().clone();
    let owner = Owner {
        foca: Foca::with_custom_broadcast(settings.identity, config, rng, PostcardCodec, left.clone()),
        left,
        runtime: AccumulatingRuntime::new(),
        timers: Timers::default(),
        sealer: Sealer::new(first_keyring, &settings.cluster, settings.sender),
        keyring: settings.keyring,
        socket,
        members: members.clone(),
        metrics,
        sealed: Vec::with_capacity(MAX_DATAGRAM),
    };
    tasks.spawn(async move {
        owner.run(inputs, stop).await;
        done.cancel();
    });
    members
}

/// The largest gossip payload: a datagram less the sealed envelope.
fn max_payload() -> NonZeroUsize {
    NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD).unwrap_or(NonZeroUsize::MIN)
}

/// Reads, opens and replay-checks datagrams; forwards the plaintext to the owner.
async fn receive(
    socket: Arc<UdpSocket>,
    mut keyring_updates: watch::Receiver<Keyring>,
    cluster: String,
    input: mpsc::Sender<Input>,
    metrics: GossipMetrics,
    done: CancellationToken,
) {
    // Remember silent senders for longer than foca remembers a down member, so an old
    // packet replayed while foca still knows the member is down is refused here first.
    let mut replay = ReplayFilter::new(seal::DEFAULT_MAX_SENDERS, REPLAY_MEMORY);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let drop = |reason: &str| metrics.dropped.with_label_values(&[reason]).inc();
    let mut keyring = keyring_updates.borrow_and_update().clone();
    let mut refused_logged: std::collections::HashMap<std::net::IpAddr, std::time::Instant> =
        std::collections::HashMap::new();
    loop {
        let (len, from) = tokio::select! {
            _ = done.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems.
                    tracing::debug!(error = %e, "gossip socket receive error");
                    continue;
                }
            },
        };
        metrics.packets.with_label_values(&["received"]).inc();
        if len > MAX_DATAGRAM {
            drop("oversized");
            tracing::debug!(%from, "gossip packet larger than {MAX_DATAGRAM} bytes dropped");
            continue;
        }
        if keyring_updates.has_changed().unwrap_or(false) {
            keyring = keyring_updates.borrow_and_update().clone();
        }
        let opened = match seal::open(&keyring, &cluster, &buf[..len]) {
            Ok(opened) => opened,
            Err(e) => {
                drop(e.reason());
                // An operator needs to hear of a host sending with another key (a node
                // with the wrong keyring, a rotation half done): once per sender per
                // REFUSED_LOG_EVERY; the counter has every packet.
                let now = std::time::Instant::now();
                let due = refused_logged
                    .get(&from.ip())
                    .is_none_or(|at| now.duration_since(*at) >= REFUSED_LOG_EVERY);
                if due {
                    if refused_logged.len() >= REFUSED_LOG_SENDERS {
                        refused_logged.retain(|_, at| now.duration_since(*at) < REFUSED_LOG_EVERY);
                    }
                    if refused_logged.len() < REFUSED_LOG_SENDERS {
                        refused_logged.insert(from.ip(), now);
                        tracing::warn!(
                            %from, error = %e,
                            "gossip packets refused: sealed with a key this node does not have, or not for this cluster"
                        );
                    }
                } else {
                    tracing::debug!(%from, error = %e, "gossip packet dropped");
                }
                continue;
            }
        };
        if let Err(e) = replay.check(opened.sender, opened.counter, std::time::Instant::now()) {
            drop(e.reason());
            tracing::debug!(%from, error = %e, "gossip packet dropped");
            continue;
        }
        if input.try_send(Input::Packet(opened.plaintext, from)).is_err() {
            drop("overloaded");
            tracing::debug!(%from, "gossip packet dropped: the membership task is behind");
        }
    }
}

/// While this node knows no other member, resolves `join` and asks the owner to announce
/// to every address found, backing off between attempts; forever.
async fn join_while_alone(
    targets: Vec<String>,
    own: SocketAddr,
    members: Arc<Members>,
    input: mpsc::Sender<Input>,
    done: CancellationToken,
) {
    if targets.is_empty() {
        tracing::info!("no join addresses: waiting for other nodes to join this one");
        return;
    }
    let mut backoff = Backoff::default();
    loop {
        let wait = if members.active_peers() > 0 {
            backoff.reset();
            ALONE_CHECK
        } else {
            let (addrs, failures) = join::resolve(&targets, own).await;
            let wait = backoff.next_wait();
            for failure in &failures {
                tracing::warn!(failure = %failure, retry_in = ?wait, "cannot resolve a join address");
            }
            if addrs.is_empty() {
                tracing::warn!(join = ?targets, retry_in = ?wait, "no join address resolved; retrying");
            } else {
                tracing::info!(addrs = ?addrs, retry_in = ?wait, "announcing to join addresses");
                if input.send(Input::Join(addrs)).await.is_err() {
                    return;
                }
            }
            wait
        };
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

struct Owner {
    foca: Gossip,
    /// Who left on purpose (shared with foca's broadcast handler).
    left: LeftNotices,
    runtime: AccumulatingRuntime<NodeIdentity>,
    timers: Timers<Timer<NodeIdentity>>,
    sealer: Sealer,
    /// Keyring changes, taken by the sealer before the next packet.
    keyring: watch::Receiver<Keyring>,
    socket: Arc<UdpSocket>,
    members: Arc<Members>,
    metrics: GossipMetrics,
    sealed: Vec<u8>,
}

impl Owner {
    async fn run(mut self, mut inputs: mpsc::Receiver<Input>, stop: CancellationToken) {
        tracing::info!(
            addr = %self.foca.identity().addr, sender = %format!("{:016x}", self.sealer.sender()),
            "gossip membership started"
        );
        self.publish();
        loop {
            let next_timer = self.timers.next_deadline();
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = sleep_until(next_timer) => {
                    let now = Instant::now();
                    while let Some(timer) = self.timers.pop_due(now) {
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                            tracing::debug!(error = %e, "gossip timer");
                        }
                    }
                }
                input = inputs.recv() => match input {
                    None => break,
                    Some(Input::Packet(data, from)) => {
                        if let Err(e) = self.foca.handle_data(&data, &mut self.runtime) {
                            // Undecodable, not addressed to this identity, or from ourselves.
                            self.metrics.dropped.with_label_values(&["rejected"]).inc();
                            tracing::debug!(%from, error = %e, "gossip payload rejected");
                        }
                    }
                    Some(Input::Join(addrs)) => {
                        for addr in addrs {
                            // An identity that only names the address (foca accepts an
                            // announce for any identity at its address); the peer answers
                            // with its real one.
                            let probe =
                                NodeIdentity { id: 0, addr, started_ms: 0, renewals: 0, ..self.foca.identity().clone() };
                            if let Err(e) = self.foca.announce(probe, &mut self.runtime) {
                                tracing::warn!(%addr, error = %e, "cannot announce to a join address");
                            }
                        }
                    }
                },
            }
            self.drain();
        }
        self.leave().await;
    }

    /// Sends what foca wrote, queues its timers, logs its notifications, and refreshes the
    /// member table.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            self.send(to.addr, &data);
        }
        let now = Instant::now();
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.schedule(now + after, timer);
        }
        while let Some(notification) = self.runtime.to_notify() {
            log_notification(&notification);
        }
        // Suspicion raises no notification, so the table is copied from foca every turn
        // (a few dozen members: cheap next to the packet that caused the turn).
        self.publish();
    }

    /// Seals and sends one datagram without waiting: a full socket buffer drops it, as the
    /// network could.
    fn send(&mut self, to: SocketAddr, data: &Bytes) {
        self.refresh_keyring();
        if let Err(e) = self.sealer.seal(data, &mut self.sealed) {
            self.metrics.dropped.with_label_values(&["seal_failed"]).inc();
            tracing::error!(%to, error = %e, "cannot seal a gossip packet");
            return;
        }
        match self.socket.try_send_to(&self.sealed, to) {
            Ok(_) => self.metrics.packets.with_label_values(&["sent"]).inc(),
            Err(e) => {
                self.metrics.dropped.with_label_values(&["send_failed"]).inc();
                tracing::debug!(%to, error = %e, "cannot send a gossip packet");
            }
        }
    }

    /// Takes a changed keyring before sealing: the next packet goes out under its primary.
    fn refresh_keyring(&mut self) {
        if self.keyring.has_changed().unwrap_or(false) {
            let keyring = self.keyring.borrow_and_update().clone();
            self.sealer.set_keyring(keyring);
        }
    }

    /// Copies foca's view into the shared table and the gauges.
    fn publish(&self) {
        self.members.replace(self.foca.identity().clone(), MemberState::Alive, self.peer_states());
        let counts = self.members.counts();
        for state in MemberState::ALL {
            self.metrics.members.with_label_values(&[state.as_str()]).set(counts.get(state) as i64);
        }
    }

    /// Every peer foca knows, `down` ones that left on purpose shown as `left`.
    fn peer_states(&self) -> Vec<(NodeIdentity, MemberState)> {
        let state = |m: &foca::Member<NodeIdentity>| match MemberState::from(m.state()) {
            MemberState::Down if self.left.has_left(m.id()) => MemberState::Left,
            state => state,
        };
        self.foca.iter_membership_state().map(|m| (m.id().clone(), state(m))).collect()
    }

    /// Declares this node down to the cluster, with a left notice so that peers show it as
    /// `left` rather than crashed, and sends the news before returning.
    async fn leave(mut self) {
        let peers = self.members.active_peers();
        let notice = LeftNotice::of(self.foca.identity()).encode();
        if let Err(e) = self.foca.add_broadcast(&notice) {
            tracing::warn!(error = %e, "cannot add the left notice; peers will see this node as down");
        }
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::warn!(error = %e, "cannot leave the gossip cluster cleanly");
        }
        self.refresh_keyring();
        let mut outgoing = Vec::new();
        while let Some((to, data)) = self.runtime.to_send() {
            outgoing.push((to.addr, data));
        }
        let flush = async {
            for (to, data) in &outgoing {
                if let Err(e) = self.sealer.seal(data, &mut self.sealed) {
                    tracing::warn!(%to, error = %e, "cannot seal a leave packet");
                    continue;
                }
                match self.socket.send_to(&self.sealed, *to).await {
                    Ok(_) => self.metrics.packets.with_label_values(&["sent"]).inc(),
                    Err(e) => tracing::debug!(%to, error = %e, "cannot send a leave packet"),
                }
            }
        };
        if tokio::time::timeout(LEAVE_FLUSH_TIMEOUT, flush).await.is_err() {
            tracing::warn!(timeout = ?LEAVE_FLUSH_TIMEOUT, "leave packets not all sent in time");
        }
        self.members.replace(self.foca.identity().clone(), MemberState::Left, self.peer_states());
        tracing::info!(told = outgoing.len(), active_peers = peers, "left the gossip cluster");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn log_notification(notification: &OwnedNotification<NodeIdentity>) {
    match notification {
        OwnedNotification::MemberUp(m) => {
            tracing::info!(member = %m.meta.name, addr = %m.addr, id = %format!("{:016x}", m.id), "member up")
        }
        OwnedNotification::MemberDown(m) => {
            tracing::info!(member = %m.meta.name, addr = %m.addr, id = %format!("{:016x}", m.id), "member down")
        }
        OwnedNotification::Rename(old, new) => {
            tracing::info!(member = %new.meta.name, addr = %new.addr, old = %old.meta.name, "member identity renewed")
        }
        OwnedNotification::Active => tracing::info!("joined the gossip cluster"),
        OwnedNotification::Idle => tracing::warn!("no other member is reachable"),
        OwnedNotification::Defunct => {
            tracing::warn!("this node was declared down and cannot renew its identity")
        }
        OwnedNotification::Rejoin(id) => tracing::info!(
            renewals = id.renewals,
            "declared down by the cluster; rejoined with a renewed identity"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use rand::SeedableRng;

    use super::*;
    use crate::membership::identity::tests::identity;

    /// One simulated member: foca driven exactly as the owner task drives it.
    struct Sim {
        foca: Gossip,
        left: LeftNotices,
        runtime: AccumulatingRuntime<NodeIdentity>,
        timers: Timers<Timer<NodeIdentity>>,
        running: bool,
    }

    fn default_config() -> foca::Config {
        timing::foca_config(&GossipConfig::default(), max_payload())
    }

    /// Collects what foca produced: packets onto the wire, timers into the queue.
    fn drain(sim: &mut Sim, now: Instant, wire: &mut VecDeque<(SocketAddr, Bytes)>) {
        while let Some((to, data)) = sim.runtime.to_send() {
            assert!(data.len() <= MAX_DATAGRAM - OVERHEAD, "packet of {} bytes", data.len());
            wire.push_back((to.addr, data));
        }
        while let Some((after, timer)) = sim.runtime.to_schedule() {
            sim.timers.schedule(now + after, timer);
        }
        while sim.runtime.to_notify().is_some() {}
    }

    fn view(sim: &Sim) -> Vec<(u64, foca::State)> {
        let mut v: Vec<_> = sim.foca.iter_membership_state().map(|m| (m.id().id, m.state())).collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// Runs the simulation in virtual time until `until` holds or `limit` passes; returns
    /// the virtual time it took.
    fn run(
        sims: &mut [Sim],
        clock: &mut Instant,
        wire: &mut VecDeque<(SocketAddr, Bytes)>,
        limit: Duration,
        until: impl Fn(&[Sim]) -> bool,
    ) -> Option<Duration> {
        let start = *clock;
        while clock.duration_since(start) < limit {
            while let Some((to, data)) = wire.pop_front() {
                if let Some(sim) = sims.iter_mut().find(|s| s.running && s.foca.identity().addr == to) {
                    sim.foca.handle_data(&data, &mut sim.runtime).unwrap();
                    drain(sim, *clock, wire);
                }
            }
            if until(sims) {
                return Some(clock.duration_since(start));
            }
            let next = sims.iter().filter(|s| s.running).filter_map(|s| s.timers.next_deadline()).min()?;
            *clock = next;
            for sim in sims.iter_mut().filter(|s| s.running) {
                while let Some(timer) = sim.timers.pop_due(*clock) {
                    // Stale timers after identity changes are expected; others are bugs.
                    let _ = sim.foca.handle_timer(timer, &mut sim.runtime);
                }
                drain(sim, *clock, wire);
            }
        }
        None
    }

    /// Three simulated members, 2 and 3 joined through 1, run until all see each other.
    fn three_joined() -> (Instant, VecDeque<(SocketAddr, Bytes)>, Vec<Sim>) {
        let mut clock = Instant::now();
        let mut wire = VecDeque::new();
        let mut sims: Vec<Sim> = (1..=3u64)
            .map(|n| {
                let left = LeftNotices::default();
                Sim {
                    foca: Foca::with_custom_broadcast(
                        identity(n, 7000 + n as u16, 1),
                        default_config(),
                        StdRng::seed_from_u64(n),
                        PostcardCodec,
                        left.clone(),
                    ),
                    left,
                    runtime: AccumulatingRuntime::new(),
                    timers: Timers::default(),
                    running: true,
                }
            })
            .collect();
        let seed = sims[0].foca.identity().clone();
        for sim in &mut sims[1..] {
            let probe = NodeIdentity { id: 0, started_ms: 0, ..seed.clone() };
            sim.foca.announce(probe, &mut sim.runtime).unwrap();
            drain(sim, clock, &mut wire);
        }
        let all_alive = |sims: &[Sim]| sims.iter().all(|s| s.foca.num_members() == 2);
        let converged = run(&mut sims, &mut clock, &mut wire, Duration::from_secs(30), all_alive);
        assert!(converged.is_some(), "{:?}", sims.iter().map(view).collect::<Vec<_>>());

        (clock, wire, sims)
    }

    /// Three members in virtual time, no sockets: they converge after one joins through
    /// another, and a member that stops answering is declared down by both others within
    /// the bound of the default timing (probe wait, failed probe, suspicion, one gossip hop).
    #[test]
    fn members_converge_and_detect_a_dead_one_in_virtual_time() {
        let (mut clock, mut wire, mut sims) = three_joined();
        sims[2].running = false;
        let down = |sims: &[Sim]| {
            sims[..2]
                .iter()
                .all(|s| view(s).iter().any(|(id, state)| *id == 3 && *state == foca::State::Down))
        };
        let detected =
            run(&mut sims, &mut clock, &mut wire, Duration::from_secs(60), down).unwrap_or_else(|| {
                panic!("never declared down: {:?}", sims.iter().map(view).collect::<Vec<_>>())
            });
        // At least the suspicion time; at most the bound, which is under 3 s.
        let defaults = GossipConfig::default();
        let bound = timing::detection_bound(&defaults, 3);
        assert!(bound < Duration::from_secs(3), "{bound:?}");
        assert!(detected >= defaults.suspicion_timeout && detected <= bound, "{detected:?} > {bound:?}");
    }

    /// A member that leaves (left notice, then foca's leave) is `left` to both others at
    /// once, with no suspicion period; a crashed one stays `down`.
    #[test]
    fn a_member_that_leaves_is_left_not_down() {
        let (mut clock, mut wire, mut sims) = three_joined();
        let leaving = sims[2].foca.identity().clone();
        let notice = LeftNotice::of(&leaving).encode();
        let sim = &mut sims[2];
        sim.foca.add_broadcast(&notice).unwrap();
        sim.foca.leave_cluster(&mut sim.runtime).unwrap();
        drain(sim, clock, &mut wire);
        sim.running = false;
        let down = |sims: &[Sim]| {
            sims[..2]
                .iter()
                .all(|s| view(s).iter().any(|(id, state)| *id == 3 && *state == foca::State::Down))
        };
        let took = run(&mut sims, &mut clock, &mut wire, Duration::from_secs(10), down)
            .unwrap_or_else(|| panic!("leave not seen: {:?}", sims.iter().map(view).collect::<Vec<_>>()));
        assert_eq!(took, Duration::ZERO, "the leave packets alone should tell");
        assert!(sims[..2].iter().all(|s| s.left.has_left(&leaving)));
        // A new process of the same node has not left.
        assert!(
            !sims[0].left.has_left(&NodeIdentity { started_ms: leaving.started_ms + 1, ..leaving.clone() })
        );
        assert!(!sims[0].left.has_left(sims[1].foca.identity()));
    }
}
