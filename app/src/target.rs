//! Where the local node is: a Unix socket (shared through a volume) or a TCP URL, and the
//! password, turned into a connection of the `redis` crate.

use std::path::PathBuf;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

/// The socket a node container shares with the applications of its host.
pub const DEFAULT_SOCKET: &str = "/run/opencluster/opencluster.sock";

/// A node to talk to.
pub struct NodeTarget {
    info: ConnectionInfo,
    shown: String,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--url {url:?}: {reason}")]
    Url { url: String, reason: String },
}

impl NodeTarget {
    /// The socket, else the URL, else [`DEFAULT_SOCKET`]; `password` overrides one in the URL.
    pub fn new(
        socket: Option<PathBuf>,
        url: Option<String>,
        password: Option<String>,
        timeout: Duration,
    ) -> Result<NodeTarget, TargetError> {
        let (info, shown) = match (socket, url) {
            (Some(path), _) => (unix(path.clone()), format!("unix socket {}", path.display())),
            (None, Some(url)) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| TargetError::Url { url: url.clone(), reason: e.to_string() })?;
                (info, info_addr(&url))
            }
            (None, None) => (unix(DEFAULT_SOCKET.into()), format!("unix socket {DEFAULT_SOCKET}")),
        };
        let info = match password {
            Some(p) => {
                let settings = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        let auth = if info.redis_settings().password().is_some() { " with a password" } else { "" };
        Ok(NodeTarget { info, shown: format!("{shown}{auth}"), timeout })
    }

    /// For messages: where, and whether a password is used (never the password).
    pub fn describe(&self) -> &str {
        &self.shown
    }

    /// How long one command may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A new connection, authenticated when a password is set. Its commands may take up to
    /// the timeout: the `redis` crate's own defaults (500 ms per answer, 1 s to connect)
    /// would turn a slow answer into an error well before `--timeout`.
    pub async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let client = redis::Client::open(self.info.clone()).map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        match tokio::time::timeout(self.timeout, client.get_multiplexed_async_connection_with_config(&config))
            .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("{}: {e}", self.shown)),
            Err(_) => Err(format!("{}: no connection within {:?}", self.shown, self.timeout)),
        }
    }
}

fn unix(path: PathBuf) -> ConnectionInfo {
    ConnectionAddr::Unix(path).into_connection_info().expect("an address is always valid connection info")
}

/// The URL without its password, for messages.
fn info_addr(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}{}", &url[..scheme + 3], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn the_socket_is_the_default_and_passwords_are_never_shown() {
        let t = NodeTarget::new(None, None, None, T).unwrap();
        assert_eq!(t.describe(), "unix socket /run/opencluster/opencluster.sock");
        let t = NodeTarget::new(None, Some("redis://:s3cret@n2:6379".into()), None, T).unwrap();
        assert_eq!(t.describe(), "redis://n2:6379 with a password");
        assert_eq!(t.info.redis_settings().password(), Some("s3cret"));
        let t = NodeTarget::new(Some("/s".into()), None, Some("pw".into()), T).unwrap();
        assert_eq!(t.describe(), "unix socket /s with a password");
        assert_eq!(t.info.redis_settings().password(), Some("pw"));
        assert!(NodeTarget::new(None, Some("http://x".into()), None, T).is_err());
    }
}
