//! Command-line flags, derived from the settings table so that every setting has a flag.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::LoadOptions;
use crate::config::settings::{Kind, SETTINGS};
use crate::demo::{DemoOptions, MAX_DATACENTERS, MAX_NODES};

/// What the user asked for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a node.
    Run { load: LoadOptions, dev: bool },
    /// Check the health of a running node; `admin_addr` None means "from the config".
    /// `ready`: ask `/v1/ready` (caught up) instead of `/v1/health`.
    Health { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration, ready: bool },
    /// Show a running node's status.
    Status { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration, format: MembersFormat },
    /// List the members a running node knows.
    Members { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration, format: MembersFormat },
    /// Run a local cluster of node processes.
    Demo(DemoOptions),
}

/// How `members` prints the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembersFormat {
    /// An aligned table for people.
    Table,
    /// The `/v1/members` JSON, for scripts.
    Json,
}

fn admin_addr_arg(what: &str) -> Arg {
    Arg::new("admin-addr").long("admin-addr").value_name("ADDR").help(format!(
        "Admin address of the node to {what} [default: admin_addr from the config, 127.0.0.1:9379]"
    ))
}

fn timeout_arg() -> Arg {
    Arg::new("timeout")
        .long("timeout")
        .value_name("DURATION")
        .default_value("3s")
        .help("Give up after this long")
}

fn parse_admin_addr(m: &ArgMatches) -> Result<Option<SocketAddr>, String> {
    m.get_one::<String>("admin-addr")
        .map(|a| a.parse().map_err(|_| format!("--admin-addr {a:?} is not an address like 127.0.0.1:9379")))
        .transpose()
}

fn parse_timeout(m: &ArgMatches) -> Result<Duration, String> {
    let timeout = m.get_one::<String>("timeout").expect("has a default");
    humantime::parse_duration(timeout).map_err(|e| format!("--timeout {timeout:?}: {e}"))
}

const ABOUT: &str = "OpenCluster node: a clustered, disk-backed data service that speaks the Redis protocol.

Every setting can also be given in the config file (TOML key shown by `docs/configuration.md`) and as an
OPENCLUSTER_* environment variable. Precedence: flags > environment > conf.d/*.toml > config file > --dev defaults > built-in defaults.";

pub fn command() -> Command {
    let mut cmd = Command::new("opencluster-node")
        .version(crate::VERSION)
        .about("OpenCluster node: a clustered, disk-backed data service that speaks the Redis protocol")
        .long_about(ABOUT)
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .global(true)
                .help("Config file (TOML); its directory's conf.d/*.toml are read too [default: /etc/opencluster/opencluster.toml] [env: OPENCLUSTER_CONFIG]"),
        )
        .arg(
            Arg::new("dev")
                .long("dev")
                .action(ArgAction::SetTrue)
                .help("Run a complete single node for development: loopback listeners, a temporary data directory, the INSECURE default keys; other flags override these defaults"),
        )
        .subcommand(
            Command::new("health")
                .about("Exit 0 if the node's admin API reports healthy (for container HEALTHCHECK)")
                .arg(admin_addr_arg("check"))
                .arg(timeout_arg())
                .arg(
                    Arg::new("ready")
                        .long("ready")
                        .action(ArgAction::SetTrue)
                        .help("Exit 0 only if the node is ready (its /v1/ready): healthy, in a cluster when told to join one, and done copying the partitions it owns; for rolling updates and readiness probes"),
                ),
        )
        .subcommand(
            Command::new("status")
                .about("Show a running node's status (its /v1/status): members, placement, store, rebalance progress")
                .arg(admin_addr_arg("ask"))
                .arg(timeout_arg())
                .arg(format_arg(
                    "text",
                    "text: a few lines, rebalance as a progress bar; json: /v1/status as the node answers it",
                )),
        )
        .subcommand(
            Command::new("members")
                .about("List the cluster members a running node knows (its /v1/members)")
                .long_about(
                    "List the cluster members a running node knows, from its admin API (/v1/members): name, \
                     gossip address, status (alive, suspect, down, left), role, datacenter, version and node id, \
                     the node asked first. Exits 1 with a message when the node cannot be reached.",
                )
                .arg(admin_addr_arg("ask"))
                .arg(timeout_arg())
                .arg(format_arg("table", "table: aligned columns; json: the /v1/members JSON as the node answers it")),
        )
        .subcommand(demo_command());
    for s in SETTINGS {
        let mut arg = Arg::new(s.key)
            .long(s.flag())
            .help(format!("{} [env: {}]", s.help, s.env()))
            .value_name(value_name(s.kind));
        if s.kind == Kind::Bool {
            arg = arg.num_args(0..=1).default_missing_value("true");
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

const DEMO_ABOUT: &str = "Run a local cluster of N nodes as processes on this machine, for trying OpenCluster without Docker.

Each node is a child process of this program started as a --dev node: loopback ports of its own (free ones, \
or consecutive ones from --base-port), a data directory and a log file (n1.log, n2.log, ...) in the demo \
directory, the INSECURE default keys; every node joins the first. The demo waits until every node is healthy \
and places partitions on all N, then prints each node's client and admin address and how to connect.

A node that exits while the demo runs is reported with the end of its log; the others keep running, as a real \
cluster would. Ctrl-C (SIGINT) or SIGTERM stops every node with SIGTERM (each leaves the cluster and flushes), \
kills those still running after --stop-timeout (or at a second Ctrl-C), and removes the demo directory unless \
--data-dir named it. If a node does not come up, the demo stops the others, shows the end of that node's log \
and keeps the directory.

The nodes ignore OPENCLUSTER_* environment variables and read a config file only when --config names one; \
give them settings after `--`, e.g.
  opencluster-node demo --nodes 5 -- --store-fsync always --log-level debug

With --datacenters 2 (or 3) the demo runs that many datacenters, dc1, dc2 (and dc3), of N nodes each, and \
one connector per datacenter: opencluster-connector, which must be beside this program (as cargo builds it). \
Each datacenter's nodes gossip among themselves only (dc1-n1.log, ..., dc1-connector.log, ...); the connectors \
link every pair of datacenters over loopback and copy each datacenter's writes to the others. Everything runs \
on the INSECURE default keys, which cover dc1, dc2 and dc3. The nodes get store.apply_delay = 20ms (unless \
--config is given) so that writes cross quickly. The demo prints each datacenter's nodes with their redis-cli \
lines and its connector's `status` command, e.g.
  opencluster-node demo --datacenters 2 --nodes 3
  redis-cli -p <a dc1 port> set hello world; redis-cli -p <a dc2 port> get hello

Exit status: 0 after a clean stop; 1 if a node did not come up, exited while the demo ran or had to be \
killed, or the connector binary is missing; 2 for invalid flags.";

fn demo_command() -> Command {
    Command::new("demo")
        .about(
            "Run a local cluster of N node processes on this machine (or several datacenters with a connector \
             each), for trying OpenCluster without Docker",
        )
        .long_about(DEMO_ABOUT)
        .arg(
            Arg::new("nodes")
                .long("nodes")
                .value_name("N")
                .default_value("3")
                .value_parser(clap::value_parser!(u8).range(1..=MAX_NODES as i64))
                .help(format!("How many nodes to run (per datacenter), 1 to {MAX_NODES}")),
        )
        .arg(
            Arg::new("datacenters")
                .long("datacenters")
                .value_name("D")
                .default_value("1")
                .value_parser(clap::value_parser!(u8).range(1..=MAX_DATACENTERS as i64))
                .help(format!(
                    "How many datacenters, 1 to {MAX_DATACENTERS}; with more than one, each gets a connector \
                     (opencluster-connector, from beside this program)"
                )),
        )
        .arg(
            Arg::new("base-port")
                .long("base-port")
                .value_name("PORT")
                .value_parser(clap::value_parser!(u16).range(1..))
                .help(
                    "Use 4*N consecutive ports from PORT instead of free ones: client ports PORT.., then admin, \
                     gossip and rpc ports, N of each (with 3 nodes from 7000: redis-cli -p 7000, 7001, 7002); with \
                     D datacenters N is D times --nodes, and the connectors' admin, gossip, rpc and WAN ports \
                     follow, D of each",
                ),
        )
        .arg(Arg::new("data-dir").long("data-dir").value_name("DIR").help(
            "Keep the nodes' data directories and logs in DIR (created if missing; a later demo on the same DIR \
             finds its data again) [default: a temporary directory removed when the demo stops]",
        ))
        .arg(
            Arg::new("replicas")
                .long("replicas")
                .value_name("N")
                .value_parser(clap::value_parser!(u32).range(1..))
                .help("Copies of each partition, for every node (cluster.replicas) [default: 3; fewer while there are fewer nodes]"),
        )
        .arg(
            Arg::new("start-timeout")
                .long("start-timeout")
                .value_name("DURATION")
                .default_value("60s")
                .help("Give up when the nodes are not all ready after this long"),
        )
        .arg(
            Arg::new("stop-timeout")
                .long("stop-timeout")
                .value_name("DURATION")
                .default_value("30s")
                .help("Kill nodes still running this long after SIGTERM (a node drains for up to its shutdown_timeout, 10s)"),
        )
        .arg(
            Arg::new("node-args")
                .value_name("NODE FLAGS")
                .num_args(0..)
                .last(true)
                .allow_hyphen_values(true)
                .help("Flags given to every node after `--`, as for `opencluster-node` itself"),
        )
}

/// The options of `demo` from its matches.
fn demo_options(m: &ArgMatches, config_file: Option<PathBuf>) -> Result<DemoOptions, String> {
    let duration = |name: &str| {
        let text = m.get_one::<String>(name).expect("has a default");
        humantime::parse_duration(text).map_err(|e| format!("--{name} {text:?}: {e}"))
    };
    Ok(DemoOptions {
        nodes: usize::from(*m.get_one::<u8>("nodes").expect("has a default")),
        datacenters: usize::from(*m.get_one::<u8>("datacenters").expect("has a default")),
        base_port: m.get_one::<u16>("base-port").copied(),
        data_dir: m.get_one::<String>("data-dir").map(PathBuf::from),
        replicas: m.get_one::<u32>("replicas").copied(),
        config_file,
        node_args: m.get_many::<String>("node-args").into_iter().flatten().cloned().collect(),
        start_timeout: duration("start-timeout")?,
        stop_timeout: duration("stop-timeout")?,
        program: std::env::args().next().unwrap_or_else(|| "opencluster-node".to_string()),
    })
}

/// `--format human|json`, where `human` names the subcommand's own readable form.
fn format_arg(human: &'static str, help: &'static str) -> Arg {
    Arg::new("format")
        .long("format")
        .value_name("FORMAT")
        .value_parser([human, "json"])
        .default_value(human)
        .help(help)
}

fn value_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "TEXT",
        Kind::Path => "PATH",
        Kind::Addr => "ADDR",
        Kind::Bool => "BOOL",
        Kind::Int => "N",
        Kind::Size => "SIZE",
        Kind::Duration => "DURATION",
        Kind::Choice(_) => "CHOICE",
        Kind::List => "LIST",
    }
}

/// The temporary data directory of a `--dev` node.
pub fn dev_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("opencluster-dev-{}", std::process::id()))
}

/// Parses arguments (exiting with clap's message on `--help` or a bad flag).
pub fn parse_from<I, T>(args: I) -> Result<Invocation, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let m = command().try_get_matches_from(args).unwrap_or_else(|e| e.exit());
    let env: Vec<(String, String)> = std::env::vars().collect();
    if let Some(d) = m.subcommand_matches("demo") {
        // Only an explicit --config reaches the demo's nodes, not OPENCLUSTER_CONFIG.
        let config_file = m.get_one::<String>("config").map(PathBuf::from);
        return Ok(Invocation::Demo(demo_options(d, config_file)?));
    }
    let config_file = m
        .get_one::<String>("config")
        .cloned()
        .or_else(|| std::env::var("OPENCLUSTER_CONFIG").ok())
        .map(PathBuf::from);
    if let Some(h) = m.subcommand_matches("health") {
        let (admin_addr, timeout) = (parse_admin_addr(h)?, parse_timeout(h)?);
        let load = LoadOptions { config_file, env, ..Default::default() };
        return Ok(Invocation::Health { load, admin_addr, timeout, ready: h.get_flag("ready") });
    }
    for name in ["status", "members"] {
        let Some(sub) = m.subcommand_matches(name) else { continue };
        let (admin_addr, timeout) = (parse_admin_addr(sub)?, parse_timeout(sub)?);
        let format = match sub.get_one::<String>("format").map(String::as_str) {
            Some("json") => MembersFormat::Json,
            _ => MembersFormat::Table,
        };
        let load = LoadOptions { config_file, env, ..Default::default() };
        return Ok(if name == "status" {
            Invocation::Status { load, admin_addr, timeout, format }
        } else {
            Invocation::Members { load, admin_addr, timeout, format }
        });
    }
    let dev = m.get_flag("dev");
    let load = LoadOptions { config_file, dev_data_dir: dev.then(dev_data_dir), env, flags: flags(&m) };
    Ok(Invocation::Run { load, dev })
}

/// The settings given as flags in `m`: (setting key, raw text).
pub(crate) fn flags(m: &ArgMatches) -> Vec<(&'static str, String)> {
    SETTINGS.iter().filter_map(|s| m.get_one::<String>(s.key).map(|v| (s.key, v.clone()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_a_flag_and_values_reach_the_loader() {
        command().debug_assert();
        let inv = parse_from([
            "opencluster-node",
            "--dev",
            "--client-addr",
            "127.0.0.1:7000",
            "--insecure-no-client-password",
            "--store-fsync",
            "always",
        ])
        .unwrap();
        let Invocation::Run { load, dev } = inv else { panic!("expected run") };
        assert!(dev);
        assert!(load.flags.contains(&("client_addr", "127.0.0.1:7000".to_string())));
        assert!(load.flags.contains(&("insecure_no_client_password", "true".to_string())));
        let config = crate::config::load(&load).unwrap();
        assert_eq!(config.client_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(config.store.fsync, crate::config::Fsync::Always);
    }

    #[test]
    fn demo_takes_its_flags_and_the_node_flags_after_a_double_dash() {
        let inv = parse_from([
            "opencluster-node",
            "demo",
            "--nodes",
            "5",
            "--base-port",
            "7000",
            "--replicas",
            "2",
            "--",
            "--store-fsync",
            "always",
        ])
        .unwrap();
        let Invocation::Demo(d) = inv else { panic!("expected demo") };
        assert_eq!((d.nodes, d.base_port, d.replicas), (5, Some(7000), Some(2)));
        assert_eq!(d.node_args, ["--store-fsync", "always"]);
        assert_eq!((d.start_timeout, d.stop_timeout), (Duration::from_secs(60), Duration::from_secs(30)));
        let Invocation::Demo(d) = parse_from(["opencluster-node", "demo"]).unwrap() else { panic!("demo") };
        assert_eq!(
            (d.nodes, d.datacenters, d.base_port, d.data_dir, d.node_args.len()),
            (3, 1, None, None, 0)
        );
        let Invocation::Demo(d) =
            parse_from(["opencluster-node", "demo", "--datacenters", "2", "--nodes", "1"]).unwrap()
        else {
            panic!("demo")
        };
        assert_eq!((d.nodes, d.datacenters), (1, 2));
        let e =
            command().try_get_matches_from(["opencluster-node", "demo", "--datacenters", "4"]).unwrap_err();
        assert!(e.to_string().contains("invalid value '4' for '--datacenters <D>'"), "{e}");
        for nodes in ["0", "17", "three"] {
            let e =
                command().try_get_matches_from(["opencluster-node", "demo", "--nodes", nodes]).unwrap_err();
            assert!(e.to_string().contains(&format!("invalid value '{nodes}' for '--nodes <N>'")), "{e}");
        }
    }

    #[test]
    fn health_takes_an_address() {
        let inv = parse_from(["opencluster-node", "health", "--admin-addr", "127.0.0.1:1"]).unwrap();
        let Invocation::Health { admin_addr, ready, .. } = inv else { panic!("expected health") };
        assert!(!ready);
        assert_eq!(admin_addr, Some("127.0.0.1:1".parse().unwrap()));
        assert!(parse_from(["opencluster-node", "health", "--admin-addr", "nowhere"]).is_err());
        let inv = parse_from(["opencluster-node", "health", "--ready"]).unwrap();
        assert!(matches!(inv, Invocation::Health { ready: true, admin_addr: None, .. }));
    }

    #[test]
    fn members_takes_an_address_and_a_format() {
        let inv =
            parse_from(["opencluster-node", "members", "--admin-addr", "127.0.0.1:1", "--format", "json"])
                .unwrap();
        let Invocation::Members { admin_addr, format, .. } = inv else { panic!("expected members") };
        assert_eq!((admin_addr, format), (Some("127.0.0.1:1".parse().unwrap()), MembersFormat::Json));
        let Invocation::Members { admin_addr: None, format: MembersFormat::Table, .. } =
            parse_from(["opencluster-node", "members"]).unwrap()
        else {
            panic!("expected members with defaults")
        };
    }
}
