//! The gossip keyring: the symmetric keys that seal gossip packets.
//!
//! One key is the *primary* (packets are sealed with it); every installed key is accepted
//! when opening packets. That is what makes rotation possible without downtime: install
//! the new key everywhere, make it primary everywhere, then remove the old one.
//!
//! On disk (`gossip.keyring`, mode 0600) it is a small TOML file with a version marker:
//!
//! ```toml
//! version = 1
//! primary = "<base64 of 32 bytes>"
//! keys = ["<base64 of 32 bytes>", ...]   # every accepted key, the primary included
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Format version written by this code.
pub const KEYRING_VERSION: u32 = 1;
/// Length of a gossip key in bytes.
pub const KEY_LEN: usize = 32;

/// One 32-byte gossip key. Its `Debug` shows only a short id, never the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GossipKey([u8; KEY_LEN]);

impl GossipKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<Self, KeyringError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| KeyringError::Random)?;
        Ok(GossipKey(bytes))
    }

    /// The raw key bytes, for the AEAD.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short, non-secret id for logs: the first 8 hex digits of SHA-256 of the key.
    pub fn id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key in base64 (standard alphabet, padded): the form written in the keyring and
    /// given on the command line.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }
}

impl From<[u8; KEY_LEN]> for GossipKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        GossipKey(bytes)
    }
}

impl FromStr for GossipKey {
    type Err = KeyringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = BASE64
            .decode(s.trim())
            .map_err(|_| KeyringError::BadKey { reason: "not valid base64".to_string() })?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|b: Vec<u8>| KeyringError::BadKey {
            reason: format!("{} bytes instead of {KEY_LEN}", b.len()),
        })?;
        Ok(GossipKey(bytes))
    }
}

impl fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GossipKey({})", self.id())
    }
}

/// Why a keyring operation failed. The caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A key that is not base64 of 32 bytes.
    #[error(
        "invalid gossip key: {reason} (expected base64 of {KEY_LEN} bytes, as printed by `opencluster-pki gossip-key`)"
    )]
    BadKey {
        /// What is wrong with it.
        reason: String,
    },
    /// The keyring text is not a valid keyring.
    #[error("invalid keyring: {0}")]
    Parse(String),
    /// A version this code does not know.
    #[error("keyring version {found} is not supported (this build reads version {KEYRING_VERSION})")]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// `use` or `remove` of a key that is not installed.
    #[error("key {id} is not installed in the keyring (install it first with --install)")]
    NotInstalled {
        /// The key's short id.
        id: String,
    },
    /// `remove` of the primary key.
    #[error("key {id} is the primary key and cannot be removed (make another key primary with --use first)")]
    RemovePrimary {
        /// The key's short id.
        id: String,
    },
}

/// The keys a process seals and opens gossip packets with.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    primary: GossipKey,
    /// Every accepted key, the primary included, in installation order.
    keys: Vec<GossipKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    version: u32,
    primary: String,
    keys: Vec<String>,
}

impl Keyring {
    /// A keyring holding one new random key.
    pub fn generate() -> Result<Self, KeyringError> {
        Ok(Self::with_primary(GossipKey::generate()?))
    }

    /// A keyring holding `key` only.
    pub fn with_primary(key: GossipKey) -> Self {
        Keyring { keys: vec![key.clone()], primary: key }
    }

    /// The key packets are sealed with.
    pub fn primary(&self) -> &GossipKey {
        &self.primary
    }

    /// Every accepted key, the primary included.
    pub fn keys(&self) -> &[GossipKey] {
        &self.keys
    }

    /// Adds `key` to the accepted keys. Installing an installed key changes nothing.
    pub fn install(&mut self, key: GossipKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Makes an installed key the primary.
    pub fn use_key(&mut self, key: &GossipKey) -> Result<(), KeyringError> {
        if !self.keys.contains(key) {
            return Err(KeyringError::NotInstalled { id: key.id() });
        }
        self.primary = key.clone();
        Ok(())
    }

    /// Removes an accepted key that is not the primary.
    pub fn remove(&mut self, key: &GossipKey) -> Result<(), KeyringError> {
        if *key == self.primary {
            return Err(KeyringError::RemovePrimary { id: key.id() });
        }
        let before = self.keys.len();
        self.keys.retain(|k| k != key);
        if self.keys.len() == before {
            return Err(KeyringError::NotInstalled { id: key.id() });
        }
        Ok(())
    }

    /// The file content (TOML). Secret.
    pub fn to_toml(&self) -> String {
        let file = KeyringFile {
            version: KEYRING_VERSION,
            primary: self.primary.to_base64(),
            keys: self.keys.iter().map(GossipKey::to_base64).collect(),
        };
        let body = toml::to_string(&file).unwrap_or_default();
        format!(
            "# OpenCluster gossip keyring. SECRET: anyone holding it can join the gossip.\n\
             # Edit with `opencluster-pki gossip-key --keyring FILE --install|--use|--remove KEY`.\n\
             {body}"
        )
    }

    /// Parses the file content, checking the version and that the primary is accepted.
    pub fn from_toml(text: &str) -> Result<Self, KeyringError> {
        let file: KeyringFile = toml::from_str(text).map_err(|e| KeyringError::Parse(one_line(&e)))?;
        if file.version != KEYRING_VERSION {
            return Err(KeyringError::Version { found: file.version });
        }
        let primary: GossipKey = file.primary.parse()?;
        let mut keyring = Keyring::with_primary(primary.clone());
        keyring.keys.clear();
        for key in &file.keys {
            keyring.install(key.parse()?);
        }
        if !keyring.keys.contains(&primary) {
            return Err(KeyringError::Parse("the primary key is not in `keys`".to_string()));
        }
        Ok(keyring)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring").field("primary", &self.primary).field("keys", &self.keys).finish()
    }
}

fn one_line(e: &toml::de::Error) -> String {
    e.message().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_base64() {
        let k = GossipKey::generate().unwrap();
        assert_eq!(k.to_base64().parse::<GossipKey>().unwrap(), k);
        assert_ne!(GossipKey::generate().unwrap(), k);
        assert!(!format!("{k:?}").contains(&k.to_base64()));
        assert_eq!(k.id().len(), 8);
        let e = "AAAA".parse::<GossipKey>().unwrap_err().to_string();
        assert!(e.contains("3 bytes instead of 32"), "{e}");
        let e = "not base64!".parse::<GossipKey>().unwrap_err().to_string();
        assert!(e.contains("not valid base64"), "{e}");
    }

    #[test]
    fn keyring_round_trips_through_toml() {
        let mut ring = Keyring::generate().unwrap();
        ring.install(GossipKey::generate().unwrap());
        let text = ring.to_toml();
        assert!(text.contains("version = 1"));
        assert_eq!(Keyring::from_toml(&text).unwrap(), ring);
    }

    #[test]
    fn rotation_install_use_remove() {
        let old = GossipKey::generate().unwrap();
        let new = GossipKey::generate().unwrap();
        let mut ring = Keyring::with_primary(old.clone());

        assert_eq!(ring.use_key(&new), Err(KeyringError::NotInstalled { id: new.id() }));
        ring.install(new.clone());
        ring.install(new.clone());
        assert_eq!(ring.keys(), &[old.clone(), new.clone()]);
        assert_eq!(ring.remove(&old), Err(KeyringError::RemovePrimary { id: old.id() }));

        ring.use_key(&new).unwrap();
        assert_eq!(ring.primary(), &new);
        ring.remove(&old).unwrap();
        assert_eq!(ring.keys(), std::slice::from_ref(&new));
        assert_eq!(ring.remove(&old), Err(KeyringError::NotInstalled { id: old.id() }));
        let e = ring.remove(&new).unwrap_err().to_string();
        assert!(e.contains("is the primary key and cannot be removed"), "{e}");
    }

    #[test]
    fn bad_files_are_refused() {
        let k = GossipKey::generate().unwrap().to_base64();
        let other = GossipKey::generate().unwrap().to_base64();
        for (text, needle) in [
            ("garbage", "invalid keyring"),
            (&format!("version = 2\nprimary = \"{k}\"\nkeys = [\"{k}\"]\n") as &str, "version 2"),
            (&format!("version = 1\nprimary = \"{k}\"\nkeys = [\"{other}\"]\n"), "primary key is not in"),
            (&format!("version = 1\nprimary = \"{k}\"\nkeys = [\"{k}\"]\nextra = 1\n"), "unknown field"),
            ("version = 1\nprimary = \"AAAA\"\nkeys = []\n", "invalid gossip key"),
        ] {
            let e = Keyring::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
