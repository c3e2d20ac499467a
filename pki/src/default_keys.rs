//! The well-known, INSECURE demo keys of cluster `opencluster-demo`, datacenters `dc1`,
//! `dc2` and `dc3` (`deploy/default-keys/`), embedded in the binaries so a process can run
//! with them without the repository: `--dev`, the demos and the official images when no
//! keys are given.
//!
//! Everyone has these keys. A process using them must say so (log, health, metric); the
//! node and the connector do that. [`is_default`] recognises them by the root
//! certificate's fingerprint, so a tls dir that merely copies them is recognised too.
//! There is no demo root key: a fourth demo datacenter cannot be made, and a process of
//! any other datacenter needs keys from `opencluster-pki` ([`NoDefaultKeys`]).

use std::path::PathBuf;

use crate::files::{TlsDir, TlsTexts};

/// Where the default keys live in the repository (and in the official images' sources).
pub const DEFAULT_KEYS_DIR: &str = "deploy/default-keys";
/// The cluster name of the default keys.
pub const DEFAULT_CLUSTER: &str = "opencluster-demo";
/// The datacenters that have a default intermediate, in order.
pub const DEFAULT_DATACENTERS: [&str; 3] = ["dc1", "dc2", "dc3"];

const ROOT_CRT: &str = include_str!("../../deploy/default-keys/root.crt");

/// One datacenter's embedded files: (name, dc.crt, dc.key, gossip.keyring).
type Embedded = (&'static str, &'static str, &'static str, &'static str);

const EMBEDDED: [Embedded; 3] = [
    (
        "dc1",
        include_str!("../../deploy/default-keys/dc1/dc.crt"),
        include_str!("../../deploy/default-keys/dc1/dc.key"),
        include_str!("../../deploy/default-keys/dc1/gossip.keyring"),
    ),
    (
        "dc2",
        include_str!("../../deploy/default-keys/dc2/dc.crt"),
        include_str!("../../deploy/default-keys/dc2/dc.key"),
        include_str!("../../deploy/default-keys/dc2/gossip.keyring"),
    ),
    (
        "dc3",
        include_str!("../../deploy/default-keys/dc3/dc.crt"),
        include_str!("../../deploy/default-keys/dc3/dc.key"),
        include_str!("../../deploy/default-keys/dc3/gossip.keyring"),
    ),
];

/// A datacenter the default keys do not cover.
#[derive(Debug, thiserror::Error)]
#[error(
    "there are no built-in demo keys for datacenter {datacenter:?} (only for {}): make keys with opencluster-pki \
     (`opencluster-pki init --cluster NAME --out ca`, then `opencluster-pki datacenter --ca ca --dc {datacenter} \
     --out tls-{datacenter}`) and set tls_dir to that directory",
    DEFAULT_DATACENTERS.join(", ")
)]
pub struct NoDefaultKeys {
    pub datacenter: String,
}

/// The default keys of `datacenter`, parsed from the copies embedded at build time.
pub fn default_keys(datacenter: &str) -> Result<TlsDir, NoDefaultKeys> {
    let Some(&(dc, cert, key, keyring)) = EMBEDDED.iter().find(|(dc, ..)| *dc == datacenter) else {
        return Err(NoDefaultKeys { datacenter: datacenter.to_string() });
    };
    let texts = TlsTexts {
        dir: PathBuf::from(DEFAULT_KEYS_DIR).join(dc),
        root: ROOT_CRT.to_string(),
        dc: Some((cert.to_string(), key.to_string())),
        leaf: None,
        keyring: Some(keyring.to_string()),
    };
    // The embedded files are fixed at build time and checked by the tests below, so a
    // failure here is a broken build, not an operating condition.
    Ok(TlsDir::from_texts(format!("built-in default keys of {dc} (INSECURE)"), texts)
        .expect("the embedded default keys in deploy/default-keys are valid"))
}

/// Whether `tls` uses the default keys' root: then anyone can mint its identities.
pub fn is_default(tls: &TlsDir) -> bool {
    crate::cert::certs_from_pem(ROOT_CRT.as_bytes()).map(|certs| certs[0] == tls.root).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_datacenter_loads_and_is_recognised() {
        for dc in DEFAULT_DATACENTERS {
            let keys = default_keys(dc).unwrap();
            assert_eq!(keys.cluster, DEFAULT_CLUSTER);
            assert_eq!(keys.datacenter, dc);
            assert!(keys.intermediate.is_some() && keys.keyring.is_some() && keys.leaf.is_none());
            assert!(is_default(&keys));
            assert!(keys.source.contains(dc) && keys.source.contains("INSECURE"), "{}", keys.source);
        }
    }

    #[test]
    fn other_datacenters_are_told_to_make_keys() {
        let e = default_keys("dc4").unwrap_err().to_string();
        assert!(e.contains("\"dc4\" (only for dc1, dc2, dc3)"), "{e}");
        assert!(e.contains("opencluster-pki datacenter --ca ca --dc dc4") && e.contains("tls_dir"), "{e}");
    }

    #[test]
    fn default_keys_last_long() {
        let ten_years = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
        let horizon = std::time::SystemTime::now() + ten_years;
        for dc in DEFAULT_DATACENTERS {
            let keys = default_keys(dc).unwrap();
            assert!(keys.root_info.not_after > horizon);
            assert!(keys.intermediate.as_ref().is_some_and(|i| i.info().not_after > horizon), "{dc}");
        }
    }
}
