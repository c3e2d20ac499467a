//! Configuration of the node binary: protected mode (a non-loopback client address
//! needs a password or `--insecure-no-client-password`), bad settings exit non-zero
//! with an error naming the setting, and the layers apply in the order
//! flags > env > conf.d/*.toml > --config file > defaults.

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use opencluster_tests::node::{free_port, free_port_pair};
use opencluster_tests::{Node, NodeOpts, Reply, bulk, err, node_command, node_only, ok, run_with_deadline};

/// Runs the node with `args` (plus a temp data dir and free ports unless given) and
/// expects it to exit on its own with a failure. Returns its combined output.
fn expect_refusal(args: &[&str], env: &[(&str, &str)]) -> String {
    expect_refusal_with_status(args, env).1
}

/// [`expect_refusal`], also returning the exit code.
fn expect_refusal_with_status(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = free_port_pair();
    let mut cmd = node_command();
    cmd.arg("--dev").arg("--data-dir").arg(dir.path().join("data"));
    if !args.contains(&"--client-addr") {
        cmd.args(["--client-addr", &format!("127.0.0.1:{p1}")]);
    }
    if !args.contains(&"--admin-addr") {
        cmd.args(["--admin-addr", &format!("127.0.0.1:{p2}")]);
    }
    cmd.args(args);
    cmd.envs(env.iter().copied());
    let shown = format!("{cmd:?}");
    let out: Output = run_with_deadline(cmd, Duration::from_secs(15)).unwrap_or_else(|| {
        panic!("the node started (still running after 15 s) but should have refused: {shown}")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "exit status {} for {shown}; output:\n{text}", out.status);
    assert!(!text.contains("panicked"), "a config error is reported, not a panic:\n{text}");
    (out.status.code(), text)
}

/// A bad setting is reported in one line that names it (any of `names`).
fn assert_mentions_any(text: &str, names: &[&str]) {
    assert!(names.iter().any(|n| text.contains(n)), "the error names none of {names:?}:\n{text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a config error is one line, got:\n{text}");
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, text).unwrap();
}

#[test]
fn a_non_loopback_client_address_without_a_password_is_refused() {
    node_only!("protected mode of the node");
    let port = free_port();
    let text = expect_refusal(&["--client-addr", &format!("0.0.0.0:{port}")], &[]);
    assert!(text.contains("--insecure-no-client-password"), "the error names the way out:\n{text}");
}

#[test]
fn a_non_loopback_client_address_is_allowed_with_the_insecure_flag() {
    node_only!("protected mode of the node");
    let node = Node::start(NodeOpts::new().client_host("0.0.0.0").arg("--insecure-no-client-password"));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn a_non_loopback_client_address_is_allowed_with_a_password() {
    node_only!("protected mode of the node");
    let node = Node::start(NodeOpts::new().client_host("0.0.0.0").password("pw"));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["GET", "k"]), err("NOAUTH Authentication required."));
    assert_eq!(c.cmd(&["AUTH", "pw"]), ok());
    assert_eq!(c.cmd(&["GET", "k"]), Reply::NullBulk);
}

#[test]
fn bad_settings_exit_with_an_error_naming_the_setting() {
    node_only!("configuration of the node");
    let dir = tempfile::tempdir().unwrap();

    let text = expect_refusal(&["--store-fsync", "sometimes"], &[]);
    assert_mentions_any(&text, &["store.fsync", "store-fsync"]);

    let text = expect_refusal(&[], &[("OPENCLUSTER_STORE_FSYNC", "sometimes")]);
    assert_mentions_any(&text, &["store.fsync", "OPENCLUSTER_STORE_FSYNC"]);

    let file = dir.path().join("bad-fsync.toml");
    write(&file, "[store]\nfsync = \"sometimes\"\n");
    let text = expect_refusal(&["--config", file.to_str().unwrap()], &[]);
    assert_mentions_any(&text, &["store.fsync"]);

    let text = expect_refusal(&["--store-fsync-interval", "soon"], &[]);
    assert_mentions_any(&text, &["store.fsync_interval", "store-fsync-interval"]);

    let text = expect_refusal(&["--limits-max-key-bytes", "lots"], &[]);
    assert_mentions_any(&text, &["limits.max_key_bytes", "limits-max-key-bytes"]);

    let text = expect_refusal(&["--log-format", "xml"], &[]);
    assert_mentions_any(&text, &["log_format", "log-format"]);

    let text = expect_refusal(&["--client-addr", "not-an-address"], &[]);
    assert_mentions_any(&text, &["client_addr", "client-addr"]);
}

/// `-e OPENCLUSTER_X=` in a template left unfilled: an error naming the variable, never a
/// value (an empty boolean used to read as true and switch the password guard off).
#[test]
fn an_empty_typed_variable_is_an_error_naming_it() {
    node_only!("configuration of the node");
    let port = free_port();
    let (status, text) = expect_refusal_with_status(
        &["--client-addr", &format!("0.0.0.0:{port}")],
        &[("OPENCLUSTER_INSECURE_NO_CLIENT_PASSWORD", "")],
    );
    assert_eq!(status, Some(2), "{text}");
    assert_mentions_any(&text, &["OPENCLUSTER_INSECURE_NO_CLIENT_PASSWORD"]);
    assert!(text.contains("is empty"), "{text}");
    for name in [
        "OPENCLUSTER_ALLOW_FLUSHDB",
        "OPENCLUSTER_LIMITS_MAX_CLIENTS",
        "OPENCLUSTER_STORE_CACHE_BYTES",
        "OPENCLUSTER_STORE_FSYNC_INTERVAL",
        "OPENCLUSTER_STORE_FSYNC",
        "OPENCLUSTER_TLS_DIR",
        "OPENCLUSTER_LOG_LEVEL",
    ] {
        let (status, text) = expect_refusal_with_status(&[], &[(name, "")]);
        assert_eq!(status, Some(2), "{name}: {text}");
        assert_mentions_any(&text, &[name]);
        assert!(text.contains("is empty"), "{name}: {text}");
    }
}

#[test]
fn an_unknown_config_key_or_a_missing_config_file_is_an_error() {
    node_only!("configuration of the node");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    write(&file, "[store]\nfsnyc = \"always\"\n");
    let text = expect_refusal(&["--config", file.to_str().unwrap()], &[]);
    assert_mentions_any(&text, &["fsnyc"]);

    let file = dir.path().join("top.toml");
    write(&file, "no_such_setting = 1\n");
    let text = expect_refusal(&["--config", file.to_str().unwrap()], &[]);
    assert_mentions_any(&text, &["no_such_setting"]);

    let missing = dir.path().join("missing.toml");
    let text = expect_refusal(&["--config", missing.to_str().unwrap()], &[]);
    assert_mentions_any(&text, &[missing.to_str().unwrap()]);

    // A TOML syntax error names the file; it may show the offending line below.
    let file = dir.path().join("broken.toml");
    write(&file, "node_name = \n");
    let text = expect_refusal(&["--config", file.to_str().unwrap()], &[]);
    assert!(text.contains(file.to_str().unwrap()), "the error names the file:\n{text}");
}

fn health_node_name(node: &Node) -> String {
    let h = node.admin_json("/v1/health");
    h["node"].as_str().unwrap_or_else(|| panic!("no node in {h}")).to_string()
}

#[test]
fn layers_apply_flags_over_env_over_conf_d_over_the_config_file() {
    node_only!("configuration of the node");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("opencluster.toml");
    write(&file, "node_name = \"from-file\"\n[limits]\nmax_clients = 123\n");
    let config = file.to_str().unwrap();

    let node = Node::start(NodeOpts::new().args(&["--config", config]));
    assert_eq!(health_node_name(&node), "from-file");
    assert_eq!(node.admin_json("/v1/status")["clients"]["max"], 123);
    drop(node);

    write(&dir.path().join("conf.d/10-name.toml"), "node_name = \"from-conf-d-10\"\n");
    write(&dir.path().join("conf.d/20-name.toml"), "node_name = \"from-conf-d-20\"\n");
    write(&dir.path().join("conf.d/ignored.txt"), "node_name = \"not-toml\"\n");
    let node = Node::start(NodeOpts::new().args(&["--config", config]));
    assert_eq!(health_node_name(&node), "from-conf-d-20", "conf.d files apply in name order, over the file");
    assert_eq!(node.admin_json("/v1/status")["clients"]["max"], 123, "unset in conf.d: the file's value");
    drop(node);

    let node =
        Node::start(NodeOpts::new().args(&["--config", config]).env("OPENCLUSTER_NODE_NAME", "from-env"));
    assert_eq!(health_node_name(&node), "from-env");
    drop(node);

    let node = Node::start(
        NodeOpts::new()
            .args(&["--config", config, "--node-name", "from-flag"])
            .env("OPENCLUSTER_NODE_NAME", "from-env"),
    );
    assert_eq!(health_node_name(&node), "from-flag");
}

#[test]
fn settings_from_the_environment() {
    node_only!("configuration of the node");
    let node = Node::start(
        NodeOpts::new()
            .env("OPENCLUSTER_CLIENT_PASSWORD", "envpw")
            .env("OPENCLUSTER_ALLOW_FLUSHDB", "true")
            .env("OPENCLUSTER_LIMITS_MAX_KEY_BYTES", "10")
            .env("OPENCLUSTER_LIMITS_MAX_CLIENTS", "321"),
    );
    let mut c = node.raw();
    assert_eq!(c.cmd(&["GET", "k"]), err("NOAUTH Authentication required."));
    assert_eq!(c.cmd(&["AUTH", "envpw"]), ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    let r = c.cmd(&["SET", "elevenbytes", "v"]);
    assert!(r.error().starts_with("ERR key too large"), "{r:?}");
    assert_eq!(c.cmd(&["FLUSHDB"]), ok());
    assert_eq!(c.cmd(&["DBSIZE"]), Reply::Int(0));
    assert_eq!(node.admin_json("/v1/status")["clients"]["max"], 321);
}

#[test]
fn settings_from_a_toml_config_file() {
    node_only!("configuration of the node");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    write(
        &file,
        "node_name = \"toml-node\"\nallow_flushdb = true\n\n[limits]\nmax_key_bytes = 10\nmax_value_bytes = 20\n\n[store]\nfsync = \"interval\"\nfsync_interval = \"50ms\"\n",
    );
    let node = Node::start(NodeOpts::new().args(&["--config", file.to_str().unwrap()]));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SET", "tenbytes!!", "twenty-bytes-value!!"]), ok());
    assert!(c.cmd(&["SET", "elevenbytes", "v"]).error().starts_with("ERR key too large"));
    assert!(c.cmd(&["SET", "k", "twenty-one-bytes-val!"]).error().starts_with("ERR value too large"));
    assert_eq!(c.cmd(&["FLUSHDB"]), ok());
    assert_eq!(health_node_name(&node), "toml-node");
}

#[test]
fn json_log_format_writes_json_lines() {
    node_only!("logging of the node");
    let node = Node::start(NodeOpts::new().args(&["--log-format", "json"]));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SET", "k", "v"]), ok());
    // The log goes to stderr; stdout may carry a human-readable banner.
    let log = node.stderr_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the node logged nothing to stderr at startup");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
        assert!(v.is_object(), "log line is not a JSON object: {l}");
    }
}
