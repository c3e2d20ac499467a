//! The real `redis-cli` (and `redis-benchmark`) against the server: the tools people
//! will point at it first. Skipped with a notice where they are not installed, so
//! `cargo test --workspace` needs only the Rust toolchain.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use opencluster_tests::resp::encode_command;
use opencluster_tests::{Node, NodeOpts, bulk, redis_cli_available};

macro_rules! require_redis_cli {
    () => {
        if !redis_cli_available() {
            eprintln!("redis-cli not found: skipping the redis-cli checks");
            return;
        }
    };
}

/// Runs `redis-cli -p PORT <args>` (stdout is not a terminal, so output is raw) and
/// returns its stdout; panics if it does not exit 0.
fn cli(node: &Node, args: &[&str]) -> String {
    cli_with_stdin(node, args, b"")
}

fn cli_with_stdin(node: &Node, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &node.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redis-cli");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redis-cli {args:?} exited {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn redis_cli_set_get_incr_and_dbsize() {
    require_redis_cli!();
    let node = Node::start_default();
    assert_eq!(cli(&node, &["set", "hello", "world"]), "OK\n");
    assert_eq!(cli(&node, &["get", "hello"]), "world\n");
    assert_eq!(cli(&node, &["get", "missing"]), "\n");
    assert_eq!(cli(&node, &["--no-raw", "get", "hello"]), "\"world\"\n");
    assert_eq!(cli(&node, &["incr", "counter"]), "1\n");
    assert_eq!(cli(&node, &["incrby", "counter", "41"]), "42\n");
    assert_eq!(cli(&node, &["dbsize"]), "2\n");
    assert_eq!(cli(&node, &["ping"]), "PONG\n");
    assert_eq!(cli(&node, &["mget", "hello", "missing", "counter"]), "world\n\n42\n");
    assert_eq!(node.raw().cmd(&["GET", "hello"]), bulk("world"));
}

#[test]
fn redis_cli_ttl_and_expire() {
    require_redis_cli!();
    let node = Node::start_default();
    assert_eq!(cli(&node, &["set", "hello", "world"]), "OK\n");
    assert_eq!(cli(&node, &["ttl", "hello"]), "-1\n");
    assert_eq!(cli(&node, &["ttl", "missing"]), "-2\n");
    assert_eq!(cli(&node, &["expire", "hello", "100"]), "1\n");
    let ttl: i64 = cli(&node, &["ttl", "hello"]).trim().parse().unwrap();
    assert!((99..=100).contains(&ttl), "ttl {ttl}");
    assert_eq!(cli(&node, &["set", "tmp", "v", "ex", "50"]), "OK\n");
    let pttl: i64 = cli(&node, &["pttl", "tmp"]).trim().parse().unwrap();
    assert!((49_000..=50_000).contains(&pttl), "pttl {pttl}");
}

#[test]
fn redis_cli_scan_lists_every_key() {
    require_redis_cli!();
    let node = Node::start_default();
    let mut c = node.raw();
    let mut all = BTreeSet::new();
    for i in 0..150 {
        for prefix in ["user", "order"] {
            let k = format!("{prefix}:{i}");
            c.cmd(&["SET", &k, "v"]);
            all.insert(k);
        }
    }
    let seen: BTreeSet<String> = cli(&node, &["--scan"]).lines().map(str::to_string).collect();
    assert_eq!(seen, all);
    let users: BTreeSet<String> =
        cli(&node, &["--scan", "--pattern", "user:*"]).lines().map(str::to_string).collect();
    assert_eq!(users, all.iter().filter(|k| k.starts_with("user:")).cloned().collect());
}

#[test]
fn redis_cli_info_keyspace() {
    require_redis_cli!();
    let node = Node::start_default();
    for k in ["a", "b", "c"] {
        cli(&node, &["set", k, "1"]);
    }
    let out = cli(&node, &["info", "keyspace"]);
    assert!(out.starts_with("# Keyspace"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("db0:keys=3,")), "{out}");
}

#[test]
fn redis_cli_in_resp3_mode() {
    require_redis_cli!();
    let node = Node::start_default();
    assert_eq!(cli(&node, &["-3", "set", "hello", "world"]), "OK\n");
    assert_eq!(cli(&node, &["-3", "get", "hello"]), "world\n");
    assert_eq!(cli(&node, &["-3", "get", "missing"]), "\n");
    let hello = cli(&node, &["-3", "hello", "3"]);
    let fields: Vec<&str> = hello.lines().filter_map(|l| l.split(' ').next()).collect();
    // Redis 7 sends these seven first; a server may add its own after them.
    assert_eq!(
        fields[..fields.len().min(7)],
        ["server", "version", "proto", "id", "mode", "role", "modules"],
        "{hello}"
    );
    assert!(hello.lines().any(|l| l == "proto 3"), "{hello}");
}

#[test]
fn redis_cli_reads_commands_from_stdin_and_pipe_mode() {
    require_redis_cli!();
    let node = Node::start_default();
    let out = cli_with_stdin(&node, &[], b"SET a 1\nGET a\nINCR a\nDEL a\n");
    assert_eq!(out, "OK\n1\n2\n1\n");

    let mut mass = Vec::new();
    for i in 0..1000 {
        mass.extend(encode_command(&["SET", &format!("mass:{i}"), &i.to_string()]));
    }
    let out = cli_with_stdin(&node, &["--pipe"], &mass);
    assert!(out.contains("errors: 0, replies: 1000"), "{out}");
    assert_eq!(cli(&node, &["dbsize"]), "1000\n");
    assert_eq!(cli(&node, &["get", "mass:999"]), "999\n");
}

#[test]
fn redis_cli_errors_and_auth() {
    require_redis_cli!();
    let node = Node::start(NodeOpts::new().password("pw"));
    let out = cli(&node, &["get", "k"]);
    assert!(out.contains("NOAUTH Authentication required."), "{out}");
    assert_eq!(cli(&node, &["-a", "pw", "--no-auth-warning", "set", "k", "v"]), "OK\n");
    assert_eq!(cli(&node, &["--user", "default", "--pass", "pw", "--no-auth-warning", "get", "k"]), "v\n");
    let out = cli(&node, &["-a", "pw", "--no-auth-warning", "nosuchcmd", "x"]);
    assert!(out.contains("ERR unknown command 'nosuchcmd', with args beginning with: 'x'"), "{out}");
    let out = cli(&node, &["-a", "wrong", "--no-auth-warning", "get", "k"]);
    assert!(out.contains("WRONGPASS") || out.contains("NOAUTH"), "{out}");
}

#[test]
fn redis_benchmark_runs_set_and_get() {
    if Command::new("redis-benchmark").arg("--version").output().is_err() {
        eprintln!("redis-benchmark not found: skipping the redis-benchmark check");
        return;
    }
    let node = Node::start_default();
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &node.port().to_string()])
        .args(["-t", "set,get", "-n", "2000", "-c", "10", "-q"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SET:"), "{stdout}");
    assert!(stdout.contains("GET:"), "{stdout}");
    assert_eq!(node.raw().cmd(&["EXISTS", "key:__rand_int__"]).int(), 1, "benchmark keys were written");
}
