//! The four loopback ports of each demo node (and of each connector when the demo runs
//! several datacenters): free ones chosen by the system, or a block of consecutive ports
//! from `--base-port`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use super::DemoError;

/// The addresses one node listens on, all on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePorts {
    /// RESP over TCP.
    pub client: u16,
    /// The admin HTTP API.
    pub admin: u16,
    /// Gossip (UDP).
    pub gossip: u16,
    /// Peer QUIC (UDP).
    pub rpc: u16,
}

impl NodePorts {
    pub fn client_addr(&self) -> SocketAddr {
        loopback(self.client)
    }
    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin)
    }
    pub fn gossip_addr(&self) -> SocketAddr {
        loopback(self.gossip)
    }
    pub fn rpc_addr(&self) -> SocketAddr {
        loopback(self.rpc)
    }

    /// (port, what it is for, whether it is UDP), in the order the table lists them.
    fn each(&self) -> [(u16, &'static str, bool); 4] {
        [
            (self.client, "client", false),
            (self.admin, "admin", false),
            (self.gossip, "gossip", true),
            (self.rpc, "rpc", true),
        ]
    }
}

/// The addresses one connector listens on, all on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectorPorts {
    /// The admin HTTP API.
    pub admin: u16,
    /// Gossip (UDP) in its datacenter.
    pub gossip: u16,
    /// Peer QUIC (UDP) in its datacenter.
    pub rpc: u16,
    /// WAN QUIC (UDP), where the other datacenters' connectors connect.
    pub wan: u16,
}

impl ConnectorPorts {
    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin)
    }
    pub fn gossip_addr(&self) -> SocketAddr {
        loopback(self.gossip)
    }
    pub fn rpc_addr(&self) -> SocketAddr {
        loopback(self.rpc)
    }
    pub fn wan_addr(&self) -> SocketAddr {
        loopback(self.wan)
    }

    fn each(&self) -> [(u16, &'static str, bool); 4] {
        [
            (self.admin, "admin", false),
            (self.gossip, "gossip", true),
            (self.rpc, "rpc", true),
            (self.wan, "WAN", true),
        ]
    }
}

/// Every port of a demo: its nodes', then its connectors' (none with one datacenter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub nodes: Vec<NodePorts>,
    pub connectors: Vec<ConnectorPorts>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Ports from `base` for `nodes` nodes and `connectors` connectors, grouped by kind so
/// that the client ports are the first `nodes` ones (`redis-cli -p 7000`, `-p 7001`, ...):
/// clients `base..`, then admin, gossip and rpc ports, `nodes` of each; then the
/// connectors' admin, gossip, rpc and WAN ports, `connectors` of each.
pub fn from_base(base: u16, nodes: usize, connectors: usize) -> Result<Plan, DemoError> {
    let count = 4 * (nodes + connectors) as u32;
    let last = u32::from(base) + count - 1;
    if base == 0 || last > u32::from(u16::MAX) {
        return Err(DemoError::Flags(format!(
            "--base-port {base} with {nodes} nodes{} needs ports {base} to {last}; pick a base from 1 to {}",
            if connectors > 0 { format!(" and {connectors} connectors") } else { String::new() },
            u32::from(u16::MAX) + 1 - count
        )));
    }
    // Every port is at most `last`, checked above to fit.
    let port = |kind: usize, i: usize| base + (kind * nodes + i) as u16;
    let cport = |kind: usize, i: usize| base + (4 * nodes + kind * connectors + i) as u16;
    Ok(Plan {
        nodes: (0..nodes)
            .map(|i| NodePorts { client: port(0, i), admin: port(1, i), gossip: port(2, i), rpc: port(3, i) })
            .collect(),
        connectors: (0..connectors)
            .map(|i| ConnectorPorts {
                admin: cport(0, i),
                gossip: cport(1, i),
                rpc: cport(2, i),
                wan: cport(3, i),
            })
            .collect(),
    })
}

/// Checks that every port of `plan` can be bound now; the error names the process (by
/// `node_names` and `connector_names`, in plan order), the port and what it was for.
pub fn check_free(plan: &Plan, node_names: &[String], connector_names: &[String]) -> Result<(), DemoError> {
    let nodes = plan.nodes.iter().zip(node_names).map(|(p, n)| (n, p.each()));
    let connectors = plan.connectors.iter().zip(connector_names).map(|(p, n)| (n, p.each()));
    for (name, ports) in nodes.chain(connectors) {
        for (port, what, udp) in ports {
            let addr = loopback(port);
            let bound = if udp { UdpSocket::bind(addr).map(drop) } else { TcpListener::bind(addr).map(drop) };
            if let Err(e) = bound {
                return Err(DemoError::Flags(format!(
                    "port {port} ({what} port of {name}, from --base-port) cannot be bound: {e}; pick another --base-port or leave it out to use free ports"
                )));
            }
        }
    }
    Ok(())
}

/// Free ports for `nodes` nodes and `connectors` connectors: every socket is held until
/// all are chosen, so no two are the same. They are released before the processes bind
/// them; another program could take one in between, which the process that loses it
/// reports at start.
pub fn free(nodes: usize, connectors: usize) -> Result<Plan, DemoError> {
    let any = loopback(0);
    let err = |e: std::io::Error| DemoError::Io { what: "choose free ports on 127.0.0.1".into(), source: e };
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut tcp = || -> Result<u16, DemoError> {
        let l = TcpListener::bind(any).map_err(err)?;
        let port = l.local_addr().map_err(err)?.port();
        held_tcp.push(l);
        Ok(port)
    };
    let mut plan = Plan { nodes: Vec::with_capacity(nodes), connectors: Vec::with_capacity(connectors) };
    let mut tcp_ports = Vec::new();
    for _ in 0..(2 * nodes + connectors) {
        tcp_ports.push(tcp()?);
    }
    let mut udp = || -> Result<u16, DemoError> {
        let s = UdpSocket::bind(any).map_err(err)?;
        let port = s.local_addr().map_err(err)?.port();
        held_udp.push(s);
        Ok(port)
    };
    let mut udp_ports = Vec::new();
    for _ in 0..(2 * nodes + 3 * connectors) {
        udp_ports.push(udp()?);
    }
    let (mut t, mut u) = (tcp_ports.into_iter(), udp_ports.into_iter());
    let next = |it: &mut std::vec::IntoIter<u16>| it.next().expect("as many ports as counted");
    for _ in 0..nodes {
        plan.nodes.push(NodePorts {
            client: next(&mut t),
            admin: next(&mut t),
            gossip: next(&mut u),
            rpc: next(&mut u),
        });
    }
    for _ in 0..connectors {
        plan.connectors.push(ConnectorPorts {
            admin: next(&mut t),
            gossip: next(&mut u),
            rpc: next(&mut u),
            wan: next(&mut u),
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_port_gives_consecutive_ports_grouped_by_kind() {
        let plan = from_base(7000, 3, 0).unwrap();
        let clients: Vec<u16> = plan.nodes.iter().map(|p| p.client).collect();
        assert_eq!(clients, [7000, 7001, 7002]);
        assert_eq!(plan.nodes[0], NodePorts { client: 7000, admin: 7003, gossip: 7006, rpc: 7009 });
        assert_eq!(plan.nodes[2], NodePorts { client: 7002, admin: 7005, gossip: 7008, rpc: 7011 });
        assert!(plan.connectors.is_empty());
    }

    #[test]
    fn connectors_get_the_ports_after_the_nodes() {
        let plan = from_base(7000, 2, 2).unwrap();
        assert_eq!(plan.nodes[1], NodePorts { client: 7001, admin: 7003, gossip: 7005, rpc: 7007 });
        assert_eq!(plan.connectors[0], ConnectorPorts { admin: 7008, gossip: 7010, rpc: 7012, wan: 7014 });
        assert_eq!(plan.connectors[1], ConnectorPorts { admin: 7009, gossip: 7011, rpc: 7013, wan: 7015 });
        let e = from_base(65530, 1, 1).unwrap_err().to_string();
        assert!(e.contains("with 1 nodes and 1 connectors needs ports 65530 to 65537"), "{e}");
    }

    #[test]
    fn a_base_port_too_high_or_zero_is_refused_with_the_range() {
        assert_eq!(from_base(65524, 3, 0).unwrap().nodes.last().unwrap().rpc, 65535);
        let e = from_base(65525, 3, 0).unwrap_err().to_string();
        assert!(e.contains("needs ports 65525 to 65536; pick a base from 1 to 65524"), "{e}");
        assert!(from_base(0, 1, 0).is_err());
    }

    #[test]
    fn free_ports_are_distinct_per_protocol() {
        let plan = free(4, 2).unwrap();
        let mut tcp: Vec<u16> = plan.nodes.iter().flat_map(|p| [p.client, p.admin]).collect();
        let mut udp: Vec<u16> = plan.nodes.iter().flat_map(|p| [p.gossip, p.rpc]).collect();
        tcp.extend(plan.connectors.iter().map(|c| c.admin));
        udp.extend(plan.connectors.iter().flat_map(|c| [c.gossip, c.rpc, c.wan]));
        tcp.sort();
        tcp.dedup();
        udp.sort();
        udp.dedup();
        assert_eq!((tcp.len(), udp.len()), (10, 14));
    }

    #[test]
    fn a_taken_port_is_named_with_its_node() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let plan = Plan {
            nodes: vec![
                NodePorts { client: 0, admin: 0, gossip: 0, rpc: 0 },
                NodePorts { client: 0, admin: port, gossip: 0, rpc: 0 },
            ],
            connectors: Vec::new(),
        };
        let e = check_free(&plan, &["n1".into(), "n2".into()], &[]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("port {port} (admin port of n2, from --base-port) cannot be bound")),
            "{e}"
        );
    }
}
