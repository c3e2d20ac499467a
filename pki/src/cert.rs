//! Reading certificates: PEM to DER, and the facts this crate needs from a DER
//! certificate (names, validity, CA flag, usages, public key, fingerprint).
//!
//! Every other module asks questions of a [`CertInfo`] instead of walking x509-parser's
//! structures itself, so the parsing rules live in one place.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{self, Identity, IdentityError};

/// The SHA-256 digest of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    /// `SHA256:AB:CD:…`, the form `openssl x509 -fingerprint -sha256` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A certificate that could not be read; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

/// The facts about one certificate that the PKI and TLS code rely on.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// Issuer distinguished name, RFC 4514 style.
    pub issuer: String,
    /// Serial number, colon-separated hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Basic constraints say CA.
    pub is_ca: bool,
    /// Path length constraint of a CA, if any.
    pub path_len: Option<u32>,
    /// The key usage allows signing certificates.
    pub key_cert_sign: bool,
    /// Extended key usage includes TLS server authentication.
    pub server_auth: bool,
    /// Extended key usage includes TLS client authentication.
    pub client_auth: bool,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<IpAddr>,
    /// The DER SubjectPublicKeyInfo, to match a private key against.
    pub public_key_info: Vec<u8>,
    /// SHA-256 of the whole certificate.
    pub fingerprint: Fingerprint,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let (rest, x509) = X509Certificate::from_der(der)
            .map_err(|e| CertError(format!("not a valid X.509 certificate ({e})")))?;
        if !rest.is_empty() {
            return Err(CertError("trailing bytes after the certificate".to_string()));
        }
        let bad_ext = |e| CertError(format!("malformed certificate extension ({e})"));
        let constraints = x509.basic_constraints().map_err(bad_ext)?.map(|c| c.value.clone());
        let key_cert_sign = x509.key_usage().map_err(bad_ext)?.is_some_and(|k| k.value.key_cert_sign());
        let (server_auth, client_auth) = match x509.extended_key_usage().map_err(bad_ext)? {
            Some(eku) => (eku.value.server_auth || eku.value.any, eku.value.client_auth || eku.value.any),
            None => (false, false),
        };
        let (mut uris, mut dns_names, mut ips) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(san) = x509.subject_alternative_name().map_err(bad_ext)? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            ips.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = x509.validity();
        Ok(CertInfo {
            subject: x509.subject().to_string(),
            issuer: x509.issuer().to_string(),
            serial: x509.raw_serial_as_string(),
            not_before: validity.not_before.to_datetime().into(),
            not_after: validity.not_after.to_datetime().into(),
            is_ca: constraints.as_ref().is_some_and(|c| c.ca),
            path_len: constraints.and_then(|c| c.path_len_constraint),
            key_cert_sign,
            server_auth,
            client_auth,
            uris,
            dns_names,
            ips,
            public_key_info: x509.public_key().raw.to_vec(),
            fingerprint: Fingerprint::of(der),
        })
    }

    /// The process identity of a leaf certificate: its one `spiffe://` URI SAN.
    pub fn leaf_identity(&self) -> Result<Identity, IdentityError> {
        let mut spiffe = self.uris.iter().filter(|u| u.starts_with("spiffe://"));
        match (spiffe.next(), spiffe.next()) {
            (Some(uri), None) => Identity::parse_uri(uri),
            (None, _) => Err(IdentityError::InvalidUri {
                uri: String::new(),
                reason: "the certificate has no spiffe:// URI SAN".to_string(),
            }),
            (Some(uri), Some(_)) => Err(IdentityError::InvalidUri {
                uri: uri.clone(),
                reason: "the certificate has more than one spiffe:// URI SAN".to_string(),
            }),
        }
    }

    /// The cluster named by a root CA's `spiffe://<cluster>` URI SAN.
    pub fn root_cluster(&self) -> Option<String> {
        self.uris.iter().find_map(|u| identity::parse_cluster_uri(u))
    }

    /// The (cluster, datacenter) named by an intermediate's `spiffe://<cluster>/dc/<dc>` URI SAN.
    pub fn datacenter(&self) -> Option<(String, String)> {
        self.uris.iter().find_map(|u| identity::parse_datacenter_uri(u))
    }

    /// Whether the certificate is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// Every subject alternative name as `URI:…`, `DNS:…`, `IP:…`.
    pub fn sans(&self) -> Vec<String> {
        let uris = self.uris.iter().map(|u| format!("URI:{u}"));
        let dns = self.dns_names.iter().map(|d| format!("DNS:{d}"));
        let ips = self.ips.iter().map(|i| format!("IP:{i}"));
        uris.chain(dns).chain(ips).collect()
    }
}

/// Whether `issuer`'s key signed `cert` (both DER). Used to find which certificate of a
/// presented chain issued the leaf.
pub fn signed_by(cert: &[u8], issuer: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) =
        (X509Certificate::from_der(cert), X509Certificate::from_der(issuer))
    else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// All certificates in a PEM text, in order. Text outside PEM sections is ignored; other
/// section types (keys) are skipped.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError(format!("invalid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(CertError("no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_string()));
    }
    Ok(certs)
}

/// PEM text for DER certificates, one after the other.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| pem_encode("CERTIFICATE", c.as_ref())).collect()
}

/// One PEM section with 64-column base64 lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
