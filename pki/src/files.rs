//! Files on disk: reading and writing keys and certificates safely, and the two directory
//! layouts the tools and the node share.
//!
//! A **CA dir** (`opencluster-pki init`) holds `root.crt` and `root.key`; it belongs
//! offline.
//!
//! A **tls dir** (`opencluster-pki datacenter`, the node's `--tls-dir`) holds
//! `root.crt` (the trust anchor), `dc.crt` + `dc.key` (the datacenter intermediate, used
//! to issue leaves), `gossip.keyring`, and optionally `node.crt` + `node.key` (a leaf
//! issued by hand; `node.crt` is the chain leaf + intermediate). A tls dir with a leaf
//! but without `dc.key` is valid too: such a process uses its leaf and cannot renew it.
//! The cluster and datacenter are not stored separately: they are read from the URI SANs of
//! `dc.crt` (or of the leaf), so they can never disagree with the certificates.
//!
//! Secrets (`*.key`, `gossip.keyring`) are created with mode 0600 (never chmod-ed after the
//! fact) and are refused on load when others can read them, or when the group can and the
//! file is not owned by root (the PostgreSQL rule, which lets Kubernetes mount secrets
//! group-readable via `fsGroup`). Nothing is overwritten without `force`.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::{CaError, DatacenterCa, IssuedLeaf, RootCa};
use crate::cert::{self, CertInfo};
use crate::identity::Identity;
use crate::keyring::Keyring;

/// The root CA certificate (trust anchor), in CA dirs and tls dirs.
pub const ROOT_CERT: &str = "root.crt";
/// The root CA key, only in the offline CA dir.
pub const ROOT_KEY: &str = "root.key";
/// The datacenter intermediate certificate.
pub const DC_CERT: &str = "dc.crt";
/// The datacenter intermediate key.
pub const DC_KEY: &str = "dc.key";
/// A leaf chain issued by hand (leaf, then intermediate).
pub const LEAF_CERT: &str = "node.crt";
/// The key of [`LEAF_CERT`].
pub const LEAF_KEY: &str = "node.key";
/// The gossip keyring.
pub const KEYRING: &str = "gossip.keyring";

/// Mode of secret files.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories this crate creates.
pub const DIR_MODE: u32 = 0o700;

/// Why a file or directory could not be read or written. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A file that must be there is not.
    #[error("{path}: file not found{hint}")]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// What is expected to create it, starting with "; ".
        hint: String,
    },
    /// Reading failed.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: io::Error,
    },
    /// Writing failed.
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        cause: io::Error,
    },
    /// The target exists and `force` was not given.
    #[error("{path} already exists; refusing to overwrite it without --force")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// A secret others (or a non-root group) may read.
    #[error("key file {path} is {how} by group or others (mode {mode:04o}): chmod 600 {path}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// `readable` or `writable`.
        how: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// A file whose content is wrong.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, on one line.
        reason: String,
    },
    /// A key that belongs to another certificate.
    #[error("{key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

impl FileError {
    fn invalid(path: &Path, reason: impl ToString) -> Self {
        FileError::Invalid { path: path.to_path_buf(), reason: reason.to_string().replace('\n', " ") }
    }
}

/// A leaf certificate given in the tls dir (`node.crt`, `node.key`).
#[derive(Debug)]
pub struct LeafFiles {
    /// Leaf first, then intermediates, as in the file.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key. Secret.
    pub key: PrivateKeyDer<'static>,
    /// The parsed leaf.
    pub info: CertInfo,
    /// Its URI SAN.
    pub identity: Identity,
}

/// The keys of one datacenter as loaded from a tls dir (or the built-in default keys).
pub struct TlsDir {
    /// Where it came from, for messages: a path, or "built-in default keys".
    pub source: String,
    /// The root certificate: the only trust anchor.
    pub root: CertificateDer<'static>,
    /// The parsed root.
    pub root_info: CertInfo,
    /// The cluster, from the certificates' URI SANs.
    pub cluster: String,
    /// The datacenter, from `dc.crt` (or the leaf when there is no intermediate).
    pub datacenter: String,
    /// The intermediate CA, when `dc.crt` and `dc.key` are present.
    pub intermediate: Option<DatacenterCa>,
    /// A leaf issued by hand, when `node.crt` and `node.key` are present.
    pub leaf: Option<LeafFiles>,
    /// The gossip keyring, when present.
    pub keyring: Option<Keyring>,
}

impl std::fmt::Debug for TlsDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDir")
            .field("source", &self.source)
            .field("cluster", &self.cluster)
            .field("datacenter", &self.datacenter)
            .field("intermediate", &self.intermediate.is_some())
            .field("leaf", &self.leaf.as_ref().map(|l| l.identity.uri()))
            .field("keyring", &self.keyring.is_some())
            .finish()
    }
}

/// The texts of a tls dir, wherever they come from (disk or embedded), with the paths to
/// name in errors.
pub(crate) struct TlsTexts {
    pub dir: PathBuf,
    pub root: String,
    pub dc: Option<(String, String)>,
    pub leaf: Option<(String, String)>,
    pub keyring: Option<String>,
}

impl TlsDir {
    /// Loads and checks a tls dir: `root.crt` is required, then the intermediate
    /// (`dc.crt`+`dc.key`), a leaf (`node.crt`+`node.key`) or both, and optionally
    /// `gossip.keyring`. Secrets are refused when their mode is too open.
    pub fn load(dir: &Path) -> Result<TlsDir, FileError> {
        if !dir.is_dir() {
            return Err(FileError::Missing {
                path: dir.to_path_buf(),
                hint: "; expected a tls dir made by `opencluster-pki datacenter`".to_string(),
            });
        }
        let pair = |cert: &str, key: &str| -> Result<Option<(String, String)>, FileError> {
            let (c, k) = (dir.join(cert), dir.join(key));
            match (c.exists(), k.exists()) {
                (false, false) => Ok(None),
                (true, true) => Ok(Some((read_text(&c)?, read_secret(&k)?))),
                (true, false) => Err(missing(&k, &format!("; {cert} is present but its key is not"))),
                (false, true) => Err(missing(&c, &format!("; {key} is present but its certificate is not"))),
            }
        };
        let texts = TlsTexts {
            dir: dir.to_path_buf(),
            root: read_text(&dir.join(ROOT_CERT)).map_err(|e| match e {
                FileError::Missing { path, .. } => {
                    missing(&path, "; expected a tls dir made by `opencluster-pki datacenter`")
                }
                e => e,
            })?,
            dc: pair(DC_CERT, DC_KEY)?,
            leaf: pair(LEAF_CERT, LEAF_KEY)?,
            keyring: match dir.join(KEYRING) {
                p if p.exists() => Some(read_secret(&p)?),
                _ => None,
            },
        };
        TlsDir::from_texts(dir.display().to_string(), texts)
    }

    pub(crate) fn from_texts(source: String, t: TlsTexts) -> Result<TlsDir, FileError> {
        let p = |name: &str| t.dir.join(name);
        let root = cert::certs_from_pem(t.root.as_bytes())
            .map_err(|e| FileError::invalid(&p(ROOT_CERT), e))?
            .swap_remove(0);
        let root_info = CertInfo::parse(&root).map_err(|e| FileError::invalid(&p(ROOT_CERT), e))?;
        if !root_info.is_ca {
            return Err(FileError::invalid(
                &p(ROOT_CERT),
                format!("certificate {:?} is not a CA certificate (no CA flag)", root_info.subject),
            ));
        }
        if !cert::signed_by(&root, &root) {
            return Err(FileError::invalid(&p(ROOT_CERT), "not a self-signed root CA certificate"));
        }
        let cluster = root_info.root_cluster().ok_or_else(|| {
            FileError::invalid(&p(ROOT_CERT), "not an OpenCluster root CA (no spiffe://<cluster> URI SAN)")
        })?;

        let intermediate = match &t.dc {
            None => None,
            Some((c, k)) => {
                let dc = DatacenterCa::from_pem(c, k).map_err(|e| ca_error(e, &p(DC_CERT), &p(DC_KEY)))?;
                if dc.cluster() != cluster || !cert::signed_by(dc.cert_der(), &root) {
                    return Err(FileError::invalid(
                        &p(DC_CERT),
                        format!(
                            "was not issued by the root in {} (cluster {:?})",
                            p(ROOT_CERT).display(),
                            cluster
                        ),
                    ));
                }
                Some(dc)
            }
        };

        let leaf = match &t.leaf {
            None => None,
            Some((c, k)) => Some(load_leaf(&p(LEAF_CERT), c, &p(LEAF_KEY), k)?),
        };
        if let Some(leaf) = &leaf {
            let id = &leaf.identity;
            if id.cluster() != cluster {
                return Err(FileError::invalid(
                    &p(LEAF_CERT),
                    format!(
                        "belongs to cluster {:?}, but {} is the root of {cluster:?}",
                        id.cluster(),
                        ROOT_CERT
                    ),
                ));
            }
            if let Some(dc) = &intermediate
                && dc.datacenter() != id.datacenter()
            {
                return Err(FileError::invalid(
                    &p(LEAF_CERT),
                    format!(
                        "belongs to datacenter {:?}, but {DC_CERT} is for {:?}",
                        id.datacenter(),
                        dc.datacenter()
                    ),
                ));
            }
        }
        let datacenter = match (&intermediate, &leaf) {
            (Some(dc), _) => dc.datacenter().to_string(),
            (None, Some(leaf)) => leaf.identity.datacenter().to_string(),
            (None, None) => {
                return Err(FileError::Missing {
                    path: p(DC_KEY),
                    hint: format!(
                        "; {} holds neither {DC_CERT}+{DC_KEY} (to issue certificates) nor \
                         {LEAF_CERT}+{LEAF_KEY} (a certificate issued by hand)",
                        t.dir.display()
                    ),
                });
            }
        };
        let keyring = match &t.keyring {
            None => None,
            Some(text) => Some(Keyring::from_toml(text).map_err(|e| FileError::invalid(&p(KEYRING), e))?),
        };
        Ok(TlsDir { source, root, root_info, cluster, datacenter, intermediate, leaf, keyring })
    }

    /// The root certificate in PEM.
    pub fn root_pem(&self) -> String {
        cert::certs_to_pem(std::slice::from_ref(&self.root))
    }
}

fn load_leaf(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
) -> Result<LeafFiles, FileError> {
    let chain = cert::certs_from_pem(cert_pem.as_bytes()).map_err(|e| FileError::invalid(cert_path, e))?;
    let info = CertInfo::parse(&chain[0]).map_err(|e| FileError::invalid(cert_path, e))?;
    if info.is_ca {
        return Err(FileError::invalid(cert_path, "the first certificate is a CA, expected a leaf"));
    }
    let identity = info.leaf_identity().map_err(|e| FileError::invalid(cert_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| FileError::invalid(key_path, format!("no valid PEM private key ({e})")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| FileError::invalid(key_path, format!("unsupported private key ({e})")))?;
    let matches = signer.public_key().is_some_and(|spki| spki.as_ref() == info.public_key_info.as_slice());
    if !matches {
        return Err(FileError::KeyMismatch { key: key_path.to_path_buf(), cert: cert_path.to_path_buf() });
    }
    Ok(LeafFiles { chain, key, info, identity })
}

/// Maps a CA loading error to the file it is about.
fn ca_error(e: CaError, cert: &Path, key: &Path) -> FileError {
    match e {
        CaError::Key(_) => FileError::invalid(key, e),
        CaError::KeyMismatch { .. } => {
            FileError::KeyMismatch { key: key.to_path_buf(), cert: cert.to_path_buf() }
        }
        e => FileError::invalid(cert, e),
    }
}

fn missing(path: &Path, hint: &str) -> FileError {
    FileError::Missing { path: path.to_path_buf(), hint: hint.to_string() }
}

/// Loads the root CA of a CA dir (`root.crt`, `root.key`).
pub fn load_root(dir: &Path) -> Result<RootCa, FileError> {
    let (c, k) = (dir.join(ROOT_CERT), dir.join(ROOT_KEY));
    let hint = "; expected a CA dir made by `opencluster-pki init`";
    let cert = read_text(&c).map_err(|e| with_hint(e, hint))?;
    let key = read_secret(&k).map_err(|e| with_hint(e, hint))?;
    RootCa::from_pem(&cert, &key).map_err(|e| ca_error(e, &c, &k))
}

/// Loads the intermediate of a tls dir (`dc.crt`, `dc.key`) with the whole dir checked.
pub fn load_datacenter(dir: &Path) -> Result<TlsDir, FileError> {
    let tls = TlsDir::load(dir)?;
    if tls.intermediate.is_none() {
        return Err(missing(
            &dir.join(DC_KEY),
            "; expected a tls dir made by `opencluster-pki datacenter` (with the intermediate key)",
        ));
    }
    Ok(tls)
}

fn with_hint(e: FileError, hint: &str) -> FileError {
    match e {
        FileError::Missing { path, .. } => missing(&path, hint),
        e => e,
    }
}

/// Writes a CA dir: `root.crt` and `root.key`.
pub fn write_root(dir: &Path, root: &RootCa, force: bool) -> Result<Vec<PathBuf>, FileError> {
    write_all(
        dir,
        &[(ROOT_CERT, root.cert_pem(), PUBLIC_MODE), (ROOT_KEY, root.key_pem(), SECRET_MODE)],
        force,
    )
}

/// Writes a tls dir: `root.crt`, `dc.crt`, `dc.key`, `gossip.keyring`.
pub fn write_datacenter(
    dir: &Path,
    root_pem: &str,
    dc: &DatacenterCa,
    keyring: &Keyring,
    force: bool,
) -> Result<Vec<PathBuf>, FileError> {
    write_all(
        dir,
        &[
            (ROOT_CERT, root_pem.to_string(), PUBLIC_MODE),
            (DC_CERT, dc.cert_pem(), PUBLIC_MODE),
            (DC_KEY, dc.key_pem(), SECRET_MODE),
            (KEYRING, keyring.to_toml(), SECRET_MODE),
        ],
        force,
    )
}

/// Writes a leaf: `node.crt` (leaf + intermediate) and `node.key`.
pub fn write_leaf(dir: &Path, leaf: &IssuedLeaf, force: bool) -> Result<Vec<PathBuf>, FileError> {
    write_all(
        dir,
        &[(LEAF_CERT, leaf.chain_pem(), PUBLIC_MODE), (LEAF_KEY, leaf.key_pem(), SECRET_MODE)],
        force,
    )
}

/// Writes several files into `dir` (created 0700 if missing). Without `force`, checks first
/// that none exists, so a refusal leaves nothing half-written.
pub fn write_all(dir: &Path, files: &[(&str, String, u32)], force: bool) -> Result<Vec<PathBuf>, FileError> {
    create_dir(dir)?;
    if !force && let Some((name, _, _)) = files.iter().find(|(name, _, _)| dir.join(name).exists()) {
        return Err(FileError::Exists { path: dir.join(name) });
    }
    files
        .iter()
        .map(|(name, text, mode)| {
            let path = dir.join(name);
            write_file(&path, text.as_bytes(), *mode, force)?;
            Ok(path)
        })
        .collect()
}

/// Creates `dir` and its parents; the directories created get mode 0700.
pub fn create_dir(dir: &Path) -> Result<(), FileError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|cause| FileError::Write { path: dir.to_path_buf(), cause })
}

/// Writes one file created with `mode`. Without `force` an existing file is an error; with
/// it the file is replaced atomically (a new file with the right mode, renamed over), so an
/// old file's looser mode never carries over.
pub fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), FileError> {
    let err = |cause| FileError::Write { path: path.to_path_buf(), cause };
    if !force {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                FileError::Exists { path: path.to_path_buf() }
            } else {
                err(e)
            }
        })?;
        return f.write_all(contents).and_then(|()| f.sync_all()).map_err(err);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temp file may not even exist; the real error is returned below.
        fs::remove_file(&tmp).ok();
    }
    result.map_err(err)
}

/// Reads a text file (certificates, config), naming it in errors.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    fs::read_to_string(path).map_err(|cause| match cause.kind() {
        io::ErrorKind::NotFound => missing(path, ""),
        _ => FileError::Read { path: path.to_path_buf(), cause },
    })
}

/// Reads a secret after checking its mode (see the module doc for the rule).
pub fn read_secret(path: &Path) -> Result<String, FileError> {
    let meta = fs::metadata(path).map_err(|cause| match cause.kind() {
        io::ErrorKind::NotFound => missing(path, ""),
        _ => FileError::Read { path: path.to_path_buf(), cause },
    })?;
    check_secret_mode(path, meta.mode(), meta.uid())?;
    read_text(path)
}

/// The permission rule for secrets: nothing for others; for the group only read access,
/// and only when root owns the file.
pub fn check_secret_mode(path: &Path, mode: u32, owner_uid: u32) -> Result<(), FileError> {
    let mode = mode & 0o7777;
    let group_ok = owner_uid == 0 && mode & 0o030 == 0;
    let refused = mode & 0o007 != 0 || (mode & 0o070 != 0 && !group_ok);
    if refused {
        let how = if mode & 0o044 != 0 { "readable" } else { "writable" };
        return Err(FileError::Permissions { path: path.to_path_buf(), how, mode });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_rule() {
        let p = Path::new("/k");
        for (mode, uid, ok) in [
            (0o600, 1000, true),
            (0o400, 1000, true),
            (0o640, 1000, false),
            (0o640, 0, true),
            (0o440, 0, true),
            (0o660, 0, false),
            (0o644, 0, false),
            (0o604, 1000, false),
            (0o602, 1000, false),
            (0o100600, 1000, true),
        ] {
            assert_eq!(check_secret_mode(p, mode, uid).is_ok(), ok, "{mode:o} uid {uid}");
        }
        let e = check_secret_mode(Path::new("/t/dc.key"), 0o100644, 1000).unwrap_err().to_string();
        assert_eq!(e, "key file /t/dc.key is readable by group or others (mode 0644): chmod 600 /t/dc.key");
    }
}
