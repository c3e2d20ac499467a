//! Peer RPC: the one QUIC endpoint of a process, over which nodes of a datacenter forward
//! reads and writes to each other.
//!
//! - **Security**: mutual TLS from the PKI ([`opencluster_pki::MutualTls`]); both sides
//!   check the other's identity against a [`Policy`] (nodes and connectors of this
//!   datacenter) and the dialler also checks that it reached the node it meant to.
//! - **Shape**: one bidirectional stream per request: the caller writes the encoded
//!   [`messages::Message`] and finishes its side, the callee answers and finishes. Streams
//!   are cheap in QUIC, so a slow request never holds up the others (no head-of-line
//!   blocking), and a request's size is bounded on both ends.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opencluster_pki::MutualTls;
use opencluster_pki::peer::{PeerError, Policy, authorize, connection_error};
use opencluster_pki::tls::TlsError;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use messages::{Kind, Message, Refusal, decode_header, encode_request};

/// How long a handshake may take before the dial or accept gives up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alive on established connections, so that idle ones stay open and dead ones are
/// noticed; the idle timeout closes a connection whose peer stopped answering.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
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
}

impl RpcMetrics {
    pub fn register(r: &Registry) -> Self {
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
        let m = RpcMetrics {
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
        m
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What answers requests: given the kind and the encoded body, the encoded
/// `Result<Response, Refusal>` (see [`answer`]).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>>;
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

fn encode_reply<T: serde::Serialize>(result: &Result<T, Refusal>) -> Vec<u8> {
    postcard::to_allocvec(result).unwrap_or_else(|e| {
        postcard::to_allocvec(&Err::<(), _>(Refusal::Malformed(format!("cannot encode the answer: {e}"))))
            .unwrap_or_default()
    })
}

/// A cached connection to one peer, or the dial that will make it.
type Slot = Arc<tokio::sync::Mutex<Option<(SocketAddr, quinn::Connection)>>>;

/// The endpoint: dials peers, and accepts them once [`Peers::serve`] runs.
pub struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    policy: Policy,
    connections: Mutex<HashMap<u64, Slot>>,
    max_message_bytes: usize,
    metrics: RpcMetrics,
}

impl Peers {
    /// Opens the endpoint on `socket` with mutual TLS `tls`, accepting peers allowed by `policy`.
    pub fn new(
        socket: std::net::UdpSocket,
        tls: &MutualTls,
        policy: Policy,
        options: &PeerOptions,
        metrics: RpcMetrics,
    ) -> Result<Self, PeerSetupError> {
        let transport = Arc::new(transport_config(options)?);
        let mut server = tls.quic_server_config()?;
        server.transport_config(transport.clone());
        let mut client = tls.quic_client_config()?;
        client.transport_config(transport);
        let runtime = quinn::default_runtime()
            .ok_or_else(|| PeerSetupError::Settings("no async runtime for the peer endpoint".into()))?;
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
            .map_err(PeerSetupError::Endpoint)?;
        Ok(Peers {
            endpoint,
            client,
            policy,
            connections: Mutex::new(HashMap::new()),
            max_message_bytes: options.max_message_bytes,
            metrics,
        })
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
        let result = match tokio::time::timeout(timeout, self.call_once(to, msg)).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout { peer: to.name.clone(), timeout }),
        };
        let kind = M::KIND.as_str();
        let outcome = result.as_ref().map_or_else(RpcError::outcome, |_| "ok");
        self.metrics.calls.with_label_values(&[kind, outcome]).inc();
        self.metrics.duration.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn call_once<M: Message>(&self, to: &Target, msg: &M) -> Result<M::Response, RpcError> {
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
        let conn = self.connection(to).await?;
        // A cached connection may have died since it was last used: then dial once more
        // (nothing was sent on it, so this cannot apply a request twice).
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(streams) => streams,
            Err(_) => {
                self.forget(to.id, &conn);
                let conn = self.connection(to).await?;
                conn.open_bi().await.map_err(|e| transport(connection_error(&e).to_string()))?
            }
        };
        let failed = |e: &dyn std::fmt::Display| {
            self.forget_if_closed(to.id, &conn);
            transport(e.to_string())
        };
        send.write_all(&request).await.map_err(|e| failed(&e))?;
        send.finish().map_err(|e| failed(&e))?;
        let reply = recv.read_to_end(self.max_message_bytes).await.map_err(|e| failed(&e))?;
        let result: Result<M::Response, Refusal> =
            postcard::from_bytes(&reply).map_err(|e| transport(format!("malformed answer: {e}")))?;
        result.map_err(|refusal| RpcError::Refused { peer: to.name.clone(), refusal })
    }

    /// The open connection to `to`, dialling it if needed.
    async fn connection(&self, to: &Target) -> Result<quinn::Connection, RpcError> {
        let slot =
            self.connections.lock().unwrap_or_else(|e| e.into_inner()).entry(to.id).or_default().clone();
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
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unreachable(connection_error(&e).to_string())),
            Err(_) => return Err(unreachable(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"))),
        };
        let peer = authorize(&conn, &self.policy).map_err(|e| {
            self.metrics.refused_peers.with_label_values(&["policy"]).inc();
            unreachable(e.to_string())
        })?;
        if peer.identity.name() != to.name {
            let reason = format!(
                "{} answers at {}, where membership says {} is",
                peer.identity.uri(),
                to.addr,
                to.name
            );
            conn.close(opencluster_pki::peer::POLICY_REFUSED, reason.as_bytes());
            return Err(unreachable(reason));
        }
        tracing::debug!(peer = %to.name, addr = %to.addr, "peer connection established");
        *cached = Some((to.addr, conn.clone()));
        Ok(conn)
    }

    fn forget(&self, id: u64, conn: &quinn::Connection) {
        conn.close(0u32.into(), b"redialling");
        self.forget_if_closed(id, conn);
    }

    fn forget_if_closed(&self, id: u64, conn: &quinn::Connection) {
        if conn.close_reason().is_some() {
            let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            let same = map.get(&id).is_some_and(|slot| {
                slot.try_lock()
                    .is_ok_and(|c| c.as_ref().is_some_and(|(_, c)| c.stable_id() == conn.stable_id()))
            });
            if same {
                map.remove(&id);
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
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
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

    async fn serve_stream(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        handler: Arc<dyn Handler>,
    ) {
        let reply = match recv.read_to_end(self.max_message_bytes).await {
            Ok(request) => match decode_header(&request).map(|(kind, body)| (kind, body.len())) {
                Ok((kind, body_len)) => {
                    self.metrics.served.with_label_values(&[kind.as_str()]).inc();
                    let body = Bytes::from(request).slice(2..2 + body_len);
                    handler.handle(kind, body).await
                }
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
        if send.write_all(&reply).await.is_ok() {
            let _ = send.finish();
            // Let the answer reach the peer before the stream is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        }
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
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| PeerSetupError::Settings(e.to_string()))?,
    ));
    Ok(t)
}
