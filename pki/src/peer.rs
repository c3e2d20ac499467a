//! Who is on the other end of a QUIC connection, and whether this process talks to them.
//!
//! The handshake (see [`crate::tls`]) has already proved that the peer holds a certificate
//! of this cluster's PKI; here its URI SAN is read and checked against a [`Policy`]:
//! nodes talk to the nodes and connectors of their own datacenter, connectors talk across
//! datacenters only to other connectors. [`authorize`] does both and, on refusal, closes
//! the connection with [`POLICY_REFUSED`] and the reason, so the other side learns why.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::cert::{CertInfo, Fingerprint};
use crate::identity::{Identity, Role};

/// QUIC application error code sent when a peer is refused by policy.
pub const POLICY_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(0x4f43_0001);

/// The verified identity of a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The identity in the peer's URI SAN.
    pub identity: Identity,
    /// SHA-256 of the peer's leaf certificate.
    pub fingerprint: Fingerprint,
    /// When the peer's certificate expires.
    pub not_after: SystemTime,
}

/// Which peers a listener or dialler accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// A node's rule: nodes and connectors of datacenter `dc` of `cluster`.
    NodeOrConnectorOfDatacenter {
        /// This process's cluster.
        cluster: String,
        /// This process's datacenter.
        dc: String,
    },
    /// A connector's WAN rule: connectors of `cluster` in a datacenter other than `own_dc`.
    ConnectorOfOtherDatacenter {
        /// This process's cluster.
        cluster: String,
        /// This connector's own datacenter, whose connectors are not accepted on the WAN side.
        own_dc: String,
    },
}

/// Why a peer was refused, or why the connection to it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No certificate, or no usable identity in it.
    #[error("peer has no usable identity: {0}")]
    NoIdentity(String),
    /// A certificate of another cluster.
    #[error("peer {peer} refused: wrong cluster {got:?}, expected {expected:?}")]
    WrongCluster {
        /// The peer's identity URI.
        peer: String,
        /// Its cluster.
        got: String,
        /// This process's cluster.
        expected: String,
    },
    /// A peer from another datacenter where only this one is allowed.
    #[error("peer {peer} refused: wrong datacenter {got:?}, only datacenter {expected:?} is accepted")]
    WrongDatacenter {
        /// The peer's identity URI.
        peer: String,
        /// Its datacenter.
        got: String,
        /// The accepted datacenter.
        expected: String,
    },
    /// A peer from this connector's own datacenter on the WAN side.
    #[error(
        "peer {peer} refused: wrong datacenter {datacenter:?}, it is this connector's own; \
         only connectors of other datacenters are accepted"
    )]
    SameDatacenter {
        /// The peer's identity URI.
        peer: String,
        /// The datacenter both share.
        datacenter: String,
    },
    /// A role the policy does not allow.
    #[error("peer {peer} refused: wrong role {got}, only {allowed} accepted")]
    WrongRole {
        /// The peer's identity URI.
        peer: String,
        /// Its role.
        got: Role,
        /// What is accepted, in words.
        allowed: &'static str,
    },
    /// The connection failed or was closed (handshake refused by either side, timeout, …).
    #[error("{0}")]
    Connection(String),
}

impl Policy {
    /// Whether `peer` may talk to this process.
    pub fn check(&self, peer: &Identity) -> Result<(), PeerError> {
        let cluster = match self {
            Policy::NodeOrConnectorOfDatacenter { cluster, .. }
            | Policy::ConnectorOfOtherDatacenter { cluster, .. } => cluster,
        };
        if peer.cluster() != cluster {
            return Err(PeerError::WrongCluster {
                peer: peer.uri(),
                got: peer.cluster().to_string(),
                expected: cluster.clone(),
            });
        }
        match self {
            Policy::NodeOrConnectorOfDatacenter { dc, .. } => {
                if !matches!(peer.role(), Role::Node | Role::Connector) {
                    return Err(PeerError::WrongRole {
                        peer: peer.uri(),
                        got: peer.role(),
                        allowed: "node or connector",
                    });
                }
                if peer.datacenter() != dc {
                    return Err(PeerError::WrongDatacenter {
                        peer: peer.uri(),
                        got: peer.datacenter().to_string(),
                        expected: dc.clone(),
                    });
                }
            }
            Policy::ConnectorOfOtherDatacenter { own_dc, .. } => {
                if peer.role() != Role::Connector {
                    return Err(PeerError::WrongRole {
                        peer: peer.uri(),
                        got: peer.role(),
                        allowed: "connector",
                    });
                }
                if peer.datacenter() == own_dc {
                    return Err(PeerError::SameDatacenter { peer: peer.uri(), datacenter: own_dc.clone() });
                }
            }
        }
        Ok(())
    }
}

/// The identity of the peer of an established connection, from its leaf certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, PeerError> {
    let certs = conn
        .peer_identity()
        .ok_or_else(|| PeerError::NoIdentity("the peer presented no certificate".to_string()))?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| PeerError::NoIdentity("the peer identity is not an X.509 chain".to_string()))?;
    identity_of_chain(&certs)
}

/// The identity in the first certificate of a chain.
pub fn identity_of_chain(chain: &[CertificateDer<'_>]) -> Result<PeerIdentity, PeerError> {
    let leaf = chain.first().ok_or_else(|| PeerError::NoIdentity("empty certificate chain".to_string()))?;
    let info = CertInfo::parse(leaf).map_err(|e| PeerError::NoIdentity(e.to_string()))?;
    let identity = info.leaf_identity().map_err(|e| PeerError::NoIdentity(e.to_string()))?;
    Ok(PeerIdentity { identity, fingerprint: info.fingerprint, not_after: info.not_after })
}

/// Reads the peer's identity and checks it against `policy`. On refusal the connection is
/// closed with [`POLICY_REFUSED`] and the reason, which the peer sees as
/// `refused by peer: …` through [`connection_error`].
pub fn authorize(conn: &quinn::Connection, policy: &Policy) -> Result<PeerIdentity, PeerError> {
    let result = peer_identity(conn).and_then(|peer| policy.check(&peer.identity).map(|()| peer));
    if let Err(e) = &result {
        let reason = e.to_string();
        // A CONNECTION_CLOSE must fit one packet: keep the reason well under 1200 bytes.
        let cut = reason.char_indices().map(|(i, _)| i).take_while(|i| *i <= 900).last().unwrap_or(0);
        let reason = if reason.len() > 900 { &reason[..cut] } else { &reason[..] };
        conn.close(POLICY_REFUSED, reason.as_bytes());
    }
    result
}

/// One clear line for a failed connection or handshake: the TLS reason when a certificate
/// was refused (expired, unknown issuer, …) by either side, the policy reason when the
/// peer refused us by policy.
pub fn connection_error(e: &quinn::ConnectionError) -> PeerError {
    use quinn::ConnectionError as E;
    let text = match e {
        E::TransportError(t) => format!("handshake failed here: {}", transport_reason(t)),
        E::ConnectionClosed(c) => {
            let reason = explain(&String::from_utf8_lossy(&c.reason));
            let code = c.error_code;
            if reason.is_empty() {
                format!("closed by peer: {code}")
            } else {
                format!("closed by peer: {reason} ({code})")
            }
        }
        E::ApplicationClosed(c) if c.error_code == POLICY_REFUSED => {
            format!("refused by peer: {}", String::from_utf8_lossy(&c.reason))
        }
        E::ApplicationClosed(c) => {
            format!("closed by peer (code {}): {}", c.error_code, String::from_utf8_lossy(&c.reason))
        }
        other => other.to_string(),
    };
    PeerError::Connection(text)
}

fn transport_reason(t: &quinn_proto::TransportError) -> String {
    if t.reason.is_empty() { t.code.to_string() } else { format!("{} ({})", explain(&t.reason), t.code) }
}

/// rustls names some certificate errors by their enum variant only; say what they mean.
fn explain(reason: &str) -> String {
    // `invalid peer certificate: Other(OtherError(<our refusal>))`: keep the refusal.
    let unwrapped;
    let reason = match (reason.find("Other(OtherError("), reason.rfind("))")) {
        (Some(start), Some(end)) if start + 17 <= end => {
            unwrapped = format!("{}{}{}", &reason[..start], &reason[start + 17..end], &reason[end + 2..]);
            unwrapped.as_str()
        }
        _ => reason,
    };
    let hint = if reason.contains("UnknownIssuer") {
        " - the certificate does not chain to this cluster's root CA"
    } else if reason.contains("BadSignature") {
        " - the certificate does not chain to this cluster's root CA (a CA of the same name but another key signed it)"
    } else if reason.contains("CaUsedAsEndEntity") {
        " - a CA certificate was presented instead of a leaf"
    } else {
        ""
    };
    format!("{reason}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: &str, d: &str, r: Role, n: &str) -> Identity {
        Identity::new(c, d, r, n).unwrap()
    }

    #[test]
    fn node_policy() {
        let p = Policy::NodeOrConnectorOfDatacenter { cluster: "acme".into(), dc: "dc1".into() };
        assert!(p.check(&id("acme", "dc1", Role::Node, "n2")).is_ok());
        assert!(p.check(&id("acme", "dc1", Role::Connector, "c1")).is_ok());
        let e = p.check(&id("acme", "dc2", Role::Node, "n2")).unwrap_err();
        assert!(matches!(e, PeerError::WrongDatacenter { .. }), "{e}");
        assert!(e.to_string().contains("wrong datacenter \"dc2\""), "{e}");
        let e = p.check(&id("other", "dc1", Role::Node, "n2")).unwrap_err();
        assert!(matches!(e, PeerError::WrongCluster { .. }), "{e}");
        let e = p.check(&id("acme", "dc1", Role::Client, "app")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "peer spiffe://acme/dc/dc1/client/app refused: wrong role client, only node or connector accepted"
        );
    }

    #[test]
    fn connector_policy() {
        let p = Policy::ConnectorOfOtherDatacenter { cluster: "acme".into(), own_dc: "dc1".into() };
        assert!(p.check(&id("acme", "dc2", Role::Connector, "c2")).is_ok());
        let e = p.check(&id("acme", "dc1", Role::Connector, "c1b")).unwrap_err();
        assert!(matches!(e, PeerError::SameDatacenter { .. }), "{e}");
        let e = p.check(&id("acme", "dc2", Role::Node, "n1")).unwrap_err();
        assert!(matches!(e, PeerError::WrongRole { got: Role::Node, .. }), "{e}");
        let e = p.check(&id("zeta", "dc2", Role::Connector, "c2")).unwrap_err();
        assert!(matches!(e, PeerError::WrongCluster { .. }), "{e}");
    }
}
