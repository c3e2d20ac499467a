//! OpenCluster's PKI: the customer's root and datacenter CAs, the certificates each
//! process issues itself at boot, mutual TLS for QUIC between processes, the gossip
//! keyring, the insecure default keys, and baking keys into an image.
//!
//! Trust model (see `docs/security.md`): one root CA per cluster, kept offline; one
//! intermediate CA per datacenter, shipped to that datacenter's processes (baked into its
//! image or mounted as a secret); each process issues itself a short-lived leaf with the
//! URI SAN `spiffe://<cluster>/dc/<datacenter>/<role>/<name>` and renews it while running.
//! Peers verify the chain to the root during the TLS handshake, then check the peer's
//! cluster, datacenter and role against a [`Policy`].
//!
//! Modules, from the bottom up:
//!
//! | module | owns |
//! |---|---|
//! | [`identity`] | the URI SAN, roles, naming rules |
//! | [`cert`] | reading certificates (PEM, DER, the facts in them, fingerprints) |
//! | [`ca`] | creating the root and intermediates, issuing leaves |
//! | [`keyring`] | the gossip keyring and its rotation |
//! | [`files`] | safe reading/writing of keys, the CA dir and tls dir layouts |
//! | [`default_keys`](mod@default_keys) | the embedded insecure demo keys |
//! | [`verify`] | chain verification and the rustls verifiers |
//! | [`tls`] | rustls and quinn configs with a swappable certificate |
//! | [`peer`] | the peer's identity after the handshake, and the policy |
//! | [`boot`] | the process's certificate at boot, and its renewal task |
//! | [`inspect`] | what `inspect` prints and what `verify` checks |
//! | [`bake`] | the Docker build context of a customer image |

pub mod bake;
pub mod boot;
pub mod ca;
pub mod cert;
pub mod default_keys;
pub mod files;
pub mod identity;
pub mod inspect;
pub mod keyring;
pub mod peer;
pub mod tls;
pub mod verify;

use std::time::SystemTime;

pub use boot::{BootRequest, Renewal, boot_identity, renew_at};
pub use default_keys::{DEFAULT_KEYS_DIR, default_keys, is_default};
pub use files::TlsDir;
pub use identity::{Identity, Role};
pub use keyring::{GossipKey, Keyring};
pub use peer::{PeerError, PeerIdentity, Policy, authorize, peer_identity};
pub use tls::{ALPN, Credentials, MutualTls};

/// Makes ring the process-wide rustls crypto provider. Call first thing in `main` (and in
/// test setup); calling it again is harmless.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    if rustls::crypto::ring::default_provider().install_default().is_err() {
        tracing::trace!("a rustls crypto provider was already installed");
    }
}

/// A time as RFC 3339 UTC, to the second.
pub fn format_time(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t).replace_nanosecond(0).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| format!("{t}"))
}
