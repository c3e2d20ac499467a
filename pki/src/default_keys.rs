//! The well-known, INSECURE demo keys of cluster `opencluster-demo`, datacenter `dc1`
//! (`deploy/default-keys/`), embedded in the binaries so a process can run with them
//! without the repository: `--dev` and the official images when no keys are given.
//!
//! Everyone has these keys. A process using them must say so (log, health, metric); the
//! node does that. [`is_default`] recognises them by the root certificate's fingerprint,
//! so a tls dir that merely copies them is recognised too.

use std::path::PathBuf;

use crate::files::{TlsDir, TlsTexts};

/// Where the default keys live in the repository (and in the official images' sources).
pub const DEFAULT_KEYS_DIR: &str = "deploy/default-keys";
/// The cluster name of the default keys.
pub const DEFAULT_CLUSTER: &str = "opencluster-demo";
/// The datacenter of the default keys' intermediate.
pub const DEFAULT_DATACENTER: &str = "dc1";

const ROOT_CRT: &str = include_str!("../../deploy/default-keys/root.crt");
const DC_CRT: &str = include_str!("../../deploy/default-keys/dc.crt");
const DC_KEY: &str = include_str!("../../deploy/default-keys/dc.key");
const KEYRING: &str = include_str!("../../deploy/default-keys/gossip.keyring");

/// The default keys, parsed from the copies embedded at build time.
pub fn default_keys() -> TlsDir {
    let texts = TlsTexts {
        dir: PathBuf::from(DEFAULT_KEYS_DIR),
        root: ROOT_CRT.to_string(),
        dc: Some((DC_CRT.to_string(), DC_KEY.to_string())),
        leaf: None,
        keyring: Some(KEYRING.to_string()),
    };
    // The embedded files are fixed at build time and checked by the tests below, so a
    // failure here is a broken build, not an operating condition.
    TlsDir::from_texts("built-in default keys (INSECURE)".to_string(), texts)
        .expect("the embedded default keys in deploy/default-keys are valid")
}

/// Whether `tls` uses the default keys' root: then anyone can mint its identities.
pub fn is_default(tls: &TlsDir) -> bool {
    crate::cert::certs_from_pem(ROOT_CRT.as_bytes()).map(|certs| certs[0] == tls.root).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keys_load_and_are_recognised() {
        let keys = default_keys();
        assert_eq!(keys.cluster, DEFAULT_CLUSTER);
        assert_eq!(keys.datacenter, DEFAULT_DATACENTER);
        assert!(keys.intermediate.is_some() && keys.keyring.is_some() && keys.leaf.is_none());
        assert!(is_default(&keys));
    }

    #[test]
    fn default_keys_last_long() {
        let keys = default_keys();
        let ten_years = std::time::Duration::from_secs(10 * 365 * 24 * 3600);
        let horizon = std::time::SystemTime::now() + ten_years;
        assert!(keys.root_info.not_after > horizon);
        assert!(keys.intermediate.as_ref().is_some_and(|dc| dc.info().not_after > horizon));
    }
}
