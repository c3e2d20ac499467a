//! Finding the cluster: `join` targets, their resolution and the retry schedule.
//!
//! A target is `host:port` where host is an IP address or a DNS name (a Docker service,
//! a Kubernetes headless service); names are resolved again at every attempt, so a
//! service whose addresses change is followed. While this node knows no other member it
//! announces itself to every resolved address, backing off exponentially up to
//! [`MAX_BACKOFF`], forever.

use std::net::SocketAddr;
use std::time::Duration;

/// First wait between join attempts.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between join attempts: a node restarted alone is back within seconds
/// (an attempt is one small packet per address).
pub const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The gossip port a `join_service` name without a port is joined on: the default of
/// `gossip_addr`, which the members of one platform service share.
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

/// Checks that `target` is `host:port`; the message says what is wrong.
pub fn parse_target(target: &str) -> Result<(&str, u16), String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{target:?} needs a port other than 0"));
        }
        return Ok((target, addr.port()));
    }
    let Some((host, port)) = target.rsplit_once(':') else {
        return Err(format!("{target:?} is not host:port (e.g. 10.0.0.5:7946 or opencluster:7946)"));
    };
    let port: u16 = port.parse().map_err(|_| format!("{target:?} has an invalid port {port:?}"))?;
    if host.is_empty() || port == 0 || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{target:?} is not host:port (e.g. 10.0.0.5:7946 or opencluster:7946)"));
    }
    Ok((host, port))
}

/// The join target for a platform service name (`join_service`): `name` or `name:port`,
/// where every address the name resolves to is a member (Swarm's `tasks.<service>`, a
/// Kubernetes headless Service). Without a port, [`DEFAULT_GOSSIP_PORT`].
pub fn service_target(service: &str) -> Result<String, String> {
    let target = match parse_target(service) {
        Ok(_) => service.to_string(),
        Err(_) if !service.contains(':') || service.starts_with('[') => {
            format!("{service}:{DEFAULT_GOSSIP_PORT}")
        }
        Err(e) => return Err(e),
    };
    let (host, _) = parse_target(&target)?;
    let is_ip = target.parse::<SocketAddr>().is_ok();
    let dns_name = !host.starts_with(['.', '-'])
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !is_ip && !dns_name {
        return Err(format!(
            "{service:?} is not a DNS name (letters, digits, '.', '-', '_'), optionally with :port"
        ));
    }
    Ok(target)
}

/// Resolves every target; returns the addresses found and a message per target that
/// failed. Our own advertised address is left out.
pub async fn resolve(targets: &[String], own: SocketAddr) -> (Vec<SocketAddr>, Vec<String>) {
    let mut addrs = Vec::new();
    let mut failures = Vec::new();
    for target in targets {
        match tokio::net::lookup_host(target.as_str()).await {
            Ok(found) => {
                let before = addrs.len();
                addrs.extend(found.filter(|a| *a != own));
                if addrs.len() == before {
                    failures.push(format!("{target}: resolves to no address but this node's own"));
                }
            }
            Err(e) => failures.push(format!("{target}: {e}")),
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    (addrs, failures)
}

/// Exponential backoff between join attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_BACKOFF }
    }
}

impl Backoff {
    /// The wait before the next attempt; each call doubles the following one, up to
    /// [`MAX_BACKOFF`].
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    /// Starts again from [`FIRST_BACKOFF`] (after the node was alone again).
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(parse_target("10.0.0.5:7946"), Ok(("10.0.0.5:7946", 7946)));
        assert_eq!(parse_target("[::1]:7946"), Ok(("[::1]:7946", 7946)));
        assert_eq!(parse_target("opencluster:7946"), Ok(("opencluster", 7946)));
        assert_eq!(parse_target("node-1.oc.svc.cluster.local:1"), Ok(("node-1.oc.svc.cluster.local", 1)));
        for bad in ["opencluster", "opencluster:", "opencluster:x", ":7946", "a b:1", "10.0.0.5:0", "h:70000"]
        {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_service_name_gets_the_default_gossip_port() {
        assert_eq!(service_target("tasks.opencluster"), Ok("tasks.opencluster:7946".into()));
        assert_eq!(
            service_target("opencluster.oc.svc.cluster.local:8946"),
            Ok("opencluster.oc.svc.cluster.local:8946".into())
        );
        assert_eq!(service_target("10.0.0.5"), Ok("10.0.0.5:7946".into()));
        assert_eq!(service_target("[fd00::5]"), Ok("[fd00::5]:7946".into()));
        assert_eq!(service_target("my_service"), Ok("my_service:7946".into()));
        for bad in ["", "tasks.oc:", "tasks.oc:x", "tasks.oc:0", "http://oc", "a b", "-oc", ".oc", "oc;rm"] {
            assert!(service_target(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 4000, 4000, 4000, 4000, 4000]);
        b.reset();
        assert_eq!(b.next_wait(), FIRST_BACKOFF);
    }

    #[tokio::test]
    async fn resolution_skips_our_own_address_and_reports_failures() {
        let own: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let targets = vec!["127.0.0.1:7946".to_string(), "127.0.0.1:7000".into(), "localhost:7001".into()];
        let (addrs, failures) = resolve(&targets, own).await;
        assert!(addrs.contains(&"127.0.0.1:7000".parse().unwrap()), "{addrs:?}");
        assert!(addrs.contains(&"127.0.0.1:7001".parse().unwrap()) || addrs.iter().any(|a| a.port() == 7001));
        assert!(!addrs.contains(&own));
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("own"));
    }
}
