//! What connectors of two datacenters say to each other over the WAN endpoint, and how a
//! connector answers.
//!
//! The WAN uses the same transport as the peers inside a datacenter (QUIC, mutual TLS,
//! the versioned envelope of `peer::messages`), on its own endpoint whose policy accepts
//! only connectors of this cluster in another datacenter. There are two messages: [`Ship`],
//! records that originated in the sender's datacenter, answered once they are applied at a
//! write quorum of their owners here, and the backstop's [`Compare`] of a partition.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use opencluster_node::cluster::messages::WireRecord;
use opencluster_node::peer::messages::{Kind, Message, Refusal};
use opencluster_node::peer::{BoxFuture, Handler, answer, refused};
use serde::{Deserialize, Serialize};

use crate::apply::Applier;
use crate::backstop::{Compare, Compared, PARTITIONS_PER_EXCHANGE, answer_compare};
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

/// Whether a batch may be applied: it comes from the datacenter its sender's certificate
/// names, and holds only records that originated there (a datacenter ships only its own
/// changes: anything else would be a loop or an impersonation).
pub fn check_batch(peer_dc: &str, m: &Ship) -> Result<(), Refusal> {
    if peer_dc != m.from {
        return Err(Refusal::Malformed(format!(
            "a connector of datacenter {peer_dc:?} cannot ship as {:?}",
            m.from
        )));
    }
    for (key, record) in &m.records {
        let decoded = record.decode().map_err(|e| Refusal::Malformed(format!("key {key:?}: {e}")))?;
        if *decoded.origin.datacenter != *m.from {
            return Err(Refusal::Malformed(format!(
                "record of key {key:?} originated in {:?}, not in the sender {:?}",
                decoded.origin.datacenter, m.from
            )));
        }
    }
    Ok(())
}

/// Answers the other datacenters' connectors.
pub struct WanService {
    pub datacenter: String,
    pub applier: Arc<Applier>,
    /// The configured remotes, by datacenter: batches from others are refused.
    pub links: HashMap<String, Arc<Link>>,
}

/// A [`WanService`] answering one connection, whose certificate names `peer_dc`.
struct FromPeer {
    service: Arc<WanService>,
    peer_dc: String,
}

impl WanService {
    async fn ship(&self, m: Ship, peer_dc: &str) -> Result<ShipAck, Refusal> {
        check_batch(peer_dc, &m)?;
        let link = self.links.get(&m.from).ok_or_else(|| {
            Refusal::Malformed(format!(
                "datacenter {:?} is not a peer of this connector (connector.peers)",
                m.from
            ))
        })?;
        let (count, bytes) = (m.records.len(), batch_bytes(&m.records));
        if let Err(e) = self.applier.apply(m.records).await {
            link.failed(format!("applying a batch from {}: {e}", m.from), false);
            return Err(Refusal::Unavailable(e.to_string()));
        }
        link.received(count, bytes);
        Ok(ShipAck { applied: count as u32 })
    }
}

impl WanService {
    async fn compare(&self, m: Compare, peer_dc: &str) -> Result<Vec<(u16, Compared)>, Refusal> {
        if peer_dc != m.from || !self.links.contains_key(&m.from) {
            return Err(Refusal::Malformed(format!(
                "a connector of datacenter {peer_dc:?} cannot compare as {:?} (connector.peers)",
                m.from
            )));
        }
        if m.partitions.len() > PARTITIONS_PER_EXCHANGE || m.partitions.iter().any(|(_, b)| b.len() > 256) {
            return Err(Refusal::Malformed(format!("a comparison of {} partitions", m.partitions.len())));
        }
        Ok(answer_compare(&self.applier, &m).await)
    }
}

impl Handler for WanService {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                // Batches are taken only from a connection whose certificate names their
                // datacenter (the transport asks `for_peer` first).
                Kind::Ship | Kind::Compare => {
                    refused(Refusal::Malformed("a batch or comparison needs a verified peer".into()))
                }
                Kind::Ping => {
                    answer(&body, |_: opencluster_node::peer::messages::Ping| async { Ok(0u64) }).await
                }
                other => refused(Refusal::UnknownKind(other as u8)),
            }
        })
    }
}

impl WanService {
    /// Shares this service with the handlers of each connection.
    pub fn shared(self) -> Arc<WanService> {
        Arc::new(self)
    }
}

/// The handler the WAN endpoint serves: every connection gets a [`FromPeer`].
pub struct WanHandler(pub Arc<WanService>);

impl Handler for WanHandler {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        self.0.handle(kind, body)
    }

    fn for_peer(&self, peer: &opencluster_pki::PeerIdentity) -> Option<Arc<dyn Handler>> {
        Some(Arc::new(FromPeer { service: self.0.clone(), peer_dc: peer.identity.datacenter().to_string() }))
    }
}

impl Handler for FromPeer {
    fn handle(&self, kind: Kind, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            match kind {
                Kind::Ship => answer(&body, |m: Ship| self.service.ship(m, &self.peer_dc)).await,
                Kind::Compare => answer(&body, |m: Compare| self.service.compare(m, &self.peer_dc)).await,
                other => self.service.handle(other, body).await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use opencluster_node::hlc::Hlc;
    use opencluster_node::record::{Origin, Record};

    fn record(dc: &str) -> (Bytes, WireRecord) {
        let r = Record {
            value: Some(Bytes::from_static(b"v")),
            hlc: Hlc(7),
            origin: Origin { datacenter: dc.into(), node: 1 },
            expires_at_ms: None,
        };
        (Bytes::from_static(b"k"), WireRecord::new(&r))
    }

    #[test]
    fn a_batch_comes_from_its_certificate_s_datacenter_with_its_own_records_only() {
        let ok = Ship { from: "dc2".into(), records: vec![record("dc2")] };
        assert!(check_batch("dc2", &ok).is_ok());
        let e = check_batch("dc3", &ok).unwrap_err().to_string();
        assert!(e.contains("\"dc3\" cannot ship as \"dc2\""), "{e}");
        let forwarded = Ship { from: "dc2".into(), records: vec![record("dc2"), record("dc1")] };
        let e = check_batch("dc2", &forwarded).unwrap_err().to_string();
        assert!(e.contains("originated in \"dc1\""), "{e}");
    }
}
