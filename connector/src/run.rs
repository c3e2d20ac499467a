//! Wires a connector together: keys with the `connector` role, gossip membership in its
//! datacenter, a peer endpoint toward the datacenter's nodes, the WAN endpoint toward the
//! other datacenters' connectors, one shipper per remote datacenter and the admin API;
//! then the shutdown story (leave gossip, stop shipping, close the endpoints).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opencluster_node::config::Config;
use opencluster_node::membership::identity::Role;
use opencluster_node::metrics::Metrics;
use opencluster_node::node::{NodeError, start_membership};
use opencluster_node::peer::{PeerOptions, PeerSetupError, Peers, RpcMetrics};
use opencluster_node::security::{Security, SecurityError};
use opencluster_pki::Policy;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::apply::Applier;
use crate::backstop::Backstop;
use crate::home::{HomeMetrics, HomeRelay, LocalService};
use crate::link::{Link, LinkMetrics};
use crate::share::Share;
use crate::ship::{ShipOptions, Shipper};
use crate::wan::{WanHandler, WanService};

/// How often a connector on the default keys repeats its warning.
const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{setting} {addr}: cannot listen: {source}")]
    Listen { setting: &'static str, addr: String, source: std::io::Error },
    #[error("data_dir {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "a connector needs gossip_addr and rpc_addr: it joins its datacenter's gossip and talks to its nodes"
    )]
    NoGossip,
    #[error(transparent)]
    Security(#[from] SecurityError),
    #[error(transparent)]
    Membership(#[from] NodeError),
    #[error(transparent)]
    Peer(#[from] PeerSetupError),
    #[error("invalid setting `connector.peers`: {0}")]
    Peers(String),
    #[error("invalid setting `cluster.write_quorum`: {0}")]
    Quorum(String),
    #[error("invalid setting `keyspaces.home`: {0}")]
    Home(String),
}

/// The sockets a connector serves on, bound before [`run`].
pub struct Listeners {
    pub admin: Option<TcpListener>,
    pub gossip: UdpSocket,
    pub rpc: std::net::UdpSocket,
    pub wan: std::net::UdpSocket,
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, ConnectorError> {
        let listen = |setting: &'static str, addr: SocketAddr| {
            move |source| ConnectorError::Listen { setting, addr: addr.to_string(), source }
        };
        let (Some(gossip), Some(rpc)) = (config.gossip_addr, config.rpc_addr) else {
            return Err(ConnectorError::NoGossip);
        };
        let wan = config.connector.wan_addr;
        Ok(Listeners {
            admin: match config.admin_addr {
                Some(a) => Some(TcpListener::bind(a).await.map_err(listen("admin_addr", a))?),
                None => None,
            },
            gossip: UdpSocket::bind(gossip).await.map_err(listen("gossip_addr", gossip))?,
            rpc: std::net::UdpSocket::bind(rpc).map_err(listen("rpc_addr", rpc))?,
            wan: std::net::UdpSocket::bind(wan).map_err(listen("connector.wan_addr", wan))?,
        })
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn wan_addr(&self) -> Option<SocketAddr> {
        self.wan.local_addr().ok()
    }
}

fn peer_options(config: &Config) -> PeerOptions {
    PeerOptions {
        stream_window: config.rpc.stream_window.0,
        connection_window: config.rpc.connection_window.0,
        max_concurrent_requests: config.rpc.max_concurrent_requests,
        max_message_bytes: config.limits.max_request_bytes.as_usize() + (1 << 20),
        streams_per_peer: config.rpc.streams_per_peer as usize,
        max_batch_bytes: config.rpc.max_batch_bytes.as_usize(),
        max_queued_requests: config.rpc.max_queued_requests as usize,
        connect_timeout: config.rpc.connect_timeout,
        idle_timeout: config.rpc.idle_timeout,
    }
}

/// Runs a connector until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ConnectorError> {
    let data_err = |source| ConnectorError::DataDir { path: config.data_dir.clone(), source };
    std::fs::create_dir_all(&config.data_dir).map_err(data_err)?;
    let node_id = opencluster_node::node::node_id(&config.data_dir).map_err(data_err)?;
    let remotes = remotes(&config)?;
    check_homes(&config, &remotes)?;
    let quorum = config.write_quorum().map_err(ConnectorError::Quorum)?;

    let (security, renewal) = Security::load_as(&config, opencluster_pki::Role::Connector)?;
    {
        let c = security.credentials.borrow();
        tracing::info!(identity = %c.identity, keys = %security.keys.source, "certificate ready");
    }
    let metrics = Arc::new(Metrics::new());
    metrics.insecure_default_keys.set(i64::from(security.insecure_default_keys));
    let registry = prometheus::Registry::new();
    let link_metrics = LinkMetrics::register(&registry);
    let wan_queue = prometheus::IntGauge::new(
        "opencluster_connector_wan_queue_depth",
        "Requests waiting for a stream to a remote datacenter's connector",
    )
    .expect("valid gauge");
    registry.register(Box::new(wan_queue.clone())).expect("metric names are unique");
    let wan_registry = prometheus::Registry::new_custom(Some("wan".into()), None).expect("valid prefix");
    let wan_rpc = RpcMetrics::register(&wan_registry, wan_queue);
    registry.register(Box::new(WanCollector(wan_registry))).expect("metric names are unique");

    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(renewal.run(background.clone()));
    if security.insecure_default_keys {
        tasks.spawn(warn_insecure(background.clone()));
    }

    // Membership: this connector is a member of its datacenter with role `connector`, so
    // nodes know it and never place partitions on it.
    let gossip_tasks = TaskTracker::new();
    let stop_gossip = CancellationToken::new();
    let rpc_bound = listeners.rpc.local_addr().ok();
    let (members, _keyring) = start_membership(
        &config,
        Role::Connector,
        listeners.gossip,
        [None, rpc_bound],
        node_id,
        Vec::new(),
        &security,
        &metrics,
        &gossip_tasks,
        stop_gossip.clone(),
    )?;

    let options = peer_options(&config);
    let local = Peers::new(
        listeners.rpc,
        &security.tls,
        Policy::NodeOrConnectorOfDatacenter {
            cluster: security.keys.cluster.clone(),
            dc: security.keys.datacenter.clone(),
        },
        &options,
        metrics.rpc.clone(),
    )?;
    let wan = Peers::new(
        listeners.wan,
        &security.tls,
        Policy::ConnectorOfOtherDatacenter {
            cluster: security.keys.cluster.clone(),
            own_dc: security.keys.datacenter.clone(),
        },
        &options,
        wan_rpc,
    )?;
    let wan_addr = wan.local_addr().ok();
    tracing::info!(
        wan = %wan_addr.map(|a| a.to_string()).unwrap_or_default(),
        advertise = ?config.connector.wan_advertise,
        peers = ?remotes,
        "WAN endpoint ready"
    );

    let links: Vec<Arc<Link>> =
        remotes.iter().map(|(dc, addrs)| Arc::new(Link::new(dc, addrs, &link_metrics))).collect();
    let share = Arc::new(Share::register(&registry));
    let applier = Arc::new(Applier {
        members: members.clone(),
        peers: local.clone(),
        partitions: config.store.partitions,
        replicas: config.cluster.replicas as usize,
        quorum,
        timeout: config.cluster.request_timeout,
    });
    let home = Arc::new(HomeRelay {
        datacenter: config.datacenter.clone(),
        remotes: remotes.iter().cloned().collect(),
        members: members.clone(),
        local: local.clone(),
        wan: wan.clone(),
        applier: applier.clone(),
        timeout: config.cluster.request_timeout,
        metrics: HomeMetrics::register(&registry),
    });
    let wan_service = Arc::new(WanHandler(
        WanService {
            home: home.clone(),
            datacenter: config.datacenter.clone(),
            applier: applier.clone(),
            links: links.iter().map(|l| (l.remote.clone(), l.clone())).collect::<HashMap<_, _>>(),
            max_unpacked_bytes: config.limits.max_request_bytes.as_usize(),
        }
        .shared(),
    ));
    let peer_tasks = TaskTracker::new();
    let stop_peers = CancellationToken::new();
    peer_tasks.spawn(local.clone().serve(
        Arc::new(LocalService { node_id, home }),
        peer_tasks.clone(),
        stop_peers.clone(),
    ));
    peer_tasks.spawn(wan.clone().serve(wan_service, peer_tasks.clone(), stop_peers.clone()));

    let ship = ShipOptions {
        batch_records: config.connector.batch_records as usize,
        batch_bytes: config.connector.batch_bytes.min(config.limits.max_request_bytes).as_usize(),
        poll_interval: config.connector.poll_interval,
        ship_timeout: config.connector.ship_timeout,
        local_timeout: config.cluster.request_timeout,
        compression: config.connector.compression,
        batches_in_flight: config.connector.batches_in_flight as usize,
        follow_wait: config.connector.follow_wait,
    };
    let shippers = TaskTracker::new();
    let stop_shipping = CancellationToken::new();
    for link in &links {
        let backstop = Backstop {
            datacenter: config.datacenter.clone(),
            node_id,
            members: members.clone(),
            applier: applier.clone(),
            wan: wan.clone(),
            link: link.clone(),
            addresses: link.addresses.clone(),
            interval: config.connector.backstop_interval,
            tombstone_grace: config.store.tombstone_grace,
            ship_timeout: config.connector.ship_timeout,
        };
        shippers.spawn(backstop.run(stop_shipping.clone()));
        let shipper = Shipper {
            datacenter: config.datacenter.clone(),
            node_id,
            remote: link.remote.clone(),
            addresses: link.addresses.clone(),
            partitions: config.store.partitions,
            members: members.clone(),
            local: local.clone(),
            wan: wan.clone(),
            link: link.clone(),
            share: share.clone(),
            options: ship.clone(),
            pick: Default::default(),
        };
        shippers.spawn(shipper.run(stop_shipping.clone()));
    }

    if let Some(l) = listeners.admin {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving the admin API");
        let state = Arc::new(AdminState {
            name: config.node_name.clone(),
            datacenter: config.datacenter.clone(),
            node_id,
            wan_addr,
            wan_advertise: config.connector.wan_advertise.clone(),
            insecure_default_keys: security.insecure_default_keys,
            security: security.status(),
            members: members.clone(),
            links: links.clone(),
            share: share.clone(),
            node_metrics: metrics.clone(),
            registry,
        });
        tasks.spawn(admin::serve(l, state, background.clone()));
    }

    shutdown.cancelled().await;
    tracing::info!("shutting down: stopping the shippers");
    stop_shipping.cancel();
    shippers.close();
    if tokio::time::timeout(config.shutdown_timeout, shippers.wait()).await.is_err() {
        tracing::warn!("shippers still running after shutdown_timeout");
    }
    tracing::info!("leaving the datacenter's gossip");
    stop_gossip.cancel();
    gossip_tasks.close();
    gossip_tasks.wait().await;
    tracing::info!("closing the peer and WAN endpoints");
    stop_peers.cancel();
    peer_tasks.close();
    if tokio::time::timeout(config.shutdown_timeout, peer_tasks.wait()).await.is_err() {
        tracing::warn!("peer requests still running after shutdown_timeout");
    }
    background.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Every home datacenter of `keyspaces.home` is this one or a peer: a connector knows
/// every datacenter of its cluster, so a home it does not know is a typo or a missing peer.
pub fn check_homes(config: &Config, remotes: &[(String, Vec<String>)]) -> Result<(), ConnectorError> {
    let homes = config.keyspaces.home_list().map_err(ConnectorError::Home)?;
    for (prefix, dc) in homes {
        if dc != config.datacenter && !remotes.iter().any(|(r, _)| *r == dc) {
            let known: Vec<&str> = std::iter::once(config.datacenter.as_str())
                .chain(remotes.iter().map(|(r, _)| r.as_str()))
                .collect();
            return Err(ConnectorError::Home(format!(
                "{prefix}={dc}: {dc} is not a datacenter of this cluster (this connector knows {}; connector.peers)",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// The remote datacenters of `connector.peers`, in the order first named, each with its
/// connectors' addresses (`--peer dc2=a:7948 --peer dc2=b:7948`: twins, tried in turn).
pub fn remotes(config: &Config) -> Result<Vec<(String, Vec<String>)>, ConnectorError> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (dc, addr) in config.connector.peer_list().map_err(ConnectorError::Peers)? {
        if dc == config.datacenter {
            return Err(ConnectorError::Peers(format!("{dc} is this connector's own datacenter")));
        }
        match out.iter_mut().find(|(d, _)| *d == dc) {
            Some((_, addrs)) if addrs.contains(&addr) => {
                return Err(ConnectorError::Peers(format!("{dc}={addr} is listed twice")));
            }
            Some((_, addrs)) => addrs.push(addr),
            None => out.push((dc, vec![addr])),
        }
    }
    Ok(out)
}

/// The WAN endpoint's RPC metrics, under a `wan_` prefix in the connector's registry.
struct WanCollector(prometheus::Registry);

impl prometheus::core::Collector for WanCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.gather()
    }
}

async fn warn_insecure(stop: CancellationToken) {
    loop {
        tracing::warn!(
            "INSECURE: this connector uses the well-known default keys from deploy/default-keys; anyone \
             with the public OpenCluster images can join or read this cluster. Issue your own keys with \
             opencluster-pki and set tls_dir (see docs/security.md)"
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INSECURE_WARNING_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_of_one_datacenter_are_its_connectors_in_turn() {
        let peers = ["dc2=a.example:7948", "dc3=c:7948", "dc2=b.example:7948"].map(String::from).to_vec();
        let mut c = Config {
            datacenter: "dc1".into(),
            connector: opencluster_node::config::ConnectorConfig { peers, ..Default::default() },
            ..Config::default()
        };
        let r = remotes(&c).unwrap();
        assert_eq!(r[0], ("dc2".to_string(), vec!["a.example:7948".to_string(), "b.example:7948".into()]));
        assert_eq!(r[1], ("dc3".to_string(), vec!["c:7948".to_string()]));
        c.connector.peers.push("dc2=a.example:7948".into());
        assert!(remotes(&c).unwrap_err().to_string().contains("listed twice"));
        c.connector.peers = vec!["dc1=x:1".into()];
        assert!(remotes(&c).unwrap_err().to_string().contains("own datacenter"));
    }
}
