//! Command-line flags, derived from the settings table so that every setting has a flag.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::LoadOptions;
use crate::config::settings::{Kind, SETTINGS};

/// What the user asked for.
#[derive(Debug)]
pub enum Invocation {
    /// Run a node.
    Run { load: LoadOptions, dev: bool },
    /// Check the health of a running node; `admin_addr` None means "from the config".
    Health { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration },
    /// Show a running node's status.
    Status { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration, format: MembersFormat },
    /// List the members a running node knows.
    Members { load: LoadOptions, admin_addr: Option<SocketAddr>, timeout: Duration, format: MembersFormat },
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
                .arg(timeout_arg()),
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
        );
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
    let config_file = m
        .get_one::<String>("config")
        .cloned()
        .or_else(|| std::env::var("OPENCLUSTER_CONFIG").ok())
        .map(PathBuf::from);
    if let Some(h) = m.subcommand_matches("health") {
        let (admin_addr, timeout) = (parse_admin_addr(h)?, parse_timeout(h)?);
        let load = LoadOptions { config_file, env, ..Default::default() };
        return Ok(Invocation::Health { load, admin_addr, timeout });
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

fn flags(m: &ArgMatches) -> Vec<(&'static str, String)> {
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
    fn health_takes_an_address() {
        let inv = parse_from(["opencluster-node", "health", "--admin-addr", "127.0.0.1:1"]).unwrap();
        let Invocation::Health { admin_addr, .. } = inv else { panic!("expected health") };
        assert_eq!(admin_addr, Some("127.0.0.1:1".parse().unwrap()));
        assert!(parse_from(["opencluster-node", "health", "--admin-addr", "nowhere"]).is_err());
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
