//! Wires a node together: store, durability, data path, client servers and admin API,
//! and the one shutdown story (stop accepting, drain with a deadline, flush, exit).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::cluster::outbound::{Outbound, UnshippedTombstones};
use crate::cluster::roster::{Roster, RosterError};
use crate::cluster::{Cluster, Service, Topology};
use crate::config::Config;
use crate::membership::{
    self,
    identity::{Metadata, NodeIdentity, Role},
    interface::{self, InterfaceError},
    keyring::{self, LiveKeyring},
    members::Members,
};
use crate::metrics::Metrics;
use crate::peer::{PeerOptions, PeerSetupError, Peers};
use crate::record::Origin;
use crate::resp::server::{self, ClientLimits, Clients, ServerState};
use crate::security::{Security, SecurityError};
use crate::store::flusher::{Flusher, FsyncPolicy};
use crate::store::purger::{self, PurgeStatus};
use crate::store::{
    BufferOptions, BufferedStore, EngineOptions, HoldNone, Store, StoreError, StoreOptions, TombstoneHold,
};
use opencluster_pki::Policy;

/// A stopping node closes its peer endpoint once no peer request has arrived for this long
/// (peers learn of the leave within a gossip round or two).
const PEER_QUIET: Duration = Duration::from_millis(300);

/// How often a node on the default keys repeats its warning.
const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(600);

/// How long after start-up lean mode gives back the executable's pages: by then the
/// listeners, gossip and the first background rounds have run.
const PAGE_OUT_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{setting} {addr}: cannot listen: {source}")]
    Listen { setting: &'static str, addr: String, source: io::Error },
    #[error("data_dir {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Peer(#[from] PeerSetupError),
    #[error(
        "invalid setting `advertise`: gossip_addr {bound} is not an address peers can use; set advertise \
         (OPENCLUSTER_ADVERTISE, --advertise) to this node's IP address and gossip port in the datacenter, \
         or bind_interface (OPENCLUSTER_BIND_INTERFACE) to the network interface whose address they use"
    )]
    NoAdvertise { bound: SocketAddr },
    #[error(transparent)]
    BindInterface(#[from] InterfaceError),
    #[error(
        "gossip_addr is set but {keys} has no gossip.keyring to seal gossip with: create one with \
         `opencluster-pki gossip-key --keyring <tls_dir>/gossip.keyring --install $(opencluster-pki gossip-key)`, \
         or set gossip_addr = \"\" to run this node alone"
    )]
    NoKeyring { keys: String },
    #[error("gossip keyring: {0}")]
    Keyring(#[from] keyring::LoadError),
    #[error(transparent)]
    Roster(#[from] RosterError),
}

/// The sockets a node serves on, bound before [`run`] so that callers (tests, `--dev`)
/// know the real addresses.
pub struct Listeners {
    pub client: Option<TcpListener>,
    pub unix: Option<UnixListener>,
    pub admin: Option<TcpListener>,
    /// The gossip (membership) UDP socket.
    pub gossip: Option<UdpSocket>,
    /// The peer RPC (QUIC) UDP socket; bound only when gossip is on.
    pub rpc: Option<std::net::UdpSocket>,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, NodeError> {
        async fn tcp(
            setting: &'static str,
            addr: Option<SocketAddr>,
        ) -> Result<Option<TcpListener>, NodeError> {
            match addr {
                None => Ok(None),
                Some(addr) => TcpListener::bind(addr).await.map(Some).map_err(|source| NodeError::Listen {
                    setting,
                    addr: addr.to_string(),
                    source,
                }),
            }
        }
        let unix = match &config.unix_socket {
            None => None,
            Some(path) => Some(server::bind_unix(path).map_err(|source| NodeError::Listen {
                setting: "unix_socket",
                addr: path.display().to_string(),
                source,
            })?),
        };
        let gossip = match config.gossip_addr {
            None => None,
            Some(addr) => Some(UdpSocket::bind(addr).await.map_err(|source| NodeError::Listen {
                setting: "gossip_addr",
                addr: addr.to_string(),
                source,
            })?),
        };
        let rpc = match (config.rpc_addr, &gossip) {
            (Some(addr), Some(_)) => Some(std::net::UdpSocket::bind(addr).map_err(|source| {
                NodeError::Listen { setting: "rpc_addr", addr: addr.to_string(), source }
            })?),
            _ => None,
        };
        Ok(Listeners {
            client: tcp("client_addr", config.client_addr).await?,
            unix,
            admin: tcp("admin_addr", config.admin_addr).await?,
            gossip,
            rpc,
        })
    }

    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.gossip.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn rpc_addr(&self) -> Option<SocketAddr> {
        self.rpc.as_ref().and_then(|s| s.local_addr().ok())
    }
}

/// This node's identity, kept in the data directory so it survives restarts.
pub fn node_id(data_dir: &Path) -> io::Result<u64> {
    let path = data_dir.join("node-id");
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(id) = u64::from_str_radix(text.trim(), 16)
    {
        return Ok(id);
    }
    let mut bytes = [0u8; 8];
    io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let id = u64::from_le_bytes(bytes);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id:016x}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// Runs a node until `shutdown` is cancelled, then drains and flushes.
pub async fn run(
    config: Config,
    mut listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let data_err = |source| NodeError::DataDir { path: config.data_dir.clone(), source };
    std::fs::create_dir_all(&config.data_dir).map_err(data_err)?;
    let node_id = node_id(&config.data_dir).map_err(data_err)?;

    let (security, renewal) = Security::load(&config)?;
    let insecure_default_keys = security.insecure_default_keys;
    {
        let c = security.credentials.borrow();
        tracing::info!(
            identity = %c.identity, keys = %security.keys.source,
            not_after = %opencluster_pki::format_time(c.not_after()), "certificate ready"
        );
    }
    let metrics = Arc::new(Metrics::new());
    metrics.insecure_default_keys.set(i64::from(insecure_default_keys));

    let opts = StoreOptions {
        path: config.data_dir.join("store"),
        partitions: config.store.partitions,
        cache_bytes: config.store.cache_bytes.0,
        tombstone_grace: config.store.tombstone_grace,
        datacenter: config.datacenter.clone(),
    };
    let buffer = BufferOptions {
        write_buffer_bytes: config.store.write_buffer_bytes.as_usize(),
        wal_segment_bytes: config.store.wal_segment_bytes.0,
        // Log bytes are written out in chunks of an eighth of the buffer, at most 4 MiB.
        wal_buffer_bytes: (config.store.write_buffer_bytes.as_usize() / 8).min(4 << 20),
        apply_delay: config.store.apply_delay,
        apply_batch: crate::store::Engine::of(config.store.engine).apply_batch(config.store.cache_bytes.0),
    };
    let engine = EngineOptions {
        engine: crate::store::Engine::of(config.store.engine),
        lmdb_map_bytes: config.store.lmdb_map_bytes.0,
        write_buffer_bytes: (config.store.write_buffer_bytes.0 / 2).max(1 << 20),
    };
    let wal_dir = config.data_dir.join("wal");
    let opened = Instant::now();
    let store: Arc<dyn Store> = Arc::new(
        tokio::task::spawn_blocking(move || {
            let engine = crate::store::engines::open(&opts, &engine)?;
            BufferedStore::open(engine, &wal_dir, buffer)
        })
        .await
        .map_err(|e| StoreError::Io(format!("opening the store panicked: {e}")))??,
    );
    let stats = store.stats();
    tracing::info!(
        node = %config.node_name, node_id = %format!("{node_id:016x}"), datacenter = %config.datacenter,
        data_dir = %config.data_dir.display(), keys = stats.keys, elapsed_ms = opened.elapsed().as_millis() as u64,
        engine = store.engine(), "store opened"
    );
    let b = &config.budget;
    tracing::info!(
        mode = ?b.mode, budget_bytes = b.bytes, source = ?b.source, cgroup_limit = b.cgroup_limit,
        cache_bytes = config.store.cache_bytes.0, write_buffer_bytes = config.store.write_buffer_bytes.0,
        worker_threads = b.worker_threads, "memory budget"
    );
    if let Some(warning) = crate::config::memory::engine_warning(b.mode, config.store.engine, b.bytes) {
        tracing::warn!("{warning}");
    }

    let background = CancellationToken::new();
    let background_tasks = TaskTracker::new();
    let flusher = Flusher::new(store.clone(), FsyncPolicy::of(&config.store));
    background_tasks.spawn(flusher.clone().run(background.clone()));
    let purge_status = Arc::new(PurgeStatus::default());
    // The connectors' cursors at this node: they also keep the tombstones not yet shipped.
    let heads: Vec<u64> = (0..config.store.partitions).map(|p| store.last_seq(p)).collect();
    // Keys never shipped: local keyspaces, and home keyspaces (others read them from home).
    let local = config.keyspaces.unshipped_prefixes();
    let outbound = Arc::new(Outbound::load(&config.data_dir, &heads, local.clone()).unwrap_or_else(|e| {
        // Losing cursors loses nothing: the connectors send these sequences again.
        tracing::error!(error = %e, "the connectors will ship this node's changes again from the start");
        Outbound::empty(&config.data_dir, heads.len(), local)
    }));
    let hold: Arc<dyn TombstoneHold> = if config.store.tombstone_hold.is_zero() {
        Arc::new(HoldNone)
    } else {
        Arc::new(UnshippedTombstones {
            outbound: outbound.clone(),
            datacenter: config.datacenter.as_str().into(),
            grace: config.store.tombstone_grace,
            longest: config.store.tombstone_hold,
            status: purge_status.clone(),
        })
    };
    background_tasks.spawn(purger::run(
        store.clone(),
        hold,
        config.store.purge_interval,
        purge_status.clone(),
        background.clone(),
    ));
    background_tasks.spawn(renewal.run(background.clone()));
    if !config.memory_trim_interval.is_zero() {
        background_tasks
            .spawn(crate::heap::trim_periodically(config.memory_trim_interval, background.clone()));
    }
    let memory = crate::memory::MemoryWatch::new(&config);
    background_tasks.spawn(memory.clone().run(store.clone(), metrics.memory.clone(), background.clone()));
    if insecure_default_keys {
        background_tasks.spawn(warn_insecure(background.clone()));
    }

    // The members this node knew when it stopped: how large its cluster is, and where.
    let roster = Roster::load(&config.data_dir.join("members.json"), config.cluster.forget_after)?;
    let rpc_socket = listeners.rpc.take();
    let rpc_bound = rpc_socket.as_ref().and_then(|s| s.local_addr().ok());
    // Membership stops on its own signal: a stopping node leaves the cluster before it
    // stops answering its peers.
    let gossip_tasks = TaskTracker::new();
    let stop_gossip = CancellationToken::new();
    let (members, gossip_keyring) = match listeners.gossip.take() {
        None => {
            tracing::info!("gossip_addr is empty: membership is off, this node runs alone");
            (None, None)
        }
        Some(socket) => start_membership(
            &config,
            Role::Node,
            socket,
            [listeners.client.as_ref().and_then(|l| l.local_addr().ok()), rpc_bound],
            node_id,
            roster.seeds(node_id),
            &security,
            &metrics,
            &gossip_tasks,
            stop_gossip.clone(),
        )
        .map(|(members, keyring)| (Some(members), Some(keyring)))?,
    };

    let origin = Origin { datacenter: config.datacenter.as_str().into(), node: node_id };
    let topology = match (&members, rpc_socket) {
        (Some(members), Some(socket)) => {
            let options = PeerOptions {
                stream_window: config.rpc.stream_window.0,
                connection_window: config.rpc.connection_window.0,
                max_concurrent_requests: config.rpc.max_concurrent_requests,
                // A request carries at most what a client request may; answers of scans
                // are bounded by one partition's keys.
                max_message_bytes: config.limits.max_request_bytes.as_usize() + (1 << 20),
                streams_per_peer: config.rpc.streams_per_peer as usize,
                max_batch_bytes: config.rpc.max_batch_bytes.as_usize(),
                max_queued_requests: config.rpc.max_queued_requests as usize,
                connect_timeout: config.rpc.connect_timeout,
                idle_timeout: config.rpc.idle_timeout,
            };
            let policy = Policy::NodeOrConnectorOfDatacenter {
                cluster: security.keys.cluster.clone(),
                dc: security.keys.datacenter.clone(),
            };
            let peers = Peers::new(socket, &security.tls, policy, &options, metrics.rpc.clone())?;
            tracing::info!(addr = %peers.local_addr().map(|a| a.to_string()).unwrap_or_default(), "peer RPC endpoint ready");
            Some(Topology {
                members: members.clone(),
                peers,
                replicas: config.cluster.replicas as usize,
                quorum: config.write_quorum().unwrap_or_default(),
                read_quorum: match config.cluster.read_quorum {
                    crate::config::ReadQuorum::Quorum => crate::cluster::ReadQuorum::Quorum,
                    crate::config::ReadQuorum::One => crate::cluster::ReadQuorum::One,
                },
                timeout: config.cluster.request_timeout,
                max_hint_bytes: config.cluster.max_hint_bytes.as_usize(),
                roster: std::sync::Mutex::new(roster),
                // A node told to join another knows its cluster has at least two nodes.
                expect: (config.cluster.bootstrap_expect as usize).max(if config.join.is_empty() {
                    1
                } else {
                    2
                }),
                rebalance: crate::cluster::RebalanceOptions {
                    max_bytes_per_sec: config.rebalance.max_bytes_per_sec.0,
                    max_parallel: config.rebalance.max_parallel as usize,
                    // A chunk must fit in a peer message, which limits.max_request_bytes bounds.
                    chunk_bytes: config.rebalance.chunk_bytes.min(config.limits.max_request_bytes).0 as u32,
                },
                repair: crate::cluster::RepairOptions {
                    interval: config.repair.interval,
                    max_parallel: config.repair.max_parallel as usize,
                    tombstone_grace: config.store.tombstone_grace,
                },
            })
        }
        _ => None,
    };
    let peers = topology.as_ref().map(|t| t.peers.clone());
    let peer_endpoint = peers.clone();
    let security = Arc::new(security);
    let cluster = Arc::new(Cluster::new(
        store.clone(),
        flusher.clone(),
        origin,
        topology,
        metrics.cluster.clone(),
        cache_options(&config),
        metrics.cache.clone(),
    )?);
    let peer_tasks = TaskTracker::new();
    let stop_peers = CancellationToken::new();
    if let Some(peers) = peer_endpoint {
        let service = Service::new(cluster.clone(), outbound);
        peer_tasks.spawn(peers.serve(service, peer_tasks.clone(), stop_peers.clone()));
        background_tasks.spawn(cluster.clone().watch_placement(background.clone()));
        background_tasks.spawn(cluster.clone().hand_strays_home(background.clone()));
        background_tasks.spawn(cluster.clone().verify_peers(background.clone()));
        background_tasks.spawn(cluster.clone().rebalance(background.clone()));
        background_tasks.spawn(cluster.clone().hand_off(background.clone()));
        background_tasks.spawn(cluster.clone().anti_entropy(background.clone()));
        background_tasks.spawn(cluster.clone().send_invalidations(background.clone()));
        background_tasks.spawn(cluster.clone().keep_near_cache(background.clone()));
        background_tasks.spawn(cluster.clone().keep_home(background.clone()));
    }
    let hub = Arc::new(crate::resp::hub::Hub::new(
        crate::resp::outbox::OutputLimits {
            hard_bytes: config.limits.pubsub_output_hard_bytes.as_usize(),
            soft_bytes: config.limits.pubsub_output_soft_bytes.as_usize(),
            soft_time: config.limits.pubsub_output_soft_time,
        },
        config.limits.tracking_max_keys as usize,
    ));
    cluster.set_clients(hub.clone());
    let state = Arc::new(ServerState {
        hub,
        cluster,
        command_metrics: ServerState::command_metrics(&metrics),
        metrics,
        limits: ClientLimits {
            max_key_bytes: config.limits.max_key_bytes.as_usize(),
            max_value_bytes: config.limits.max_value_bytes.as_usize(),
            max_request_bytes: config.limits.max_request_bytes.as_usize(),
        },
        password: config.client_password.clone(),
        allow_flushdb: config.allow_flushdb,
        clients: Clients::new(config.limits.max_clients as usize),
        started: Instant::now(),
        node_name: config.node_name.clone(),
        datacenter: config.datacenter.clone(),
        tcp_port: listeners.client_addr().map(|a| a.port()),
        store_cache_bytes: config.store.cache_bytes.0,
        fsync_always: FsyncPolicy::of(&config.store) == FsyncPolicy::Always,
        purge_status,
    });

    state.cluster.set_home_commands(Arc::new(crate::resp::commands::HomeRunner::new(&state)));

    let clients = TaskTracker::new();
    let stop_clients = shutdown.child_token();
    if let Some(l) = listeners.client {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving RESP clients over TCP");
        clients.spawn(server::serve_tcp(l, state.clone(), clients.clone(), stop_clients.clone()));
    }
    if let Some(l) = listeners.unix {
        tracing::info!(path = ?config.unix_socket, "serving RESP clients on a Unix socket");
        clients.spawn(server::serve_unix(l, state.clone(), clients.clone(), stop_clients.clone()));
    }
    if let Some(l) = listeners.admin {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving the admin API");
        let admin_state = Arc::new(AdminState {
            server: state.clone(),
            security: security.clone(),
            data_dir: config.data_dir.clone(),
            node_id,
            members: members.clone(),
            keyring: gossip_keyring.clone(),
            admin_token: config.admin_token.clone(),
            memory: memory.clone(),
            joins: members.is_some() && (!config.join.is_empty() || config.join_service.is_some()),
        });
        background_tasks.spawn(admin::serve(l, admin_state, background.clone()));
    }

    if config.budget.mode == crate::config::Mode::Lean {
        // Start-up's code is not needed again: once it is over, the executable's pages go
        // (crate::heap::page_out_executable); what the node runs on faults back in.
        let stop = background.clone();
        background_tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(PAGE_OUT_AFTER) => {
                    let bytes = tokio::task::spawn_blocking(crate::heap::page_out_executable).await.unwrap_or(0);
                    tracing::debug!(bytes, "lean mode: the executable's pages given back after start-up");
                }
            }
        });
    }

    shutdown.cancelled().await;
    tracing::info!(connected = state.clients.connected(), "shutting down: no longer accepting clients");
    clients.close();
    if tokio::time::timeout(config.shutdown_timeout, clients.wait()).await.is_err() {
        tracing::warn!(timeout = ?config.shutdown_timeout, "client connections still open after shutdown_timeout; closing them");
    }
    // Leave the cluster, so that peers stop placing partitions here; answer what they
    // still send until it has been quiet for a moment; then close the endpoint.
    stop_gossip.cancel();
    gossip_tasks.close();
    gossip_tasks.wait().await;
    if let Some(peers) = &peers {
        peers.drain(PEER_QUIET, config.shutdown_timeout).await;
    }
    stop_peers.cancel();
    peer_tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, peer_tasks.wait()).await.is_err() {
        tracing::warn!("peer requests still running after shutdown_timeout");
    }
    tracing::info!("flushing the store");
    background.cancel();
    background_tasks.close();
    background_tasks.wait().await;
    if let Some(path) = &config.unix_socket
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::debug!(error = %e, "could not remove the Unix socket");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Checks the gossip settings against the bound socket and starts the membership tasks.
#[allow(clippy::too_many_arguments)]
pub fn start_membership(
    config: &Config,
    role: Role,
    socket: UdpSocket,
    [client_addr, rpc_addr]: [Option<SocketAddr>; 2],
    node_id: u64,
    remembered: Vec<SocketAddr>,
    security: &Security,
    metrics: &Metrics,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(Arc<Members>, Arc<LiveKeyring>), NodeError> {
    let bound = socket.local_addr().map_err(|source| NodeError::Listen {
        setting: "gossip_addr",
        addr: config.gossip_addr.map(|a| a.to_string()).unwrap_or_default(),
        source,
    })?;
    let advertise = match (config.advertise, &config.bind_interface) {
        (Some(addr), _) => addr,
        (None, Some(name)) => {
            let ip = interface::ipv4_of(name)?;
            tracing::info!(interface = %name, %ip, "advertising the address of bind_interface");
            SocketAddr::new(ip.into(), bound.port())
        }
        (None, None) if bound.ip().is_unspecified() => return Err(NodeError::NoAdvertise { bound }),
        (None, None) => bound,
    };
    let keyring = LiveKeyring::load(
        &config.data_dir,
        security.keys.keyring.clone(),
        &security.keys.source,
        metrics.keyring.clone(),
    )?
    .map(Arc::new)
    .ok_or_else(|| NodeError::NoKeyring { keys: security.keys.source.clone() })?;
    // Peers reach the client port on the advertised IP when the listener is on all interfaces.
    let reachable =
        |a: SocketAddr| if a.ip().is_unspecified() { SocketAddr::new(advertise.ip(), a.port()) } else { a };
    let client_addr = client_addr.map(reachable);
    let rpc_addr = rpc_addr.map(reachable);
    let mut rng: rand::rngs::StdRng = rand::make_rng();
    let identity = NodeIdentity {
        id: node_id,
        addr: advertise,
        started_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        renewals: 0,
        meta: Metadata {
            name: config.node_name.clone(),
            datacenter: config.datacenter.clone(),
            role,
            version: crate::VERSION.to_string(),
            client_addr,
            rpc_addr,
        },
    };
    let mut join = config.join_targets();
    if !remembered.is_empty() {
        // Announced to as join addresses are, never handed to foca as alive members.
        tracing::info!(members = ?remembered, "rejoining through the members remembered in data_dir");
        join.extend(remembered.iter().map(|a| a.to_string()));
    }
    match (&config.join_service, config.join.is_empty()) {
        (Some(service), false) => {
            tracing::info!(join_service = %service, "join is set: join_service is not used")
        }
        (Some(service), true) => {
            tracing::info!(join_service = %service, "joining the members of join_service")
        }
        (None, _) => {}
    }
    tracing::info!(bound = %bound, advertise = %advertise, join = ?join, "starting gossip membership");
    let settings = membership::runtime::Settings {
        identity,
        socket,
        keyring: keyring.subscribe(),
        cluster: security.keys.cluster.clone(),
        join,
        sender: rand::Rng::next_u64(&mut rng),
        timing: config.gossip.clone(),
    };
    Ok((membership::runtime::start(settings, metrics.gossip.clone(), tasks, stop), keyring))
}

async fn warn_insecure(stop: CancellationToken) {
    loop {
        tracing::warn!(
            "INSECURE: this node uses the well-known default keys from deploy/default-keys; anyone with \
             the public OpenCluster images can join or read this cluster. Issue your own keys with \
             opencluster-pki and set tls_dir (see docs/security.md)"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INSECURE_WARNING_EVERY) => {}
        }
    }
}

/// The near cache's settings, from `[cache]` (validated at load).
fn cache_options(config: &Config) -> crate::cluster::CacheOptions {
    let c = &config.cache;
    // Within a memory budget, the near cache takes at most its share of it.
    let max_bytes = match config.budget.bytes {
        Some(_) => c.max_bytes.0.min(config.budget.near_cache_bytes()),
        None => c.max_bytes.0,
    };
    let near = c.enabled.then(|| crate::cache::near::NearOptions {
        max_bytes,
        max_entry_bytes: c.max_entry_bytes.as_usize(),
        lease: c.lease,
        grace: c.invalidation_grace,
        rules: c
            .prefix_rules()
            .unwrap_or_default()
            .into_iter()
            .map(|(prefix, max)| {
                (bytes::Bytes::from(prefix), max.map(|m| usize::try_from(m).unwrap_or(usize::MAX)))
            })
            .collect(),
    });
    crate::cluster::CacheOptions {
        near,
        lease: c.lease,
        max_interest_keys: c.max_interest_keys as usize,
        max_queued_invalidations: c.max_queued_invalidations as usize,
        // A test hook: owners number invalidations but never send them.
        drop_invalidations: std::env::var_os("OPENCLUSTER_TEST_DROP_INVALIDATIONS").is_some_and(|v| v == "1"),
        home: crate::cluster::home::HomeOptions {
            prefixes: config.keyspaces.home_list().unwrap_or_default(),
            lease: config.keyspaces.home_lease,
            // Beside the near cache, within the same limits.
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            max_entry_bytes: c.max_entry_bytes.as_usize(),
            max_leases: c.max_interest_keys as usize,
        },
    }
}
