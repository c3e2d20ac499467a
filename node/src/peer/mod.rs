//! Peer RPC: the one QUIC endpoint of a process, over which nodes of a datacenter forward
//! reads and writes to each other.
//!
//! - **Security**: mutual TLS from the PKI ([`opencluster_pki::MutualTls`]); both sides
//!   check the other's identity against a [`Policy`] (nodes and connectors of this
//!   datacenter) and the dialler also checks that it reached the node it meant to.
//! - **Shape**: a request and its answer travel on one bidirectional QUIC stream: the
//!   caller writes the encoded [`messages::Message`] (each layer defines its own; the
//!   cluster's are in `cluster::messages`) and finishes its side, the callee
//!   answers and finishes. Calls to one peer queue for at most `rpc.streams_per_peer`
//!   streams; requests that queue meanwhile leave together as one [`Kind::Batch`]. A
//!   slow stream never holds up the others (no head-of-line blocking), and sizes are
//!   bounded on both ends. At most `rpc.max_queued_requests` requests wait per peer
//!   (their number, over all peers, is `opencluster_queue_depth{queue="peer_requests"}`);
//!   a caller finding the queue full waits for room until its deadline.
//! - **Connections** are cached per peer and redialled when they fail; a dial in progress
//!   is shared by the calls that wait for it.
//! - **Bounds**: every call has a deadline; a peer may have at most
//!   `rpc.max_concurrent_requests` streams open to this node (QUIC's stream limit makes a
//!   caller wait for a slot); flow-control windows come from config.

pub mod messages;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use opencluster_pki::MutualTls;
use opencluster_pki::peer::{PeerError, Policy, authorize, connection_error};
use opencluster_pki::tls::TlsError;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use messages::{Kind, Message, Refusal, decode_header, encode_request};

use crate::queue;

/// The name given to TLS; peers are recognised by their certificate's URI SAN instead.
const SERVER_NAME: &str = "opencluster.invalid";

/// Endpoint settings, from config.
#[derive(Clone, Debug)]
pub struct PeerOptions {
    pub stream_window: u64,
    pub connection_window: u64,
    pub max_concurrent_requests: u32,
    /// Largest request or response accepted.
    pub max_message_bytes: usize,
    /// Streams this node keeps in flight to one peer; requests beyond wait and are batched.
    pub streams_per_peer: usize,
    /// Most bytes of requests sent together in one batch (a larger request goes alone).
    pub max_batch_bytes: usize,
    /// Requests that may wait for a stream to one peer; callers beyond wait for room.
    pub max_queued_requests: usize,
    /// How long a handshake may take before a dial or an accept gives up.
    pub connect_timeout: Duration,
    /// A connection whose peer has sent nothing (not even a keep-alive, sent every third
    /// of this) for this long is closed.
    pub idle_timeout: Duration,
}

/// The peer a call goes to, as membership knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: u64,
    pub name: String,
    pub addr: SocketAddr,
}

/// Why a call did not get an answer (or got a refusal).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach {peer}: {reason}")]
    Connect { peer: String, reason: String },
    #[error("request to {peer} failed: {reason}")]
    Transport { peer: String, reason: String },
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout { peer: String, timeout: Duration },
    #[error("{peer} refused the request: {refusal}")]
    Refused { peer: String, refusal: Refusal },
}

impl RpcError {
    fn outcome(&self) -> &'static str {
        match self {
            RpcError::Connect { .. } => "unreachable",
            RpcError::Transport { .. } => "failed",
            RpcError::Timeout { .. } => "timeout",
            RpcError::Refused { .. } => "refused",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PeerSetupError {
    #[error("cannot build the peer TLS configuration: {0}")]
    Tls(#[from] TlsError),
    #[error("invalid rpc settings: {0}")]
    Settings(String),
    #[error("cannot start the peer endpoint: {0}")]
    Endpoint(std::io::Error),
}

/// RPC metrics.
#[derive(Clone)]
pub struct RpcMetrics {
    /// `opencluster_rpc_calls_total{kind, outcome}`: calls this node made.
    pub calls: IntCounterVec,
    /// `opencluster_rpc_call_duration_seconds{kind}`.
    pub duration: HistogramVec,
    /// `opencluster_rpc_served_total{kind}`: requests this node answered.
    pub served: IntCounterVec,
    /// `opencluster_rpc_refused_peers_total{reason}`: connections refused (handshake or policy).
    pub refused_peers: IntCounterVec,
    /// `opencluster_rpc_batched_requests_total`: calls that shared a stream with others.
    pub batched: IntCounter,
    /// `opencluster_rpc_lost_answers_total{reason}`: answers that did not reach whoever
    /// asked: `unsent` (this node could not send its answer to the peer), `late` (a
    /// peer's answer arrived after the caller here had given up).
    pub lost_answers: IntCounterVec,
    /// `opencluster_queue_depth{queue="peer_requests"}`: requests waiting for a stream,
    /// over all peers.
    pub queue_depth: IntGauge,
}

impl RpcMetrics {
    /// Registers the RPC metrics in `r`; `queue_depth` is this layer's gauge of
    /// `opencluster_queue_depth` ([`crate::queue::register_depths`]).
    pub fn register(r: &Registry, queue_depth: IntGauge) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "opencluster_rpc_call_duration_seconds",
                "Peer RPC call time, by request kind",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["kind"],
        )
        .expect("valid histogram");
        r.register(Box::new(duration.clone())).expect("metric names are unique");
        let batched = IntCounter::new(
            "opencluster_rpc_batched_requests_total",
            "Peer RPC calls sent together with others on one stream (under load)",
        )
        .expect("valid counter");
        r.register(Box::new(batched.clone())).expect("metric names are unique");
        let m = RpcMetrics {
            batched,
            queue_depth,
            lost_answers: counter(
                "opencluster_rpc_lost_answers_total",
                "Peer RPC answers that did not reach whoever asked, by reason (unsent: this node could not send it; late: it arrived after the caller gave up)",
                &["reason"],
            ),
            calls: counter(
                "opencluster_rpc_calls_total",
                "Peer RPC calls made, by request kind and outcome (ok, unreachable, failed, timeout, refused)",
                &["kind", "outcome"],
            ),
            duration,
            served: counter("opencluster_rpc_served_total", "Peer RPC requests answered, by kind", &["kind"]),
            refused_peers: counter(
                "opencluster_rpc_refused_peers_total",
                "Peer connections refused, by reason (handshake, policy)",
                &["reason"],
            ),
        };
        for kind in Kind::ALL {
            m.calls.with_label_values(&[kind.as_str(), "ok"]);
        }
        for reason in ["unsent", "late"] {
            m.lost_answers.with_label_values(&[reason]);
        }
        m
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What answers requests: given the kind and the encoded body, the encoded
/// `Result<Response, Refusal>` (see [`answer`]).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>>;

    /// The handler of one connection's requests, for a handler whose answers depend on
    /// who asks (the connector checks that a datacenter ships only as itself); `None`:
    /// this one.
    fn for_peer(&self, _peer: &opencluster_pki::PeerIdentity) -> Option<Arc<dyn Handler>> {
        None
    }
}

/// Decodes a request of type `M`, runs `f` on it and encodes its result.
pub async fn answer<M, F, Fut>(body: &[u8], f: F) -> Vec<u8>
where
    M: Message,
    F: FnOnce(M) -> Fut,
    Fut: Future<Output = Result<M::Response, Refusal>>,
{
    let result = match postcard::from_bytes::<M>(body) {
        Ok(msg) => f(msg).await,
        Err(e) => Err(Refusal::Malformed(e.to_string())),
    };
    encode_reply(&result)
}

/// The encoded answer of a refused request.
pub fn refused(refusal: Refusal) -> Vec<u8> {
    encode_reply::<()>(&Err(refusal))
}

fn encode_reply<T: serde::Serialize>(result: &Result<T, Refusal>) -> Vec<u8> {
    postcard::to_allocvec(result).unwrap_or_else(|e| {
        postcard::to_allocvec(&Err::<(), _>(Refusal::Malformed(format!("cannot encode the answer: {e}"))))
            .unwrap_or_default()
    })
}

/// A cached connection to one peer, or the dial that will make it.
type Slot = Arc<tokio::sync::Mutex<Option<(SocketAddr, quinn::Connection)>>>;

/// Most requests sent together on one stream (their bytes are bounded by
/// `rpc.max_batch_bytes`).
const MAX_BATCH_REQUESTS: usize = 512;

/// A request waiting for a stream to its peer.
struct Pending {
    request: Vec<u8>,
    target: Target,
    deadline: Instant,
    reply: oneshot::Sender<Result<Bytes, RpcError>>,
    /// [`Message::HELD`]: sent alone, without taking one of the peer's stream slots.
    alone: bool,
}

/// Everything about one peer: its connection and the queue of requests for it.
struct Link {
    slot: Slot,
    queue: queue::Sender<Pending>,
}

/// The endpoint: dials peers, and accepts them once [`Peers::serve`] runs.
///
/// Calls to one peer go through its queue: a request is sent at once on its own stream
/// while fewer than `rpc.streams_per_peer` streams are busy; under load the requests
/// that queued meanwhile leave together in one [`Kind::Batch`] stream. So a lone request
/// pays one round trip, and a busy node sends a few large messages instead of many small
/// ones (each stream costs both sides packets, acknowledgements and a task).
pub struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    policy: Policy,
    /// By node id and address: a node that comes back at another address gets a fresh
    /// link, so calls to it never wait behind dials to where it was.
    links: Mutex<HashMap<(u64, SocketAddr), Link>>,
    max_message_bytes: usize,
    options: PeerOptions,
    metrics: RpcMetrics,
    me: Weak<Peers>,
    /// Peer requests being answered now, and answered in all (for [`Peers::drain`]).
    serving: std::sync::atomic::AtomicUsize,
    answered: std::sync::atomic::AtomicU64,
}

impl Peers {
    /// Opens the endpoint on `socket` with mutual TLS `tls`, accepting peers allowed by `policy`.
    pub fn new(
        socket: std::net::UdpSocket,
        tls: &MutualTls,
        policy: Policy,
        options: &PeerOptions,
        metrics: RpcMetrics,
    ) -> Result<Arc<Self>, PeerSetupError> {
        let transport = Arc::new(transport_config(options)?);
        let mut server = tls.quic_server_config()?;
        server.transport_config(transport.clone());
        let mut client = tls.quic_client_config()?;
        client.transport_config(transport);
        let runtime = quinn::default_runtime()
            .ok_or_else(|| PeerSetupError::Settings("no async runtime for the peer endpoint".into()))?;
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
            .map_err(PeerSetupError::Endpoint)?;
        Ok(Arc::new_cyclic(|me| Peers {
            endpoint,
            client,
            policy,
            links: Mutex::new(HashMap::new()),
            max_message_bytes: options.max_message_bytes,
            options: options.clone(),
            metrics,
            me: me.clone(),
            serving: Default::default(),
            answered: Default::default(),
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Calls `to` with `msg`; gives up after `timeout`.
    pub async fn call<M: Message>(
        &self,
        to: &Target,
        msg: &M,
        timeout: Duration,
    ) -> Result<M::Response, RpcError> {
        let started = Instant::now();
        let result = self.call_within(to, msg, started + timeout).await;
        let kind = M::KIND.as_str();
        let outcome = result.as_ref().map_or_else(RpcError::outcome, |_| "ok");
        self.metrics.calls.with_label_values(&[kind, outcome]).inc();
        self.metrics.duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn call_within<M: Message>(
        &self,
        to: &Target,
        msg: &M,
        deadline: Instant,
    ) -> Result<M::Response, RpcError> {
        let transport = |reason: String| RpcError::Transport { peer: to.name.clone(), reason };
        let request =
            encode_request(msg).map_err(|e| transport(format!("cannot encode the request: {e}")))?;
        if request.len() > self.max_message_bytes {
            return Err(transport(format!(
                "request of {} bytes is larger than the {} bytes peers accept",
                request.len(),
                self.max_message_bytes
            )));
        }
        let (reply, answer) = oneshot::channel();
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.enqueue(Pending { request, target: to.clone(), deadline, reply, alone: M::HELD }).await?;
        let reply = match tokio::time::timeout_at(deadline.into(), answer).await {
            Err(_) | Ok(Err(_)) => return Err(RpcError::Timeout { peer: to.name.clone(), timeout }),
            Ok(Ok(reply)) => reply?,
        };
        let result: Result<M::Response, Refusal> =
            postcard::from_bytes(&reply).map_err(|e| transport(format!("malformed answer: {e}")))?;
        result.map_err(|refusal| RpcError::Refused { peer: to.name.clone(), refusal })
    }

    /// Queues a request for its peer, starting the peer's sender on first use. A full
    /// queue makes the caller wait for room, until the request's deadline: then the call
    /// fails as timed out (it was never sent).
    async fn enqueue(&self, pending: Pending) -> Result<(), RpcError> {
        let queue = {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            let key = (pending.target.id, pending.target.addr);
            if !links.contains_key(&key) {
                // The node's link at an older address goes; calls still queued there fail.
                links.retain(|(id, _), _| *id != key.0);
            }
            let link = links.entry(key).or_insert_with(|| {
                let (queue, requests) =
                    queue::bounded(self.options.max_queued_requests, self.metrics.queue_depth.clone());
                let limits = (self.options.streams_per_peer, self.options.max_batch_bytes);
                tokio::spawn(send_queued(self.me.clone(), requests, limits));
                Link { slot: Slot::default(), queue }
            });
            // Room in the queue (the usual case): no timer, no clone of the sender.
            match link.queue.try_send(pending) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(pending)) => {
                    return Err(RpcError::Transport {
                        peer: pending.target.name.clone(),
                        reason: "the node is stopping".into(),
                    });
                }
                Err(mpsc::error::TrySendError::Full(pending)) => (link.queue.clone(), pending),
            }
        };
        let (queue, pending) = queue;
        let (peer, deadline) = (pending.target.name.clone(), pending.deadline);
        let timeout = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout_at(deadline.into(), queue.send(pending)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RpcError::Transport { peer, reason: "the node is stopping".into() }),
            Err(_) => {
                tracing::debug!(%peer, "peer request queue (rpc.max_queued_requests) full until the deadline");
                Err(RpcError::Timeout { peer, timeout })
            }
        }
    }

    /// Sends `batch` (requests to one peer) on one stream and hands each caller its answer.
    async fn send_batch(&self, batch: Vec<Pending>) {
        let Some(target) = batch.last().map(|p| p.target.clone()) else { return };
        let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
        let (requests, replies): (Vec<Vec<u8>>, Vec<_>) =
            batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        if requests.len() > 1 {
            self.metrics.batched.inc_by(requests.len() as u64);
        }
        let exchange = self.exchange(&target, requests);
        let answers = match tokio::time::timeout_at(deadline.into(), exchange).await {
            Ok(answers) => answers,
            // Every caller has given up by now.
            Err(_) => return,
        };
        match answers {
            Ok(answers) => {
                let mut late = 0;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The peer answered (it may have applied a write) after the caller
                    // gave up and reported a timeout.
                    if reply.send(Ok(answer)).is_err() {
                        late += 1;
                    }
                }
                if late > 0 {
                    self.metrics.lost_answers.with_label_values(&["late"]).inc_by(late);
                    tracing::debug!(peer = %target.name, late, "peer answers arrived after their callers gave up");
                }
            }
            Err(e) => {
                for reply in replies {
                    // A caller that gave up has its error already.
                    reply.send(Err(e.clone())).ok();
                }
            }
        }
    }

    /// One stream: a lone request as it is, several as one [`Kind::Batch`]. Returns the
    /// encoded answers, in order.
    async fn exchange(&self, to: &Target, mut requests: Vec<Vec<u8>>) -> Result<Vec<Bytes>, RpcError> {
        let transport = |reason: String| RpcError::Transport { peer: to.name.clone(), reason };
        if requests.len() == 1 {
            let request = requests.pop().unwrap_or_default();
            return Ok(vec![self.round_trip(to, &request, self.max_message_bytes).await?]);
        }
        let count = requests.len();
        let parts: Vec<Bytes> = requests.into_iter().map(Bytes::from).collect();
        let mut request = vec![messages::PROTOCOL_VERSION, Kind::Batch as u8];
        postcard::to_io(&parts, &mut request)
            .map_err(|e| transport(format!("cannot encode a batch: {e}")))?;
        let limit = self.max_message_bytes.saturating_mul(count);
        let reply = self.round_trip(to, &request, limit).await?;
        let answers: Result<Vec<Bytes>, Refusal> =
            postcard::from_bytes(&reply).map_err(|e| transport(format!("malformed batch answer: {e}")))?;
        let answers = answers.map_err(|refusal| RpcError::Refused { peer: to.name.clone(), refusal })?;
        if answers.len() != count {
            return Err(transport(format!("{} answers to a batch of {count}", answers.len())));
        }
        Ok(answers)
    }

    /// Sends one encoded request on a new stream and reads the answer.
    async fn round_trip(&self, to: &Target, request: &[u8], limit: usize) -> Result<Bytes, RpcError> {
        let transport = |reason: String| RpcError::Transport { peer: to.name.clone(), reason };
        let conn = self.connection(to).await?;
        // A cached connection may have died since it was last used: then dial once more
        // (nothing was sent on it, so this cannot apply a request twice).
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(streams) => streams,
            Err(_) => {
                self.forget(to, &conn);
                let conn = self.connection(to).await?;
                conn.open_bi().await.map_err(|e| transport(connection_error(&e).to_string()))?
            }
        };
        let failed = |e: &dyn std::fmt::Display| {
            self.forget_if_closed(to, &conn);
            transport(e.to_string())
        };
        send.write_all(request).await.map_err(|e| failed(&e))?;
        send.finish().map_err(|e| failed(&e))?;
        let reply = recv.read_to_end(limit).await.map_err(|e| failed(&e))?;
        Ok(Bytes::from(reply))
    }

    /// The open connection to `to`, dialling it if needed.
    async fn connection(&self, to: &Target) -> Result<quinn::Connection, RpcError> {
        let slot = match self.links.lock().unwrap_or_else(|e| e.into_inner()).get(&(to.id, to.addr)) {
            Some(link) => link.slot.clone(),
            None => {
                return Err(RpcError::Connect {
                    peer: to.name.clone(),
                    reason: "no link to this peer".into(),
                });
            }
        };
        let mut cached = slot.lock().await;
        if let Some((addr, conn)) = cached.as_ref()
            && *addr == to.addr
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let unreachable = |reason: String| RpcError::Connect { peer: to.name.clone(), reason };
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), to.addr, SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let connect_timeout = self.options.connect_timeout;
        let conn = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unreachable(connection_error(&e).to_string())),
            Err(_) => return Err(unreachable(format!("no handshake within {connect_timeout:?}"))),
        };
        let peer = authorize(&conn, &self.policy).map_err(|e| {
            self.metrics.refused_peers.with_label_values(&["policy"]).inc();
            unreachable(e.to_string())
        })?;
        // Inside a datacenter a peer is known by its name; across the WAN a connector
        // dials the connector of a datacenter, whatever its name (`Target::name` is then
        // that datacenter).
        let wan = matches!(self.policy, Policy::ConnectorOfOtherDatacenter { .. });
        let expected = if wan { peer.identity.datacenter() } else { peer.identity.name() };
        if expected != to.name {
            let reason =
                format!("{} answers at {}, where {} is expected", peer.identity.uri(), to.addr, to.name);
            conn.close(opencluster_pki::peer::POLICY_REFUSED, reason.as_bytes());
            return Err(unreachable(reason));
        }
        tracing::debug!(peer = %to.name, addr = %to.addr, "peer connection established");
        *cached = Some((to.addr, conn.clone()));
        Ok(conn)
    }

    fn forget(&self, to: &Target, conn: &quinn::Connection) {
        conn.close(0u32.into(), b"redialling");
        self.forget_if_closed(to, conn);
    }

    fn forget_if_closed(&self, to: &Target, conn: &quinn::Connection) {
        if conn.close_reason().is_some() {
            let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(link) = links.get(&(to.id, to.addr))
                && let Ok(mut cached) = link.slot.try_lock()
                && cached.as_ref().is_some_and(|(_, c)| c.stable_id() == conn.stable_id())
            {
                *cached = None;
            }
        }
    }

    /// Accepts peers and answers their requests with `handler` until `stop`; then closes
    /// the endpoint (peers' calls in flight fail at once and they try another owner).
    pub async fn serve(
        self: Arc<Self>,
        handler: Arc<dyn Handler>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) {
        loop {
            let incoming = tokio::select! {
                _ = stop.cancelled() => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => incoming,
                    None => break,
                },
            };
            let (peers, handler, stop) = (self.clone(), handler.clone(), stop.clone());
            let streams = tasks.clone();
            tasks.spawn(async move { peers.serve_connection(incoming, handler, streams, stop).await });
        }
        self.endpoint.close(0u32.into(), b"node stopping");
        if tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await.is_err() {
            tracing::debug!("peer connections not closed within 1s");
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        handler: Arc<dyn Handler>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) {
        let from = incoming.remote_address();
        let conn = match tokio::time::timeout(self.options.connect_timeout, incoming).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.metrics.refused_peers.with_label_values(&["handshake"]).inc();
                tracing::warn!(%from, error = %connection_error(&e), "peer connection refused");
                return;
            }
            Err(_) => {
                self.metrics.refused_peers.with_label_values(&["handshake"]).inc();
                tracing::warn!(%from, "peer handshake did not complete in time");
                return;
            }
        };
        let peer = match authorize(&conn, &self.policy) {
            Ok(peer) => peer,
            Err(e) => {
                self.metrics.refused_peers.with_label_values(&["policy"]).inc();
                tracing::warn!(%from, error = %e, "peer connection refused");
                return;
            }
        };
        tracing::debug!(%from, peer = %peer.identity.uri(), "peer connected");
        let handler = handler.for_peer(&peer).unwrap_or(handler);
        loop {
            let (send, recv) = tokio::select! {
                _ = stop.cancelled() => return,
                stream = conn.accept_bi() => match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        let e: PeerError = connection_error(&e);
                        tracing::debug!(%from, error = %e, "peer connection ended");
                        return;
                    }
                },
            };
            let (peers, handler) = (self.clone(), handler.clone());
            tasks.spawn(async move { peers.serve_stream(send, recv, handler).await });
        }
    }

    /// Waits until no peer request is being answered and none has arrived for `quiet`,
    /// or `max` has passed: the last step of a node's shutdown before [`Peers::serve`]
    /// closes the endpoint.
    pub async fn drain(&self, quiet: Duration, max: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let give_up = Instant::now() + max;
        let mut last = (self.answered.load(Relaxed), Instant::now());
        while Instant::now() < give_up {
            let answered = self.answered.load(Relaxed);
            if answered != last.0 || self.serving.load(Relaxed) > 0 {
                last = (answered, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(serving = self.serving.load(Relaxed), "peers still sending requests at shutdown");
    }

    async fn serve_stream(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        handler: Arc<dyn Handler>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        /// Counts the stream as being served until it is dropped, however it ends.
        struct Serving<'a>(&'a Peers);
        impl Drop for Serving<'_> {
            fn drop(&mut self) {
                self.0.serving.fetch_sub(1, Relaxed);
                self.0.answered.fetch_add(1, Relaxed);
            }
        }
        self.serving.fetch_add(1, Relaxed);
        let _serving = Serving(self);
        let reply = match recv.read_to_end(self.max_message_bytes).await {
            Ok(request) => match decode_header(&request).map(|(kind, _)| kind) {
                Ok(Kind::Batch) => self.serve_batch(&request[2..], handler.as_ref()).await,
                Ok(kind) => self.serve_one(Bytes::from(request), kind, handler.as_ref()).await,
                Err(refusal) => encode_reply::<()>(&Err(refusal)),
            },
            Err(quinn::ReadToEndError::TooLong) => encode_reply::<()>(&Err(Refusal::Malformed(format!(
                "request larger than the {} bytes this node accepts",
                self.max_message_bytes
            )))),
            Err(e) => {
                tracing::debug!(error = %e, "peer request stream failed");
                return;
            }
        };
        let sent = match send.write_all(&reply).await {
            Ok(()) => send.finish().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            // Let the answer reach the peer before the stream is dropped; if it does not,
            // the peer's call times out and says so.
            Ok(()) => {
                if tokio::time::timeout(Duration::from_secs(5), send.stopped()).await.is_err() {
                    tracing::debug!("peer did not take its answer within 5s");
                }
            }
            Err(e) => {
                self.metrics.lost_answers.with_label_values(&["unsent"]).inc();
                tracing::debug!(error = %e, "an answer could not be sent to its peer");
            }
        }
    }
}

impl Peers {
    /// Answers one request (`request` includes its header).
    async fn serve_one(&self, request: Bytes, kind: Kind, handler: &dyn Handler) -> Vec<u8> {
        self.metrics.served.with_label_values(&[kind.as_str()]).inc();
        handler.handle(kind, request.slice(2..)).await
    }

    /// Answers every request of a batch, concurrently, in order.
    async fn serve_batch(&self, body: &[u8], handler: &dyn Handler) -> Vec<u8> {
        let parts: Vec<Bytes> = match postcard::from_bytes(body) {
            Ok(parts) => parts,
            Err(e) => return encode_reply::<()>(&Err(Refusal::Malformed(format!("malformed batch: {e}")))),
        };
        let answers = join_all(parts.into_iter().map(|part| async move {
            match decode_header(&part).map(|(kind, _)| kind) {
                Ok(Kind::Batch) => encode_reply::<()>(&Err(Refusal::Malformed("nested batch".into()))),
                Ok(kind) => self.serve_one(part.clone(), kind, handler).await,
                Err(refusal) => encode_reply::<()>(&Err(refusal)),
            }
        }))
        .await;
        let answers: Vec<Bytes> = answers.into_iter().map(Bytes::from).collect();
        encode_reply(&Ok(answers))
    }
}

/// The sender of one peer's queue: takes a stream slot, then everything queued by then
/// (up to the batch limits), and sends it. Ends when the endpoint is gone.
async fn send_queued(
    peers: Weak<Peers>,
    mut queue: queue::Receiver<Pending>,
    (streams, max_batch_bytes): (usize, usize),
) {
    let slots = Arc::new(Semaphore::new(streams));
    // A held request (a long poll) goes at once on its own stream: in a batch, or in one
    // of the slots, it would hold back the requests behind it for as long as it is held.
    let alone = |peers: &Weak<Peers>, p: Pending| {
        if let Some(peers) = peers.upgrade() {
            tokio::spawn(async move { peers.send_batch(vec![p]).await });
        }
    };
    while let Some(first) = queue.recv().await {
        if first.alone {
            alone(&peers, first);
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut bytes = first.request.len();
        let mut batch = vec![first];
        while bytes < max_batch_bytes && batch.len() < MAX_BATCH_REQUESTS {
            match queue.try_recv() {
                Ok(next) if next.alone => alone(&peers, next),
                Ok(next) => {
                    bytes += next.request.len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        // Callers that gave up while queued are not sent.
        let now = Instant::now();
        batch.retain(|p| p.deadline > now && !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(peers) = peers.upgrade() else { return };
        tokio::spawn(async move {
            peers.send_batch(batch).await;
            drop(slot);
        });
    }
}

fn transport_config(o: &PeerOptions) -> Result<quinn::TransportConfig, PeerSetupError> {
    let varint = |name: &str, v: u64| {
        quinn::VarInt::from_u64(v).map_err(|_| PeerSetupError::Settings(format!("{name} {v} is too large")))
    };
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(varint("rpc.stream_window", o.stream_window)?);
    t.receive_window(varint("rpc.connection_window", o.connection_window)?);
    t.send_window(o.connection_window);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(o.max_concurrent_requests));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.keep_alive_interval(Some(o.idle_timeout / 3));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(o.idle_timeout).map_err(|e| PeerSetupError::Settings(e.to_string()))?,
    ));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use opencluster_pki::ca::{LeafRequest, RootCa, Validity};
    use opencluster_pki::{Credentials, Role};

    use super::*;

    /// A request the server holds until released. A test message under the kind number of
    /// the cluster's reads: the transport does not look into bodies.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Held {
        keys: Vec<Bytes>,
    }

    impl Message for Held {
        const KIND: Kind = Kind::Read;
        type Response = Vec<Option<u8>>;
    }

    /// Answers Ping with a fixed id; Held waits until `release` is set, counting arrivals.
    struct Echo {
        id: u64,
        arrived: AtomicUsize,
        hold: tokio::sync::watch::Receiver<bool>,
    }

    impl Handler for Echo {
        fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
            Box::pin(async move {
                match kind {
                    Kind::Ping => answer(&body, |_: messages::Ping| async { Ok(self.id) }).await,
                    Kind::Read => {
                        answer(&body, |m: Held| async move {
                            self.arrived.fetch_add(1, Ordering::SeqCst);
                            let mut hold = self.hold.clone();
                            let _ = hold.wait_for(|released| *released).await;
                            Ok(m.keys.iter().map(|_| None).collect())
                        })
                        .await
                    }
                    _ => refused(Refusal::Malformed("not in this test".into())),
                }
            })
        }
    }

    struct Pki {
        root: RootCa,
        dc: opencluster_pki::ca::DatacenterCa,
    }

    impl Pki {
        fn new(cluster: &str) -> Self {
            let validity = Validity::days(SystemTime::now() - Duration::from_secs(3600), 30);
            let root = RootCa::create(cluster, validity).unwrap();
            let dc = root.create_datacenter("dc1", validity).unwrap();
            Pki { root, dc }
        }

        fn tls(&self, name: &str) -> MutualTls {
            let validity = Validity::days(SystemTime::now(), 7);
            let leaf = self
                .dc
                .issue(&LeafRequest { role: Role::Node, name: name.into(), sans: vec![], validity })
                .unwrap();
            MutualTls::new(self.root.cert_der(), &Credentials::self_issued(leaf)).unwrap()
        }
    }

    fn endpoint(tls: &MutualTls, cluster: &str) -> Arc<Peers> {
        endpoint_with(tls, cluster, |_| {})
    }

    fn endpoint_with(tls: &MutualTls, cluster: &str, tune: impl FnOnce(&mut PeerOptions)) -> Arc<Peers> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut options = PeerOptions {
            stream_window: 1 << 20,
            connection_window: 8 << 20,
            max_concurrent_requests: 64,
            max_message_bytes: 1 << 20,
            streams_per_peer: 8,
            max_batch_bytes: 1 << 20,
            max_queued_requests: 4096,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        };
        tune(&mut options);
        let policy = Policy::NodeOrConnectorOfDatacenter { cluster: cluster.into(), dc: "dc1".into() };
        let registry = Registry::new();
        let depth =
            crate::queue::register_depths(&registry).with_label_values(&[crate::queue::PEER_REQUESTS]);
        Peers::new(socket, tls, policy, &options, RpcMetrics::register(&registry, depth)).unwrap()
    }

    /// A server named `name` answering with `Echo`; returns it, its target and the release switch.
    fn server(pki: &Pki, name: &str) -> (Arc<Peers>, Arc<Echo>, Target, tokio::sync::watch::Sender<bool>) {
        let peers = endpoint(&pki.tls(name), pki.root.cluster());
        let (release, hold) = tokio::sync::watch::channel(false);
        let echo = Arc::new(Echo { id: 42, arrived: AtomicUsize::new(0), hold });
        let target = Target { id: 42, name: name.into(), addr: peers.local_addr().unwrap() };
        tokio::spawn(peers.clone().serve(echo.clone(), TaskTracker::new(), CancellationToken::new()));
        (peers, echo, target, release)
    }

    #[tokio::test]
    async fn calls_are_answered_and_queued_calls_share_streams() {
        opencluster_pki::install_crypto_provider();
        let pki = Pki::new("acme");
        let (_server, echo, target, release) = server(&pki, "b");
        let client = endpoint(&pki.tls("a"), "acme");
        let timeout = Duration::from_secs(10);
        assert_eq!(client.call(&target, &messages::Ping, timeout).await.unwrap(), 42);

        // 100 reads held by the server. The client has at most 8 streams to the peer, so
        // all 100 can only be at the server at once if they travelled in batches; at most
        // 8 of them went alone.
        let reads = (0..100).map(|i| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let msg = Held { keys: vec![Bytes::from(format!("k{i}"))] };
                client.call(&target, &msg, timeout).await
            })
        });
        let reads: Vec<_> = reads.collect();
        let all_arrived = async {
            while echo.arrived.load(Ordering::SeqCst) < 100 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(timeout, all_arrived).await.expect("all 100 reads reach the server while held");
        assert!(client.metrics.batched.get() >= 92, "{}", client.metrics.batched.get());
        release.send(true).unwrap();
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap(), vec![None]);
        }
        assert_eq!(echo.arrived.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn a_peer_of_another_root_or_name_is_refused_and_deadlines_hold() {
        opencluster_pki::install_crypto_provider();
        let pki = Pki::new("acme");
        let (_server, _echo, target, _release) = server(&pki, "b");
        let timeout = Duration::from_secs(10);

        // Same cluster name, another root: the handshake fails.
        let stranger = endpoint(&Pki::new("acme").tls("x"), "acme");
        let e = stranger.call(&target, &messages::Ping, timeout).await.unwrap_err();
        assert!(matches!(e, RpcError::Connect { .. }), "{e}");

        // The right PKI, but the member at that address is not the one named.
        let client = endpoint(&pki.tls("a"), "acme");
        let wrong = Target { name: "c".into(), ..target.clone() };
        let e = client.call(&wrong, &messages::Ping, timeout).await.unwrap_err().to_string();
        assert!(e.contains("where c is expected"), "{e}");

        // A held request times out at its deadline, and the error says so.
        let started = Instant::now();
        let msg = Held { keys: vec![Bytes::from_static(b"k")] };
        let e = client.call(&target, &msg, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, RpcError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));

        // Nobody listening: unreachable within the deadline.
        let gone = Target { addr: "127.0.0.1:9".parse().unwrap(), id: 7, ..target };
        let e = client.call(&gone, &messages::Ping, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(e, RpcError::Timeout { .. } | RpcError::Connect { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_full_peer_queue_makes_callers_wait_until_their_deadline() {
        opencluster_pki::install_crypto_provider();
        let pki = Pki::new("acme");
        let (_server, echo, target, release) = server(&pki, "b");
        // One stream, one queued request: the first read holds the stream at the server,
        // the second waits for it outside the queue, the third fills the queue.
        let client = endpoint_with(&pki.tls("a"), "acme", |o| {
            o.streams_per_peer = 1;
            o.max_queued_requests = 1;
        });
        let timeout = Duration::from_secs(10);
        let read = |i: usize| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let msg = Held { keys: vec![Bytes::from(format!("k{i}"))] };
                client.call(&target, &msg, timeout).await
            })
        };
        let first = read(0);
        let arrived = async {
            while echo.arrived.load(Ordering::SeqCst) < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), arrived)
            .await
            .expect("the first read reaches the server");
        let second = read(1);
        let third = read(2);
        while client.metrics.queue_depth.get() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A fourth finds the queue full: it waits for room until its deadline, then fails
        // as timed out, never sent.
        let started = Instant::now();
        let msg = Held { keys: vec![Bytes::from_static(b"late")] };
        let e = client.call(&target, &msg, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(e, RpcError::Timeout { .. }), "{e}");
        assert!(
            started.elapsed() >= Duration::from_millis(150) && started.elapsed() < Duration::from_secs(2)
        );
        assert_eq!(client.metrics.queue_depth.get(), 1);
        release.send(true).unwrap();
        for read in [first, second, third] {
            assert_eq!(read.await.unwrap().unwrap(), vec![None]);
        }
        assert_eq!(client.metrics.queue_depth.get(), 0);
        assert_eq!(echo.arrived.load(Ordering::SeqCst), 3);
    }
}
