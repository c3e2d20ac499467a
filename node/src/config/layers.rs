//! Reading the layers of configuration and merging them into one [`Config`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::settings::{SETTINGS, Setting};
use super::{Config, ConfigError};

/// The default config file; its directory's `conf.d/` is read too.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/opencluster/opencluster.toml";

/// Everything [`load`] reads besides files.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config`: a file that must exist. `None`: the default file if it exists (not in dev mode).
    pub config_file: Option<PathBuf>,
    /// `--dev`: loopback listeners and this (temporary) data directory, below every other layer.
    pub dev_data_dir: Option<PathBuf>,
    /// Environment variables (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
    /// Settings given as flags: (setting key, raw text).
    pub flags: Vec<(&'static str, String)>,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Setting(#[from] ConfigError),
}

/// Merges defaults, dev defaults, the config file, `conf.d/*.toml`, env and flags; then
/// validates.
pub fn load(opts: &LoadOptions) -> Result<Config, LoadError> {
    let (mut config, sources) = merge_layers(opts)?;
    config.budget = super::memory::apply(&mut config, &sources, super::memory::own_cgroup_limit());
    config.validate().map_err(|mut e| {
        e.source_hint = source_hint(&sources, &e.setting);
        e
    })?;
    Ok(config)
}

/// Reads the layers without the cross-setting checks of [`Config::validate`]: for tools
/// that need one setting of a node's config (the `health` subcommand reads `admin_addr`).
pub fn load_unvalidated(opts: &LoadOptions) -> Result<Config, LoadError> {
    merge_layers(opts).map(|(config, _)| config)
}

fn merge_layers(opts: &LoadOptions) -> Result<(Config, HashMap<String, String>), LoadError> {
    let mut table = toml::Table::new();
    let mut sources: HashMap<String, String> = HashMap::new();

    if let Some(dir) = &opts.dev_data_dir {
        let dev = [
            ("client_addr", "127.0.0.1:6379".to_string()),
            ("admin_addr", "127.0.0.1:9379".to_string()),
            ("gossip_addr", "127.0.0.1:7946".to_string()),
            ("rpc_addr", "127.0.0.1:7947".to_string()),
            ("data_dir", dir.display().to_string()),
        ];
        for (key, value) in dev {
            set(&mut table, key, toml::Value::String(value));
            sources.insert(key.into(), "--dev".into());
        }
    }

    for file in config_files(opts)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| LoadError::File { path: file.clone(), message: e.to_string() })?;
        let parsed: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| LoadError::File { path: file.clone(), message: e.to_string() })?;
        merge(&mut table, parsed, "", &format!("file {}", file.display()), &mut sources);
    }

    let env: HashMap<&str, &str> = opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for setting in SETTINGS {
        let name = setting.env();
        if let Some(raw) = env.get(name.as_str()) {
            apply(&mut table, &mut sources, setting, raw, &name)?;
        }
    }
    for (key, raw) in &opts.flags {
        let setting = Setting::find(key).expect("flags are built from SETTINGS");
        apply(&mut table, &mut sources, setting, raw, &format!("--{}", setting.flag()))?;
    }

    let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let setting = e.path().to_string();
        let source_hint = source_hint(&sources, &setting);
        // toml appends its own "in `key`" line; the setting is named already.
        let message = e.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().trim().to_string();
        ConfigError { setting, message, source_hint }
    })?;
    Ok((config, sources))
}

fn source_hint(sources: &HashMap<String, String>, setting: &str) -> String {
    sources.get(setting).map(|s| format!(" (from {s})")).unwrap_or_default()
}

/// The config file and its `conf.d/*.toml` in name order.
fn config_files(opts: &LoadOptions) -> Result<Vec<PathBuf>, LoadError> {
    let main = match &opts.config_file {
        Some(path) => {
            if !path.is_file() {
                return Err(LoadError::File { path: path.clone(), message: "no such file".into() });
            }
            path.clone()
        }
        None if opts.dev_data_dir.is_some() => return Ok(Vec::new()),
        None => PathBuf::from(DEFAULT_CONFIG_FILE),
    };
    let mut files = Vec::new();
    if main.is_file() {
        files.push(main.clone());
    }
    let conf_d = main.parent().unwrap_or(Path::new(".")).join("conf.d");
    if let Ok(entries) = std::fs::read_dir(&conf_d) {
        let mut extra: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        extra.sort();
        files.extend(extra);
    }
    Ok(files)
}

fn apply(
    table: &mut toml::Table,
    sources: &mut HashMap<String, String>,
    setting: &Setting,
    raw: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let value = setting.to_value(raw).map_err(|message| ConfigError {
        setting: setting.key.into(),
        message,
        source_hint: format!(" (from {origin})"),
    })?;
    set(table, setting.key, value);
    sources.insert(setting.key.into(), origin.into());
    Ok(())
}

/// Sets a dotted key, creating the tables on its way.
fn set(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut t = table;
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("settings tables are tables");
    }
    t.insert(last.into(), value);
}

/// Deep-merges `over` into `base`, recording where each leaf came from.
fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    source: &str,
    sources: &mut HashMap<String, String>,
) {
    for (k, v) in over {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o, &path, source, sources),
            (None, toml::Value::Table(o)) => {
                let mut fresh = toml::Table::new();
                merge(&mut fresh, o, &path, source, sources);
                base.insert(k, toml::Value::Table(fresh));
            }
            (_, v) => {
                sources.insert(path, source.into());
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::Kind;
    use crate::config::{ByteSize, Fsync};
    use std::time::Duration;

    fn dev() -> LoadOptions {
        LoadOptions { dev_data_dir: Some("/tmp/dev".into()), ..Default::default() }
    }

    #[test]
    fn dev_defaults_are_loopback_and_flags_override_them() {
        let c = load(&dev()).unwrap();
        assert_eq!(c.client_addr, Some("127.0.0.1:6379".parse().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/dev"));
        let mut o = dev();
        o.flags = vec![("client_addr", "127.0.0.1:7000".into()), ("data_dir", "/d".into())];
        let c = load(&o).unwrap();
        assert_eq!(c.client_addr, Some("127.0.0.1:7000".parse().unwrap()));
        assert_eq!(c.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn layers_apply_in_order_file_conf_d_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("opencluster.toml");
        std::fs::write(
            &main,
            "datacenter = \"file\"\nclient_addr = \"127.0.0.1:1\"\n[store]\nfsync = \"always\"\npartitions = 64\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(dir.path().join("conf.d/20-b.toml"), "datacenter = \"confd-b\"\n").unwrap();
        std::fs::write(
            dir.path().join("conf.d/10-a.toml"),
            "datacenter = \"confd-a\"\n[limits]\nmax_clients = 5\n",
        )
        .unwrap();
        let opts = LoadOptions {
            config_file: Some(main),
            env: vec![
                ("OPENCLUSTER_LIMITS_MAX_CLIENTS".into(), "7".into()),
                ("OPENCLUSTER_STORE_FSYNC_INTERVAL".into(), "250ms".into()),
                ("OPENCLUSTER_LIMITS_MAX_VALUE_BYTES".into(), "1MiB".into()),
            ],
            flags: vec![("limits.max_clients", "9".into())],
            ..Default::default()
        };
        let c = load(&opts).unwrap();
        assert_eq!(c.datacenter, "confd-b");
        assert_eq!(c.store.fsync, Fsync::Always);
        assert_eq!(c.store.partitions, 64);
        assert_eq!(c.limits.max_clients, 9);
        assert_eq!(c.limits.max_value_bytes, ByteSize(1 << 20));
        assert_eq!(c.store.fsync_interval, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_the_setting_and_where_it_came_from() {
        let mut o = dev();
        o.env = vec![("OPENCLUSTER_STORE_FSYNC".into(), "sometimes".into())];
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains("`store.fsync`") && e.contains("OPENCLUSTER_STORE_FSYNC"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[store]\nfsync_interval = \"soon\"\n").unwrap();
        let e = load(&LoadOptions { config_file: Some(f.clone()), ..dev() }).unwrap_err().to_string();
        assert!(e.contains("`store.fsync_interval`") && e.contains(&f.display().to_string()), "{e}");

        std::fs::write(&f, "[store]\nengine = \"rocksdb\"\n").unwrap();
        let e = load(&LoadOptions { config_file: Some(f.clone()), ..dev() }).unwrap_err().to_string();
        assert!(e.contains("`store.engine`") && e.contains("lmdb"), "{e}");
        let mut o = dev();
        o.env = vec![("OPENCLUSTER_STORE_ENGINE".into(), "rocksdb".into())];
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains("`store.engine`") && e.contains("OPENCLUSTER_STORE_ENGINE"), "{e}");
        let mut o = dev();
        o.flags = vec![("store.engine", "redb".into())];
        assert_eq!(load(&o).unwrap().store.engine, crate::config::StoreEngine::Redb);

        std::fs::write(&f, "[store]\nfsink = \"always\"\n").unwrap();
        let e = load(&LoadOptions { config_file: Some(f.clone()), ..dev() }).unwrap_err().to_string();
        assert!(e.contains("store") && e.contains("unknown field `fsink`"), "{e}");

        let mut o = dev();
        o.flags = vec![("client_addr", "0.0.0.0:6379".into())];
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains("`client_password`") && e.contains("--insecure-no-client-password"), "{e}");
    }

    #[test]
    fn the_documented_example_config_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/examples/opencluster.toml");
        let c = load(&LoadOptions { config_file: Some(example.into()), ..Default::default() }).unwrap();
        assert_eq!(c.client_password.as_deref(), Some("change-me"));
        assert_eq!(c.store.fsync, Fsync::Always);
        assert_eq!(c.log_format, crate::config::LogFormat::Json);
        assert_eq!(c.join, ["10.0.0.4:7946", "10.0.0.6:7946"]);
        assert_eq!(c.advertise, Some("10.0.0.5:7946".parse().unwrap()));
    }

    #[test]
    fn join_comes_from_a_comma_separated_env_or_flag() {
        let mut o = dev();
        o.env = vec![("OPENCLUSTER_JOIN".into(), "10.0.0.4:7946, seed.example:7946".into())];
        assert_eq!(load(&o).unwrap().join, ["10.0.0.4:7946", "seed.example:7946"]);
        o.flags = vec![("join", "10.0.0.9:7946".into())];
        assert_eq!(load(&o).unwrap().join, ["10.0.0.9:7946"]);
        assert_eq!(load(&dev()).unwrap().gossip_addr, Some("127.0.0.1:7946".parse().unwrap()));
        o.flags = vec![("join", "seed.example".into())];
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains("`join`") && e.contains("host:port"), "{e}");
    }

    #[test]
    fn an_empty_join_falls_back_to_join_service_from_the_environment() {
        let mut o = dev();
        o.env = vec![
            ("OPENCLUSTER_JOIN".into(), "".into()),
            ("OPENCLUSTER_JOIN_SERVICE".into(), "tasks.opencluster".into()),
        ];
        let c = load(&o).unwrap();
        assert_eq!(c.join_service.as_deref(), Some("tasks.opencluster"));
        assert_eq!(c.join_targets(), ["tasks.opencluster:7946"]);
        // An empty variable unsets it, as for bind_interface.
        o.env = vec![("OPENCLUSTER_JOIN_SERVICE".into(), "".into())];
        assert!(load(&o).unwrap().join_targets().is_empty());
        o.env = vec![("OPENCLUSTER_JOIN_SERVICE".into(), "tasks.opencluster:gossip".into())];
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains("`join_service`") && e.contains("OPENCLUSTER_JOIN_SERVICE"), "{e}");
    }

    #[test]
    fn an_empty_variable_of_a_typed_setting_is_an_error_naming_it() {
        let typed = |kind: Kind| !matches!(kind, Kind::Str | Kind::Addr | Kind::List);
        for setting in SETTINGS.iter().filter(|s| typed(s.kind)) {
            for empty in ["", " "] {
                let o = LoadOptions { env: vec![(setting.env(), empty.into())], ..dev() };
                let e = load(&o).expect_err(&setting.env()).to_string();
                assert!(e.contains(&format!("`{}`", setting.key)) && e.contains(&setting.env()), "{e}");
                assert!(e.contains("empty"), "{e}");
            }
        }
        let o = LoadOptions { env: vec![("OPENCLUSTER_LOG_LEVEL".into(), "".into())], ..dev() };
        let e = load(&o).unwrap_err().to_string();
        assert!(e.contains("`log_level` (from OPENCLUSTER_LOG_LEVEL): is empty"), "{e}");
        // The case that matters: an empty value must not switch the password guard off.
        let mut o = dev();
        o.flags = vec![("client_addr", "0.0.0.0:6379".into())];
        o.env = vec![("OPENCLUSTER_INSECURE_NO_CLIENT_PASSWORD".into(), "".into())];
        let e = load(&o).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid setting `insecure_no_client_password` (from OPENCLUSTER_INSECURE_NO_CLIENT_PASSWORD): \
             is empty; give true or false, or leave it unset for the default"
        );
        o.env = vec![("OPENCLUSTER_INSECURE_NO_CLIENT_PASSWORD".into(), "true".into())];
        assert!(load(&o).unwrap().insecure_no_client_password);
    }

    #[test]
    fn an_empty_address_still_switches_its_listener_off() {
        let mut o = dev();
        o.env =
            vec![("OPENCLUSTER_ADMIN_ADDR".into(), "".into()), ("OPENCLUSTER_GOSSIP_ADDR".into(), "".into())];
        let c = load(&o).unwrap();
        assert_eq!((c.admin_addr, c.gossip_addr), (None, None));
    }

    #[test]
    fn a_missing_or_malformed_config_file_is_named() {
        let e = load(&LoadOptions { config_file: Some("/nonexistent/oc.toml".into()), ..dev() }).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/oc.toml"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "datacenter = = 3").unwrap();
        let e = load(&LoadOptions { config_file: Some(f.clone()), ..dev() }).unwrap_err();
        assert!(e.to_string().contains(&f.display().to_string()), "{e}");
    }
}
