//! Join targets as settings: `host:port` for `join`, a service name for `join_service`.
//! Checked here, at load, so that a bad target is an error naming the setting; the
//! membership layer resolves them.

use std::net::SocketAddr;

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
}
