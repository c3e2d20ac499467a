//! Typed configuration, validated at load.
//!
//! A setting can come from, in rising precedence: built-in defaults, `--dev` defaults, the
//! config file, `conf.d/*.toml` beside it (in name order), `OPENCLUSTER_*` environment
//! variables, and flags. [`settings::SETTINGS`] lists every setting once; the environment
//! variable and flag of each are derived from its key, so none can be forgotten.
//! [`Config::validate`] checks what serde cannot, and every error names the setting.

pub mod layers;
pub mod memory;
pub mod settings;
pub mod targets;
mod units;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use layers::{LoadOptions, load, load_unvalidated};
pub use memory::{MemoryBudget, Mode};
pub use units::ByteSize;

/// The largest rebalance chunk (`rebalance.chunk_bytes`): well under the smallest peer
/// message limit.
pub const MAX_CHUNK_BYTES: u64 = 16 << 20;

/// How many owners must have a write on disk before it is acknowledged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum WriteQuorum {
    /// A majority of the partition's owners (after capping R at the node count).
    #[default]
    Majority,
    /// Every owner.
    All,
    /// One owner: the fastest, and lost if that owner's disk is.
    One,
    /// This many owners, or every owner when there are fewer.
    Count(std::num::NonZeroUsize),
}

/// The node's configuration.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this node, unique within its datacenter. Default: the host name.
    pub node_name: String,
    /// The datacenter this node belongs to.
    pub datacenter: String,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Directory holding the cluster's keys; unset means the insecure default keys.
    pub tls_dir: Option<PathBuf>,
    /// RESP (Redis protocol) TCP listener; empty disables it.
    #[serde(with = "units::opt_addr")]
    pub client_addr: Option<SocketAddr>,
    /// RESP Unix socket, created with mode 0660.
    pub unix_socket: Option<PathBuf>,
    /// Password clients must give with AUTH (or HELLO ... AUTH).
    pub client_password: Option<String>,
    /// Allow a non-loopback TCP listener without a client password.
    pub insecure_no_client_password: bool,
    /// Admin HTTP listener (health, status, metrics); empty disables it.
    #[serde(with = "units::opt_addr")]
    pub admin_addr: Option<SocketAddr>,
    /// Bearer token the admin API's changing endpoints (gossip keyring rotation) require.
    /// Unset: those endpoints refuse every request; the read-only ones stay open.
    pub admin_token: Option<String>,
    /// UDP address gossip membership listens on; empty disables membership (a lone node).
    #[serde(with = "units::opt_addr")]
    pub gossip_addr: Option<SocketAddr>,
    /// The gossip address peers in this datacenter use to reach this node. Unset: the bound
    /// `gossip_addr`, which must then be a specific address (not `0.0.0.0` or `[::]`).
    #[serde(with = "units::opt_addr")]
    pub advertise: Option<SocketAddr>,
    /// Network interface (e.g. `eth0`) whose IPv4 address, with the bound gossip port, is
    /// advertised when `advertise` is unset: a container learns its address at start.
    #[serde(with = "units::opt_text")]
    pub bind_interface: Option<String>,
    /// Gossip addresses (`host:port`; names are resolved again at every attempt) of members
    /// to join. Empty: this node starts a cluster of its own and waits to be joined.
    pub join: Vec<String>,
    /// A DNS name whose addresses are all the members (Swarm's `tasks.<service>`, a
    /// Kubernetes headless Service), `name` or `name:port` (default port 7946), joined when
    /// `join` is empty: the platform tells a container where its peers are.
    #[serde(with = "units::opt_text")]
    pub join_service: Option<String>,
    /// UDP address of the peer QUIC endpoint; peers reach it on the advertised IP.
    #[serde(with = "units::opt_addr")]
    pub rpc_addr: Option<SocketAddr>,
    /// Log format: `text` for terminals, `json` for containers.
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `opencluster_node=debug,info`.
    pub log_level: String,
    /// How long a stopping node waits for requests in flight before it flushes and exits.
    #[serde(with = "units::duration")]
    pub shutdown_timeout: Duration,
    /// How often freed heap memory is given back to the operating system; zero never.
    #[serde(with = "units::duration")]
    pub memory_trim_interval: Duration,
    /// Allow FLUSHDB, which deletes every key.
    pub allow_flushdb: bool,
    /// `standard` or `lean`: how buffers are sized from the memory budget (see [`memory`]).
    pub mode: Mode,
    /// Bytes the node plans to stay within. Unset: the container's memory limit minus
    /// headroom, else 64 MiB in lean mode, else no budget.
    pub memory_budget: Option<ByteSize>,
    /// The budget and what was sized from it, worked out at load (not a setting).
    #[serde(skip)]
    pub budget: MemoryBudget,
    pub limits: Limits,
    pub store: StoreConfig,
    pub gossip: GossipConfig,
    pub cluster: ClusterConfig,
    pub rpc: RpcConfig,
    pub rebalance: RebalanceConfig,
    pub repair: RepairConfig,
    pub cache: CacheConfig,
    pub connector: ConnectorConfig,
    pub keyspaces: KeyspacesConfig,
}

/// How keys cross datacenters, by key prefix. Every node and connector of a datacenter
/// must be given the same keyspaces: the nodes filter what they hand their connectors.
/// Every datacenter of the cluster must be given the same `home` list.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeyspacesConfig {
    /// Key prefixes whose keys never leave this datacenter: the connectors do not ship
    /// them (every other key is replicated to every datacenter).
    pub local: Vec<String>,
    /// Key prefixes that live in one home datacenter, as `PREFIX=DC`: the home datacenter
    /// holds them and never ships them; the others forward their writes to it through the
    /// connectors and cache what they read from it (see docs/multi-datacenter.md).
    pub home: Vec<String>,
    /// How long a datacenter may serve a cached read of another datacenter's home key
    /// without hearing from it: the staleness bound when the WAN is cut.
    #[serde(with = "units::duration")]
    pub home_lease: Duration,
}

impl Default for KeyspacesConfig {
    fn default() -> Self {
        KeyspacesConfig { local: Vec::new(), home: Vec::new(), home_lease: Duration::from_secs(10) }
    }
}

impl KeyspacesConfig {
    /// The most prefixes `keyspaces.local` (and `keyspaces.home`) may list.
    pub const MAX_LOCAL: usize = 1024;

    /// The local prefixes as bytes.
    pub fn local_prefixes(&self) -> Vec<Vec<u8>> {
        self.local.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    /// `keyspaces.home` as (prefix, home datacenter) pairs.
    pub fn home_list(&self) -> Result<Vec<(String, String)>, String> {
        self.home
            .iter()
            .map(|h| match h.rsplit_once('=') {
                Some((prefix, dc)) if !prefix.is_empty() && is_dns_label(dc.trim()) => {
                    Ok((prefix.to_string(), dc.trim().to_string()))
                }
                _ => Err(format!("{h:?} is not PREFIX=DC (e.g. users:=dc1)")),
            })
            .collect()
    }

    /// The prefixes whose keys the connectors never ship: the local ones and every home
    /// one (a home key stays in its home datacenter, and other datacenters hold none).
    pub fn unshipped_prefixes(&self) -> Vec<Vec<u8>> {
        let home = self.home_list().unwrap_or_default();
        self.local_prefixes().into_iter().chain(home.into_iter().map(|(p, _)| p.into_bytes())).collect()
    }
}

/// A connector's WAN side (`opencluster-connector` only; a node ignores this section).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Where the connector listens for the other datacenters' connectors (QUIC, UDP).
    pub wan_addr: SocketAddr,
    /// The public address other datacenters' connectors reach this one on.
    pub wan_advertise: Option<String>,
    /// The other datacenters' connectors, as `DC=HOST:PORT` (names are re-resolved on
    /// every dial). A datacenter listed more than once has several connectors (twins):
    /// batches go to one of them, and to the next when it fails.
    pub peers: Vec<String>,
    /// Most records in one batch shipped to another datacenter.
    pub batch_records: u32,
    /// Most bytes of keys and values in one batch (a larger record goes alone).
    pub batch_bytes: ByteSize,
    /// How often the connector asks the nodes of its datacenter for new changes when the
    /// last round found none.
    #[serde(with = "units::duration")]
    pub poll_interval: Duration,
    /// How long one batch may take to be applied in the other datacenter before it is
    /// sent again.
    #[serde(with = "units::duration")]
    pub ship_timeout: Duration,
    /// How long one pass of the backstop takes: every partition compared with every
    /// remote datacenter once, spread evenly; records younger than this are left to the
    /// cursors.
    #[serde(with = "units::duration")]
    pub backstop_interval: Duration,
    /// How batches are compressed on the WAN.
    pub compression: Compression,
    /// Most batches on the WAN to one remote datacenter at once, sent and not yet
    /// acknowledged: the next is sent without waiting for the round trip of the last. Cursors
    /// still move only past batches acknowledged in the order they were sent.
    pub batches_in_flight: u32,
    /// How long a node holds the connector's request for changes when it has none: the
    /// node answers as soon as a change comes, so this only bounds how long an idle request
    /// lasts.
    #[serde(with = "units::duration")]
    pub follow_wait: Duration,
}

/// The compression of batches between datacenters (`connector.compression`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Batches go as they are.
    None,
    /// LZ4 block compression; a batch it would not shrink goes as it is.
    Lz4,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            wan_addr: SocketAddr::from(([0, 0, 0, 0], 7948)),
            wan_advertise: None,
            peers: Vec::new(),
            batch_records: 512,
            batch_bytes: ByteSize(1 << 20),
            poll_interval: Duration::from_millis(20),
            ship_timeout: Duration::from_secs(10),
            backstop_interval: Duration::from_secs(3600),
            compression: Compression::Lz4,
            batches_in_flight: 8,
            follow_wait: Duration::from_secs(1),
        }
    }
}

impl ConnectorConfig {
    /// The peers as (datacenter, host:port), checked.
    pub fn peer_list(&self) -> Result<Vec<(String, String)>, String> {
        self.peers
            .iter()
            .map(|p| match p.split_once('=') {
                Some((dc, addr)) if is_dns_label(dc.trim()) && addr.trim().rsplit_once(':').is_some() => {
                    Ok((dc.trim().to_string(), addr.trim().to_string()))
                }
                _ => Err(format!("{p:?} is not DC=HOST:PORT (e.g. dc2=connector.dc2.example:7948)")),
            })
            .collect()
    }
}

/// The near cache: records of keys owned by other nodes, kept after a read and dropped
/// when their owners send an invalidation (see docs/architecture.md).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Keep records of keys owned elsewhere after reading them.
    pub enabled: bool,
    /// Most bytes the cache holds: keys, values and a fixed overhead per entry.
    pub max_bytes: ByteSize,
    /// Largest entry (key and value) cached, unless a prefix rule says otherwise.
    pub max_entry_bytes: ByteSize,
    /// Rules per key prefix, `PREFIX=off` (never cached) or `PREFIX=SIZE` (largest entry
    /// cached); the longest matching prefix wins.
    pub prefixes: Vec<String>,
    /// How long owners promise invalidations for a key after a read (the worst-case
    /// staleness when invalidations are lost); a cached key is read again after half.
    #[serde(with = "units::duration")]
    pub lease: Duration,
    /// How long invalidations an owner announced may take to arrive before the partition's
    /// entries are dropped.
    #[serde(with = "units::duration")]
    pub invalidation_grace: Duration,
    /// Keys with leases an owner tracks; beyond, a lease covers the key's whole partition.
    pub max_interest_keys: u32,
    /// Invalidations an owner queues for one holder; beyond, its leases are forgotten.
    pub max_queued_invalidations: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: ByteSize(64 << 20),
            max_entry_bytes: ByteSize(1 << 20),
            prefixes: Vec::new(),
            lease: Duration::from_secs(30),
            invalidation_grace: Duration::from_secs(2),
            max_interest_keys: 100_000,
            max_queued_invalidations: 65_536,
        }
    }
}

/// A near-cache rule: the key prefix, and the largest entry cached (`None`: never).
pub type PrefixRule = (Vec<u8>, Option<u64>);

impl CacheConfig {
    /// The prefix rules: `(prefix, None)` never caches, `(prefix, Some(n))` caches entries
    /// up to `n` bytes.
    pub fn prefix_rules(&self) -> Result<Vec<PrefixRule>, String> {
        self.prefixes
            .iter()
            .map(|rule| {
                let (prefix, what) = rule
                    .rsplit_once('=')
                    .ok_or_else(|| format!("{rule:?} is not PREFIX=off or PREFIX=SIZE"))?;
                let what = what.trim();
                let limit = if what.eq_ignore_ascii_case("off") {
                    None
                } else {
                    Some(ByteSize::parse(what).map_err(|e| format!("{rule:?}: {e}"))?.0)
                };
                Ok((prefix.as_bytes().to_vec(), limit))
            })
            .collect()
    }
}

/// Copying partitions to the nodes that gain them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceConfig {
    /// Bytes per second copied in, over all partitions together.
    pub max_bytes_per_sec: ByteSize,
    /// Partitions copied at once.
    pub max_parallel: u32,
    /// Bytes of keys and values asked for per chunk.
    pub chunk_bytes: ByteSize,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            max_bytes_per_sec: ByteSize(64 << 20),
            max_parallel: 2,
            chunk_bytes: ByteSize(256 << 10),
        }
    }
}

/// Anti-entropy between the owners of each partition.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// Time between comparison rounds (a round also starts soon after placement changes).
    #[serde(with = "units::duration")]
    pub interval: Duration,
    /// Partitions compared at once.
    pub max_parallel: u32,
}

impl Default for RepairConfig {
    fn default() -> Self {
        RepairConfig { interval: Duration::from_secs(600), max_parallel: 2 }
    }
}

/// Replication inside the datacenter.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Copies of each partition.
    pub replicas: u32,
    /// `majority`, `all`, `one`, or a number of owners.
    pub write_quorum: String,
    /// `quorum` or `one`.
    pub read_quorum: ReadQuorum,
    /// Deadline of a request that involves other nodes.
    #[serde(with = "units::duration")]
    pub request_timeout: Duration,
    /// Bytes of copies a primary keeps for owners that did not answer (hinted handoff).
    pub max_hint_bytes: ByteSize,
    /// Data nodes a new cluster is expected to have: quorums are counted against at least
    /// this many, so the first nodes of a cluster do not take writes as a smaller one.
    pub bootstrap_expect: u32,
    /// How long a node that vanished without leaving (crashed, host lost) stays in the
    /// known cluster that quorums are counted against.
    #[serde(with = "units::duration")]
    pub forget_after: Duration,
}

/// The peer QUIC endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// Flow-control window of one request stream.
    pub stream_window: ByteSize,
    /// Flow-control window of one connection.
    pub connection_window: ByteSize,
    /// Requests one peer may have in flight at once.
    pub max_concurrent_requests: u32,
    /// Streams this node keeps in flight to one peer; more requests wait and are batched.
    pub streams_per_peer: u32,
    /// Most bytes of requests sent together in one batch.
    pub max_batch_bytes: ByteSize,
    /// Requests that may wait for a stream to one peer; a caller finding the queue full
    /// waits for room until its request's deadline, then fails with a timeout.
    pub max_queued_requests: u32,
    /// How long a handshake with a peer may take.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
    /// A peer connection silent for this long is closed (keep-alives every third of it).
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            replicas: 3,
            write_quorum: "majority".into(),
            read_quorum: ReadQuorum::Quorum,
            max_hint_bytes: ByteSize(64 << 20),
            request_timeout: Duration::from_secs(2),
            bootstrap_expect: 1,
            forget_after: Duration::from_secs(72 * 3600),
        }
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            stream_window: ByteSize(1 << 20),
            connection_window: ByteSize(8 << 20),
            max_concurrent_requests: 256,
            streams_per_peer: 8,
            max_batch_bytes: ByteSize(1 << 20),
            max_queued_requests: 4096,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// Bounds on what one client can make the node hold.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest key accepted.
    pub max_key_bytes: ByteSize,
    /// Largest value accepted.
    pub max_value_bytes: ByteSize,
    /// Largest single request (all its arguments together).
    pub max_request_bytes: ByteSize,
    /// Most client connections at once.
    pub max_clients: u32,
    /// Bytes of pub/sub messages and invalidations queued for one client before it is
    /// disconnected (Redis's `client-output-buffer-limit pubsub` hard limit).
    pub pubsub_output_hard_bytes: ByteSize,
    /// Bytes queued for longer than `pubsub_output_soft_seconds` before a client is
    /// disconnected (the soft limit).
    pub pubsub_output_soft_bytes: ByteSize,
    #[serde(with = "units::duration")]
    pub pubsub_output_soft_time: Duration,
    /// Keys tracked for clients (`CLIENT TRACKING`); beyond, the oldest are invalidated
    /// (Redis's `tracking-table-max-keys`).
    pub tracking_max_keys: u32,
}

/// How data is kept on disk.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The storage engine: `sled`, `redb`, `fjall` or `lmdb` (see `docs/storage-study.md`).
    pub engine: StoreEngine,
    /// LMDB only: the largest its data file may grow. It reserves address space, not
    /// memory; a write past it fails with an error that names this setting.
    pub lmdb_map_bytes: ByteSize,
    /// `always`: acknowledge writes once on disk. `interval`: flush every `fsync_interval`.
    pub fsync: Fsync,
    /// Longest time between flushes with `fsync = "interval"`.
    #[serde(with = "units::duration")]
    pub fsync_interval: Duration,
    /// Memory the storage engine may use as its cache.
    pub cache_bytes: ByteSize,
    /// Memory for written records not yet applied to the storage engine.
    pub write_buffer_bytes: ByteSize,
    /// Longest a written record waits in the write buffer before it is applied.
    #[serde(with = "units::duration")]
    pub apply_delay: Duration,
    /// Size of one write-ahead log segment file.
    pub wal_segment_bytes: ByteSize,
    /// Number of partitions; fixed once data exists.
    pub partitions: u16,
    /// How often expired keys and old tombstones are purged.
    #[serde(with = "units::duration")]
    pub purge_interval: Duration,
    /// How long a deleted key's tombstone is kept.
    #[serde(with = "units::duration")]
    pub tombstone_grace: Duration,
    /// Longest a tombstone of this datacenter is kept past its grace while a remote
    /// datacenter's connector has not shipped it; 0 keeps none.
    #[serde(with = "units::duration")]
    pub tombstone_hold: Duration,
}

/// Failure detection and dissemination timing of gossip membership (SWIM). The defaults
/// detect a crashed member within about 2 s on a LAN; see `membership::timing` for the
/// arithmetic and `docs/operations.md` for when to change them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GossipConfig {
    /// How often this node probes one other member (a ping that must be answered).
    #[serde(with = "units::duration")]
    pub probe_interval: Duration,
    /// How long a probed member has to answer directly before other members are asked to
    /// probe it too; shorter than `probe_interval`.
    #[serde(with = "units::duration")]
    pub probe_timeout: Duration,
    /// How many other members are asked to probe a member that did not answer in time.
    pub indirect_probes: u32,
    /// How long a member that failed a probe stays suspect, with time to refute it, before
    /// it is declared down.
    #[serde(with = "units::duration")]
    pub suspicion_timeout: Duration,
    /// How often news (joins, failures, leaves) is sent to `fanout` random members, besides
    /// riding on probes.
    #[serde(with = "units::duration")]
    pub interval: Duration,
    /// How many random members each round of `interval` gossip goes to.
    pub fanout: u32,
    /// How often this node announces itself to two members it sees as down, so that the
    /// two sides of a healed network partition find each other again.
    #[serde(with = "units::duration")]
    pub reconnect_interval: Duration,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            indirect_probes: 3,
            suspicion_timeout: Duration::from_secs(1),
            interval: Duration::from_millis(200),
            fanout: 3,
            reconnect_interval: Duration::from_secs(2),
        }
    }
}

/// How many owners a read asks.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadQuorum {
    Quorum,
    One,
}

/// The storage engines `store.engine` names.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    Sled,
    Redb,
    Fjall,
    Lmdb,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Always,
    Interval,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: default_node_name(),
            datacenter: "dc1".into(),
            data_dir: "/data".into(),
            tls_dir: None,
            client_addr: Some(SocketAddr::from(([0, 0, 0, 0], 6379))),
            unix_socket: None,
            client_password: None,
            insecure_no_client_password: false,
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9379))),
            admin_token: None,
            gossip_addr: Some(SocketAddr::from(([0, 0, 0, 0], 7946))),
            advertise: None,
            bind_interface: None,
            join: Vec::new(),
            join_service: None,
            rpc_addr: Some(SocketAddr::from(([0, 0, 0, 0], 7947))),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            shutdown_timeout: Duration::from_secs(10),
            memory_trim_interval: Duration::from_secs(1),
            allow_flushdb: false,
            mode: Mode::Standard,
            memory_budget: None,
            budget: MemoryBudget::default(),
            limits: Limits::default(),
            store: StoreConfig::default(),
            cluster: ClusterConfig::default(),
            rpc: RpcConfig::default(),
            rebalance: RebalanceConfig::default(),
            repair: RepairConfig::default(),
            cache: CacheConfig::default(),
            connector: ConnectorConfig::default(),
            keyspaces: KeyspacesConfig::default(),
            gossip: GossipConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: ByteSize(64 << 10),
            max_value_bytes: ByteSize(16 << 20),
            max_request_bytes: ByteSize(64 << 20),
            max_clients: 10_000,
            pubsub_output_hard_bytes: ByteSize(32 << 20),
            pubsub_output_soft_bytes: ByteSize(8 << 20),
            pubsub_output_soft_time: Duration::from_secs(60),
            tracking_max_keys: 1_000_000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            // The standard default of `memory::default_engine` (the storage study's winner).
            engine: memory::STANDARD_DEFAULT,
            lmdb_map_bytes: ByteSize(256 << 30),
            fsync: Fsync::Interval,
            fsync_interval: Duration::from_secs(1),
            cache_bytes: ByteSize(64 << 20),
            // Large enough that an applier pass shares each B-tree page it changes among
            // several records (docs/storage-study.md, sustained writes); lowered to half
            // the memory budget when there is one (lean mode: a tenth).
            write_buffer_bytes: ByteSize(128 << 20),
            apply_delay: Duration::from_secs(5),
            wal_segment_bytes: ByteSize(64 << 20),
            partitions: 1024,
            purge_interval: Duration::from_millis(100),
            tombstone_grace: Duration::from_secs(24 * 3600),
            tombstone_hold: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The host name, as containers set it, lower-cased with anything a DNS name cannot hold
/// replaced by `-` (it goes into the node's certificate); "node" if it cannot be read.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| {
            s.trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
                .trim_matches(|c| c == '-' || c == '.')
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// A configuration that cannot be used, and the setting to blame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting `{setting}`{source_hint}: {message}")]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
    /// Where the offending value came from, e.g. " (from OPENCLUSTER_STORE_FSYNC)".
    pub source_hint: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { setting: setting.into(), message: message.into(), source_hint: String::new() }
    }
}

impl Config {
    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn err(setting: &str, message: impl Into<String>) -> ConfigError {
            ConfigError::new(setting, message)
        }
        if let Err(e) = opencluster_pki::identity::validate_process_name(&self.node_name) {
            return Err(err("node_name", format!("it goes into the node's certificate: {e}")));
        }
        if !is_dns_label(&self.datacenter) {
            return Err(err(
                "datacenter",
                format!("{:?} must be 1-63 lowercase letters, digits or '-'", self.datacenter),
            ));
        }
        if self.client_addr.is_none() && self.unix_socket.is_none() {
            return Err(err("client_addr", "no client listener: set client_addr or unix_socket"));
        }
        if let Some(addr) = self.client_addr
            && !addr.ip().is_loopback()
            && self.client_password.is_none()
            && !self.insecure_no_client_password
        {
            return Err(err(
                "client_password",
                format!(
                    "client_addr {addr} is reachable from other hosts but no client_password is set; \
                     set client_password (OPENCLUSTER_CLIENT_PASSWORD) so clients must AUTH, \
                     bind to 127.0.0.1, or pass --insecure-no-client-password to accept any client"
                ),
            ));
        }
        if self.memory_budget.is_some_and(|b| b.0 < 4 << 20) {
            return Err(err("memory_budget", "must be at least 4MiB"));
        }
        if self.memory_trim_interval > Duration::from_secs(3600) {
            return Err(err("memory_trim_interval", "must be at most 1h (0s turns trimming off)"));
        }
        // An empty path would be taken relative to the working directory (data written
        // there, keys looked for there): refused like any other empty typed setting, and
        // blank (only spaces) as well, as the typed settings trim.
        let paths = [
            ("data_dir", Some(&self.data_dir)),
            ("tls_dir", self.tls_dir.as_ref()),
            ("unix_socket", self.unix_socket.as_ref()),
        ];
        for (setting, path) in paths {
            if path.is_some_and(|p| p.to_str().is_some_and(|p| p.trim().is_empty())) {
                return Err(err(setting, "is empty; give a path, or leave it unset for the default"));
            }
        }
        if self.log_level.trim().is_empty() {
            // tracing reads an empty filter as "errors only", which is never what was meant.
            return Err(err(
                "log_level",
                "is empty; give a filter such as info, or leave it unset for the default",
            ));
        }
        if self.client_password.as_deref() == Some("") {
            return Err(err("client_password", "must not be empty (leave it unset instead)"));
        }
        if let Some(token) = &self.admin_token
            && (token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(err(
                "admin_token",
                "must be at least 16 characters without spaces (e.g. from `openssl rand -hex 32`)",
            ));
        }
        if let Some(addr) = self.advertise {
            if self.gossip_addr.is_none() {
                return Err(err("advertise", "is set but gossip_addr is empty (membership is disabled)"));
            }
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(err(
                    "advertise",
                    format!("{addr} cannot be reached by peers: give the IP address and port they use"),
                ));
            }
        }
        if let Some(name) = &self.bind_interface {
            if self.gossip_addr.is_none() {
                return Err(err(
                    "bind_interface",
                    "is set but gossip_addr is empty (membership is disabled)",
                ));
            }
            if name.len() > 15 || name.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()) {
                return Err(err(
                    "bind_interface",
                    format!(
                        "{name:?} is not a network interface name (at most 15 characters, no '/' or spaces)"
                    ),
                ));
            }
        }
        if !self.join.is_empty() && self.gossip_addr.is_none() {
            return Err(err("join", "is set but gossip_addr is empty (membership is disabled)"));
        }
        for target in &self.join {
            if let Err(e) = targets::parse_target(target) {
                return Err(err("join", e));
            }
        }
        if let Some(service) = &self.join_service {
            if self.gossip_addr.is_none() {
                return Err(err("join_service", "is set but gossip_addr is empty (membership is disabled)"));
            }
            if let Err(e) = targets::service_target(service) {
                return Err(err("join_service", e));
            }
        }
        let c = &self.cluster;
        if c.replicas == 0 || c.replicas > 16 {
            return Err(err("cluster.replicas", "must be between 1 and 16"));
        }
        if let Err(e) = self.write_quorum() {
            return Err(err("cluster.write_quorum", e));
        }
        if c.request_timeout < Duration::from_millis(10) || c.request_timeout > Duration::from_secs(600) {
            return Err(err("cluster.request_timeout", "must be between 10ms and 10m"));
        }
        let cache = &self.cache;
        if let Err(e) = cache.prefix_rules() {
            return Err(err("cache.prefixes", e));
        }
        if cache.lease < Duration::from_millis(100) || cache.lease > Duration::from_secs(3600) {
            return Err(err("cache.lease", "must be between 100ms and 1h"));
        }
        if cache.invalidation_grace < Duration::from_millis(10) || cache.invalidation_grace > cache.lease {
            return Err(err("cache.invalidation_grace", "must be between 10ms and cache.lease"));
        }
        if cache.max_queued_invalidations == 0 {
            return Err(err("cache.max_queued_invalidations", "must be at least 1"));
        }
        if self.limits.pubsub_output_soft_bytes.0 > self.limits.pubsub_output_hard_bytes.0 {
            return Err(err(
                "limits.pubsub_output_soft_bytes",
                "must be at most limits.pubsub_output_hard_bytes",
            ));
        }
        if c.bootstrap_expect == 0 || c.bootstrap_expect > 1024 {
            return Err(err("cluster.bootstrap_expect", "must be between 1 and 1024"));
        }
        if c.forget_after < Duration::from_secs(1) {
            return Err(err("cluster.forget_after", "must be at least 1s"));
        }
        let r = &self.rpc;
        if r.stream_window.0 < 16 << 10 || r.stream_window.0 > 1 << 30 {
            return Err(err("rpc.stream_window", "must be between 16KiB and 1GiB"));
        }
        if r.connection_window.0 < r.stream_window.0 || r.connection_window.0 > 4 << 30 {
            return Err(err("rpc.connection_window", "must be at least rpc.stream_window and at most 4GiB"));
        }
        if r.max_concurrent_requests == 0 || r.max_concurrent_requests > 65_536 {
            return Err(err("rpc.max_concurrent_requests", "must be between 1 and 65536"));
        }
        if r.streams_per_peer == 0 || r.streams_per_peer > r.max_concurrent_requests {
            return Err(err(
                "rpc.streams_per_peer",
                "must be between 1 and rpc.max_concurrent_requests (what a peer accepts at once)",
            ));
        }
        if r.max_batch_bytes.0 < 1024 || r.max_batch_bytes.0 > 64 << 20 {
            return Err(err("rpc.max_batch_bytes", "must be between 1KiB and 64MiB"));
        }
        if r.max_queued_requests == 0 || r.max_queued_requests > 1 << 20 {
            return Err(err("rpc.max_queued_requests", "must be between 1 and 1048576"));
        }
        if r.connect_timeout < Duration::from_millis(100) || r.connect_timeout > Duration::from_secs(300) {
            return Err(err("rpc.connect_timeout", "must be between 100ms and 5m"));
        }
        if r.idle_timeout < Duration::from_secs(1) || r.idle_timeout > Duration::from_secs(600) {
            return Err(err("rpc.idle_timeout", "must be between 1s and 10m"));
        }
        let b = &self.rebalance;
        if b.max_bytes_per_sec.0 < 64 << 10 {
            return Err(err("rebalance.max_bytes_per_sec", "must be at least 64KiB"));
        }
        if b.max_parallel == 0 || b.max_parallel > 64 {
            return Err(err("rebalance.max_parallel", "must be between 1 and 64"));
        }
        if b.chunk_bytes.0 < 4 << 10 || b.chunk_bytes.0 > MAX_CHUNK_BYTES {
            return Err(err("rebalance.chunk_bytes", "must be between 4KiB and 16MiB"));
        }
        let a = &self.repair;
        if a.interval < Duration::from_secs(1) || a.interval > Duration::from_secs(7 * 24 * 3600) {
            return Err(err("repair.interval", "must be between 1s and 7d"));
        }
        if a.max_parallel == 0 || a.max_parallel > 64 {
            return Err(err("repair.max_parallel", "must be between 1 and 64"));
        }
        let l = &self.limits;
        if l.max_key_bytes.0 == 0 || l.max_key_bytes.0 > 512 << 20 {
            return Err(err("limits.max_key_bytes", "must be between 1 byte and 512MiB"));
        }
        if l.max_value_bytes.0 == 0 || l.max_value_bytes.0 > 512 << 20 {
            return Err(err("limits.max_value_bytes", "must be between 1 byte and 512MiB"));
        }
        let needed = l.max_key_bytes.0 + l.max_value_bytes.0 + 1024;
        if l.max_request_bytes.0 < needed {
            return Err(err(
                "limits.max_request_bytes",
                format!(
                    "{} is too small to carry one key and one value: it must be at least {}",
                    l.max_request_bytes,
                    ByteSize(needed)
                ),
            ));
        }
        if l.max_clients == 0 {
            return Err(err("limits.max_clients", "must be at least 1"));
        }
        let s = &self.store;
        if s.partitions == 0 {
            return Err(err("store.partitions", "must be between 1 and 65535"));
        }
        if s.fsync_interval.is_zero() || s.fsync_interval > Duration::from_secs(3600) {
            return Err(err("store.fsync_interval", "must be between 1ms and 1h"));
        }
        if s.purge_interval.is_zero() {
            return Err(err("store.purge_interval", "must be at least 1ms"));
        }
        if s.write_buffer_bytes.0 < 1 << 20 {
            return Err(err("store.write_buffer_bytes", "must be at least 1MiB"));
        }
        if s.wal_segment_bytes.0 < 1 << 20 {
            return Err(err("store.wal_segment_bytes", "must be at least 1MiB"));
        }
        if s.cache_bytes.0 < 1 << 20 {
            return Err(err("store.cache_bytes", "must be at least 1MiB"));
        }
        if s.lmdb_map_bytes.0 < 16 << 20 || s.lmdb_map_bytes.0 > 1 << 50 {
            return Err(err("store.lmdb_map_bytes", "must be between 16MiB and 1PiB"));
        }
        let c = &self.connector;
        if let Err(e) = c.peer_list() {
            return Err(err("connector.peers", e));
        }
        if c.batch_records == 0 {
            return Err(err("connector.batch_records", "must be at least 1"));
        }
        // Capped at limits.max_request_bytes where it is used (a node that lowers that
        // limit must not fail over a connector setting it never uses).
        if c.batch_bytes.0 < 1024 {
            return Err(err("connector.batch_bytes", "must be at least 1KiB"));
        }
        if c.poll_interval.is_zero() || c.ship_timeout.is_zero() {
            return Err(err("connector.poll_interval", "connector durations must be more than 0"));
        }
        if c.batches_in_flight == 0 || c.batches_in_flight > 1024 {
            return Err(err("connector.batches_in_flight", "must be between 1 and 1024"));
        }
        if c.follow_wait < Duration::from_millis(10) || c.follow_wait > Duration::from_secs(30) {
            return Err(err("connector.follow_wait", "must be between 10ms and 30s"));
        }
        if c.backstop_interval < Duration::from_secs(1) {
            return Err(err("connector.backstop_interval", "must be at least 1s"));
        }
        let k = &self.keyspaces;
        if k.local.len() > KeyspacesConfig::MAX_LOCAL {
            return Err(err(
                "keyspaces.local",
                format!("lists more than {} prefixes", KeyspacesConfig::MAX_LOCAL),
            ));
        }
        for (i, prefix) in k.local.iter().enumerate() {
            if prefix.is_empty() {
                return Err(err(
                    "keyspaces.local",
                    "an empty prefix would keep every key in its datacenter; list key prefixes like \"session:\"",
                ));
            }
            if prefix.len() as u64 > l.max_key_bytes.0 {
                return Err(err(
                    "keyspaces.local",
                    format!("prefix {prefix:?} is longer than limits.max_key_bytes ({})", l.max_key_bytes),
                ));
            }
            if k.local[..i].contains(prefix) {
                return Err(err("keyspaces.local", format!("prefix {prefix:?} is listed twice")));
            }
        }
        if k.home.len() > KeyspacesConfig::MAX_LOCAL {
            return Err(err(
                "keyspaces.home",
                format!("lists more than {} prefixes", KeyspacesConfig::MAX_LOCAL),
            ));
        }
        let home = k.home_list().map_err(|e| err("keyspaces.home", e))?;
        for (i, (prefix, _)) in home.iter().enumerate() {
            if prefix.len() as u64 > l.max_key_bytes.0 {
                return Err(err(
                    "keyspaces.home",
                    format!("prefix {prefix:?} is longer than limits.max_key_bytes ({})", l.max_key_bytes),
                ));
            }
            // One key, one mode: a key matching two prefixes would have two homes, or be
            // both local and homed.
            let overlaps = |other: &str| prefix.starts_with(other) || other.starts_with(prefix.as_str());
            if let Some((other, _)) = home[..i].iter().find(|(o, _)| overlaps(o)) {
                return Err(err(
                    "keyspaces.home",
                    format!("prefixes {other:?} and {prefix:?} overlap: a key would match both"),
                ));
            }
            if let Some(other) = k.local.iter().find(|o| overlaps(o)) {
                return Err(err(
                    "keyspaces.home",
                    format!(
                        "prefix {prefix:?} overlaps {other:?} of keyspaces.local: a key would match both"
                    ),
                ));
            }
        }
        if k.home_lease < Duration::from_millis(100) || k.home_lease > Duration::from_secs(3600) {
            return Err(err("keyspaces.home_lease", "must be between 100ms and 1h"));
        }
        self.gossip.validate()
    }

    /// Where this node looks for members: `join` when it lists anything, else the
    /// `join_service` name with its port, else nowhere (it waits to be joined).
    pub fn join_targets(&self) -> Vec<String> {
        if !self.join.is_empty() {
            return self.join.clone();
        }
        match &self.join_service {
            // Validated at load; an invalid name joins nothing rather than panicking.
            Some(service) => targets::service_target(service).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// `cluster.write_quorum` parsed.
    pub fn write_quorum(&self) -> Result<WriteQuorum, String> {
        match self.cluster.write_quorum.trim() {
            "majority" => Ok(WriteQuorum::Majority),
            "all" => Ok(WriteQuorum::All),
            "one" => Ok(WriteQuorum::One),
            n => match n.parse::<usize>().ok().and_then(std::num::NonZeroUsize::new) {
                Some(n) if n.get() <= self.cluster.replicas as usize => Ok(WriteQuorum::Count(n)),
                Some(n) => Err(format!("{n} is more than cluster.replicas ({})", self.cluster.replicas)),
                None => Err(format!("{n:?} is not majority, all, one or a number of owners from 1")),
            },
        }
    }
}

impl GossipConfig {
    /// Bounds that keep foca's probe cycle well formed and detection meaningful.
    fn validate(&self) -> Result<(), ConfigError> {
        fn err(setting: &str, message: impl Into<String>) -> ConfigError {
            ConfigError::new(setting, message)
        }
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        let range = Duration::from_millis(10)..=Duration::from_secs(60);
        if !range.contains(&self.probe_interval) {
            return Err(err("gossip.probe_interval", "must be between 10ms and 1m"));
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.probe_interval {
            return Err(err(
                "gossip.probe_timeout",
                format!(
                    "{} must be more than 0 and shorter than gossip.probe_interval ({}): the indirect \
                     probes run in the rest of the interval (half of it or less is best)",
                    ms(self.probe_timeout),
                    ms(self.probe_interval)
                ),
            ));
        }
        if !(1..=16).contains(&self.indirect_probes) {
            return Err(err("gossip.indirect_probes", "must be between 1 and 16"));
        }
        if self.suspicion_timeout < self.probe_interval || self.suspicion_timeout > Duration::from_secs(600) {
            return Err(err(
                "gossip.suspicion_timeout",
                format!(
                    "{} must be between gossip.probe_interval ({}) and 10m: a suspected member needs \
                     at least one probe interval to hear of the suspicion and refute it",
                    ms(self.suspicion_timeout),
                    ms(self.probe_interval)
                ),
            ));
        }
        if !range.contains(&self.interval) {
            return Err(err("gossip.interval", "must be between 10ms and 1m"));
        }
        if !(1..=16).contains(&self.fanout) {
            return Err(err("gossip.fanout", "must be between 1 and 16"));
        }
        if self.reconnect_interval < Duration::from_millis(100)
            || self.reconnect_interval > Duration::from_secs(3600)
        {
            return Err(err("gossip.reconnect_interval", "must be between 100ms and 1h"));
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config { client_addr: Some("127.0.0.1:6379".parse().unwrap()), ..Config::default() }
    }

    #[test]
    fn defaults_refuse_an_open_listener_without_password() {
        let e = Config::default().validate().unwrap_err();
        assert_eq!(e.setting, "client_password");
        assert!(e.message.contains("--insecure-no-client-password"), "{e}");
        let mut c = Config { insecure_no_client_password: true, ..Config::default() };
        c.validate().unwrap();
        c.insecure_no_client_password = false;
        c.client_password = Some("s3cret".into());
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_the_setting() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("datacenter", Box::new(|c| c.datacenter = "DC 1".into())),
            ("limits.max_request_bytes", Box::new(|c| c.limits.max_request_bytes = ByteSize(10))),
            ("limits.max_clients", Box::new(|c| c.limits.max_clients = 0)),
            ("memory_trim_interval", Box::new(|c| c.memory_trim_interval = Duration::from_secs(7200))),
            ("store.partitions", Box::new(|c| c.store.partitions = 0)),
            ("store.fsync_interval", Box::new(|c| c.store.fsync_interval = Duration::ZERO)),
            ("gossip.probe_interval", Box::new(|c| c.gossip.probe_interval = Duration::ZERO)),
            ("gossip.probe_timeout", Box::new(|c| c.gossip.probe_timeout = c.gossip.probe_interval)),
            ("gossip.indirect_probes", Box::new(|c| c.gossip.indirect_probes = 0)),
            (
                "gossip.suspicion_timeout",
                Box::new(|c| c.gossip.suspicion_timeout = Duration::from_millis(100)),
            ),
            ("gossip.interval", Box::new(|c| c.gossip.interval = Duration::from_secs(3600))),
            ("gossip.fanout", Box::new(|c| c.gossip.fanout = 0)),
            ("client_addr", Box::new(|c| c.client_addr = None)),
            ("advertise", Box::new(|c| c.advertise = Some("0.0.0.0:7946".parse().unwrap()))),
            ("join", Box::new(|c| c.join = vec!["no-port".into()])),
            ("bind_interface", Box::new(|c| c.bind_interface = Some("eth0/1".into()))),
            ("bind_interface", Box::new(|c| c.bind_interface = Some("a-very-long-interface".into()))),
            (
                "bind_interface",
                Box::new(|c| {
                    c.gossip_addr = None;
                    c.bind_interface = Some("eth0".into());
                }),
            ),
            ("admin_token", Box::new(|c| c.admin_token = Some("short".into()))),
            ("keyspaces.local", Box::new(|c| c.keyspaces.local = vec!["a:".into(), String::new()])),
            ("keyspaces.local", Box::new(|c| c.keyspaces.local = vec!["a:".into(), "a:".into()])),
            ("keyspaces.local", Box::new(|c| c.keyspaces.local = vec!["x".repeat(70_000)])),
            ("keyspaces.home", Box::new(|c| c.keyspaces.home = vec!["users:".into()])),
            ("keyspaces.home", Box::new(|c| c.keyspaces.home = vec!["=dc1".into()])),
            ("keyspaces.home", Box::new(|c| c.keyspaces.home = vec!["u:=dc1".into(), "u:a:=dc2".into()])),
            (
                "keyspaces.home",
                Box::new(|c| {
                    c.keyspaces.local = vec!["s:".into()];
                    c.keyspaces.home = vec!["s:=dc1".into()];
                }),
            ),
            ("keyspaces.home_lease", Box::new(|c| c.keyspaces.home_lease = Duration::from_millis(10))),
            ("rebalance.max_parallel", Box::new(|c| c.rebalance.max_parallel = 0)),
            ("rebalance.chunk_bytes", Box::new(|c| c.rebalance.chunk_bytes = ByteSize(1024))),
            ("rebalance.chunk_bytes", Box::new(|c| c.rebalance.chunk_bytes = ByteSize(32 << 20))),
            ("join_service", Box::new(|c| c.join_service = Some("tasks.oc:x".into()))),
            ("join_service", Box::new(|c| c.join_service = Some("http://oc".into()))),
            (
                "join_service",
                Box::new(|c| {
                    c.gossip_addr = None;
                    c.join_service = Some("tasks.oc".into());
                }),
            ),
            (
                "join",
                Box::new(|c| {
                    c.gossip_addr = None;
                    c.join = vec!["10.0.0.1:7946".into()];
                }),
            ),
        ];
        for (setting, mutate) in cases {
            let mut c = valid();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().setting, setting);
        }
    }

    #[test]
    fn join_service_is_used_when_join_is_empty() {
        let mut c = valid();
        assert!(c.join_targets().is_empty());
        c.join_service = Some("tasks.opencluster".into());
        c.validate().unwrap();
        assert_eq!(c.join_targets(), ["tasks.opencluster:7946"]);
        c.join_service = Some("oc-gossip.oc.svc.cluster.local:8946".into());
        assert_eq!(c.join_targets(), ["oc-gossip.oc.svc.cluster.local:8946"]);
        c.join = vec!["10.0.0.4:7946".into(), "seed:7946".into()];
        c.validate().unwrap();
        assert_eq!(c.join_targets(), ["10.0.0.4:7946", "seed:7946"], "an explicit join wins");
    }
}
