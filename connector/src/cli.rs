//! The connector's command line: its own flags, mapped onto the node library's settings
//! so that the config file, `conf.d/`, `OPENCLUSTER_*` env and flags layer as a node's do.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use opencluster_node::config::LoadOptions;

/// What the user asked for.
#[derive(Debug)]
pub enum Invocation {
    Run { load: LoadOptions, dev: bool },
    Status { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration, json: bool },
    Health { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration },
}

/// (flag, setting, help) of the settings a connector takes as flags.
const FLAGS: &[(&str, &str, &str)] = &[
    ("node-name", "node_name", "Name of this connector, unique in its datacenter [default: the host name]"),
    ("datacenter", "datacenter", "Datacenter this connector belongs to [default: dc1]"),
    (
        "data-dir",
        "data_dir",
        "Directory for the connector's node id (its cursors are kept at the nodes) [default: /data]",
    ),
    ("tls-dir", "tls_dir", "Directory with the cluster's keys [default: the INSECURE built-in demo keys]"),
    ("admin-addr", "admin_addr", "Admin HTTP address [default: 127.0.0.1:9379]"),
    ("gossip-addr", "gossip_addr", "Gossip (UDP) address in the datacenter [default: 0.0.0.0:7946]"),
    ("advertise", "advertise", "Gossip address peers in the datacenter use"),
    ("rpc-addr", "rpc_addr", "Peer QUIC address in the datacenter [default: 0.0.0.0:7947]"),
    ("join", "join", "Members of the datacenter to join (HOST:PORT, comma-separated; names re-resolved)"),
    (
        "wan-addr",
        "connector.wan_addr",
        "WAN QUIC address for other datacenters' connectors [default: 0.0.0.0:7948]",
    ),
    (
        "wan-advertise",
        "connector.wan_advertise",
        "The public HOST:PORT other datacenters reach this connector on",
    ),
    (
        "keyspaces-local",
        "keyspaces.local",
        "Key prefixes that never leave this datacenter, comma-separated (e.g. session:,tmp:); the same on every node and connector of the datacenter",
    ),
    (
        "keyspaces-home",
        "keyspaces.home",
        "Key prefixes that live in one home datacenter, PREFIX=DC comma-separated (e.g. users:=dc1); each DC must be this connector's or a peer's; the same in every datacenter",
    ),
    (
        "compression",
        "connector.compression",
        "Compression of batches sent to other datacenters: lz4 or none [default: lz4]",
    ),
    ("log-level", "log_level", "Log filter [default: info]"),
];

fn admin_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("admin-addr")
            .long("admin-addr")
            .value_name("ADDR")
            .help("Admin address of the connector [default: admin_addr from the config]"),
    )
    .arg(
        Arg::new("timeout")
            .long("timeout")
            .value_name("DURATION")
            .default_value("3s")
            .help("Give up after this long"),
    )
}

pub fn command() -> Command {
    let mut cmd = Command::new("opencluster-connector")
        .version(opencluster_node::VERSION)
        .about("OpenCluster connector: ships each datacenter's changes to the other datacenters over QUIC")
        .long_about(
            "OpenCluster connector: ships each datacenter's changes to the other datacenters over QUIC.\n\n\
             Run two (or more) per datacenter for high availability: the connectors of a datacenter \
             share its partitions by rendezvous hashing over the live ones in gossip, and take a \
             failed twin's share over within seconds from the cursors its nodes keep.\n\n\
             Settings come from the config file (its [connector] section and the node settings it shares), \
             conf.d/*.toml, OPENCLUSTER_* environment variables and these flags, in that order of precedence.",
        )
        .arg(Arg::new("config").long("config").value_name("FILE").global(true).help("Config file (TOML) [default: /etc/opencluster/opencluster.toml] [env: OPENCLUSTER_CONFIG]"))
        .arg(Arg::new("dev").long("dev").action(ArgAction::SetTrue).help("Development mode: loopback addresses, a temporary data directory, the INSECURE default keys"))
        .arg(
            Arg::new("peer")
                .long("peer")
                .value_name("DC=HOST:PORT")
                .action(ArgAction::Append)
                .help(
                    "Another datacenter's connector (repeatable). Repeat a datacenter to name each of its \
                     connectors (twins): batches go to one and to the next when it fails; a name that \
                     resolves to several addresses is tried address by address, and re-resolved on \
                     every dial",
                ),
        );
    for (flag, _, help) in FLAGS {
        cmd = cmd.arg(Arg::new(*flag).long(*flag).value_name("VALUE").help(*help));
    }
    cmd.subcommand(
        admin_args(Command::new("status").about("Show a running connector's links"))
            .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print the /v1/status JSON")),
    )
    .subcommand(admin_args(
        Command::new("health").about("Check a running connector's health (container HEALTHCHECK)"),
    ))
}

fn load_options(m: &ArgMatches, top: &ArgMatches, dev: bool) -> LoadOptions {
    // A connector serves no RESP clients: the node's client settings do not apply, and a
    // fixed loopback value keeps their checks quiet whatever the environment says.
    let mut flags: Vec<(&'static str, String)> = vec![("client_addr", "127.0.0.1:0".into())];
    if dev {
        // Beside a `--dev` node on the same machine, on the ports after its own.
        for (key, value) in [
            ("admin_addr", "127.0.0.1:9380"),
            ("gossip_addr", "127.0.0.1:7956"),
            ("rpc_addr", "127.0.0.1:7957"),
            ("connector.wan_addr", "127.0.0.1:7948"),
        ] {
            flags.push((key, value.into()));
        }
    }
    for (flag, key, _) in FLAGS {
        if let Some(v) = top.get_one::<String>(flag) {
            flags.push((key, v.clone()));
        }
    }
    let peers: Vec<String> = top.get_many::<String>("peer").into_iter().flatten().cloned().collect();
    if !peers.is_empty() {
        flags.push(("connector.peers", peers.join(",")));
    }
    let config_file = m
        .get_one::<String>("config")
        .cloned()
        .or_else(|| std::env::var("OPENCLUSTER_CONFIG").ok())
        .map(Into::into);
    LoadOptions {
        config_file,
        dev_data_dir: dev
            .then(|| std::env::temp_dir().join(format!("opencluster-connector-dev-{}", std::process::id()))),
        env: std::env::vars().collect(),
        flags,
    }
}

fn admin(m: &ArgMatches) -> Result<(Option<SocketAddr>, Duration), String> {
    let addr = m
        .get_one::<String>("admin-addr")
        .map(|a| a.parse().map_err(|_| format!("--admin-addr {a:?} is not an address like 127.0.0.1:9379")))
        .transpose()?;
    let t = m.get_one::<String>("timeout").expect("has a default");
    let timeout = humantime::parse_duration(t).map_err(|e| format!("--timeout {t:?}: {e}"))?;
    Ok((addr, timeout))
}

pub fn parse_from(
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<Invocation, clap::Error> {
    let top = command().try_get_matches_from(args)?;
    let dev = top.get_flag("dev");
    let invalid = |e: String| clap::Error::raw(clap::error::ErrorKind::InvalidValue, e + "\n");
    Ok(match top.subcommand() {
        Some(("status", m)) => {
            let (admin_addr, timeout) = admin(m).map_err(invalid)?;
            Invocation::Status {
                load: load_options(m, &top, false),
                admin_addr,
                timeout,
                json: m.get_flag("json"),
            }
        }
        Some(("health", m)) => {
            let (admin_addr, timeout) = admin(m).map_err(invalid)?;
            Invocation::Health { load: load_options(m, &top, false), admin_addr, timeout }
        }
        _ => Invocation::Run { load: load_options(&top, &top, dev), dev },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_settings() {
        let i = parse_from([
            "opencluster-connector",
            "--datacenter",
            "dc2",
            "--peer",
            "dc1=a.example:7948",
            "--peer",
            "dc3=10.0.0.3:7948",
            "--wan-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Invocation::Run { load, dev: false } = i else { panic!("{i:?}") };
        assert!(load.flags.contains(&("datacenter", "dc2".into())));
        assert!(load.flags.contains(&("connector.wan_addr", "127.0.0.1:0".into())));
        assert!(load.flags.contains(&("connector.peers", "dc1=a.example:7948,dc3=10.0.0.3:7948".into())));
    }
}
