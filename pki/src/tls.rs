//! TLS configurations for QUIC between OpenCluster processes: mutual TLS 1.3, rustls with
//! the ring provider, peers must chain to the cluster root (see [`crate::verify`]).
//!
//! The process's own certificate is not baked into the configs: both sides resolve it
//! through a shared [`CertResolver`], so a renewed certificate is used by the next
//! handshake while established connections carry on untouched. Build the quinn configs
//! once, hand them to the endpoint, and call [`MutualTls::rotate`] (or let
//! [`crate::boot::Renewal`] do it) when a new leaf arrives.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{SignatureScheme, version::TLS13};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::IssuedLeaf;
use crate::cert::CertInfo;
use crate::identity::Identity;
use crate::verify::{self, ClusterClientVerifier, ClusterServerVerifier};

/// The ALPN protocol of OpenCluster's QUIC connections.
pub const ALPN: &[u8] = b"opencluster/1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The root cannot serve as trust anchor.
    #[error("unusable root certificate: {0}")]
    Root(String),
    /// The private key is unusable or does not match the certificate.
    #[error("unusable certificate or key for {identity}: {reason}")]
    Credentials {
        /// The identity in the certificate.
        identity: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration refused: {0}")]
    Quic(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// Where a process's leaf came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `node.crt`/`node.key` in the tls dir, issued by hand; not renewed automatically.
    Provided,
    /// Issued at boot (or renewal) from the datacenter intermediate.
    SelfIssued,
}

/// A process's own certificate chain and key, with what the rest of the process needs
/// to know about it.
#[derive(Debug)]
pub struct Credentials {
    /// The identity in the leaf's URI SAN.
    pub identity: Identity,
    /// Leaf first, then the intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key. Secret.
    pub key: PrivateKeyDer<'static>,
    /// The parsed leaf.
    pub info: CertInfo,
    /// Where the leaf came from.
    pub origin: Origin,
}

impl Credentials {
    /// Credentials from a freshly issued leaf.
    pub fn self_issued(leaf: IssuedLeaf) -> Self {
        let key = leaf.private_key();
        Credentials {
            identity: leaf.identity,
            chain: leaf.chain,
            key,
            info: leaf.info,
            origin: Origin::SelfIssued,
        }
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.info.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &verify::provider())
            .map(Arc::new)
            .map_err(|e| TlsError::Credentials { identity: self.identity.uri(), reason: e.to_string() })
    }
}

/// Hands the current certificate to rustls on every handshake, as server and as client.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertResolver {
    fn get(&self) -> Arc<CertifiedKey> {
        // A poisoned lock only means a writer panicked between two whole-Arc swaps: the
        // value inside is still a complete key.
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Mutual TLS for one process: the cluster root it trusts and its own, swappable,
/// certificate.
#[derive(Debug, Clone)]
pub struct MutualTls {
    root: CertificateDer<'static>,
    resolver: Arc<CertResolver>,
    identity: Arc<RwLock<Identity>>,
}

impl MutualTls {
    /// Trust `root`; present `credentials`.
    pub fn new(root: &CertificateDer<'static>, credentials: &Credentials) -> Result<Self, TlsError> {
        verify::root_store(root).map_err(TlsError::Root)?;
        let resolver = Arc::new(CertResolver { current: RwLock::new(credentials.certified_key()?) });
        Ok(MutualTls {
            root: root.clone(),
            resolver,
            identity: Arc::new(RwLock::new(credentials.identity.clone())),
        })
    }

    /// Presents `credentials` from the next handshake on, in every config built from this
    /// value. Established connections are not affected.
    pub fn rotate(&self, credentials: &Credentials) -> Result<(), TlsError> {
        self.resolver.set(credentials.certified_key()?);
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = credentials.identity.clone();
        Ok(())
    }

    /// The identity currently presented.
    pub fn identity(&self) -> Identity {
        self.identity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The certificate chain currently presented.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.resolver.get().cert.clone()
    }

    /// rustls server side: TLS 1.3, client certificates required and verified.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = ClusterClientVerifier::new(&self.root).map_err(TlsError::Root)?;
        let mut config = rustls::ServerConfig::builder_with_provider(verify::provider())
            .with_protocol_versions(&[&TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![ALPN.to_vec()];
        // No session resumption: a resumed session skips certificate verification, so a
        // peer whose certificate expired since could come back on an old ticket. Full
        // handshakes are cheap and connections between processes are long-lived.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    /// rustls client side: TLS 1.3, presents the current certificate.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = ClusterServerVerifier::new(&self.root).map_err(TlsError::Root)?;
        let mut config = rustls::ClientConfig::builder_with_provider(verify::provider())
            .with_protocol_versions(&[&TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![ALPN.to_vec()];
        // See the server side: every connection verifies the peer's certificate afresh.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// quinn server config (default transport settings; adjust `transport_config` as needed).
    pub fn quic_server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.rustls_server_config()?)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }

    /// quinn client config (default transport settings; adjust `transport_config` as needed).
    pub fn quic_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(self.rustls_client_config()?)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(quinn::ClientConfig::new(Arc::new(crypto)))
    }
}
