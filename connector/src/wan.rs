//! What connectors of two datacenters say to each other over the WAN endpoint, and how a
//! connector answers.
//!
//! The WAN uses the same transport as the peers inside a datacenter (QUIC, mutual TLS,
//! the versioned envelope of `peer::messages`), on its own endpoint whose policy accepts
//! only connectors of this cluster in another datacenter. There is one message: [`Ship`],
//! records that originated in the sender's datacenter, answered once they are applied at a
//! write quorum of their owners here.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use opencluster_node::cluster::messages::WireRecord;
use opencluster_node::peer::messages::{Kind, Message, Refusal};
use opencluster_node::peer::{BoxFuture, Handler, answer, refused};
use serde::{Deserialize, Serialize};

use crate::apply::Applier;
use crate::link::Link;

/// Records of datacenter `from` to apply here, with their original HLC and origin.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ship {
    pub from: String,
    pub records: Vec<(Bytes, WireRecord)>,
}

/// How many records of a [`Ship`] were applied.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShipAck {
    pub applied: u32,
}

impl Message for Ship {
    const KIND: Kind = Kind::Ship;
    type Response = ShipAck;
}

/// The bytes of keys and values in a batch, as counted for bytes sent and received.
pub fn batch_bytes(records: &[(Bytes, WireRecord)]) -> usize {
    records.iter().map(|(k, r)| k.len() + r.0.len()).sum()
}

/// Answers the other datacenters' connectors.
pub struct WanService {
    pub datacenter: String,
    pub applier: Arc<Applier>,
    /// The configured remotes, by datacenter: batches from others are refused.
    pub links: HashMap<String, Arc<Link>>,
}

impl WanService {
    async fn ship(&self, m: Ship) -> Result<ShipAck, Refusal> {
        let link = self.links.get(&m.from).ok_or_else(|| {
            Refusal::Malformed(format!(
                "datacenter {:?} is not a peer of this connector (connector.peers)",
                m.from
            ))
        })?;
        // A datacenter ships only its own changes: anything else would be a loop.
        for (key, record) in &m.records {
            let decoded = record.decode().map_err(|e| Refusal::Malformed(format!("key {key:?}: {e}")))?;
            if *decoded.origin.datacenter != *m.from {
                return Err(Refusal::Malformed(format!(
                    "record of key {key:?} originated in {:?}, not in the sender {:?}",
                    decoded.origin.datacenter, m.from
                )));
            }
        }
        let (count, bytes) = (m.records.len(), batch_bytes(&m.records));
        if let Err(e) = self.applier.apply(m.records).await {
            link.failed(format!("applying a batch from {}: {e}", m.from), false);
            return Err(Refusal::Unavailable(e.to_string()));
        }
        link.received(count, bytes);
        Ok(ShipAck { applied: count as u32 })
    }
}

impl Handler for WanService {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                Kind::Ship => answer(&body, |m: Ship| self.ship(m)).await,
                Kind::Ping => {
                    answer(&body, |_: opencluster_node::peer::messages::Ping| async { Ok(0u64) }).await
                }
                other => refused(Refusal::UnknownKind(other as u8)),
            }
        })
    }
}

/// Answers the nodes of this datacenter: a connector holds no data, it only says it is there.
pub struct LocalService {
    pub node_id: u64,
}

impl Handler for LocalService {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                Kind::Ping => {
                    answer(&body, |_: opencluster_node::peer::messages::Ping| async { Ok(self.node_id) })
                        .await
                }
                other => refused(Refusal::UnknownKind(other as u8)),
            }
        })
    }
}
