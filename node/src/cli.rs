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
                .arg(Arg::new("admin-addr").long("admin-addr").value_name("ADDR").help(
                    "Admin address of the node to check [default: admin_addr from the config, 127.0.0.1:9379]",
                ))
                .arg(Arg::new("timeout").long("timeout").value_name("DURATION").default_value("3s").help("Give up after this long")),
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
        let admin_addr = h
            .get_one::<String>("admin-addr")
            .map(|a| {
                a.parse().map_err(|_| format!("--admin-addr {a:?} is not an address like 127.0.0.1:9379"))
            })
            .transpose()?;
        let timeout = h.get_one::<String>("timeout").expect("has a default");
        let timeout =
            humantime::parse_duration(timeout).map_err(|e| format!("--timeout {timeout:?}: {e}"))?;
        let load = LoadOptions { config_file, env, ..Default::default() };
        return Ok(Invocation::Health { load, admin_addr, timeout });
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
}
