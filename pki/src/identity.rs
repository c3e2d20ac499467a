//! Who a certificate speaks for: the URI SAN
//! `spiffe://<cluster>/dc/<datacenter>/<role>/<name>` carried by every leaf certificate,
//! and the names inside it.
//!
//! The URI is the only thing peers look at after the chain is verified, so its grammar is
//! strict: cluster and datacenter are single DNS labels, the name is a DNS name (it also
//! goes into the certificate as a DNS SAN, so a peer can be dialled by name).
//!
//! CA certificates carry the shorter prefixes of the same scheme (`spiffe://<cluster>` on
//! the root, `spiffe://<cluster>/dc/<datacenter>` on a datacenter intermediate): that is how
//! a tls dir knows its cluster and datacenter without a separate metadata file.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
const MAX_LABEL: usize = 63;
const MAX_NAME: usize = 253;

/// What a process is allowed to do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A data node: gossip, peer RPC inside its datacenter.
    Node,
    /// A WAN connector: a member of its datacenter, and the only role that talks to other
    /// datacenters.
    Connector,
    /// An application or tool that talks to nodes with a client certificate.
    Client,
}

impl Role {
    /// Every role, for help texts and error messages.
    pub const ALL: [Role; 3] = [Role::Node, Role::Connector, Role::Client];

    /// The lowercase word used in the URI SAN and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Connector => "connector",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole { role: s.to_string() })
    }
}

/// Why a name or identity URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A cluster, datacenter or process name breaks the naming rules.
    #[error(
        "invalid {what} name {name:?}: {reason} (use lowercase letters, digits and '-', \
         at most {MAX_LABEL} characters, not starting or ending with '-'{dots})",
        dots = if *.allows_dots { "; dots separate labels" } else { "" }
    )]
    InvalidName {
        /// `cluster`, `datacenter` or `process`.
        what: &'static str,
        /// The refused name.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
        /// Whether the name may have several dot-separated labels.
        allows_dots: bool,
    },
    /// A role word other than node, connector or client.
    #[error("unknown role {role:?}: expected node, connector or client")]
    UnknownRole {
        /// The refused word.
        role: String,
    },
    /// A URI that is not `spiffe://<cluster>/dc/<datacenter>/<role>/<name>`.
    #[error("invalid identity URI {uri:?}: {reason}")]
    InvalidUri {
        /// The refused URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The identity of one process: the parsed form of its URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    cluster: String,
    datacenter: String,
    role: Role,
    name: String,
}

impl Identity {
    /// Checks every part and builds the identity.
    pub fn new(cluster: &str, datacenter: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        validate_label("cluster", cluster)?;
        validate_label("datacenter", datacenter)?;
        validate_process_name(name)?;
        Ok(Identity {
            cluster: cluster.to_string(),
            datacenter: datacenter.to_string(),
            role,
            name: name.to_string(),
        })
    }

    /// Parses `spiffe://<cluster>/dc/<datacenter>/<role>/<name>`.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason: String| IdentityError::InvalidUri { uri: uri.to_string(), reason };
        let rest = uri.strip_prefix(SCHEME).ok_or_else(|| bad(format!("does not start with {SCHEME}")))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [cluster, "dc", dc, role, name] => {
                let role: Role = role.parse().map_err(|e: IdentityError| bad(e.to_string()))?;
                Identity::new(cluster, dc, role, name).map_err(|e| bad(e.to_string()))
            }
            _ => Err(bad("expected spiffe://<cluster>/dc/<datacenter>/<role>/<name>".to_string())),
        }
    }

    /// The URI SAN: `spiffe://<cluster>/dc/<datacenter>/<role>/<name>`.
    pub fn uri(&self) -> String {
        format!("{}/{}/{}", datacenter_uri(&self.cluster, &self.datacenter), self.role, self.name)
    }

    /// The cluster this identity belongs to.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The datacenter this identity belongs to.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The role of the process.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The process's name (also a DNS SAN of its certificate).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The URI SAN of a cluster's root CA: `spiffe://<cluster>`.
pub fn cluster_uri(cluster: &str) -> String {
    format!("{SCHEME}{cluster}")
}

/// The URI SAN of a datacenter intermediate CA: `spiffe://<cluster>/dc/<datacenter>`.
pub fn datacenter_uri(cluster: &str, datacenter: &str) -> String {
    format!("{SCHEME}{cluster}/dc/{datacenter}")
}

/// Parses a root CA's URI SAN back into its cluster name.
pub fn parse_cluster_uri(uri: &str) -> Option<String> {
    let cluster = uri.strip_prefix(SCHEME)?;
    validate_label("cluster", cluster).ok()?;
    Some(cluster.to_string())
}

/// Parses a datacenter intermediate's URI SAN back into (cluster, datacenter).
pub fn parse_datacenter_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(SCHEME)?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [cluster, "dc", dc] => {
            validate_label("cluster", cluster).ok()?;
            validate_label("datacenter", dc).ok()?;
            Some((cluster.to_string(), dc.to_string()))
        }
        _ => None,
    }
}

/// Checks a single DNS label: the rules for cluster and datacenter names.
pub fn validate_label(what: &'static str, name: &str) -> Result<(), IdentityError> {
    check_label(name).map_err(|reason| IdentityError::InvalidName {
        what,
        name: name.to_string(),
        reason,
        allows_dots: false,
    })
}

/// Checks a process name: one or more DNS labels separated by dots (a host name).
pub fn validate_process_name(name: &str) -> Result<(), IdentityError> {
    let refuse = |reason| IdentityError::InvalidName {
        what: "process",
        name: name.to_string(),
        reason,
        allows_dots: true,
    };
    if name.len() > MAX_NAME {
        return Err(refuse("longer than 253 characters"));
    }
    name.split('.').try_for_each(check_label).map_err(refuse)
}

fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty");
    }
    if label.len() > MAX_LABEL {
        return Err("a label is longer than 63 characters");
    }
    if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("contains a character other than a-z, 0-9 and '-'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("starts or ends with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        for role in Role::ALL {
            let id = Identity::new("acme", "eu-west-1", role, "host-7.example").unwrap();
            let uri = id.uri();
            assert_eq!(uri, format!("spiffe://acme/dc/eu-west-1/{role}/host-7.example"));
            assert_eq!(Identity::parse_uri(&uri).unwrap(), id);
        }
    }

    #[test]
    fn ca_uris_round_trip() {
        assert_eq!(parse_cluster_uri(&cluster_uri("acme")).as_deref(), Some("acme"));
        assert_eq!(
            parse_datacenter_uri(&datacenter_uri("acme", "dc1")),
            Some(("acme".to_string(), "dc1".to_string()))
        );
        assert_eq!(parse_datacenter_uri("spiffe://acme"), None);
        assert_eq!(parse_cluster_uri("spiffe://acme/dc/dc1"), None);
    }

    #[test]
    fn bad_uris_are_refused_with_the_reason() {
        for (uri, needle) in [
            ("https://acme/dc/dc1/node/n1", "does not start with spiffe://"),
            ("spiffe://acme/dc1/node/n1", "expected spiffe://"),
            ("spiffe://acme/dc/dc1/admin/n1", "unknown role \"admin\""),
            ("spiffe://ACME/dc/dc1/node/n1", "invalid cluster name \"ACME\""),
            ("spiffe://acme/dc/dc_1/node/n1", "invalid datacenter name"),
            ("spiffe://acme/dc/dc1/node/n1/extra", "expected spiffe://"),
            ("spiffe://acme/dc/dc1/node/", "invalid process name \"\": empty"),
        ] {
            let e = Identity::parse_uri(uri).unwrap_err().to_string();
            assert!(e.contains(needle), "{uri}: {e}");
        }
    }

    #[test]
    fn names_follow_dns_rules() {
        assert!(validate_label("cluster", "a").is_ok());
        assert!(validate_label("cluster", &"a".repeat(63)).is_ok());
        assert!(validate_label("cluster", &"a".repeat(64)).is_err());
        assert!(validate_label("cluster", "-a").is_err());
        assert!(validate_label("cluster", "a-").is_err());
        assert!(validate_label("cluster", "a.b").is_err());
        assert!(validate_process_name("node-1.dc1.internal").is_ok());
        assert!(validate_process_name("node..x").is_err());
        assert!(validate_process_name("Node1").is_err());
        let e = validate_label("datacenter", "Dc1").unwrap_err().to_string();
        assert!(e.starts_with("invalid datacenter name \"Dc1\": contains a character"), "{e}");
    }

    #[test]
    fn roles_parse() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("Node".parse::<Role>().is_err());
    }
}
