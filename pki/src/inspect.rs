//! `opencluster-pki inspect` and `verify`: what a certificate file says, and whether its
//! chain is good for a role under a root.

use std::path::Path;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use crate::cert::{self, CertInfo};
use crate::files::{self, FileError};
use crate::identity::{Identity, Role};
use crate::verify::{self, VerifyError};

/// A human-readable description of every certificate in `path`.
pub fn inspect_file(path: &Path, now: SystemTime) -> Result<String, FileError> {
    let certs = read_certs(path)?;
    let mut out = String::new();
    for (i, der) in certs.iter().enumerate() {
        let info = CertInfo::parse(der).map_err(|e| FileError::Invalid {
            path: path.to_path_buf(),
            reason: format!("certificate {} of {}: {e}", i + 1, certs.len()),
        })?;
        if certs.len() > 1 {
            out.push_str(&format!("certificate {} of {}\n", i + 1, certs.len()));
        }
        out.push_str(&describe(&info, now));
        out.push('\n');
    }
    Ok(out)
}

/// The description of one certificate.
pub fn describe(info: &CertInfo, now: SystemTime) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("  {k:<12} {v}\n"));
    line("subject", &info.subject);
    line("issuer", &info.issuer);
    line("serial", &info.serial);
    let kind = match (info.is_ca, info.path_len, info.root_cluster(), info.datacenter()) {
        (true, _, Some(_), _) => "root CA".to_string(),
        (true, _, _, Some(_)) => "datacenter intermediate CA".to_string(),
        (true, Some(n), _, _) => format!("CA (path length {n})"),
        (true, None, _, _) => "CA".to_string(),
        (false, ..) => "leaf".to_string(),
    };
    line("kind", &kind);
    let sans = info.sans();
    line("SANs", &if sans.is_empty() { "(none)".to_string() } else { sans.join(", ") });
    if let Some(cluster) = info.root_cluster() {
        line("cluster", &cluster);
    }
    if let Some((cluster, dc)) = info.datacenter() {
        line("cluster", &cluster);
        line("datacenter", &dc);
    }
    if !info.is_ca {
        match info.leaf_identity() {
            Ok(id) => {
                line("cluster", id.cluster());
                line("datacenter", id.datacenter());
                line("role", id.role().as_str());
                line("name", id.name());
            }
            Err(e) => line("identity", &format!("none ({e})")),
        }
        let usages = match (info.server_auth, info.client_auth) {
            (true, true) => "server auth, client auth",
            (true, false) => "server auth only",
            (false, true) => "client auth only",
            (false, false) => "neither server nor client auth",
        };
        line("usage", usages);
    }
    line("not before", &crate::format_time(info.not_before));
    line("not after", &crate::format_time(info.not_after));
    line("status", &status(info, now));
    line("fingerprint", &info.fingerprint.to_string());
    out
}

fn status(info: &CertInfo, now: SystemTime) -> String {
    if now < info.not_before {
        return "NOT YET VALID".to_string();
    }
    match info.not_after.duration_since(now) {
        Err(e) => format!("EXPIRED {} ago", human(e.duration().as_secs())),
        Ok(left) => format!("valid, expires in {}", human(left.as_secs())),
    }
}

/// A duration in its largest sensible unit, rounded to the nearest.
fn human(secs: u64) -> String {
    match secs {
        s if s >= 2 * 86400 => format!("{} days", (s + 43200) / 86400),
        s if s >= 2 * 3600 => format!("{} hours", (s + 1800) / 3600),
        s if s >= 120 => format!("{} minutes", (s + 30) / 60),
        s => format!("{s} seconds"),
    }
}

/// Why `verify` refused a file.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// The chain is not valid under the root.
    #[error("{path}: {reason}")]
    Chain {
        /// The checked file.
        path: String,
        /// Why.
        reason: VerifyError,
    },
    /// The chain is valid but for another role.
    #[error("{path}: certificate {identity} has role {got}, expected {expected}")]
    Role {
        /// The checked file.
        path: String,
        /// Its identity.
        identity: Identity,
        /// Its role.
        got: Role,
        /// The role asked for.
        expected: Role,
    },
}

/// Checks that the chain in `path` (leaf, then intermediate) is valid under the root in
/// `root_path` at `now` and, if given, has `role`.
pub fn verify_file(
    root_path: &Path,
    path: &Path,
    role: Option<Role>,
    now: SystemTime,
) -> Result<Identity, CheckError> {
    let roots = read_certs(root_path)?;
    let root_info = CertInfo::parse(&roots[0])
        .map_err(|e| FileError::Invalid { path: root_path.to_path_buf(), reason: e.to_string() })?;
    if !root_info.is_ca {
        return Err(FileError::Invalid {
            path: root_path.to_path_buf(),
            reason: format!("certificate {:?} is not a CA certificate (no CA flag)", root_info.subject),
        }
        .into());
    }
    let chain = read_certs(path)?;
    let shown = path.display().to_string();
    let id = verify::verify_chain(&roots[0], &chain, now)
        .map_err(|reason| CheckError::Chain { path: shown.clone(), reason })?;
    match role {
        Some(expected) if expected != id.role() => {
            Err(CheckError::Role { path: shown, got: id.role(), identity: id, expected })
        }
        _ => Ok(id),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let text = files::read_text(path)?;
    cert::certs_from_pem(text.as_bytes())
        .map_err(|e| FileError::Invalid { path: path.to_path_buf(), reason: e.to_string() })
}
