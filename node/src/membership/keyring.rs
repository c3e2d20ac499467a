//! The gossip keyring a running node uses, changed at runtime without a restart.
//!
//! The keyring is held in a `watch` channel: the sealer (packets go out under its primary
//! key) and the receiver (packets under any installed key are opened) each keep a copy and
//! take the new one before their next packet, so a change applies at once to both. Changes
//! come from the admin API (`/v1/keyring/install|use|remove`), one at a time: the new
//! keyring is first written to `<data_dir>/gossip.keyring` (mode 0600, a temporary file
//! renamed over the old one, the format of `opencluster-pki gossip-key`) and only then
//! published, so a node that restarts comes back with the keyring it last used. At start
//! that file is preferred over the keyring of `tls_dir` or of the default keys.

use std::path::{Path, PathBuf};

use opencluster_pki::files::{self, FileError};
use opencluster_pki::keyring::KeyringError;
use opencluster_pki::{GossipKey, Keyring};
use prometheus::{IntCounterVec, IntGauge};
use serde::Serialize;
use tokio::sync::{Mutex, watch};

/// The file, in the data directory, that holds the keyring last used.
pub const KEYRING_FILE: &str = "gossip.keyring";
/// Mode of that file: it is secret.
const SECRET_MODE: u32 = 0o600;

/// Why the keyring could not be loaded at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: KeyringError },
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The keyring refused it (removing the primary, using a key not installed).
    #[error("{0}")]
    Refused(#[from] KeyringError),
    /// The new keyring could not be saved, so it was not applied either.
    #[error("the keyring was not changed: {0}")]
    Persist(FileError),
}

/// A change asked for.
#[derive(Clone, Debug)]
pub enum Change {
    /// Accept packets sealed with this key too.
    Install(GossipKey),
    /// Seal packets with this (installed) key.
    Use(GossipKey),
    /// Stop accepting this key (not the primary).
    Remove(GossipKey),
}

impl Change {
    /// The operation's name, as in the API path and the metric label.
    pub fn op(&self) -> &'static str {
        match self {
            Change::Install(_) => "install",
            Change::Use(_) => "use",
            Change::Remove(_) => "remove",
        }
    }

    /// Applies the change to `ring`; Ok(false) when it changes nothing.
    fn apply(&self, ring: &mut Keyring) -> Result<bool, KeyringError> {
        match self {
            Change::Install(key) => {
                let new = !ring.keys().contains(key);
                ring.install(key.clone());
                Ok(new)
            }
            Change::Use(key) => {
                let new = ring.primary() != key;
                ring.use_key(key)?;
                Ok(new)
            }
            Change::Remove(key) => ring.remove(key).map(|()| true),
        }
    }
}

/// What the admin API shows: key ids, never keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyringView {
    /// The id of the key packets are sealed with.
    pub primary: String,
    /// Every accepted key's id, in installation order.
    pub keys: Vec<String>,
    /// Where the keyring in use was loaded from at start, or the data directory's file once
    /// it was changed.
    pub source: String,
}

/// Keyring metrics.
#[derive(Clone)]
pub struct KeyringMetrics {
    /// `opencluster_gossip_keyring_changes_total{op}`.
    pub changes: IntCounterVec,
    /// `opencluster_gossip_keyring_keys`.
    pub keys: IntGauge,
}

/// The node's keyring: read by the gossip tasks, changed by the admin API.
pub struct LiveKeyring {
    current: watch::Sender<Keyring>,
    path: PathBuf,
    source: std::sync::Mutex<String>,
    /// Serializes changes: read, change, save and publish happen as one step.
    changing: Mutex<()>,
    metrics: KeyringMetrics,
}

impl LiveKeyring {
    /// The keyring of `<data_dir>/gossip.keyring` when that file exists, else `fallback`
    /// (from `fallback_source`); `Ok(None)` when there is neither.
    pub fn load(
        data_dir: &Path,
        fallback: Option<Keyring>,
        fallback_source: &str,
        metrics: KeyringMetrics,
    ) -> Result<Option<LiveKeyring>, LoadError> {
        let path = data_dir.join(KEYRING_FILE);
        let (ring, source) = if path.exists() {
            let text = files::read_secret(&path)?;
            let ring = Keyring::from_toml(&text)
                .map_err(|source| LoadError::Invalid { path: path.clone(), source })?;
            tracing::info!(
                path = %path.display(), primary = %ring.primary().id(), keys = ring.keys().len(),
                ignored = %fallback_source,
                "gossip keyring from the data directory (saved by a runtime change), preferred over the configured keys"
            );
            (ring, path.display().to_string())
        } else {
            let Some(ring) = fallback else { return Ok(None) };
            tracing::info!(
                source = %fallback_source, primary = %ring.primary().id(), keys = ring.keys().len(),
                "gossip keyring"
            );
            (ring, fallback_source.to_string())
        };
        metrics.keys.set(ring.keys().len() as i64);
        Ok(Some(LiveKeyring {
            current: watch::Sender::new(ring),
            path,
            source: std::sync::Mutex::new(source),
            changing: Mutex::new(()),
            metrics,
        }))
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Keyring> {
        self.current.subscribe()
    }

    /// The keyring now.
    pub fn current(&self) -> Keyring {
        self.current.borrow().clone()
    }

    /// Key ids and source, for the admin API.
    pub fn view(&self) -> KeyringView {
        let ring = self.current.borrow();
        KeyringView {
            primary: ring.primary().id(),
            keys: ring.keys().iter().map(GossipKey::id).collect(),
            source: self.source.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Applies `change`: saved to the data directory, then used by the gossip tasks.
    /// Returns whether anything changed and the keyring now.
    pub async fn change(&self, change: Change) -> Result<(bool, KeyringView), ChangeError> {
        let _one_at_a_time = self.changing.lock().await;
        let mut ring = self.current();
        if !change.apply(&mut ring)? {
            return Ok((false, self.view()));
        }
        let path = self.path.clone();
        let text = ring.to_toml();
        tokio::task::spawn_blocking(move || files::write_file(&path, text.as_bytes(), SECRET_MODE, true))
            .await
            .map_err(|e| {
                ChangeError::Persist(FileError::Write {
                    path: self.path.clone(),
                    cause: std::io::Error::other(e),
                })
            })?
            .map_err(ChangeError::Persist)?;
        let (primary, keys) = (ring.primary().id(), ring.keys().len());
        self.current.send_replace(ring);
        *self.source.lock().unwrap_or_else(|e| e.into_inner()) = self.path.display().to_string();
        self.metrics.changes.with_label_values(&[change.op()]).inc();
        self.metrics.keys.set(keys as i64);
        let key = match &change {
            Change::Install(k) | Change::Use(k) | Change::Remove(k) => k.id(),
        };
        tracing::info!(op = change.op(), %key, %primary, keys, path = %self.path.display(), "gossip keyring changed");
        Ok((true, self.view()))
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;

    use super::*;

    fn metrics() -> KeyringMetrics {
        KeyringMetrics {
            changes: IntCounterVec::new(Opts::new("c", "c"), &["op"]).unwrap(),
            keys: IntGauge::new("k", "k").unwrap(),
        }
    }

    fn key(byte: u8) -> GossipKey {
        GossipKey::from([byte; 32])
    }

    #[tokio::test]
    async fn changes_are_saved_published_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let boot = Keyring::with_primary(key(1));
        let live =
            LiveKeyring::load(dir.path(), Some(boot.clone()), "default keys", metrics()).unwrap().unwrap();
        assert_eq!(live.view().source, "default keys");
        let mut seen = live.subscribe();
        assert!(!dir.path().join(KEYRING_FILE).exists(), "nothing saved before a change");

        assert!(live.change(Change::Install(key(2))).await.unwrap().0);
        assert!(seen.has_changed().unwrap());
        assert_eq!(seen.borrow_and_update().keys(), &[key(1), key(2)]);
        assert!(!live.change(Change::Install(key(2))).await.unwrap().0, "installing twice changes nothing");
        let (changed, view) = live.change(Change::Use(key(2))).await.unwrap();
        assert!(changed);
        assert_eq!(view.primary, key(2).id());
        assert!(live.change(Change::Remove(key(1))).await.unwrap().0);
        assert_eq!(live.view().keys, [key(2).id()]);
        assert_eq!(live.metrics.changes.with_label_values(&["install"]).get(), 1);
        assert_eq!(live.metrics.keys.get(), 1);

        // Refused changes leave everything as it was.
        let e = live.change(Change::Remove(key(2))).await.unwrap_err().to_string();
        assert!(e.contains("is the primary key and cannot be removed"), "{e}");
        assert!(matches!(live.change(Change::Use(key(9))).await, Err(ChangeError::Refused(_))));

        // Saved 0600, and preferred at the next start over the configured keys.
        let path = dir.path().join(KEYRING_FILE);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = LiveKeyring::load(dir.path(), Some(boot), "default keys", metrics()).unwrap().unwrap();
        assert_eq!(again.current(), Keyring::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap());
        assert_eq!(again.view().primary, key(2).id());
        assert_eq!(again.view().source, path.display().to_string());
    }

    #[test]
    fn no_keyring_anywhere_is_none_and_a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(LiveKeyring::load(dir.path(), None, "x", metrics()).unwrap().is_none());
        let path = dir.path().join(KEYRING_FILE);
        files::write_file(&path, b"garbage", SECRET_MODE, false).unwrap();
        let e = LiveKeyring::load(dir.path(), None, "x", metrics()).err().unwrap().to_string();
        assert!(e.contains(&path.display().to_string()) && e.contains("invalid keyring"), "{e}");
    }
}
