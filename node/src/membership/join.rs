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
pub use crate::config::targets::{DEFAULT_GOSSIP_PORT, parse_target, service_target};

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
