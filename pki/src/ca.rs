//! The certificate authorities: a cluster's root CA, the intermediate CA of each
//! datacenter, and the leaf certificates an intermediate issues to processes.
//!
//! The root signs only intermediates (and stays offline); an intermediate (path length 0)
//! signs only leaves. All keys are ECDSA P-256. CA certificates carry a URI SAN naming what
//! they cover (`spiffe://<cluster>`, `spiffe://<cluster>/dc/<dc>`), which is where a tls dir
//! reads its cluster and datacenter from, and what peers use to check that a leaf's
//! datacenter is the one its issuer was made for.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::cert::{self, CertInfo};
use crate::identity::{self, Identity, IdentityError, Role};

/// Default lifetime of a root CA: 10 years.
pub const ROOT_VALIDITY_DAYS: u32 = 3650;
/// Default lifetime of a datacenter intermediate: 5 years.
pub const DATACENTER_VALIDITY_DAYS: u32 = 1825;
/// Default lifetime of a leaf issued by hand with `opencluster-pki issue`: 90 days.
pub const ISSUED_LEAF_VALIDITY_DAYS: u32 = 90;
/// Default lifetime of a leaf a node issues itself at boot: 7 days (it renews it).
pub const SELF_ISSUED_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Certificates start this long before "now", so peers whose clocks are a little behind
/// accept them at once.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Why a CA or leaf could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A cluster, datacenter or process name was refused.
    #[error(transparent)]
    Name(#[from] IdentityError),
    /// The certificate text could not be read.
    #[error(transparent)]
    Cert(#[from] cert::CertError),
    /// The private key text could not be read.
    #[error("not a valid PKCS#8 private key in PEM ({0})")]
    Key(String),
    /// The certificate is not a CA certificate.
    #[error("certificate {subject:?} is not a CA certificate (its basic constraints lack the CA flag)")]
    NotCa {
        /// Subject of the refused certificate.
        subject: String,
    },
    /// The CA certificate lacks the URI SAN naming its cluster/datacenter.
    #[error("certificate {subject:?} is not an OpenCluster {kind} CA (no {expected} URI SAN)")]
    NotOurs {
        /// Subject of the refused certificate.
        subject: String,
        /// `root` or `datacenter`.
        kind: &'static str,
        /// The URI shape that was looked for.
        expected: &'static str,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate {subject:?}")]
    KeyMismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// A validity period that ends before it starts, or ends in the past of its issuer.
    #[error("invalid validity: {0}")]
    Validity(String),
    /// A SAN that is neither an IP address nor a DNS name.
    #[error("invalid SAN {san:?}: expected an IP address or a DNS name")]
    BadSan {
        /// The refused SAN.
        san: String,
    },
    /// rcgen refused to build the certificate.
    #[error("could not create the certificate: {0}")]
    Generate(rcgen::Error),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Generate(e)
    }
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// From `now` (less the clock-skew allowance) for `lifetime`.
    pub fn starting(now: SystemTime, lifetime: Duration) -> Self {
        Validity { not_before: now - CLOCK_SKEW_ALLOWANCE, not_after: now + lifetime }
    }

    /// From `now` (less the clock-skew allowance) for `days` days.
    pub fn days(now: SystemTime, days: u32) -> Self {
        Self::starting(now, DAY * days)
    }

    fn check(&self) -> Result<(), CaError> {
        if self.not_after <= self.not_before {
            return Err(CaError::Validity("it ends before it starts".to_string()));
        }
        Ok(())
    }
}

/// A cluster's root CA with its private key. Only `init` and `datacenter` need it.
pub struct RootCa {
    cert: CertificateDer<'static>,
    info: CertInfo,
    key: KeyPair,
    cluster: String,
}

impl RootCa {
    /// Creates a new self-signed root for `cluster`.
    pub fn create(cluster: &str, validity: Validity) -> Result<Self, CaError> {
        identity::validate_label("cluster", cluster)?;
        validity.check()?;
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            format!("OpenCluster root CA {cluster}"),
            cluster,
            identity::cluster_uri(cluster),
            validity,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?.der().clone();
        Self::from_der(cert, key)
    }

    /// Loads a root from its PEM certificate and PKCS#8 PEM key, checking that it is a CA,
    /// names its cluster, and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = first_cert(cert_pem)?;
        Self::from_der(cert, parse_key(key_pem)?)
    }

    fn from_der(cert: CertificateDer<'static>, key: KeyPair) -> Result<Self, CaError> {
        let info = check_ca(&cert, &key)?;
        let cluster = info.root_cluster().ok_or_else(|| CaError::NotOurs {
            subject: info.subject.clone(),
            kind: "root",
            expected: "spiffe://<cluster>",
        })?;
        Ok(RootCa { cert, info, key, cluster })
    }

    /// Creates the intermediate CA of datacenter `datacenter`, signed by this root. Its
    /// validity is cut to the root's.
    pub fn create_datacenter(&self, datacenter: &str, validity: Validity) -> Result<DatacenterCa, CaError> {
        identity::validate_label("datacenter", datacenter)?;
        let validity = clamp(validity, &self.info)?;
        let key = KeyPair::generate()?;
        let mut params = ca_params(
            format!("OpenCluster {} datacenter {datacenter} CA", self.cluster),
            &self.cluster,
            identity::datacenter_uri(&self.cluster, datacenter),
            validity,
        )?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let cert = params.signed_by(&key, &issuer)?.der().clone();
        DatacenterCa::from_der(cert, key)
    }

    /// The cluster this root was made for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> String {
        cert::certs_to_pem(std::slice::from_ref(&self.cert))
    }

    /// The private key in PKCS#8 PEM. Secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The parsed certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa").field("cluster", &self.cluster).field("subject", &self.info.subject).finish()
    }
}

impl std::fmt::Debug for DatacenterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatacenterCa")
            .field("cluster", &self.cluster)
            .field("datacenter", &self.datacenter)
            .field("subject", &self.info.subject)
            .finish()
    }
}

/// A datacenter's intermediate CA with its private key: what a node needs to issue its own
/// leaf certificates.
pub struct DatacenterCa {
    cert: CertificateDer<'static>,
    info: CertInfo,
    key: KeyPair,
    cluster: String,
    datacenter: String,
}

impl DatacenterCa {
    /// Loads an intermediate from its PEM certificate and PKCS#8 PEM key, checking that it
    /// is a CA, names its cluster and datacenter, and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let cert = first_cert(cert_pem)?;
        Self::from_der(cert, parse_key(key_pem)?)
    }

    fn from_der(cert: CertificateDer<'static>, key: KeyPair) -> Result<Self, CaError> {
        let info = check_ca(&cert, &key)?;
        let (cluster, datacenter) = info.datacenter().ok_or_else(|| CaError::NotOurs {
            subject: info.subject.clone(),
            kind: "datacenter",
            expected: "spiffe://<cluster>/dc/<datacenter>",
        })?;
        Ok(DatacenterCa { cert, info, key, cluster, datacenter })
    }

    /// Issues a leaf certificate for `request` with a fresh key. The URI SAN comes from this
    /// CA's cluster and datacenter and the request's role and name; the name is also a DNS
    /// SAN. The validity is cut to the intermediate's.
    pub fn issue(&self, request: &LeafRequest) -> Result<IssuedLeaf, CaError> {
        let identity = Identity::new(&self.cluster, &self.datacenter, request.role, &request.name)?;
        let validity = clamp(request.validity, &self.info)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, request.name.as_str());
        params.distinguished_name.push(DnType::OrganizationName, self.cluster.as_str());
        params.distinguished_name.push(DnType::OrganizationalUnitName, self.datacenter.as_str());
        params.subject_alt_names.push(SanType::URI(identity.uri().try_into()?));
        params.subject_alt_names.push(SanType::DnsName(request.name.clone().try_into()?));
        for san in &request.sans {
            let san = parse_san(san)?;
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);

        let key = KeyPair::generate()?;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let leaf = params.signed_by(&key, &issuer)?.der().clone();
        let info = CertInfo::parse(&leaf)?;
        Ok(IssuedLeaf {
            identity,
            chain: vec![leaf, self.cert.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            info,
        })
    }

    /// The cluster this intermediate belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The datacenter this intermediate was made for.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The certificate in DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate in PEM.
    pub fn cert_pem(&self) -> String {
        cert::certs_to_pem(std::slice::from_ref(&self.cert))
    }

    /// The private key in PKCS#8 PEM. Secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The parsed certificate.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

/// What a leaf certificate should say.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// The role in the URI SAN.
    pub role: Role,
    /// The process name in the URI SAN; also a DNS SAN.
    pub name: String,
    /// More SANs: IP addresses or DNS names.
    pub sans: Vec<String>,
    /// When the certificate is valid.
    pub validity: Validity,
}

/// A freshly issued leaf: its chain (leaf, intermediate) and private key.
#[derive(Debug)]
pub struct IssuedLeaf {
    /// The identity in the URI SAN.
    pub identity: Identity,
    /// Leaf first, then the intermediate that issued it.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key. Secret.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The parsed leaf.
    pub info: CertInfo,
}

impl IssuedLeaf {
    /// The chain in PEM: the content of `node.crt`.
    pub fn chain_pem(&self) -> String {
        cert::certs_to_pem(&self.chain)
    }

    /// The private key in PKCS#8 PEM: the content of `node.key`. Secret.
    pub fn key_pem(&self) -> String {
        cert::pem_encode("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Parses a PKCS#8 PEM private key (as written by this crate).
pub(crate) fn parse_key(key_pem: &str) -> Result<KeyPair, CaError> {
    KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))
}

/// Whether `key` is the private key of the certificate described by `info`.
pub(crate) fn key_matches(info: &CertInfo, key: &KeyPair) -> bool {
    key.subject_public_key_info() == info.public_key_info
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    Ok(cert::certs_from_pem(pem.as_bytes())?.swap_remove(0))
}

fn check_ca(cert: &CertificateDer<'_>, key: &KeyPair) -> Result<CertInfo, CaError> {
    let info = CertInfo::parse(cert)?;
    if !info.is_ca {
        return Err(CaError::NotCa { subject: info.subject });
    }
    if !key_matches(&info, key) {
        return Err(CaError::KeyMismatch { subject: info.subject });
    }
    Ok(info)
}

fn ca_params(
    common_name: String,
    cluster: &str,
    uri: String,
    validity: Validity,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, cluster);
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, validity);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = OffsetDateTime::from(validity.not_before);
    params.not_after = OffsetDateTime::from(validity.not_after);
}

/// Cuts a validity to the issuer's: a certificate outliving its issuer would be refused
/// by some verifiers the day the issuer expires anyway.
fn clamp(validity: Validity, issuer: &CertInfo) -> Result<Validity, CaError> {
    validity.check()?;
    let clamped = Validity {
        not_before: validity.not_before.max(issuer.not_before),
        not_after: validity.not_after.min(issuer.not_after),
    };
    if clamped.not_after <= clamped.not_before {
        return Err(CaError::Validity(format!(
            "the issuing CA {:?} is not valid during the requested period (it is valid from {} to {})",
            issuer.subject,
            crate::format_time(issuer.not_before),
            crate::format_time(issuer.not_after)
        )));
    }
    Ok(clamped)
}

fn parse_san(san: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = san.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !san.is_empty()
        && san.len() <= 253
        && san.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !valid_dns {
        return Err(CaError::BadSan { san: san.to_string() });
    }
    Ok(SanType::DnsName(san.to_ascii_lowercase().try_into()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn root_intermediate_and_leaf_have_the_right_shape() {
        let root = RootCa::create("acme", Validity::days(now(), ROOT_VALIDITY_DAYS)).unwrap();
        assert!(root.info().is_ca && root.info().key_cert_sign && root.info().path_len.is_none());
        assert_eq!(root.cluster(), "acme");

        let dc = root.create_datacenter("dc1", Validity::days(now(), DATACENTER_VALIDITY_DAYS)).unwrap();
        assert!(dc.info().is_ca && dc.info().key_cert_sign);
        assert_eq!(dc.info().path_len, Some(0));
        assert_eq!((dc.cluster(), dc.datacenter()), ("acme", "dc1"));
        assert!(cert::signed_by(dc.cert_der(), root.cert_der()));

        let leaf = dc
            .issue(&LeafRequest {
                role: Role::Node,
                name: "n1".to_string(),
                sans: vec!["10.0.0.7".to_string(), "n1.internal".to_string(), "::1".to_string()],
                validity: Validity::days(now(), 7),
            })
            .unwrap();
        let info = &leaf.info;
        assert!(!info.is_ca && info.server_auth && info.client_auth && !info.key_cert_sign);
        assert_eq!(info.uris, vec!["spiffe://acme/dc/dc1/node/n1".to_string()]);
        assert_eq!(info.dns_names, vec!["n1".to_string(), "n1.internal".to_string()]);
        assert_eq!(info.ips.len(), 2);
        assert_eq!(info.leaf_identity().unwrap(), leaf.identity);
        assert_eq!(leaf.chain.len(), 2);
        assert!(cert::signed_by(&leaf.chain[0], dc.cert_der()));
        assert!(!cert::signed_by(&leaf.chain[0], root.cert_der()));
    }

    #[test]
    fn pem_round_trip_checks_ca_flag_and_key() {
        let root = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let again = RootCa::from_pem(&root.cert_pem(), &root.key_pem()).unwrap();
        assert_eq!(again.cert_der(), root.cert_der());

        let dc = root.create_datacenter("dc1", Validity::days(now(), 30)).unwrap();
        assert!(DatacenterCa::from_pem(&dc.cert_pem(), &dc.key_pem()).is_ok());
        let e = DatacenterCa::from_pem(&dc.cert_pem(), &root.key_pem()).unwrap_err();
        assert!(matches!(e, CaError::KeyMismatch { .. }), "{e}");
        let e = DatacenterCa::from_pem(&root.cert_pem(), &root.key_pem()).unwrap_err();
        assert!(e.to_string().contains("not an OpenCluster datacenter CA"), "{e}");

        let leaf = dc
            .issue(&LeafRequest {
                role: Role::Client,
                name: "app".to_string(),
                sans: vec![],
                validity: Validity::days(now(), 1),
            })
            .unwrap();
        let e = DatacenterCa::from_pem(&leaf.chain_pem(), &leaf.key_pem()).unwrap_err();
        assert!(e.to_string().contains("is not a CA certificate"), "{e}");
    }

    #[test]
    fn leaf_validity_is_cut_to_the_intermediate() {
        let root = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let dc = root.create_datacenter("dc1", Validity::days(now(), 3650)).unwrap();
        assert_eq!(dc.info().not_after, root.info().not_after);
        let past = now() - DAY * 400;
        let e = dc
            .issue(&LeafRequest {
                role: Role::Node,
                name: "n1".to_string(),
                sans: vec![],
                validity: Validity::days(past, 1),
            })
            .unwrap_err();
        assert!(e.to_string().contains("not valid during the requested period"), "{e}");
    }

    #[test]
    fn bad_sans_and_names_are_refused() {
        let root = RootCa::create("acme", Validity::days(now(), 30)).unwrap();
        let dc = root.create_datacenter("dc1", Validity::days(now(), 30)).unwrap();
        let req = |name: &str, san: &str| LeafRequest {
            role: Role::Node,
            name: name.to_string(),
            sans: vec![san.to_string()],
            validity: Validity::days(now(), 1),
        };
        let e = dc.issue(&req("n1", "not a name")).unwrap_err();
        assert!(e.to_string().contains("invalid SAN \"not a name\""), "{e}");
        let e = dc.issue(&req("N1", "10.0.0.1")).unwrap_err();
        assert!(e.to_string().contains("invalid process name \"N1\""), "{e}");
        assert!(RootCa::create("Acme", Validity::days(now(), 1)).is_err());
        assert!(root.create_datacenter("dc 1", Validity::days(now(), 1)).is_err());
    }
}
