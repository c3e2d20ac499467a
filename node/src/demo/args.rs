//! The command line of each demo node and connector, and the nodes' check before anything
//! starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::ports::{ConnectorPorts, NodePorts};
use super::{DemoError, DemoOptions};

/// The command line of node `name` of datacenter `dc` (`None`: the default one), joining
/// `seed` unless it is the first.
pub fn node_args(
    opts: &DemoOptions,
    dir: &Path,
    name: &str,
    dc: Option<&str>,
    ports: &NodePorts,
    seed: Option<SocketAddr>,
) -> Vec<String> {
    let mut a: Vec<String> = vec!["--dev".into(), "--node-name".into(), name.into()];
    if let Some(dc) = dc {
        a.extend(["--datacenter".into(), dc.into()]);
    }
    a.extend([
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--client-addr".into(),
        ports.client_addr().to_string(),
        "--admin-addr".into(),
        ports.admin_addr().to_string(),
        "--gossip-addr".into(),
        ports.gossip_addr().to_string(),
        "--rpc-addr".into(),
        ports.rpc_addr().to_string(),
    ]);
    if let Some(seed) = seed {
        a.extend(["--join".into(), seed.to_string()]);
    }
    if let Some(r) = opts.replicas {
        a.extend(["--cluster-replicas".into(), r.to_string()]);
    }
    if let Some(c) = &opts.config_file {
        a.extend(["--config".into(), c.display().to_string()]);
    }
    a.extend(opts.node_args.iter().cloned());
    a
}

/// The command line of connector `name` of datacenter `dc`: it joins its datacenter at
/// `seed` and links to `peers` (the other datacenters' WAN addresses). The flags after
/// `--` are node flags and do not reach it; `--config` does.
pub fn connector_args(
    opts: &DemoOptions,
    dir: &Path,
    name: &str,
    dc: &str,
    ports: &ConnectorPorts,
    seed: SocketAddr,
    peers: &[(String, SocketAddr)],
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--dev".into(),
        "--node-name".into(),
        name.into(),
        "--datacenter".into(),
        dc.into(),
        "--data-dir".into(),
        dir.join(name).display().to_string(),
        "--admin-addr".into(),
        ports.admin_addr().to_string(),
        "--gossip-addr".into(),
        ports.gossip_addr().to_string(),
        "--rpc-addr".into(),
        ports.rpc_addr().to_string(),
        "--wan-addr".into(),
        ports.wan_addr().to_string(),
        "--join".into(),
        seed.to_string(),
    ];
    for (remote, addr) in peers {
        a.extend(["--peer".into(), format!("{remote}={addr}")]);
    }
    if let Some(c) = &opts.config_file {
        a.extend(["--config".into(), c.display().to_string()]);
    }
    a
}

/// Parses a node's command line and loads its config as the node will, so that a wrong
/// flag or value after `--` (or in `--config`) is reported once, before anything starts.
pub fn check_node_args(args: &[String]) -> Result<(), DemoError> {
    let matches = crate::cli::command()
        .try_get_matches_from(std::iter::once("opencluster-node").chain(args.iter().map(String::as_str)));
    let problem = match matches {
        Ok(m) => match m.subcommand_name() {
            Some(sub) => format!("`{sub}` is a subcommand, not a node flag"),
            None => {
                // The values too, as the node checks them at start (the data directory is
                // not touched).
                let load = crate::config::LoadOptions {
                    config_file: m.get_one::<String>("config").map(PathBuf::from),
                    dev_data_dir: Some(PathBuf::from("demo")),
                    env: Vec::new(),
                    flags: crate::cli::flags(&m),
                };
                match crate::config::load(&load) {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                }
            }
        },
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            format!(
                "{first} (the demo itself gives each node --dev, --node-name, --data-dir, --join, its four \
                 addresses and, with several datacenters, --datacenter)"
            )
        }
    };
    Err(DemoError::Flags(format!("the node flags after `--`: {problem}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::ports;
    use crate::demo::tests::opts;

    #[test]
    fn every_node_but_the_first_joins_the_first() {
        let plan = ports::from_base(7000, 3, 0).unwrap().nodes;
        let mut o = opts();
        o.replicas = Some(2);
        o.node_args = vec!["--store-fsync".into(), "always".into()];
        let first = node_args(&o, Path::new("/d"), "n1", None, &plan[0], None);
        assert!(!first.contains(&"--join".to_string()), "{first:?}");
        let third = node_args(&o, Path::new("/d"), "n3", None, &plan[2], Some(plan[0].gossip_addr()));
        let text = third.join(" ");
        assert!(
            text.starts_with("--dev --node-name n3 --data-dir /d/n3 --client-addr 127.0.0.1:7002"),
            "{text}"
        );
        assert!(
            text.contains("--gossip-addr 127.0.0.1:7008 --rpc-addr 127.0.0.1:7011 --join 127.0.0.1:7006"),
            "{text}"
        );
        assert!(text.ends_with("--cluster-replicas 2 --store-fsync always"), "{text}");
        check_node_args(&third).unwrap();
    }

    #[test]
    fn node_flags_the_demo_sets_or_does_not_know_are_refused_before_starting() {
        let plan = ports::from_base(7000, 2, 0).unwrap().nodes;
        let mut o = opts();
        for (extra, expected) in [
            (vec!["--client-addr", "127.0.0.1:1"], "'--client-addr <ADDR>' cannot be used multiple times"),
            (vec!["--no-such-flag"], "unexpected argument '--no-such-flag'"),
            (vec!["members"], "`members` is a subcommand, not a node flag"),
            (vec!["--log-format", "yaml"], "invalid setting `log_format` (from --log-format)"),
        ] {
            o.node_args = extra.iter().map(|s| s.to_string()).collect();
            let args = node_args(&o, Path::new("/d"), "n2", None, &plan[1], Some(plan[0].gossip_addr()));
            let e = check_node_args(&args).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("the node flags after `--`: ") && text.contains(expected), "{text}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn a_node_of_another_datacenter_passes_the_check() {
        let plan = ports::from_base(7000, 1, 0).unwrap().nodes;
        let args = node_args(&opts(), Path::new("/d"), "dc2-n1", Some("dc2"), &plan[0], None);
        assert!(args.join(" ").starts_with("--dev --node-name dc2-n1 --datacenter dc2 --data-dir /d/dc2-n1"));
        check_node_args(&args).unwrap();
    }
}
