//! The node's admin HTTP API (`/v1/health`, `/v1/status`, `/metrics`) and the
//! `opencluster-node health` subcommand. Node-only: Redis has no admin API.

use std::time::Duration;

use opencluster_tests::node::free_port;
use opencluster_tests::pki::customer_keys;
use opencluster_tests::{Node, NodeOpts, node_command, node_only, ok, run_with_deadline, wait_until};

#[test]
fn health_answers_ok_with_the_node_identity() {
    node_only!("admin API");
    // The built-in default keys are for datacenter dc1 only: dc-east needs its own keys.
    let keys = tempfile::tempdir().unwrap();
    let tls = customer_keys(keys.path(), "dc-east");
    let node = Node::start(NodeOpts::new().args(&[
        "--node-name",
        "node-a",
        "--datacenter",
        "dc-east",
        "--tls-dir",
        tls.to_str().unwrap(),
    ]));
    let (status, body) = node.admin_get("/v1/health");
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["node"], "node-a", "{h}");
    assert_eq!(h["datacenter"], "dc-east", "{h}");
    assert!(h["version"].as_str().is_some_and(|v| !v.is_empty()), "{h}");
    assert_eq!(h["insecure_default_keys"], false, "{h}");
}

#[test]
fn status_reports_uptime_clients_and_store() {
    node_only!("admin API");
    let node = Node::start_default();
    let mut conns: Vec<_> = (0..3).map(|_| node.raw()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        for j in 0..4 {
            assert_eq!(c.cmd(&["SET", &format!("k{i}:{j}"), "v"]), ok());
        }
    }
    let mut last = serde_json::Value::Null;
    let settled = wait_until(Duration::from_secs(10), || {
        last = node.admin_json("/v1/status");
        last["clients"]["connected"].as_u64().is_some_and(|n| n >= 3)
            && last["store"]["keys"].as_u64() == Some(12)
    });
    assert!(settled, "/v1/status never showed >= 3 clients and 12 keys: {last}");
    let s = last;
    assert!(s["uptime_seconds"].is_number(), "{s}");
    assert!(s["store"]["bytes_on_disk"].is_u64(), "{s}");
    let durable = s["store"]["durable_through_ms"].as_u64().unwrap_or_else(|| panic!("{s}"));
    let now = opencluster_tests::unix_ms();
    assert!(durable <= now + 1000, "durable_through_ms {durable} is in the future (now {now})");
    assert!(durable + 600_000 > now, "durable_through_ms {durable} is far in the past (now {now})");

    drop(conns);
    let dropped = wait_until(Duration::from_secs(10), || {
        node.admin_json("/v1/status")["clients"]["connected"].as_u64() == Some(0)
    });
    assert!(dropped, "clients.connected does not fall back to 0 after the connections close");
}

#[test]
fn status_uptime_grows() {
    node_only!("admin API");
    let node = Node::start_default();
    let first = node.admin_json("/v1/status")["uptime_seconds"].as_f64().expect("uptime_seconds");
    assert!(first >= 0.0);
    let grew = wait_until(Duration::from_secs(5), || {
        node.admin_json("/v1/status")["uptime_seconds"].as_f64().is_some_and(|u| u >= first + 1.0)
    });
    assert!(grew, "uptime_seconds did not grow by 1 within 5 s");
}

/// The value of the first sample line whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn metrics_expose_commands_latency_clients_keys_and_errors() {
    node_only!("admin API");
    let node = Node::start_default();
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SET", "a", "1"]), ok());
    assert_eq!(c.cmd(&["SET", "b", "1"]), ok());
    for _ in 0..5 {
        c.cmd(&["GET", "a"]);
    }
    assert!(c.cmd(&["NOSUCHCOMMAND"]).is_error());
    assert!(c.cmd(&["INCR", "x", "y"]).is_error());

    let mut m = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let (status, body) = node.admin_get("/metrics");
        assert_eq!(status, 200);
        m = body;
        sample(&m, "opencluster_commands_total{command=\"get\"}").is_some_and(|n| n >= 5.0)
            && sample(&m, "opencluster_keys").is_some_and(|n| n == 2.0)
    });
    assert!(ok, "metrics never showed 5 GETs and 2 keys:\n{m}");
    assert!(sample(&m, "opencluster_commands_total{command=\"set\"}").is_some_and(|n| n >= 2.0), "{m}");
    assert!(m.contains("# TYPE opencluster_command_duration_seconds histogram"), "{m}");
    assert!(m.contains("opencluster_command_duration_seconds_bucket{"), "{m}");
    assert!(m.lines().any(|l| l.starts_with("opencluster_command_duration_seconds_count")), "{m}");
    assert!(m.lines().any(|l| l.starts_with("opencluster_command_duration_seconds_sum")), "{m}");
    let clients = sample(&m, "opencluster_connected_clients").unwrap_or_else(|| panic!("{m}"));
    assert!(clients >= 1.0, "opencluster_connected_clients {clients}");
    assert!(sample(&m, "opencluster_store_bytes_on_disk").is_some(), "{m}");
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("opencluster_errors_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(errors >= 2.0, "opencluster_errors_total sums to {errors} after 2 error replies:\n{m}");
}

#[test]
fn unknown_admin_paths_are_404() {
    node_only!("admin API");
    let node = Node::start_default();
    let (status, _) = node.admin_get("/v1/nosuchthing");
    assert_eq!(status, 404);
}

#[test]
fn health_subcommand_exits_zero_only_for_a_healthy_node() {
    node_only!("the node's health subcommand");
    let mut node = Node::start_default();
    let admin = node.admin_addr().to_string();
    let run = |addr: &str| {
        let mut cmd = node_command();
        cmd.args(["health", "--admin-addr", addr]);
        run_with_deadline(cmd, Duration::from_secs(15)).expect("the health subcommand finishes")
    };
    let out = run(&admin);
    assert!(out.status.success(), "health on a running node: {out:?}");

    let nobody = format!("127.0.0.1:{}", free_port());
    let out = run(&nobody);
    assert!(!out.status.success(), "health against a port nobody listens on succeeded: {out:?}");

    node.kill9();
    let out = run(&admin);
    assert!(!out.status.success(), "health on a killed node succeeded: {out:?}");
}

#[test]
fn a_node_told_to_join_is_not_ready_until_it_has_a_cluster() {
    node_only!("the node's readiness");
    let nobody = format!("127.0.0.1:{}", free_port());
    let lonely = Node::start(NodeOpts::new().args(&["--join", &nobody]));
    let (status, body) = lonely.admin_get("/v1/ready");
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], false);
    let waiting = ready["waiting_for"].as_array().unwrap();
    assert!(waiting.iter().any(|w| w.as_str().unwrap().starts_with("join:")), "{body}");
    // Healthy all the same: it serves its clients.
    assert_eq!(lonely.admin_get("/v1/health").0, 200);
    // /v1/status reports the same readiness. (Read a moment later: what else the node
    // waits for, such as a placement rebuild after a gossip change, may differ.)
    let status = lonely.admin_json("/v1/status")["ready"].clone();
    assert_eq!(status["ready"], false);
    let joins = |w: &serde_json::Value| {
        w.as_array().unwrap().iter().any(|w| w.as_str().unwrap().starts_with("join: no other node placed"))
    };
    assert!(joins(&status["waiting_for"]) && joins(&ready["waiting_for"]), "{status} / {body}");

    let run = |node: &Node| {
        let mut cmd = node_command();
        cmd.args(["health", "--ready", "--admin-addr", &node.admin_addr().to_string()]);
        run_with_deadline(cmd, Duration::from_secs(15)).expect("the health subcommand finishes")
    };
    let out = run(&lonely);
    assert!(!out.status.success(), "health --ready on a node without its cluster: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not ready"), "{out:?}");

    // A node not told to join anyone is a cluster of its own, ready at once.
    let alone = Node::start_default();
    let out = run(&alone);
    assert!(out.status.success(), "health --ready on a lone node: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""ready":true"#), "{out:?}");
}
