//! The list of every setting: its key in the TOML file, its kind and its help text.
//!
//! The environment variable is `OPENCLUSTER_` + the key upper-cased with `.` as `_`
//! (`store.fsync` -> `OPENCLUSTER_STORE_FSYNC`); the flag is the key with `.` and `_` as
//! `-` (`--store-fsync`). A test checks that this list and [`super::Config`] agree.

/// How a value given as text (env or flag) becomes a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str,
    Path,
    Addr,
    Bool,
    Int,
    Size,
    Duration,
    Choice(&'static [&'static str]),
    /// A list: TOML array of strings; in env and flags, comma-separated (`a:1,b:2`).
    List,
}

impl Kind {
    /// What a value of this kind looks like, for kinds where an empty text is an error;
    /// `None` where empty means something: an empty address or path switches the thing
    /// off, an empty list is no items, and strings are checked by `Config::validate`.
    fn expected(self) -> Option<String> {
        match self {
            Kind::Bool => Some("true or false".into()),
            Kind::Int => Some("an integer".into()),
            Kind::Size => Some("a size like 65536 or 64MiB".into()),
            Kind::Duration => Some("a duration like 500ms or 10s".into()),
            Kind::Choice(choices) => Some(format!("one of {}", choices.join(", "))),
            Kind::Str | Kind::Path | Kind::Addr | Kind::List => None,
        }
    }
}

#[derive(Debug)]
pub struct Setting {
    pub key: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn s(key: &'static str, kind: Kind, help: &'static str) -> Setting {
    Setting { key, kind, help }
}

pub const SETTINGS: &[Setting] = &[
    s(
        "node_name",
        Kind::Str,
        "Name of this node, unique in its datacenter: a DNS name (labels of a-z, 0-9 and '-' separated by dots, at most 253 characters) [default: the host name]",
    ),
    s("datacenter", Kind::Str, "Datacenter this node belongs to [default: dc1]"),
    s(
        "data_dir",
        Kind::Path,
        "Directory for the node's data [default: /data; with --dev a temporary directory]",
    ),
    s(
        "tls_dir",
        Kind::Path,
        "Directory with the cluster's keys from opencluster-pki [default: the INSECURE built-in demo keys]",
    ),
    s(
        "client_addr",
        Kind::Addr,
        "RESP (Redis protocol) TCP address; empty disables [default: 0.0.0.0:6379; with --dev 127.0.0.1:6379]",
    ),
    s(
        "unix_socket",
        Kind::Path,
        "RESP Unix socket path, created with mode 0660, e.g. /run/opencluster/opencluster.sock",
    ),
    s(
        "client_password",
        Kind::Str,
        "Password clients must send with AUTH; required when client_addr is not loopback",
    ),
    s(
        "insecure_no_client_password",
        Kind::Bool,
        "Accept clients without a password on a non-loopback client_addr",
    ),
    s(
        "admin_addr",
        Kind::Addr,
        "Admin HTTP address (/v1/health, /v1/status, /metrics); empty disables [default: 127.0.0.1:9379]",
    ),
    s(
        "admin_token",
        Kind::Str,
        "Token the admin API's changing endpoints (gossip keyring rotation) require as `Authorization: Bearer <token>`; unset: they are refused. Prefer OPENCLUSTER_ADMIN_TOKEN to the flag",
    ),
    s(
        "gossip_addr",
        Kind::Addr,
        "UDP address for gossip membership; empty disables it [default: 0.0.0.0:7946; with --dev 127.0.0.1:7946]",
    ),
    s(
        "advertise",
        Kind::Addr,
        "Gossip address peers use to reach this node [default: gossip_addr when it is a specific IP]",
    ),
    s(
        "bind_interface",
        Kind::Str,
        "Network interface (e.g. eth0) whose IPv4 address is advertised with the gossip port when advertise is unset; \"\" for none [default: unset; eth0 in the container images]",
    ),
    s(
        "join",
        Kind::List,
        "Gossip addresses or DNS names (host:port, comma-separated) of members to join; retried until one answers",
    ),
    s(
        "join_service",
        Kind::Str,
        "DNS name (name or name:port, port default 7946) whose addresses are all the members, e.g. tasks.<service> in Swarm or a Kubernetes headless Service; joined when join is empty",
    ),
    s(
        "rpc_addr",
        Kind::Addr,
        "UDP address of the peer QUIC endpoint (mutual TLS) other nodes forward reads and writes to [default: 0.0.0.0:7947; with --dev 127.0.0.1:7947]",
    ),
    s(
        "cluster.replicas",
        Kind::Int,
        "Copies of each partition, on that many nodes (fewer while the cluster has fewer nodes) [default: 3]",
    ),
    s(
        "cluster.write_quorum",
        Kind::Str,
        "Owners that must have a write on disk before it is acknowledged: majority, all, one, or a number [default: majority]",
    ),
    s(
        "cluster.read_quorum",
        Kind::Choice(&["quorum", "one"]),
        "quorum: reads ask enough owners to see every acknowledged write; one: the first owner with the key answers (faster, may be stale after a fault) [default: quorum]",
    ),
    s(
        "cluster.max_hint_bytes",
        Kind::Size,
        "Copies a primary keeps in memory for owners that did not answer, delivered when they do; the oldest go beyond it [default: 64MiB]",
    ),
    s(
        "cluster.request_timeout",
        Kind::Duration,
        "Deadline of a read or write that involves other nodes; past it the client gets a CLUSTERDOWN error [default: 2s]",
    ),
    s(
        "cluster.bootstrap_expect",
        Kind::Int,
        "Data nodes a new cluster is expected to have; until it knows that many, writes need the quorum of that many [default: 1]",
    ),
    s(
        "cluster.forget_after",
        Kind::Duration,
        "How long a node that vanished without leaving still counts in the quorums of the cluster it belonged to [default: 72h]",
    ),
    s("rpc.stream_window", Kind::Size, "QUIC flow-control window of one peer request stream [default: 1MiB]"),
    s(
        "rpc.connection_window",
        Kind::Size,
        "QUIC flow-control window of one peer connection, all streams together [default: 8MiB]",
    ),
    s(
        "rpc.streams_per_peer",
        Kind::Int,
        "Streams this node keeps in flight to one peer; requests beyond wait and leave together in batches [default: 8]",
    ),
    s(
        "rpc.max_batch_bytes",
        Kind::Size,
        "Most bytes of peer requests sent together in one batch [default: 1MiB]",
    ),
    s(
        "rpc.max_queued_requests",
        Kind::Int,
        "Peer requests that may wait for a stream to one peer; callers beyond wait for room until their deadline [default: 4096]",
    ),
    s("rpc.connect_timeout", Kind::Duration, "How long a handshake with a peer may take [default: 5s]"),
    s(
        "rpc.idle_timeout",
        Kind::Duration,
        "A peer connection silent for this long is closed; keep-alives go every third of it [default: 5s]",
    ),
    s(
        "rpc.max_concurrent_requests",
        Kind::Int,
        "Requests one peer may have in flight to this node at once; more wait for a slot [default: 256]",
    ),
    s(
        "rebalance.max_bytes_per_sec",
        Kind::Size,
        "Bytes per second a node copies in for partitions it gains, all partitions together [default: 64MiB]",
    ),
    s("rebalance.max_parallel", Kind::Int, "Partitions a node copies in at once [default: 2]"),
    s(
        "rebalance.chunk_bytes",
        Kind::Size,
        "Bytes of keys and values asked for per chunk when copying a partition (a larger value comes alone) [default: 256KiB]",
    ),
    s(
        "repair.interval",
        Kind::Duration,
        "Time between anti-entropy rounds, in which owners compare partitions and copy what differs; a round also starts 2s after a node returns [default: 10m]",
    ),
    s(
        "repair.max_parallel",
        Kind::Int,
        "Partitions a node compares with their other owners at once [default: 2]",
    ),
    s("log_format", Kind::Choice(&["text", "json"]), "Log format: text or json [default: text]"),
    s("log_level", Kind::Str, "Log filter, e.g. info, debug, opencluster_node=debug [default: info]"),
    s(
        "shutdown_timeout",
        Kind::Duration,
        "How long a stopping node waits for client requests in flight before it flushes and exits [default: 10s]",
    ),
    s(
        "memory_trim_interval",
        Kind::Duration,
        "How often freed heap memory is given back to the operating system (glibc malloc_trim); 0s never [default: 1s]",
    ),
    s(
        "mode",
        Kind::Choice(&["standard", "lean"]),
        "standard: built-in buffer sizes, lowered to fit memory_budget; lean: every cache, buffer, queue and thread count sized from memory_budget, with backpressure instead of growth [default: standard]",
    ),
    s(
        "memory_budget",
        Kind::Size,
        "Memory the node plans to stay within, at least 4MiB [default: the container's memory limit minus a quarter (at most 512MiB); with no limit, 64MiB in lean mode and none in standard]",
    ),
    s("allow_flushdb", Kind::Bool, "Allow FLUSHDB, which deletes every key [default: false]"),
    s("limits.max_key_bytes", Kind::Size, "Largest key accepted [default: 64KiB]"),
    s("limits.max_value_bytes", Kind::Size, "Largest value accepted [default: 16MiB]"),
    s("limits.max_request_bytes", Kind::Size, "Largest single client request [default: 64MiB]"),
    s("limits.max_clients", Kind::Int, "Most client connections at once [default: 10000]"),
    s(
        "limits.pubsub_output_hard_bytes",
        Kind::Size,
        "Bytes of pub/sub messages and invalidations queued for one client before it is disconnected [default: 32MiB]",
    ),
    s(
        "limits.pubsub_output_soft_bytes",
        Kind::Size,
        "A client with more than this queued for limits.pubsub_output_soft_time is disconnected [default: 8MiB]",
    ),
    s(
        "limits.pubsub_output_soft_time",
        Kind::Duration,
        "How long a client may stay over limits.pubsub_output_soft_bytes [default: 60s]",
    ),
    s(
        "limits.tracking_max_keys",
        Kind::Int,
        "Keys tracked for clients (CLIENT TRACKING); beyond, the oldest are invalidated [default: 1000000]",
    ),
    s(
        "cache.enabled",
        Kind::Bool,
        "Keep records of keys owned by other nodes after reading them [default: true]",
    ),
    s(
        "cache.max_bytes",
        Kind::Size,
        "Most bytes the near cache holds (keys, values and a fixed overhead per entry) [default: 64MiB]",
    ),
    s(
        "cache.max_entry_bytes",
        Kind::Size,
        "Largest entry (key and value) the near cache keeps [default: 1MiB]",
    ),
    s(
        "cache.prefixes",
        Kind::List,
        "Near-cache rules per key prefix: PREFIX=off or PREFIX=SIZE (largest entry); the longest match wins, e.g. session:=off,img:=64KiB",
    ),
    s(
        "cache.lease",
        Kind::Duration,
        "How long owners promise invalidations after a read: the worst-case staleness if invalidations are lost [default: 30s]",
    ),
    s(
        "cache.invalidation_grace",
        Kind::Duration,
        "How long invalidations an owner announced may take to arrive before the partition's entries are dropped [default: 2s]",
    ),
    s(
        "cache.max_interest_keys",
        Kind::Int,
        "Keys with interest leases an owner tracks; beyond, a lease covers the key's whole partition [default: 100000]",
    ),
    s(
        "cache.max_queued_invalidations",
        Kind::Int,
        "Invalidations an owner queues for one holder; beyond, its leases are forgotten [default: 65536]",
    ),
    s(
        "connector.wan_addr",
        Kind::Addr,
        "Connector only: WAN QUIC address where other datacenters' connectors connect [default: 0.0.0.0:7948]",
    ),
    s(
        "connector.wan_advertise",
        Kind::Str,
        "Connector only: the public HOST:PORT other datacenters' connectors reach this one on",
    ),
    s(
        "connector.peers",
        Kind::List,
        "Connector only: the other datacenters' connectors, DC=HOST:PORT, comma-separated; a datacenter named twice has two connectors, tried in turn; names are re-resolved",
    ),
    s(
        "connector.batch_records",
        Kind::Int,
        "Connector only: most records in one shipped batch [default: 512]",
    ),
    s(
        "connector.batch_bytes",
        Kind::Size,
        "Connector only: most bytes of keys and values in one shipped batch [default: 1MiB]",
    ),
    s(
        "connector.poll_interval",
        Kind::Duration,
        "Connector only: how often it asks an idle node of an older version (without long polls) for new changes, and the first pause after a failed read [default: 20ms]",
    ),
    s(
        "connector.ship_timeout",
        Kind::Duration,
        "Connector only: how long a batch may take to be applied remotely before it is sent again [default: 10s]",
    ),
    s(
        "connector.backstop_interval",
        Kind::Duration,
        "Connector only: one pass of the backstop that compares every partition with each remote datacenter and ships what the cursors missed [default: 1h]",
    ),
    s(
        "keyspaces.local",
        Kind::List,
        "Key prefixes whose keys never leave this datacenter (not shipped by the connectors), comma-separated, e.g. session:,tmp: ; every node and connector of a datacenter must list the same",
    ),
    s(
        "keyspaces.home",
        Kind::List,
        "Key prefixes that live in one home datacenter, PREFIX=DC comma-separated, e.g. users:=dc1,orders:=dc2: other datacenters forward their writes there and cache their reads; the same list in every datacenter",
    ),
    s(
        "keyspaces.home_lease",
        Kind::Duration,
        "How long a cached read of another datacenter's home key may be served without word from its home: the staleness bound when the WAN is cut [default: 10s]",
    ),
    s(
        "connector.batches_in_flight",
        Kind::Int,
        "Connector only: most batches on the WAN to one remote datacenter at once, sent and not yet acknowledged (cursors still move in sending order) [default: 8]",
    ),
    s(
        "connector.follow_wait",
        Kind::Duration,
        "Connector only: how long a node holds the connector's request for changes when it has none (it answers as soon as one comes) [default: 1s]",
    ),
    s(
        "connector.compression",
        Kind::Choice(&["lz4", "none"]),
        "Connector only: compression of batches on the WAN, lz4 or none [default: lz4]",
    ),
    s(
        "store.engine",
        Kind::Choice(&["sled", "redb", "fjall", "lmdb"]),
        "Storage engine: sled, redb (own cache, pread), fjall (LSM tree) or lmdb (memory-mapped); fixed once data exists (unset: the engine of the data the store holds), see docs/storage-study.md [default: lmdb]",
    ),
    s(
        "store.lmdb_map_bytes",
        Kind::Size,
        "With store.engine=lmdb: the largest the data file may grow (reserves address space, not memory) [default: 256GiB]",
    ),
    s(
        "store.fsync",
        Kind::Choice(&["always", "interval"]),
        "always: acknowledge writes once on disk; interval: flush every store.fsync_interval [default: interval]",
    ),
    s(
        "store.fsync_interval",
        Kind::Duration,
        "Longest time between flushes with fsync=interval; a crash loses at most this [default: 1s]",
    ),
    s(
        "store.cache_bytes",
        Kind::Size,
        "Memory the storage engine may use as cache; with lmdb, whose cache is the page cache, the page copies a commit holds (it sets how many records go in one commit) [default: 64MiB]",
    ),
    s(
        "store.write_buffer_bytes",
        Kind::Size,
        "Memory for written records not yet applied to the storage engine; writers wait when it is full, and a larger one absorbs more rewrites of the same keys [default: 128MiB, at most half of memory_budget (lean mode: a tenth)]",
    ),
    s(
        "store.apply_delay",
        Kind::Duration,
        "Longest a written record waits in the write buffer before it is applied to the storage engine [default: 5s]",
    ),
    s("store.wal_segment_bytes", Kind::Size, "Size of a write-ahead log segment file [default: 64MiB]"),
    s("store.partitions", Kind::Int, "Number of partitions, fixed once data exists [default: 1024]"),
    s(
        "store.purge_interval",
        Kind::Duration,
        "How often expired keys and old tombstones are purged [default: 100ms]",
    ),
    s("store.tombstone_grace", Kind::Duration, "How long deleted keys' tombstones are kept [default: 24h]"),
    s(
        "store.tombstone_hold",
        Kind::Duration,
        "Longest a tombstone is kept past its grace until every remote datacenter's connector shipped it; 0 keeps none [default: 7d]",
    ),
    s(
        "gossip.probe_interval",
        Kind::Duration,
        "How often this node probes one other member for failure detection [default: 500ms]",
    ),
    s(
        "gossip.probe_timeout",
        Kind::Duration,
        "How long a probed member has to answer before others are asked to probe it; < gossip.probe_interval [default: 200ms]",
    ),
    s(
        "gossip.indirect_probes",
        Kind::Int,
        "How many members are asked to probe a member that did not answer in time [default: 3]",
    ),
    s(
        "gossip.suspicion_timeout",
        Kind::Duration,
        "How long a member that failed a probe stays suspect before it is declared down [default: 1s]",
    ),
    s(
        "gossip.interval",
        Kind::Duration,
        "How often membership news is gossiped to gossip.fanout members [default: 200ms]",
    ),
    s("gossip.fanout", Kind::Int, "How many random members each gossip round goes to [default: 3]"),
    s(
        "gossip.reconnect_interval",
        Kind::Duration,
        "How often this node announces itself to members it sees as down, so healed network partitions rejoin [default: 2s]",
    ),
];

impl Setting {
    pub fn env(&self) -> String {
        format!("OPENCLUSTER_{}", self.key.replace('.', "_").to_ascii_uppercase())
    }

    pub fn flag(&self) -> String {
        self.key.replace(['.', '_'], "-")
    }

    /// Converts text from an environment variable or a flag into the TOML value the
    /// typed config expects.
    pub fn to_value(&self, raw: &str) -> Result<toml::Value, String> {
        // `OPENCLUSTER_X=` is more often a template left unfilled than a choice: reading it
        // as true (or as a default) would, for insecure_no_client_password, silently turn
        // the password guard off. Only kinds where empty means something accept it.
        if raw.trim().is_empty()
            && let Some(expected) = self.kind.expected()
        {
            return Err(format!("is empty; give {expected}, or leave it unset for the default"));
        }
        Ok(match self.kind {
            Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                _ => return Err(format!("{raw:?} is not a boolean (true or false)")),
            },
            Kind::Int => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| format!("{raw:?} is not an integer"))?)
            }
            Kind::Size => match raw.trim().parse::<i64>() {
                Ok(n) => toml::Value::Integer(n),
                Err(_) => toml::Value::String(raw.to_string()),
            },
            Kind::Choice(choices) => {
                if !choices.contains(&raw) {
                    return Err(format!("{raw:?} is not one of {}", choices.join(", ")));
                }
                toml::Value::String(raw.to_string())
            }
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_string()))
                    .collect(),
            ),
            Kind::Str | Kind::Path | Kind::Addr | Kind::Duration => toml::Value::String(raw.to_string()),
        })
    }

    pub fn find(key: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// Every key of a fully populated config, as dotted paths.
    fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match v {
                    toml::Value::Table(_) => keys(v, &path, out),
                    _ => out.push(path),
                }
            }
        }
    }

    #[test]
    fn the_table_and_the_config_struct_agree() {
        let full = Config {
            tls_dir: Some("/tls".into()),
            unix_socket: Some("/s".into()),
            client_password: Some("p".into()),
            admin_token: Some("t".into()),
            advertise: Some("10.0.0.1:7946".parse().unwrap()),
            bind_interface: Some("eth0".into()),
            join: vec!["a:1".into()],
            join_service: Some("tasks.oc".into()),
            memory_budget: Some(crate::config::ByteSize(64 << 20)),
            connector: crate::config::ConnectorConfig {
                wan_advertise: Some("203.0.113.1:7948".into()),
                ..Default::default()
            },
            keyspaces: crate::config::KeyspacesConfig {
                local: vec!["session:".into()],
                home: vec!["users:=dc1".into()],
                ..Default::default()
            },
            ..Config::default()
        };
        let mut in_struct = Vec::new();
        keys(&toml::Value::try_from(&full).unwrap(), "", &mut in_struct);
        in_struct.sort();
        let mut in_table: Vec<String> = SETTINGS.iter().map(|s| s.key.to_string()).collect();
        in_table.sort();
        assert_eq!(in_struct, in_table);
    }

    #[test]
    fn lists_split_on_commas() {
        let join = Setting::find("join").unwrap();
        let strings =
            |v: &[&str]| toml::Value::Array(v.iter().map(|s| toml::Value::String(s.to_string())).collect());
        assert_eq!(join.to_value("a:1,b.example:7946"), Ok(strings(&["a:1", "b.example:7946"])));
        assert_eq!(join.to_value(" a:1 , ,b:2,"), Ok(strings(&["a:1", "b:2"])));
        assert_eq!(join.to_value(""), Ok(strings(&[])));
    }

    #[test]
    fn env_and_flag_names_derive_from_the_key() {
        let s = Setting::find("store.fsync_interval").unwrap();
        assert_eq!(s.env(), "OPENCLUSTER_STORE_FSYNC_INTERVAL");
        assert_eq!(s.flag(), "store-fsync-interval");
        assert_eq!(Setting::find("data_dir").unwrap().flag(), "data-dir");
    }

    #[test]
    fn text_values_convert_by_kind() {
        let int = Setting::find("limits.max_clients").unwrap();
        assert_eq!(int.to_value("12"), Ok(toml::Value::Integer(12)));
        assert!(int.to_value("many").is_err());
        let choice = Setting::find("store.fsync").unwrap();
        assert!(choice.to_value("sometimes").unwrap_err().contains("always, interval"));
        let flag = Setting::find("allow_flushdb").unwrap();
        assert_eq!(flag.to_value("no"), Ok(toml::Value::Boolean(false)));
        assert_eq!(flag.to_value("On"), Ok(toml::Value::Boolean(true)));
        for empty in ["", " "] {
            assert_eq!(
                flag.to_value(empty),
                Err("is empty; give true or false, or leave it unset for the default".into())
            );
            assert!(int.to_value(empty).unwrap_err().contains("an integer"));
            assert!(choice.to_value(empty).unwrap_err().contains("always, interval"));
            let size = Setting::find("store.cache_bytes").unwrap();
            assert!(size.to_value(empty).unwrap_err().contains("64MiB"));
            let duration = Setting::find("store.fsync_interval").unwrap();
            assert!(duration.to_value(empty).unwrap_err().contains("500ms"));
        }
        // Where empty means something: no listener, no items, unset.
        assert_eq!(Setting::find("admin_addr").unwrap().to_value(""), Ok(toml::Value::String("".into())));
        assert_eq!(Setting::find("bind_interface").unwrap().to_value(""), Ok(toml::Value::String("".into())));
    }
}
