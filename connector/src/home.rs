//! The connector's part in the `home` keyspace (`keyspaces.home`): it relays, it never
//! decides or keeps anything.
//!
//! - From a node of its own datacenter ([`HomeRelay::from_node`]): a write command or a
//!   read for another datacenter goes over the WAN to a connector of that datacenter, and
//!   invalidations an owner here owes another datacenter go to that datacenter.
//! - From a connector of another datacenter ([`HomeRelay::from_remote`]): a write command
//!   goes to one node here, which runs it like a client's; a read goes to the key's
//!   primary owner (the node that sees every change and keeps the lease); invalidations
//!   go to every node here.
//!
//! Each hop gets less time than the one before, so a timeout is reported by the hop
//! nearest the node that waits: a node gives 3x `cluster.request_timeout`, the WAN hop
//! 2.5x, the hop inside the home datacenter 2x.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use opencluster_node::cluster::messages::{HomeCommand, HomeInvalidate, HomeRead, HomeRecords, HomeReply};
use opencluster_node::membership::members::Members;
use opencluster_node::peer::messages::{Kind, Message, Refusal};
use opencluster_node::peer::{BoxFuture, Handler, Peers, RpcError, Target, answer, refused};
use opencluster_node::placement::partition_of;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::apply::Applier;
use crate::ship::{remote_target, resolve_all};

/// Requests relayed, by kind and direction.
#[derive(Clone)]
pub struct HomeMetrics {
    pub relayed: IntCounterVec,
}

impl HomeMetrics {
    pub fn register(r: &Registry) -> Self {
        let relayed = IntCounterVec::new(
            Opts::new(
                "opencluster_connector_home_requests_total",
                "Home-keyspace requests relayed, by kind (command, read, invalidate), direction \
                 (to_remote: from a node here; from_remote: from another datacenter) and outcome",
            ),
            &["kind", "direction", "outcome"],
        )
        .expect("valid counter");
        r.register(Box::new(relayed.clone())).expect("metric names are unique");
        HomeMetrics { relayed }
    }
}

pub struct HomeRelay {
    /// This connector's datacenter.
    pub datacenter: String,
    /// The other datacenters' connectors, by datacenter (`connector.peers`).
    pub remotes: HashMap<String, Vec<String>>,
    pub members: Arc<Members>,
    /// The peer endpoint of this datacenter (to its nodes).
    pub local: Arc<Peers>,
    /// The WAN endpoint.
    pub wan: Arc<Peers>,
    /// Where partitions are placed here (the owners of a key).
    pub applier: Arc<Applier>,
    /// `cluster.request_timeout`.
    pub timeout: Duration,
    pub metrics: HomeMetrics,
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::HomeCommand => "command",
        Kind::HomeRead => "read",
        _ => "invalidate",
    }
}

impl HomeRelay {
    fn count<T>(&self, kind: Kind, direction: &str, result: &Result<T, Refusal>) {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.metrics.relayed.with_label_values(&[kind_label(kind), direction, outcome]).inc();
    }

    /// Sends `msg` to a connector of datacenter `dc`; `again`: to the next of its
    /// addresses when one fails in any way (else only when it could not be reached, so
    /// that a command is never run twice).
    async fn to_remote<M: Message>(&self, dc: &str, msg: &M, again: bool) -> Result<M::Response, Refusal> {
        let addresses = self.remotes.get(dc).ok_or_else(|| {
            Refusal::Unavailable(format!(
                "datacenter {dc:?}, the home of these keys, is not a peer of this connector (connector.peers)"
            ))
        })?;
        let resolved = resolve_all(addresses)
            .await
            .map_err(|e| Refusal::Unavailable(format!("datacenter {dc}'s connectors: {e}")))?;
        let mut errors = Vec::new();
        for addr in resolved {
            match self.wan.call(&remote_target(dc, addr), msg, self.timeout.mul_f32(2.5)).await {
                Ok(answer) => return Ok(answer),
                Err(e @ RpcError::Connect { .. }) => errors.push(e.to_string()),
                Err(e) if again => errors.push(e.to_string()),
                Err(e) => return Err(unreachable(dc, e.to_string())),
            }
        }
        Err(unreachable(dc, errors.join("; ")))
    }

    /// A request from a node of this datacenter.
    pub async fn from_node(&self, kind: Kind, body: Bytes) -> Vec<u8> {
        match kind {
            Kind::HomeCommand => {
                answer(&body, |m: HomeCommand| async move {
                    let r = match self.check_from_here(&m.from) {
                        Ok(()) => self.to_remote(&m.home.clone(), &m, false).await,
                        Err(e) => Err(e),
                    };
                    self.count(kind, "to_remote", &r);
                    r
                })
                .await
            }
            Kind::HomeRead => {
                answer(&body, |m: HomeRead| async move {
                    let r = match self.check_from_here(&m.from) {
                        Ok(()) => self.to_remote(&m.home.clone(), &m, true).await,
                        Err(e) => Err(e),
                    };
                    self.count(kind, "to_remote", &r);
                    r
                })
                .await
            }
            Kind::HomeInvalidate => {
                answer(&body, |m: HomeInvalidate| async move {
                    let r = match self.check_from_here(&m.home) {
                        Ok(()) => self.to_remote(&m.to.clone(), &m, true).await,
                        Err(e) => Err(e),
                    };
                    self.count(kind, "to_remote", &r);
                    r
                })
                .await
            }
            other => refused(Refusal::UnknownKind(other as u8)),
        }
    }

    fn check_from_here(&self, dc: &str) -> Result<(), Refusal> {
        if dc != self.datacenter {
            return Err(Refusal::Malformed(format!(
                "a node of datacenter {:?} sent a home request as {dc:?}",
                self.datacenter
            )));
        }
        Ok(())
    }

    /// A request from a connector of datacenter `peer_dc` (as its certificate says).
    pub async fn from_remote(&self, kind: Kind, body: Bytes, peer_dc: &str) -> Vec<u8> {
        let own = self.datacenter.as_str();
        // A datacenter asks only for itself, and only of the home it names.
        let check = |from: &str, home: &str| {
            if from != peer_dc || home != own {
                return Err(Refusal::Malformed(format!(
                    "a connector of datacenter {peer_dc:?} sent a request from {from:?} for home {home:?} to datacenter {own:?}"
                )));
            }
            Ok(())
        };
        match kind {
            Kind::HomeCommand => {
                answer(&body, |m: HomeCommand| async move {
                    let r = match check(&m.from, &m.home) {
                        Ok(()) => self.run_command(&m).await,
                        Err(e) => Err(e),
                    };
                    self.count(kind, "from_remote", &r);
                    r
                })
                .await
            }
            Kind::HomeRead => {
                answer(&body, |m: HomeRead| async move {
                    let r = match check(&m.from, &m.home) {
                        Ok(()) => self.read_at_owner(&m).await,
                        Err(e) => Err(e),
                    };
                    self.count(kind, "from_remote", &r);
                    r
                })
                .await
            }
            Kind::HomeInvalidate => {
                answer(&body, |m: HomeInvalidate| async move {
                    let r = self.invalidate_here(&m, peer_dc).await;
                    self.count(kind, "from_remote", &r);
                    r
                })
                .await
            }
            other => refused(Refusal::UnknownKind(other as u8)),
        }
    }

    /// The data nodes of this datacenter, as peers to call.
    fn nodes(&self) -> Vec<Target> {
        self.members
            .data_nodes()
            .into_iter()
            .map(|n| Target { id: n.id, name: n.name, addr: n.rpc_addr })
            .collect()
    }

    /// Runs a forwarded command at one node (the next only when one cannot be reached:
    /// never twice).
    async fn run_command(&self, m: &HomeCommand) -> Result<HomeReply, Refusal> {
        let key = m.args.get(1).cloned().unwrap_or_default();
        let partition = partition_of(&key, self.applier.partitions);
        // The primary decides without another hop; any node would do.
        let mut targets = self.applier.owners(partition);
        let others: Vec<Target> =
            self.nodes().into_iter().filter(|n| !targets.iter().any(|t| t.id == n.id)).collect();
        targets.extend(others);
        let mut errors = Vec::new();
        for target in targets {
            match self.local.call(&target, m, self.timeout * 2).await {
                Ok(reply) => return Ok(reply),
                Err(e @ RpcError::Connect { .. }) => errors.push(e.to_string()),
                Err(e) => return Err(Refusal::Unavailable(e.to_string())),
            }
        }
        Err(Refusal::Unavailable(format!(
            "no node of datacenter {} answered: {}",
            self.datacenter,
            errors.join("; ")
        )))
    }

    /// Reads at the keys' primary owner, which keeps the lease (the next owner when it
    /// fails).
    async fn read_at_owner(&self, m: &HomeRead) -> Result<HomeRecords, Refusal> {
        let Some(first) = m.keys.first() else {
            return Ok(HomeRecords { records: Vec::new(), leased: true });
        };
        let partition = partition_of(first, self.applier.partitions);
        let mut errors = Vec::new();
        for target in self.applier.owners(partition) {
            match self.local.call(&target, m, self.timeout * 2).await {
                Ok(records) => return Ok(records),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(Refusal::Unavailable(format!(
            "no owner of the key in datacenter {} answered: {}",
            self.datacenter,
            errors.join("; ")
        )))
    }

    /// Tells every node here that keys of `peer_dc`'s home changed; Ok only when each got
    /// it (else the home sends them again while the leases last).
    async fn invalidate_here(&self, m: &HomeInvalidate, peer_dc: &str) -> Result<(), Refusal> {
        if m.home != peer_dc || m.to != self.datacenter {
            return Err(Refusal::Malformed(format!(
                "a connector of datacenter {peer_dc:?} sent invalidations of home {:?} for {:?}",
                m.home, m.to
            )));
        }
        let nodes = self.nodes();
        let answers = join_all(nodes.iter().map(|t| self.local.call(t, m, self.timeout))).await;
        let errors: Vec<String> =
            answers.into_iter().filter_map(|a| a.err().map(|e| e.to_string())).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Refusal::Unavailable(format!("invalidations not delivered: {}", errors.join("; "))))
        }
    }
}

fn unreachable(dc: &str, why: String) -> Refusal {
    Refusal::Unavailable(format!("datacenter {dc} did not answer through its connectors: {why}"))
}

/// Answers the nodes of this datacenter: pings (a connector holds no data, it only says
/// it is there) and home-keyspace requests to relay.
pub struct LocalService {
    pub node_id: u64,
    pub home: Arc<HomeRelay>,
}

impl Handler for LocalService {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                Kind::Ping => {
                    answer(&body, |_: opencluster_node::peer::messages::Ping| async { Ok(self.node_id) })
                        .await
                }
                Kind::HomeCommand | Kind::HomeRead | Kind::HomeInvalidate => {
                    self.home.from_node(kind, body).await
                }
                other => refused(Refusal::UnknownKind(other as u8)),
            }
        })
    }
}
