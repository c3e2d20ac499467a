//! What a demo runs: its datacenters, each with its nodes and (with several datacenters)
//! one connector, their names, ports and command lines.
//!
//! With one datacenter the nodes are `n1`, `n2`, ... of the default datacenter and there
//! is no connector, as the demo has always been. With several, datacenter `dcK` has nodes
//! `dcK-n1`, ... and a connector `dcK-connector` that joins them and links to every other
//! datacenter's connector over loopback: a full mesh, on the INSECURE default keys of
//! each datacenter.

use std::net::SocketAddr;
use std::path::Path;

use super::DemoOptions;
use super::args::{connector_args, node_args};
use super::ports::{ConnectorPorts, NodePorts, Plan};

/// Most datacenters a demo runs: the default keys cover dc1, dc2 and dc3.
pub const MAX_DATACENTERS: usize = 3;

/// One demo datacenter.
#[derive(Clone, Debug)]
pub struct Datacenter {
    /// `dc1`, `dc2`, ...; `None` for the single datacenter of a one-datacenter demo (the
    /// nodes take the default, dc1).
    pub name: Option<String>,
    pub nodes: Vec<(String, NodePorts)>,
    pub connector: Option<(String, ConnectorPorts)>,
}

impl Datacenter {
    /// `dcK` or the default datacenter's name, for messages.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("dc1")
    }
}

/// The demo's datacenters, from its options and ports (`plan.nodes` datacenter by
/// datacenter, `plan.connectors` one per datacenter when there are several).
pub fn datacenters(opts: &DemoOptions, plan: &Plan) -> Vec<Datacenter> {
    let several = opts.datacenters > 1;
    (0..opts.datacenters)
        .map(|d| {
            let name = several.then(|| format!("dc{}", d + 1));
            let node_name = |i: usize| match &name {
                Some(dc) => format!("{dc}-n{}", i + 1),
                None => format!("n{}", i + 1),
            };
            let nodes = (0..opts.nodes).map(|i| (node_name(i), plan.nodes[d * opts.nodes + i])).collect();
            let connector = name.as_ref().map(|dc| (format!("{dc}-connector"), plan.connectors[d]));
            Datacenter { name, nodes, connector }
        })
        .collect()
}

/// Whether a demo process of this name is a connector (nodes are `nK` or `dcK-nK`).
pub fn is_connector(name: &str) -> bool {
    name.ends_with("-connector")
}

/// The names of every node and every connector, in plan order.
pub fn names(dcs: &[Datacenter]) -> (Vec<String>, Vec<String>) {
    let nodes = dcs.iter().flat_map(|d| d.nodes.iter().map(|(n, _)| n.clone())).collect();
    let connectors = dcs.iter().filter_map(|d| d.connector.as_ref().map(|(n, _)| n.clone())).collect();
    (nodes, connectors)
}

/// The command line of every node, datacenter by datacenter: each joins the first node
/// of its datacenter.
pub fn all_node_args(opts: &DemoOptions, dir: &Path, dcs: &[Datacenter]) -> Vec<Vec<String>> {
    dcs.iter()
        .flat_map(|dc| {
            let seed = dc.nodes[0].1.gossip_addr();
            dc.nodes.iter().enumerate().map(move |(i, (name, ports))| {
                node_args(opts, dir, name, dc.name.as_deref(), ports, (i > 0).then_some(seed))
            })
        })
        .collect()
}

/// The command line of every connector (none with one datacenter).
pub fn all_connector_args(opts: &DemoOptions, dir: &Path, dcs: &[Datacenter]) -> Vec<Vec<String>> {
    let wan: Vec<(String, SocketAddr)> =
        dcs.iter().filter_map(|d| Some((d.name.clone()?, d.connector.as_ref()?.1.wan_addr()))).collect();
    dcs.iter()
        .filter_map(|dc| {
            let (name, ports) = dc.connector.as_ref()?;
            let own = dc.name.as_deref()?;
            let peers: Vec<(String, SocketAddr)> = wan.iter().filter(|(d, _)| d != own).cloned().collect();
            Some(connector_args(opts, dir, name, own, ports, dc.nodes[0].1.gossip_addr(), &peers))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::ports;
    use crate::demo::tests::opts;

    #[test]
    fn two_datacenters_have_their_nodes_and_a_connector_linked_to_the_other() {
        let mut o = opts();
        o.nodes = 2;
        o.datacenters = 2;
        let plan = ports::from_base(7000, 4, 2).unwrap();
        let dcs = datacenters(&o, &plan);
        let (nodes, connectors) = names(&dcs);
        assert_eq!(nodes, ["dc1-n1", "dc1-n2", "dc2-n1", "dc2-n2"]);
        assert_eq!(connectors, ["dc1-connector", "dc2-connector"]);
        let args = all_node_args(&o, Path::new("/d"), &dcs);
        let dc2_n2 = args[3].join(" ");
        assert!(dc2_n2.contains("--node-name dc2-n2 --datacenter dc2 --data-dir /d/dc2-n2"), "{dc2_n2}");
        // dc2-n1's gossip port: nodes' gossip ports start at 7008.
        assert!(dc2_n2.contains("--join 127.0.0.1:7010"), "{dc2_n2}");
        let c = all_connector_args(&o, Path::new("/d"), &dcs);
        let dc1 = c[0].join(" ");
        assert!(dc1.contains("--datacenter dc1") && dc1.contains("--join 127.0.0.1:7008"), "{dc1}");
        assert!(
            dc1.contains("--wan-addr 127.0.0.1:7022 ") && dc1.ends_with("--peer dc2=127.0.0.1:7023"),
            "{dc1}"
        );
        assert!(c[1].join(" ").contains("--peer dc1=127.0.0.1:7022"), "{:?}", c[1]);
    }

    #[test]
    fn one_datacenter_keeps_the_plain_names_and_has_no_connector() {
        let plan = ports::from_base(7000, 3, 0).unwrap();
        let dcs = datacenters(&opts(), &plan);
        assert_eq!(names(&dcs), (vec!["n1".into(), "n2".into(), "n3".into()], vec![]));
        assert!(all_connector_args(&opts(), Path::new("/d"), &dcs).is_empty());
        assert!(!all_node_args(&opts(), Path::new("/d"), &dcs)[0].contains(&"--datacenter".to_string()));
    }
}
