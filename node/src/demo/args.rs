//! The command line of each demo node, and its check before anything starts.

use std::path::{Path, PathBuf};

use super::ports::NodePorts;
use super::{DemoError, DemoOptions};

/// The command line of node `i` (0-based).
pub fn node_args(
    opts: &DemoOptions,
    dir: &Path,
    i: usize,
    ports: &NodePorts,
    first: &NodePorts,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--dev".into(),
        "--node-name".into(),
        node_name(i),
        "--data-dir".into(),
        dir.join(node_name(i)).display().to_string(),
        "--client-addr".into(),
        ports.client_addr().to_string(),
        "--admin-addr".into(),
        ports.admin_addr().to_string(),
        "--gossip-addr".into(),
        ports.gossip_addr().to_string(),
        "--rpc-addr".into(),
        ports.rpc_addr().to_string(),
    ];
    if i > 0 {
        a.extend(["--join".into(), first.gossip_addr().to_string()]);
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

pub fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
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
                "{first} (the demo itself gives each node --dev, --node-name, --data-dir, --join and its four \
                 addresses)"
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
        let plan = ports::from_base(7000, 3).unwrap();
        let mut o = opts();
        o.replicas = Some(2);
        o.node_args = vec!["--store-fsync".into(), "always".into()];
        let first = node_args(&o, Path::new("/d"), 0, &plan[0], &plan[0]);
        assert!(!first.contains(&"--join".to_string()), "{first:?}");
        let third = node_args(&o, Path::new("/d"), 2, &plan[2], &plan[0]);
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
        let plan = ports::from_base(7000, 2).unwrap();
        let mut o = opts();
        for (extra, expected) in [
            (vec!["--client-addr", "127.0.0.1:1"], "'--client-addr <ADDR>' cannot be used multiple times"),
            (vec!["--no-such-flag"], "unexpected argument '--no-such-flag'"),
            (vec!["members"], "`members` is a subcommand, not a node flag"),
            (vec!["--log-format", "yaml"], "invalid setting `log_format` (from --log-format)"),
        ] {
            o.node_args = extra.iter().map(|s| s.to_string()).collect();
            let e = check_node_args(&node_args(&o, Path::new("/d"), 1, &plan[1], &plan[0])).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("the node flags after `--`: ") && text.contains(expected), "{text}");
            assert_eq!(e.exit_code(), 2);
        }
    }
}
