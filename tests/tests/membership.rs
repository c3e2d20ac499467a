//! Gossip membership between real node processes on loopback: nodes that `--join` one
//! another all see each other alive; a node killed with `kill -9` is declared down by the
//! others; a node that stops with SIGTERM is `left` (and alive again once restarted); a node with another cluster's gossip
//! keyring never becomes a member, and its packets are counted as dropped; `bind_interface`
//! advertises an interface's address; `join_service` is joined when `join` is empty.

use std::time::{Duration, Instant};

use opencluster_tests::cluster::member_states as states;
use opencluster_tests::pki::customer_keys;
use opencluster_tests::{Node, NodeOpts, node_command, node_only, run_with_deadline, wait_until};
use serde_json::Value;

/// How long a new cluster may take to converge.
const CONVERGE: Duration = Duration::from_secs(30);
/// How long the others may take to declare a killed node down: the default timing's bound
/// is 2.2 s (`membership::timing`); four times that leaves room for a loaded 2-core host
/// running tests in parallel. The figure itself is measured by tests/bench/gossip-detection.sh.
const DETECT_DOWN: Duration = Duration::from_secs(10);

fn named(name: &str) -> NodeOpts {
    NodeOpts::new().args(&["--node-name", name])
}

fn joining(name: &str, seed: &Node) -> NodeOpts {
    named(name).args(&["--join", &seed.gossip_addr().to_string()])
}

fn state_of(node: &Node, name: &str) -> Option<String> {
    states(node).into_iter().find(|(n, _)| n == name).map(|(_, s)| s)
}

fn all_alive(node: &Node, names: &[&str]) -> bool {
    let states = states(node);
    states.len() == names.len()
        && names.iter().all(|n| states.iter().any(|(name, state)| name == n && state == "alive"))
}

/// Sum of a labelled counter's series whose labels contain one of `labels`.
/// Waits until every node in `nodes` lists every one of `names` alive.
fn wait_all_alive(nodes: &[&Node], names: &[&str]) {
    for node in nodes {
        assert!(
            wait_until(CONVERGE, || all_alive(node, names)),
            "members never converged: {:?}",
            states(node)
        );
    }
}

fn counter(node: &Node, name: &str, labels: &[&str]) -> u64 {
    let (_, text) = node.admin_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().any(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn three_nodes_join_see_each_other_and_detect_a_kill() {
    node_only!("membership is the node's");
    let n1 = Node::start(named("n1"));
    let mut n2 = Node::start(joining("n2", &n1));
    let mut n3 = Node::start(joining("n3", &n1));
    wait_all_alive(&[&n1, &n2, &n3], &["n1", "n2", "n3"]);
    // The operator view: addresses, ids, status counts and the gauge.
    let members = n1.admin_json("/v1/members");
    let n2_entry = members.as_array().unwrap().iter().find(|m| m["name"] == "n2").unwrap().clone();
    assert_eq!(n2_entry["gossip_addr"], Value::from(n2.gossip_addr().to_string()));
    assert_eq!(n2_entry["client_addr"], Value::from(n2.client_addr().to_string()));
    assert_eq!(n2_entry["datacenter"], "dc1");
    assert_eq!(n2_entry["role"], "node");
    assert_eq!(n2_entry["id"], n2.admin_json("/v1/status")["node_id"]);
    let status = n1.admin_json("/v1/status");
    assert_eq!(status["members"]["alive"], 3, "{status}");
    assert_eq!(counter(&n1, "opencluster_members", &["state=\"alive\""]), 3);

    // kill -9: the others declare it down.
    let killed = Instant::now();
    n3.kill9();
    for node in [&n1, &n2] {
        assert!(
            wait_until(DETECT_DOWN, || state_of(node, "n3").as_deref() == Some("down")),
            "n3 never seen down: {:?}",
            states(node)
        );
    }
    println!("kill -9 to every other node seeing the member down: {:?}", killed.elapsed());
    assert_eq!(n1.admin_json("/v1/status")["members"]["down"], 1);

    // SIGTERM: the node leaves, and the others learn it from its leave packets at once
    // rather than after a suspicion period; they show it as left, not crashed.
    let stopped = Instant::now();
    let status = n2.sigterm_and_wait();
    assert!(status.success(), "n2 exited with {status}\n{}", n2.log());
    assert!(
        wait_until(Duration::from_secs(3), || state_of(&n1, "n2").as_deref() == Some("left")),
        "n2 left but n1 does not show it as left: {:?}",
        states(&n1)
    );
    println!("SIGTERM to the member seen left: {:?}", stopped.elapsed());
    assert_eq!(state_of(&n1, "n3").as_deref(), Some("down"), "the killed node is down, not left");
    let status = n1.admin_json("/v1/status");
    assert_eq!((status["members"]["down"].clone(), status["members"]["left"].clone()), (1.into(), 1.into()));
    assert_eq!(counter(&n1, "opencluster_members", &["state=\"left\""]), 1);
    assert!(n2.stderr_log().contains("left the gossip cluster"), "{}", n2.log());
}

#[test]
fn a_node_with_another_gossip_keyring_never_joins() {
    node_only!("membership is the node's");
    let keys = tempfile::tempdir().unwrap();
    let other = customer_keys(keys.path(), "dc1");
    let n1 = Node::start(named("n1"));
    let intruder = Node::start(joining("intruder", &n1).args(&["--tls-dir", other.to_str().unwrap()]));
    let rejected =
        |n: &Node| counter(n, "opencluster_gossip_packets_dropped_total", &["authentication", "unknown_key"]);
    // The intruder announces with backoff (0.5 s, 1 s, 2 s...): three attempts, all dropped.
    assert!(
        wait_until(CONVERGE, || rejected(&n1) >= 3),
        "n1 did not count the intruder's packets as rejected:\n{}",
        n1.admin_get("/metrics").1
    );
    assert_eq!(states(&n1), [("n1".to_string(), "alive".to_string())]);
    assert_eq!(states(&intruder), [("intruder".to_string(), "alive".to_string())]);
    assert_eq!(counter(&n1, "opencluster_gossip_packets_total", &["direction=\"sent\""]), 0, "n1 answered");
    // And the operator is told, once per sending host.
    let log = n1.stderr_log();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("gossip packets refused")).collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(refusals[0].contains("WARN") && refusals[0].contains("127.0.0.1"), "{}", refusals[0]);
}

#[test]
fn a_wildcard_gossip_address_needs_advertise() {
    node_only!("membership is the node's");
    let data = tempfile::tempdir().unwrap();
    let mut cmd = node_command();
    cmd.args([
        "--dev",
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--gossip-addr",
        "0.0.0.0:0",
    ])
    .arg("--data-dir")
    .arg(data.path());
    let out = run_with_deadline(cmd, Duration::from_secs(15)).expect("the node refused to start, and exited");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`advertise`") && stderr.contains("--advertise"), "{stderr}");
}

#[test]
fn bind_interface_advertises_the_interface_address_with_the_bound_port() {
    node_only!("membership is the node's");
    // `lo` exists everywhere and has 127.0.0.1: the same path a container takes with eth0.
    let node = Node::start(named("n1").args(&["--gossip-addr", "0.0.0.0:0", "--bind-interface", "lo"]));
    let advertised = node.gossip_addr();
    assert_eq!(advertised.ip().to_string(), "127.0.0.1");
    assert_ne!(advertised.port(), 0);
    assert!(node.stderr_log().contains("advertising the address of bind_interface"), "{}", node.log());
    // The empty value (how an image's OPENCLUSTER_BIND_INTERFACE is switched off) is unset.
    let plain = Node::start(named("n2").env("OPENCLUSTER_BIND_INTERFACE", ""));
    assert_eq!(plain.gossip_addr().ip().to_string(), "127.0.0.1");
}

#[test]
fn a_missing_bind_interface_is_named() {
    node_only!("membership is the node's");
    let data = tempfile::tempdir().unwrap();
    let mut cmd = node_command();
    cmd.args(["--dev", "--client-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--gossip-addr", "0.0.0.0:0", "--bind-interface", "nosuchif0"])
        .arg("--data-dir")
        .arg(data.path());
    let out = run_with_deadline(cmd, Duration::from_secs(15)).expect("the node refused to start, and exited");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`bind_interface`") && stderr.contains("\"nosuchif0\""), "{stderr}");
    assert!(stderr.contains("lo"), "the error lists the interfaces there are: {stderr}");
}

#[test]
fn join_service_is_joined_when_join_is_empty_and_join_wins_over_it() {
    node_only!("membership is the node's");
    let n1 = Node::start(named("n1"));
    // A DNS name, without `join`: what a container gets from its platform.
    let service = format!("localhost:{}", n1.gossip_addr().port());
    let n2 = Node::start(named("n2").args(&["--join-service", &service]));
    // `join` set too: the service name (which resolves nowhere) is not used.
    let n3 = Node::start(joining("n3", &n1).args(&["--join-service", "no-such-service.invalid"]));
    wait_all_alive(&[&n1, &n2, &n3], &["n1", "n2", "n3"]);
    assert!(n2.log().contains("joining the members of join_service"), "{}", n2.log());
    assert!(n3.log().contains("join is set: join_service is not used"), "{}", n3.log());
    assert!(!n3.log().contains("no-such-service.invalid:7946"), "n3 tried the service: {}", n3.log());
}

#[test]
fn a_restarted_node_rejoins_and_replaces_its_old_entry() {
    node_only!("membership is the node's");
    let n1 = Node::start(named("n1"));
    // A fixed gossip port, so the restarted process has the same address as before.
    let port = opencluster_tests::node::free_port();
    let gossip = format!("127.0.0.1:{port}");
    let mut n2 = Node::start(joining("n2", &n1).args(&["--gossip-addr", &gossip]));
    for node in [&n1, &n2] {
        assert!(
            wait_until(CONVERGE, || all_alive(node, &["n1", "n2"])),
            "never converged: {:?}",
            states(node)
        );
    }
    let before = n1.admin_json("/v1/members");
    n2.kill9();
    n2.restart();
    // n1 may first see the old process as suspect or down; the new one wins the address.
    for node in [&n1, &n2] {
        assert!(
            wait_until(CONVERGE, || all_alive(node, &["n1", "n2"])),
            "the restarted node did not come back alone in its place: {:?}",
            node.admin_json("/v1/members")
        );
    }
    let after = n1.admin_json("/v1/members");
    assert_eq!(after.as_array().unwrap().len(), 2, "{after}");
    assert_eq!(before[1]["gossip_addr"], after[1]["gossip_addr"]);

    // Stopped with SIGTERM it is left; started again (a newer process) it is alive, not left.
    assert!(n2.sigterm_and_wait().success(), "{}", n2.log());
    assert!(
        wait_until(CONVERGE, || state_of(&n1, "n2").as_deref() == Some("left")),
        "n2 stopped but is not left: {:?}",
        states(&n1)
    );
    n2.restart();
    assert!(
        wait_until(CONVERGE, || all_alive(&n1, &["n1", "n2"])),
        "the node that left and came back is not alive: {:?}",
        n1.admin_json("/v1/members")
    );
}

#[test]
fn the_members_subcommand_prints_a_table_or_json_and_fails_clearly() {
    node_only!("the node's members subcommand");
    let n1 = Node::start(named("n1"));
    let n2 = Node::start(joining("n2", &n1));
    for node in [&n1, &n2] {
        assert!(
            wait_until(CONVERGE, || all_alive(node, &["n1", "n2"])),
            "never converged: {:?}",
            states(node)
        );
    }
    let members = |args: &[&str]| {
        let mut cmd = node_command();
        cmd.arg("members").args(args);
        run_with_deadline(cmd, Duration::from_secs(15)).expect("the members subcommand finishes")
    };
    let admin = n1.admin_addr().to_string();

    let out = members(&["--admin-addr", &admin]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["Name", "Address", "Status", "Data", "Role", "Datacenter", "Version", "Id"],
        "{stdout}"
    );
    let n1_id = n1.admin_json("/v1/status")["node_id"].as_str().unwrap().to_string();
    let n2_gossip = n2.gossip_addr().to_string();
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        (first[0], first[2], first[3], first[4], first[5], first[7]),
        ("n1", "alive", "yes", "node", "dc1", n1_id.as_str())
    );
    assert!(lines[2].starts_with("n2 ") && lines[2].contains(&n2_gossip), "{stdout}");
    // Columns are aligned: every Status cell starts where the header's does.
    let status_at = lines[0].find("Status").unwrap();
    assert!(lines[1..].iter().all(|l| &l[status_at..status_at + 5] == "alive"), "{stdout}");

    let out = members(&["--admin-addr", &admin, "--format", "json"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout).expect("--format json prints JSON");
    assert_eq!(json, n1.admin_json("/v1/members"));

    // From the config, like `health`: OPENCLUSTER_ADMIN_ADDR.
    let mut cmd = node_command();
    cmd.arg("members").env("OPENCLUSTER_ADMIN_ADDR", &admin);
    let out = run_with_deadline(cmd, Duration::from_secs(15)).expect("finishes");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("n2"), "{out:?}");

    let nobody = format!("127.0.0.1:{}", opencluster_tests::node::free_port());
    let out = members(&["--admin-addr", &nobody]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert!(stderr.contains(&format!("cannot reach the admin API at {nobody}")), "{stderr}");
}
