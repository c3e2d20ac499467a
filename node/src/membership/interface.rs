//! `bind_interface`: the address a node advertises, taken from a named network interface.
//!
//! In a container the node cannot know its address in advance: Docker, Swarm and
//! Kubernetes hand one out at start. `bind_interface = "eth0"` makes the node read that
//! interface's IPv4 address at start and advertise it (with the bound gossip port), so one
//! image runs unchanged on every host.
//!
//! The addresses come from `getifaddrs(3)` through the `if-addrs` crate, which keeps the
//! `unsafe` FFI out of this workspace (it denies `unsafe_code`). Picking the address is a
//! plain function over the list, [`select_ipv4`], tested without any real interface.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// One address of one interface, as the system lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub name: String,
    pub ip: IpAddr,
}

/// Why `bind_interface` gave no address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterfaceError {
    #[error(
        "invalid setting `bind_interface`: there is no network interface {name:?} (interfaces with an \
         address: {known}); set bind_interface (OPENCLUSTER_BIND_INTERFACE) to one of them, or to \"\" \
         and give advertise instead"
    )]
    NoSuchInterface { name: String, known: String },
    #[error(
        "invalid setting `bind_interface`: network interface {name:?} has no IPv4 address{others}; \
         set advertise (OPENCLUSTER_ADVERTISE) to the IP and gossip port peers use instead"
    )]
    NoIpv4 { name: String, others: String },
    #[error("invalid setting `bind_interface`: cannot list the network interfaces: {0}")]
    List(String),
}

/// The IPv4 address of interface `name` on this system.
pub fn ipv4_of(name: &str) -> Result<Ipv4Addr, InterfaceError> {
    let addrs = if_addrs::get_if_addrs().map_err(|e| InterfaceError::List(e.to_string()))?;
    let list: Vec<InterfaceAddr> =
        addrs.into_iter().map(|i| InterfaceAddr { ip: i.ip(), name: i.name }).collect();
    // An interface with no address at all is not listed by getifaddrs' IP entries, but
    // still exists: say so rather than "no such interface".
    let exists = Path::new("/sys/class/net").join(name).exists();
    select_ipv4(&list, name, exists)
}

/// The first IPv4 address `name` has in `addrs`, the order the system lists them in (its
/// primary address first). `exists` tells an interface without any address apart from a
/// wrong name.
pub fn select_ipv4(addrs: &[InterfaceAddr], name: &str, exists: bool) -> Result<Ipv4Addr, InterfaceError> {
    let mine: Vec<IpAddr> = addrs.iter().filter(|a| a.name == name).map(|a| a.ip).collect();
    if let Some(v4) = mine.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    }) {
        return Ok(v4);
    }
    if mine.is_empty() && !exists {
        let mut known: Vec<&str> = addrs.iter().map(|a| a.name.as_str()).collect();
        known.sort_unstable();
        known.dedup();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        return Err(InterfaceError::NoSuchInterface { name: name.to_string(), known });
    }
    let others = if mine.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = mine.iter().map(IpAddr::to_string).collect();
        format!(" (only {})", list.join(", "))
    };
    Err(InterfaceError::NoIpv4 { name: name.to_string(), others })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str, ip: &str) -> InterfaceAddr {
        InterfaceAddr { name: name.into(), ip: ip.parse().unwrap() }
    }

    fn system() -> Vec<InterfaceAddr> {
        vec![
            addr("lo", "127.0.0.1"),
            addr("eth0", "fe80::42:acff:fe12:2"),
            addr("eth0", "172.18.0.2"),
            addr("eth0", "172.18.0.99"),
            addr("eth1", "10.0.0.4"),
            addr("lo", "::1"),
            addr("v6only", "fd00::7"),
        ]
    }

    #[test]
    fn picks_the_first_ipv4_of_the_named_interface() {
        assert_eq!(select_ipv4(&system(), "eth0", true), Ok(Ipv4Addr::new(172, 18, 0, 2)));
        assert_eq!(select_ipv4(&system(), "eth1", true), Ok(Ipv4Addr::new(10, 0, 0, 4)));
        assert_eq!(select_ipv4(&system(), "lo", true), Ok(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn a_wrong_name_lists_the_interfaces_there_are() {
        let e = select_ipv4(&system(), "eth9", false).unwrap_err();
        assert_eq!(
            e,
            InterfaceError::NoSuchInterface { name: "eth9".into(), known: "eth0, eth1, lo, v6only".into() }
        );
        let text = e.to_string();
        assert!(text.contains("`bind_interface`") && text.contains("OPENCLUSTER_BIND_INTERFACE"), "{text}");
        assert!(select_ipv4(&[], "eth0", false).unwrap_err().to_string().contains("none"));
    }

    #[test]
    fn an_interface_without_ipv4_says_what_it_has() {
        let e = select_ipv4(&system(), "v6only", true).unwrap_err();
        assert_eq!(e, InterfaceError::NoIpv4 { name: "v6only".into(), others: " (only fd00::7)".into() });
        assert!(e.to_string().contains("`bind_interface`"), "{e}");
        // Up but without any address: it exists, so not "no such interface".
        let e = select_ipv4(&system(), "eth2", true).unwrap_err();
        assert_eq!(e, InterfaceError::NoIpv4 { name: "eth2".into(), others: String::new() });
    }

    #[test]
    fn the_loopback_interface_of_this_machine_has_127_0_0_1() {
        // Every Linux machine and container has `lo`.
        assert_eq!(ipv4_of("lo"), Ok(Ipv4Addr::LOCALHOST));
        assert!(matches!(ipv4_of("no-such-if0"), Err(InterfaceError::NoSuchInterface { .. })));
    }
}
