//! The four loopback ports of each demo node: free ones chosen by the system, or a block
//! of consecutive ports from `--base-port`.

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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Ports from `base` for `nodes` nodes, grouped by kind so that the client ports are the
/// first `nodes` ones (`redis-cli -p 7000`, `-p 7001`, ...): clients `base..`, then admin,
/// gossip and rpc ports, `nodes` of each.
pub fn from_base(base: u16, nodes: usize) -> Result<Vec<NodePorts>, DemoError> {
    let last = u32::from(base) + 4 * nodes as u32 - 1;
    if base == 0 || last > u32::from(u16::MAX) {
        return Err(DemoError::Flags(format!(
            "--base-port {base} with {nodes} nodes needs ports {base} to {last}; pick a base from 1 to {}",
            u32::from(u16::MAX) + 1 - 4 * nodes as u32
        )));
    }
    let port = |kind: usize, i: usize| base + (kind * nodes + i) as u16;
    Ok((0..nodes)
        .map(|i| NodePorts { client: port(0, i), admin: port(1, i), gossip: port(2, i), rpc: port(3, i) })
        .collect())
}

/// Checks that every port of `plan` can be bound now; the error names the node, the port
/// and what it was for.
pub fn check_free(plan: &[NodePorts]) -> Result<(), DemoError> {
    for (i, ports) in plan.iter().enumerate() {
        for (port, what, udp) in ports.each() {
            let addr = loopback(port);
            let bound = if udp { UdpSocket::bind(addr).map(drop) } else { TcpListener::bind(addr).map(drop) };
            if let Err(e) = bound {
                return Err(DemoError::Flags(format!(
                    "port {port} ({what} port of n{}, from --base-port) cannot be bound: {e}; pick another --base-port or leave it out to use free ports",
                    i + 1
                )));
            }
        }
    }
    Ok(())
}

/// Free ports for `nodes` nodes: every socket is held until all are chosen, so no two
/// are the same. They are released before the nodes bind them; another program could
/// take one in between, which the node that loses it reports at start.
pub fn free(nodes: usize) -> Result<Vec<NodePorts>, DemoError> {
    let any = loopback(0);
    let err = |e: std::io::Error| DemoError::Io { what: "choose free ports on 127.0.0.1".into(), source: e };
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut plan = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let (client, admin) = (TcpListener::bind(any).map_err(err)?, TcpListener::bind(any).map_err(err)?);
        let (gossip, rpc) = (UdpSocket::bind(any).map_err(err)?, UdpSocket::bind(any).map_err(err)?);
        plan.push(NodePorts {
            client: client.local_addr().map_err(err)?.port(),
            admin: admin.local_addr().map_err(err)?.port(),
            gossip: gossip.local_addr().map_err(err)?.port(),
            rpc: rpc.local_addr().map_err(err)?.port(),
        });
        held_tcp.extend([client, admin]);
        held_udp.extend([gossip, rpc]);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_port_gives_consecutive_ports_grouped_by_kind() {
        let plan = from_base(7000, 3).unwrap();
        let clients: Vec<u16> = plan.iter().map(|p| p.client).collect();
        assert_eq!(clients, [7000, 7001, 7002]);
        assert_eq!(plan[0], NodePorts { client: 7000, admin: 7003, gossip: 7006, rpc: 7009 });
        assert_eq!(plan[2], NodePorts { client: 7002, admin: 7005, gossip: 7008, rpc: 7011 });
    }

    #[test]
    fn a_base_port_too_high_or_zero_is_refused_with_the_range() {
        assert_eq!(from_base(65524, 3).unwrap().last().unwrap().rpc, 65535);
        let e = from_base(65525, 3).unwrap_err().to_string();
        assert!(e.contains("needs ports 65525 to 65536; pick a base from 1 to 65524"), "{e}");
        assert!(from_base(0, 1).is_err());
    }

    #[test]
    fn free_ports_are_distinct_per_protocol() {
        let plan = free(4).unwrap();
        let mut tcp: Vec<u16> = plan.iter().flat_map(|p| [p.client, p.admin]).collect();
        let mut udp: Vec<u16> = plan.iter().flat_map(|p| [p.gossip, p.rpc]).collect();
        tcp.sort();
        tcp.dedup();
        udp.sort();
        udp.dedup();
        assert_eq!((tcp.len(), udp.len()), (8, 8));
    }

    #[test]
    fn a_taken_port_is_named_with_its_node() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let plan = [
            NodePorts { client: 0, admin: 0, gossip: 0, rpc: 0 },
            NodePorts { client: 0, admin: port, gossip: 0, rpc: 0 },
        ];
        let e = check_free(&plan).unwrap_err().to_string();
        assert!(
            e.contains(&format!("port {port} (admin port of n2, from --base-port) cannot be bound")),
            "{e}"
        );
    }
}
