//! The node's keys and identity: the cluster root it trusts, its own certificate, and
//! whether it runs on the well-known insecure default keys.
//!
//! Keys come from `tls_dir` (made with `opencluster-pki`), or are the default keys built
//! into the binary (datacenters dc1, dc2 and dc3 of the demo cluster). At boot the node uses a hand-issued `node.crt` when one is there,
//! otherwise issues itself a short-lived certificate from the datacenter intermediate
//! (`dc.key`), and a background task renews it before it expires. The mutual-TLS
//! configuration built here is what the peer and connector endpoints will present.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use opencluster_pki::boot::BootError;
use opencluster_pki::default_keys::NoDefaultKeys;
use opencluster_pki::files::FileError;
use opencluster_pki::tls::{Credentials, Origin, TlsError};
use opencluster_pki::{
    BootRequest, MutualTls, Renewal, Role, TlsDir, boot_identity, default_keys, is_default,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("tls_dir: {0}")]
    Keys(#[from] FileError),
    #[error(
        "invalid setting `datacenter`: {configured:?} does not match the keys in {keys_source}, which are for \
         datacenter {keys:?}: set datacenter = {keys:?}, or point tls_dir at keys made for {configured:?} \
         (opencluster-pki datacenter --dc {configured})"
    )]
    WrongDatacenter { configured: String, keys: String, keys_source: String },
    /// `tls_dir` unset, and the datacenter has no built-in demo keys.
    #[error("invalid setting `datacenter` (tls_dir unset): {0}")]
    NoDefaultKeys(#[from] NoDefaultKeys),
    #[error("cannot obtain this node's certificate: {0}")]
    Boot(#[from] BootError),
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] TlsError),
}

/// What the rest of the node knows about its keys.
pub struct Security {
    pub keys: Arc<TlsDir>,
    pub insecure_default_keys: bool,
    /// Mutual TLS for peer connections; certificate renewals swap into it.
    pub tls: MutualTls,
    /// The node's current certificate, updated by renewals.
    pub credentials: watch::Receiver<Arc<Credentials>>,
}

impl Security {
    /// Loads the keys, checks they belong to the configured datacenter and obtains this
    /// node's certificate. Returns the renewal task to spawn.
    pub fn load(config: &Config) -> Result<(Security, Renewal), SecurityError> {
        Self::load_as(config, Role::Node)
    }

    /// [`Security::load`] for a process of another role (a connector's certificate says
    /// `connector`, which is what other datacenters' connectors accept).
    pub fn load_as(config: &Config, role: Role) -> Result<(Security, Renewal), SecurityError> {
        let keys = match &config.tls_dir {
            Some(dir) => TlsDir::load(dir)?,
            None => default_keys(&config.datacenter)?,
        };
        if keys.datacenter != config.datacenter {
            return Err(SecurityError::WrongDatacenter {
                configured: config.datacenter.clone(),
                keys: keys.datacenter.clone(),
                keys_source: keys.source.clone(),
            });
        }
        let request = BootRequest::new(&config.node_name, role, addresses(config));
        let credentials = boot_identity(&keys, &request, SystemTime::now())?;
        let tls = MutualTls::new(&keys.root, &credentials)?;
        let insecure_default_keys = is_default(&keys);
        let keys = Arc::new(keys);
        let renewal = Renewal::new(keys.clone(), request, tls.clone(), Arc::new(credentials));
        let credentials = renewal.subscribe();
        Ok((Security { keys, insecure_default_keys, tls, credentials }, renewal))
    }

    /// For `/v1/status`.
    pub fn status(&self) -> Value {
        let c = self.credentials.borrow();
        json!({
            "keys": self.keys.source,
            "cluster": self.keys.cluster,
            "datacenter": self.keys.datacenter,
            "insecure_default_keys": self.insecure_default_keys,
            "identity": c.identity.uri(),
            "certificate": match c.origin {
                Origin::Provided => "provided",
                Origin::SelfIssued => "self-issued",
            },
            "not_after": opencluster_pki::format_time(c.not_after()),
        })
    }
}

/// The addresses this node's certificate names besides its name: the specific IPs it
/// listens on (peers will dial the advertised RPC address once the cluster exists).
fn addresses(config: &Config) -> Vec<String> {
    [config.client_addr, config.admin_addr]
        .into_iter()
        .flatten()
        .map(|a: SocketAddr| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .map(|ip| ip.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            node_name: "node-a".into(),
            client_addr: Some("127.0.0.1:6379".parse().unwrap()),
            ..Config::default()
        }
    }

    #[test]
    fn default_keys_give_a_self_issued_identity_and_say_they_are_insecure() {
        let (security, _renewal) = Security::load(&config()).unwrap();
        assert!(security.insecure_default_keys);
        let status = security.status();
        assert_eq!(status["identity"], "spiffe://opencluster-demo/dc/dc1/node/node-a");
        assert_eq!(status["certificate"], "self-issued");
        assert_eq!(status["datacenter"], "dc1");
    }

    #[test]
    fn default_keys_follow_the_datacenter() {
        let c = Config { datacenter: "dc2".into(), ..config() };
        let (security, _renewal) = Security::load(&c).unwrap();
        assert!(security.insecure_default_keys);
        assert_eq!(security.status()["identity"], "spiffe://opencluster-demo/dc/dc2/node/node-a");
    }

    #[test]
    fn a_datacenter_without_default_keys_is_refused_naming_the_setting() {
        let c = Config { datacenter: "eu-west".into(), ..config() };
        let e = Security::load(&c).err().expect("refused").to_string();
        assert!(e.starts_with("invalid setting `datacenter` (tls_dir unset): "), "{e}");
        assert!(e.contains("\"eu-west\"") && e.contains("opencluster-pki datacenter"), "{e}");
    }

    #[test]
    fn a_missing_tls_dir_is_named() {
        let c = Config { tls_dir: Some("/nonexistent/tls".into()), ..config() };
        let e = Security::load(&c).err().expect("refused").to_string();
        assert!(e.starts_with("tls_dir: ") && e.contains("/nonexistent/tls"), "{e}");
    }
}
