//! Chain verification: what makes a certificate chain acceptable in a cluster, used by the
//! TLS handshake (both directions), by `opencluster-pki verify`, and at boot for a leaf
//! given by hand.
//!
//! On top of webpki's checks (signatures up to the root, validity now, CA flags, path
//! length, key usages) one rule is OpenCluster's own, the **issuer binding**: the leaf must
//! have been issued by a datacenter intermediate, signed by the root, whose URI SAN names
//! the same cluster and datacenter as the leaf's. Without it, anyone holding one
//! datacenter's intermediate key (which is baked into that datacenter's images) could mint
//! identities for every other datacenter.
//!
//! Server names are not checked: processes are authenticated by the identity in their URI
//! SAN (checked by [`crate::peer::Policy`] after the handshake), not by the address they
//! were dialled at, which NAT and container restarts change.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore};
use rustls::{SignatureScheme, client::WebPkiServerVerifier, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::cert::{self, CertInfo};
use crate::identity::Identity;

/// The crypto provider every config of this crate uses: ring, whatever the process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a chain is not acceptable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// The chain is empty.
    #[error("no certificate presented")]
    Empty,
    /// The root cannot be used as a trust anchor.
    #[error("unusable root certificate: {0}")]
    Root(String),
    /// webpki refused the chain (unknown issuer, expired, wrong usage, …).
    #[error("certificate rejected: {0}")]
    Chain(String),
    /// The leaf has no usable identity.
    #[error("certificate has no valid identity: {0}")]
    Identity(String),
    /// The leaf's datacenter is not the one its issuer was made for.
    #[error("{0}")]
    Binding(String),
}

/// Checks a chain (leaf first, then intermediates) against `root` at `now`, for both TLS
/// server and client use, with the issuer binding; returns the leaf's identity.
pub fn verify_chain(
    root: &CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<Identity, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::Empty)?;
    let roots = root_store(root).map_err(VerifyError::Root)?;
    let now = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| VerifyError::Root(e.to_string()))?;
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| VerifyError::Root(e.to_string()))?;
    let name = ServerName::try_from("opencluster.invalid").map_err(|e| VerifyError::Root(e.to_string()))?;
    match server.verify_server_cert(leaf, intermediates, &name, &[], now) {
        Ok(_) => {}
        Err(e) if is_name_mismatch(&e) => {}
        Err(e) => return Err(VerifyError::Chain(describe(&e))),
    }
    client.verify_client_cert(leaf, intermediates, now).map_err(|e| VerifyError::Chain(describe(&e)))?;
    check_issuer_binding(root, leaf, intermediates)
}

/// The issuer binding (see the module doc). Returns the leaf's identity.
pub fn check_issuer_binding(
    root: &CertificateDer<'_>,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<Identity, VerifyError> {
    let info = CertInfo::parse(leaf).map_err(|e| VerifyError::Identity(e.to_string()))?;
    let id = info.leaf_identity().map_err(|e| VerifyError::Identity(e.to_string()))?;
    let root_cluster = CertInfo::parse(root).ok().and_then(|r| r.root_cluster());
    if root_cluster.as_deref() != Some(id.cluster()) {
        return Err(VerifyError::Binding(format!(
            "certificate {id} claims cluster {:?} but the root is for cluster {:?}",
            id.cluster(),
            root_cluster.unwrap_or_default()
        )));
    }
    let mut issuers = intermediates
        .iter()
        .filter(|c| cert::signed_by(leaf, c) && cert::signed_by(c, root))
        .filter_map(|c| CertInfo::parse(c).ok())
        .filter(|c| c.is_ca)
        .peekable();
    if issuers.peek().is_none() {
        return Err(VerifyError::Binding(format!(
            "certificate {id} was not issued by a datacenter CA of the root (the chain must be leaf + dc.crt)"
        )));
    }
    let mut seen = Vec::new();
    for issuer in issuers {
        match issuer.datacenter() {
            Some((c, d)) if c == id.cluster() && d == id.datacenter() => return Ok(id),
            Some((c, d)) => seen.push(format!("{c}/{d}")),
            None => seen.push(issuer.subject),
        }
    }
    Err(VerifyError::Binding(format!(
        "certificate {id} claims datacenter {:?} but was issued by the CA of {}",
        id.datacenter(),
        seen.join(", ")
    )))
}

/// One line for a rustls error, without the enum noise where rustls has better text.
pub fn describe(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "unknown issuer: the certificate does not chain to this cluster's root CA".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::Expired) => "certificate expired".to_string(),
        rustls::Error::InvalidCertificate(CertificateError::NotValidYet) => {
            "certificate not valid yet".to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "bad signature: the certificate does not chain to this cluster's root CA (a CA of the same \
             name but another key signed it)"
                .to_string()
        }
        rustls::Error::InvalidCertificate(CertificateError::Other(o)) => match o.to_string().as_str() {
            "CaUsedAsEndEntity" => "a CA certificate was presented where a leaf is expected".to_string(),
            "UnknownIssuer" => {
                "unknown issuer: the certificate does not chain to this cluster's root CA".to_string()
            }
            other => other.to_string(),
        },
        rustls::Error::InvalidCertificate(c) => c.to_string(),
        e => e.to_string(),
    }
}

fn is_name_mismatch(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

fn binding_error(e: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(e.to_string())))))
}

/// A refusal whose `Debug` is its message: rustls shows `CertificateError::Other` with
/// `Debug`, and this text reaches logs and the peer's close reason.
#[derive(thiserror::Error)]
#[error("{0}")]
struct Refusal(String);

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A root store holding only `root`.
pub fn root_store(root: &CertificateDer<'_>) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone().into_owned()).map_err(|e| e.to_string())?;
    Ok(Arc::new(roots))
}

/// Verifies client certificates: webpki against the cluster root, then the issuer binding.
#[derive(Debug)]
pub struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    root: CertificateDer<'static>,
}

impl ClusterClientVerifier {
    /// A verifier trusting `root` only.
    pub fn new(root: &CertificateDer<'static>) -> Result<Self, String> {
        let inner = WebPkiClientVerifier::builder_with_provider(root_store(root)?, provider())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ClusterClientVerifier { inner, root: root.clone() })
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner.verify_client_cert(end_entity, intermediates, now)?;
        check_issuer_binding(&self.root, end_entity, intermediates).map_err(binding_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Verifies server certificates: webpki against the cluster root without the name check,
/// then the issuer binding.
#[derive(Debug)]
pub struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    root: CertificateDer<'static>,
}

impl ClusterServerVerifier {
    /// A verifier trusting `root` only.
    pub fn new(root: &CertificateDer<'static>) -> Result<Self, String> {
        let inner = WebPkiServerVerifier::builder_with_provider(root_store(root)?, provider())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(ClusterServerVerifier { inner, root: root.clone() })
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain: a name mismatch therefore means the
        // chain itself was accepted.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(_) => {}
            Err(e) if is_name_mismatch(&e) => {}
            Err(e) => return Err(e),
        }
        check_issuer_binding(&self.root, end_entity, intermediates).map_err(binding_error)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::{LeafRequest, RootCa, Validity};
    use crate::identity::Role;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    fn leaf_req(name: &str) -> LeafRequest {
        LeafRequest { role: Role::Node, name: name.into(), sans: vec![], validity: Validity::days(now(), 1) }
    }

    #[test]
    fn a_good_chain_verifies_and_names_its_identity() {
        let root = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let dc = root.create_datacenter("dc1", Validity::days(now(), 30)).unwrap();
        let leaf = dc.issue(&leaf_req("n1")).unwrap();
        let id = verify_chain(root.cert_der(), &leaf.chain, now()).unwrap();
        assert_eq!(id.uri(), "spiffe://acme/dc/dc1/node/n1");
    }

    #[test]
    fn bad_chains_say_why() {
        let root = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let other = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let dc = root.create_datacenter("dc1", Validity::days(now(), 30)).unwrap();
        let leaf = dc.issue(&leaf_req("n1")).unwrap();

        let e = verify_chain(other.cert_der(), &leaf.chain, now()).unwrap_err().to_string();
        assert!(e.contains("bad signature: the certificate does not chain to this cluster's root CA"), "{e}");
        let stranger = RootCa::create("zeta", Validity::days(now(), 30)).unwrap();
        let e = verify_chain(stranger.cert_der(), &leaf.chain, now()).unwrap_err().to_string();
        assert!(
            e.contains("unknown issuer: the certificate does not chain to this cluster's root CA"),
            "{e}"
        );
        let e = verify_chain(root.cert_der(), &leaf.chain[..1], now()).unwrap_err().to_string();
        assert!(e.contains("unknown issuer"), "{e}");
        let later = now() + Duration::from_secs(3 * 24 * 3600);
        let e = verify_chain(root.cert_der(), &leaf.chain, later).unwrap_err().to_string();
        assert!(e.contains("certificate expired"), "{e}");
        let e = verify_chain(root.cert_der(), &[], now()).unwrap_err().to_string();
        assert_eq!(e, "no certificate presented");
    }

    #[test]
    fn an_intermediate_cannot_mint_identities_for_another_datacenter() {
        let root = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let dc1 = root.create_datacenter("dc1", Validity::days(now(), 30)).unwrap();
        let dc2 = root.create_datacenter("dc2", Validity::days(now(), 30)).unwrap();
        // A forged leaf claiming dc2, signed with dc1's key: rcgen's issuer is built from
        // dc1's certificate and key, the URI says dc2.
        let forged = forge_leaf(&dc1, "spiffe://acme/dc/dc2/node/evil");
        let chain = vec![forged.clone(), dc1.cert_der().clone(), dc2.cert_der().clone()];
        let e = verify_chain(root.cert_der(), &chain, now()).unwrap_err().to_string();
        assert!(e.contains("claims datacenter \"dc2\" but was issued by the CA of acme/dc1"), "{e}");

        // A fake intermediate with dc1's key that says dc2 does not help: the root never signed it.
        let fake = fake_intermediate(&dc1, "spiffe://acme/dc/dc2");
        let chain = vec![forged, fake, dc1.cert_der().clone()];
        let e = verify_chain(root.cert_der(), &chain, now()).unwrap_err().to_string();
        assert!(e.contains("claims datacenter \"dc2\""), "{e}");
    }

    fn forge_leaf(dc: &crate::ca::DatacenterCa, uri: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::from_pem(&dc.key_pem()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(dc.cert_der(), key).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["evil".to_string()]).unwrap();
        p.subject_alt_names.push(rcgen::SanType::URI(uri.to_string().try_into().unwrap()));
        p.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = (now() - Duration::from_secs(60)).into();
        p.not_after = (now() + Duration::from_secs(3600)).into();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        p.signed_by(&leaf_key, &issuer).unwrap().der().clone()
    }

    fn fake_intermediate(dc: &crate::ca::DatacenterCa, uri: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::from_pem(&dc.key_pem()).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.subject_alt_names.push(rcgen::SanType::URI(uri.to_string().try_into().unwrap()));
        p.self_signed(&key).unwrap().der().clone()
    }
}
