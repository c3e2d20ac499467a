//! A datacenter cluster of real node processes on loopback: any node serves any key,
//! read-modify-write commands through different nodes are serialised at the key's
//! primary, multi-key commands span partitions, a killed node loses no acknowledged
//! write, a write that cannot reach its quorum is refused with CLUSTERDOWN, and a member
//! whose certificate the cluster does not trust is given no data.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use opencluster_tests::cluster::{
    Load, missing_through, pause, resume, start_cluster, wait_for_stored_keys, wait_placed, worker,
};
use opencluster_tests::{Node, Reply, bulk, int, nil, node_only, ok, wait_until};

/// How long replica copies in flight may take to land everywhere (they take well under a
/// millisecond on loopback; this leaves room for a loaded machine).
const CONVERGE: Duration = Duration::from_secs(10);

/// Waits until `args` answers `want` through `conn`: for reads through a node other than
/// the one that wrote, which see the write once its replica copy has landed.
fn eventually(conn: &mut opencluster_tests::RawConn, args: &[&str], want: Reply) {
    let mut last = Reply::Null;
    let converged = wait_until(CONVERGE, || {
        last = conn.cmd(args);
        last == want
    });
    assert!(converged, "{args:?}: want {want:?}, still {last:?}");
}

fn keys_reply(reply: &Reply) -> BTreeSet<String> {
    reply.array().iter().map(|r| r.text()).collect()
}

#[test]
fn any_node_serves_any_key_in_a_three_node_cluster() {
    node_only!("clustering is the node's");
    let nodes = start_cluster(3, &[]);
    let mut conns: Vec<_> = nodes.iter().map(Node::raw).collect();

    // Distinct keys written round-robin through the nodes, read back through every node.
    for i in 0..150 {
        let key = format!("key-{i}");
        assert_eq!(conns[i % 3].cmd(&["SET", &key, &format!("value-{i}")]), ok(), "{key}");
    }
    // Read-your-writes through the node that wrote.
    for i in 0..150 {
        assert_eq!(conns[i % 3].cmd(&["GET", &format!("key-{i}")]), bulk(format!("value-{i}")));
    }
    // Every other node sees every key once replica copies in flight have landed.
    for conn in &mut conns {
        for i in 0..150 {
            let key = format!("key-{i}");
            eventually(conn, &["GET", &key], bulk(format!("value-{i}")));
        }
        assert_eq!(conn.cmd(&["GET", "never-written"]), nil());
    }

    // Read-modify-write through all three nodes at once: no increment is lost, because
    // every INCR of the key is executed by its primary.
    let threads: Vec<_> = nodes
        .iter()
        .map(|n| {
            let mut c = n.raw();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let reply = c.cmd(&["INCR", "counter"]);
                    assert!(matches!(reply, Reply::Int(_)), "{reply:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for conn in &mut conns {
        eventually(conn, &["GET", "counter"], bulk("300"));
    }

    // Multi-key commands across partitions.
    assert_eq!(conns[1].cmd(&["MSET", "m:a", "1", "m:b", "2", "m:c", "3", "m:d", "4"]), ok());
    eventually(
        &mut conns[2],
        &["MGET", "m:a", "m:b", "nope", "m:c", "m:d"],
        Reply::Array(vec![bulk("1"), bulk("2"), nil(), bulk("3"), bulk("4")]),
    );
    eventually(&mut conns[0], &["EXISTS", "m:a", "m:b", "nope", "m:d"], int(3));
    assert_eq!(conns[0].cmd(&["SETNX", "m:a", "other"]), int(0));
    assert_eq!(conns[2].cmd(&["APPEND", "m:a", "+"]), int(2));
    // Read-your-writes through the node that wrote; another node converges (its replica
    // copy may still be in flight when the quorum already acknowledged the write).
    assert_eq!(conns[2].cmd(&["GET", "m:a"]), bulk("1+"));
    eventually(&mut conns[1], &["GET", "m:a"], bulk("1+"));
    let expected_keys: BTreeSet<String> =
        ["m:a", "m:b", "m:c", "m:d"].iter().map(|s| s.to_string()).collect();
    for conn in &mut conns {
        assert!(wait_until(CONVERGE, || keys_reply(&conn.cmd(&["KEYS", "m:*"])) == expected_keys));
        // 150 keys, the counter and the four m: keys.
        eventually(conn, &["DBSIZE"], int(155));
    }
    // A full SCAN through another node returns every key once.
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = conns[1].cmd(&["SCAN", &cursor, "COUNT", "50"]);
        let parts = reply.array();
        seen.extend(keys_reply(&parts[1]));
        cursor = parts[0].text();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 155);
    assert_eq!(conns[2].cmd(&["DEL", "m:a", "m:b", "nope"]), int(2));
    for conn in &mut conns {
        eventually(conn, &["EXISTS", "m:a", "m:b", "m:c"], int(1));
    }
    // Expiry set through one node is seen through another.
    assert_eq!(conns[0].cmd(&["SET", "ttl-key", "x", "EX", "100"]), ok());
    assert!(wait_until(CONVERGE, || conns[2].cmd(&["TTL", "ttl-key"]) != int(-2)));
    let ttl = conns[2].cmd(&["TTL", "ttl-key"]).int();
    assert!((95..=100).contains(&ttl), "{ttl}");

    // The operator's view: every node owns every partition (3 replicas on 3 nodes), and
    // writes were replicated with their quorum met.
    for node in &nodes {
        let status = node.admin_json("/v1/status");
        let p = &status["placement"];
        assert_eq!((p["nodes"].as_u64(), p["owned"].as_u64()), (Some(3), Some(1024)), "{p}");
        assert_eq!(p["replica_health"], "full", "{p}");
        assert_eq!(p["write_quorum"], 2, "{p}");
        assert_eq!(metric_sum(node, "opencluster_replication_total{outcome=\"quorum_missed\"}"), 0);
    }
    let forwarded: u64 = nodes.iter().map(|n| metric_sum(n, "opencluster_forwarded_total")).sum();
    assert!(forwarded > 0, "no request was forwarded");
}

/// Sum of every series of a counter whose line starts with `name` (a metric name, or a
/// name with labels).
fn metric_sum(node: &Node, name: &str) -> u64 {
    let (_, text) = node.admin_get("/metrics");
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn with_fewer_replicas_than_nodes_non_owners_forward() {
    node_only!("clustering is the node's");
    let nodes = start_cluster(3, &["--cluster-replicas", "2"]);
    for node in &nodes {
        let p = node.admin_json("/v1/status")["placement"].clone();
        let owned = p["owned"].as_u64().unwrap();
        // Each node owns about two thirds of the partitions, never all of them.
        assert!((500..1024).contains(&owned), "{p}");
    }
    let mut conns: Vec<_> = nodes.iter().map(Node::raw).collect();
    for i in 0..300 {
        assert_eq!(conns[i % 3].cmd(&["SET", &format!("k{i}"), &format!("v{i}")]), ok());
    }
    for conn in &mut conns {
        for i in 0..300 {
            let key = format!("k{i}");
            eventually(conn, &["GET", &key], bulk(format!("v{i}")));
        }
        eventually(conn, &["DBSIZE"], int(300));
    }
    // Each node holds only the keys of the partitions it owns.
    for node in &nodes {
        let keys = node.admin_json("/v1/status")["store"]["keys"].as_u64().unwrap();
        assert!(keys < 300, "{keys}");
    }
}

#[test]
fn a_killed_node_loses_no_acknowledged_write_in_a_five_node_cluster() {
    node_only!("clustering is the node's");
    let mut nodes = start_cluster(5, &[]);
    let survivors: Vec<_> = nodes[..4].iter().map(Node::client_addr).collect();
    let load = Load::start("before", &survivors);
    // Let writes accumulate, kill n5 in the middle of the load, and keep writing.
    assert!(wait_for_stored_keys(&nodes[0], 300), "the load made no progress");
    let killed = Instant::now();
    nodes[4].kill9();
    let others: Vec<&Node> = nodes[..4].iter().collect();
    wait_placed(&others, 4);
    println!("kill -9 to placement without the node on every survivor: {:?}", killed.elapsed());
    let (acked, errors) = load.finish();
    assert!(acked.len() >= 300, "only {} writes acknowledged", acked.len());
    // Writes after the cluster settled on four nodes succeed too.
    let after = Load::start("after", &survivors);
    let settled = Instant::now();
    wait_until(Duration::from_secs(1), || settled.elapsed() > Duration::from_millis(500));
    let (acked_after, errors_after) = after.finish();
    assert!(errors_after.is_empty(), "errors once settled: {:?}", &errors_after[..errors_after.len().min(5)]);
    assert!(!acked_after.is_empty());
    for node in &nodes[..4] {
        let mut bad = Vec::new();
        let converged = wait_until(CONVERGE, || {
            bad = missing_through(node, &acked);
            bad.extend(missing_through(node, &acked_after));
            bad.is_empty()
        });
        assert!(
            converged,
            "{} acknowledged writes lost or wrong, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
    }
    println!(
        "{} writes acknowledged during the kill, {} refused: {:?}",
        acked.len(),
        errors.len(),
        &errors[..errors.len().min(3)]
    );

    // The killed node comes back with its data and a new gossip identity, takes its
    // partitions again, and serves every acknowledged write (what it missed while down
    // comes from the other owners).
    nodes[4].restart();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_placed(&all, 5);
    for node in [&nodes[4], &nodes[0]] {
        let mut bad = Vec::new();
        let converged = wait_until(CONVERGE, || {
            bad = missing_through(node, &acked);
            bad.extend(missing_through(node, &acked_after));
            bad.is_empty()
        });
        assert!(converged, "after the restart: {} lost, e.g. {:?}", bad.len(), &bad[..bad.len().min(5)]);
    }
    let members = nodes[0].admin_json("/v1/members");
    let n5: Vec<_> = members.as_array().unwrap().iter().filter(|m| m["name"] == "n5").collect();
    assert_eq!(n5.len(), 1, "one entry for the restarted node: {members}");
    assert_eq!(n5[0]["state"], "alive");
}

#[test]
fn a_write_that_cannot_reach_its_quorum_gets_clusterdown() {
    node_only!("clustering is the node's");
    // n3 is paused, not dead: a long suspicion keeps it a member (and an owner) for the
    // whole test however busy the machine is.
    let nodes = start_cluster(
        3,
        &[
            "--cluster-write-quorum",
            "all",
            "--cluster-request-timeout",
            "500ms",
            "--gossip-suspicion-timeout",
            "30s",
        ],
    );
    let mut conn = nodes[0].raw();
    assert_eq!(conn.cmd(&["SET", "before", "1"]), ok());
    // Pause n3: it is still a member (not yet suspected) but answers nothing.
    pause(&nodes[2]);
    let reply = conn.cmd(&["SET", "during", "1"]);
    resume(&nodes[2]);
    // Either n3 is the key's primary and does not answer, or it is a replica the
    // primary cannot reach: both are refused, with the reason.
    let text = reply.error().to_string();
    assert!(
        text.starts_with("CLUSTERDOWN ")
            && (text.contains("of the 3 owners") || text.contains("n3 did not answer")),
        "{text}"
    );
    // Once n3 answers again, writes succeed and reach every owner.
    assert!(
        wait_until(Duration::from_secs(20), || conn.cmd(&["SET", "after", "1"]) == ok()),
        "writes never recovered"
    );
    for node in &nodes {
        assert_eq!(node.raw().cmd(&["GET", "before"]), bulk("1"));
        assert_eq!(node.raw().cmd(&["GET", "after"]), bulk("1"));
    }
    assert_eq!(metric_sum(&nodes[0], "opencluster_errors_total{kind=\"cluster\"}"), 1);
}

#[test]
fn a_member_with_a_certificate_from_another_root_gets_no_data() {
    node_only!("clustering is the node's");
    let dir = tempfile::tempdir().unwrap();
    let ours = opencluster_tests::pki::customer_keys(&dir.path().join("ours"), "dc1");
    let theirs = opencluster_tests::pki::customer_keys(&dir.path().join("theirs"), "dc1");
    // The intruder has the gossip keyring (it gossips) but a certificate of another root.
    std::fs::copy(ours.join("gossip.keyring"), theirs.join("gossip.keyring")).unwrap();
    let tls = |dir: &std::path::Path| ["--tls-dir".to_string(), dir.to_str().unwrap().to_string()];
    let ours_args = tls(&ours);
    let ours_args: Vec<&str> = ours_args.iter().map(String::as_str).collect();
    let nodes = start_cluster(2, &ours_args);
    let theirs_args = tls(&theirs);
    let intruder = Node::start(
        opencluster_tests::cluster::member_opts("intruder", Some(&nodes[0]), &[])
            .args(&theirs_args.iter().map(String::as_str).collect::<Vec<_>>()),
    );
    // It becomes a gossip member, as both nodes come to see (n2 by gossip from n1)...
    let is_member = |n: &Node| {
        n.admin_json("/v1/members")
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "intruder" && m["state"] == "alive")
    };
    for node in &nodes {
        assert!(
            wait_until(Duration::from_secs(30), || is_member(node)),
            "{}",
            node.admin_json("/v1/members")
        );
    }
    // ...but never proves itself over mutual TLS, so it is given no partitions, and why is logged.
    assert!(
        wait_until(Duration::from_secs(30), || nodes[0]
            .stderr_log()
            .contains("member cannot be verified over peer RPC; it gets no partitions until it can")),
        "{}",
        nodes[0].stderr_log()
    );
    let log = nodes[0].stderr_log();
    let line = log.lines().find(|l| l.contains("cannot be verified")).unwrap();
    assert!(line.contains("intruder"), "{line}");
    // The member list says so: it holds no data of this cluster.
    for node in &nodes {
        let placed: std::collections::BTreeMap<String, bool> = node
            .admin_json("/v1/members")
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["placed"].as_bool().unwrap()))
            .collect();
        let expected = [("intruder", false), ("n1", true), ("n2", true)].map(|(n, p)| (n.to_string(), p));
        assert_eq!(placed, expected.into_iter().collect());
    }
    for node in &nodes {
        assert_eq!(opencluster_tests::cluster::placed_nodes(node), 2);
    }
    // The intruder's own attempts to reach the cluster are refused in the handshake.
    let refused = || nodes.iter().map(|n| metric_sum(n, "opencluster_rpc_refused_peers_total")).sum::<u64>();
    assert!(wait_until(Duration::from_secs(30), || refused() > 0));
    // The cluster keeps serving; the intruder holds none of its data.
    let mut conn = nodes[1].raw();
    for i in 0..50 {
        assert_eq!(conn.cmd(&["SET", &format!("k{i}"), "v"]), ok());
    }
    eventually(&mut nodes[0].raw(), &["DBSIZE"], int(50));
    assert_eq!(intruder.admin_json("/v1/status")["store"]["keys"], 0);
}

/// The name of the primary owner of `key`, as `node` places it.
fn primary_of(node: &Node, key: &str) -> String {
    node.admin_json(&format!("/v1/placement?key={key}"))["owners"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_returning_or_new_primary_never_undoes_acknowledged_writes() {
    node_only!("clustering is the node's");
    let mut nodes = start_cluster(3, &[]);
    let mut n1 = nodes[0].raw();
    // Keys whose primary is n3, written before n3 goes away.
    let keys: Vec<String> =
        (0..400).map(|i| format!("x{i}")).filter(|k| primary_of(&nodes[0], k) == "n3").take(20).collect();
    assert_eq!(keys.len(), 20);
    for key in &keys {
        assert_eq!(n1.cmd(&["SET", key, "10"]), ok());
    }
    // While n3 is down the others acknowledge newer values.
    nodes[2].kill9();
    wait_placed(&[&nodes[0], &nodes[1]], 2);
    for key in &keys {
        assert_eq!(n1.cmd(&["SET", key, "20"]), ok());
    }
    // n3 returns with its old copies and is the keys' primary again: reads through it see
    // the acknowledged values, and read-modify-writes build on them.
    nodes[2].restart();
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 3);
    let mut n3 = nodes[2].raw();
    for key in &keys {
        assert_eq!(primary_of(&nodes[0], key), "n3");
        assert_eq!(n3.cmd(&["GET", key]), bulk("20"), "{key} through the returning primary");
        assert_eq!(n1.cmd(&["INCR", key]), int(21), "{key}");
    }
    for key in &keys {
        assert_eq!(n3.cmd(&["GET", key]), bulk("21"));
    }

    // A new node becomes the primary of partitions it holds no data for: commands through
    // any node still see every acknowledged value.
    let mut n2 = nodes[1].raw();
    for i in 0..200 {
        assert_eq!(n2.cmd(&["SET", &format!("y{i}"), "100"]), ok());
    }
    nodes.push(Node::start(opencluster_tests::cluster::member_opts("n4", Some(&nodes[0]), &[])));
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 4);
    let gained: Vec<usize> = (0..200).filter(|i| primary_of(&nodes[0], &format!("y{i}")) == "n4").collect();
    assert!(!gained.is_empty(), "n4 is the primary of none of the keys");
    let mut n4 = nodes[3].raw();
    for i in 0..200 {
        let key = format!("y{i}");
        assert_eq!(n2.cmd(&["INCR", &key]), int(101), "{key}");
        assert_eq!(n4.cmd(&["SETNX", &key, "other"]), int(0), "{key}");
    }
    for &i in &gained {
        let key = format!("y{i}");
        assert_eq!(n4.cmd(&["GET", &key]), bulk("101"));
        assert_eq!(n1.cmd(&["DEL", &key]), int(1), "{key}");
        assert_eq!(n4.cmd(&["EXISTS", &key]), int(0));
    }
}

#[test]
fn a_node_that_leaves_gracefully_costs_the_load_no_error() {
    node_only!("clustering is the node's");
    let mut nodes = start_cluster(3, &[]);
    let clients: Vec<_> = nodes[..2].iter().map(Node::client_addr).collect();
    let load = Load::start("leave", &clients);
    assert!(wait_for_stored_keys(&nodes[0], 200), "the load made no progress");
    // SIGTERM: n3 leaves gossip, answers what peers still send, then exits.
    let status = nodes[2].sigterm_and_wait();
    assert!(status.success(), "{}", nodes[2].log());
    wait_placed(&[&nodes[0], &nodes[1]], 2);
    let (acked, errors) = load.finish();
    assert!(errors.is_empty(), "{} errors, e.g. {:?}", errors.len(), &errors[..errors.len().min(5)]);
    for node in &nodes[..2] {
        let bad = missing_through(node, &acked);
        assert!(bad.is_empty(), "{} lost, e.g. {:?}", bad.len(), &bad[..bad.len().min(5)]);
    }
    let log = nodes[2].stderr_log();
    let left = log.find("left the gossip cluster").expect("n3 left gossip");
    let stopped = log.find("flushing the store").expect("n3 flushed");
    assert!(left < stopped, "n3 left the cluster before it stopped answering");
}

#[test]
fn a_new_node_copies_the_partitions_it_gains() {
    node_only!("clustering is the node's");
    let n4 = a_new_node_copies_from(start_cluster(3, &["--cluster-replicas", "2"]));
    assert!(!n4.stderr_log().contains("copying in HLC order"), "{}", n4.stderr_log());
}

/// Sources of a version before `pull_after` are copied from in HLC order (`pull`), which
/// a node now answers by scanning the partition.
#[test]
fn a_new_node_copies_from_nodes_that_predate_pull_after() {
    node_only!("clustering is the node's");
    let extra = &["--cluster-replicas", "2"];
    let older = |name: &str, seed: Option<&Node>| {
        let mut opts = opencluster_tests::cluster::member_opts(name, seed, extra);
        opts.env.push(("OPENCLUSTER_TEST_REFUSE_KINDS".into(), "pull_after".into()));
        Node::start(opts)
    };
    let mut nodes = vec![older("n1", None)];
    for name in ["n2", "n3"] {
        let n = older(name, Some(&nodes[0]));
        nodes.push(n);
    }
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 3);
    let n4 = a_new_node_copies_from(nodes);
    assert!(n4.stderr_log().contains("copying in HLC order"), "{}", n4.stderr_log());
}

/// Writes 600 keys through the first of three nodes, starts a fourth, and checks that it
/// copied every key it owns and serves all of them. Returns the fourth.
fn a_new_node_copies_from(mut nodes: Vec<Node>) -> Node {
    let mut n1 = nodes[0].raw();
    for i in 0..600 {
        assert_eq!(n1.cmd(&["SET", &format!("key-{i}"), &format!("value-{i}")]), ok());
    }
    // n4 reads only its own copies (read quorum "one"): what it serves is what it copied.
    nodes.push(Node::start(opencluster_tests::cluster::member_opts(
        "n4",
        Some(&nodes[0]),
        &["--cluster-replicas", "2", "--cluster-read-quorum", "one"],
    )));
    wait_placed(&nodes.iter().collect::<Vec<_>>(), 4);
    let n4 = &nodes[3];
    assert!(
        wait_until(Duration::from_secs(60), || {
            let r = worker(n4, "rebalance");
            r["state"] == "idle" && r["partitions_done"].as_u64().unwrap_or(0) > 0
        }),
        "{}",
        worker(n4, "rebalance")
    );
    let r = worker(n4, "rebalance");
    let held = n4.admin_json("/v1/status")["store"]["keys"].as_u64().unwrap();
    assert_eq!(r["keys_moved"].as_u64(), Some(held), "{r}");
    // About half of the keys (2 owners of 4 nodes), all of them those it owns.
    assert!((150..=450).contains(&held), "{held}");
    let mut c4 = n4.raw();
    eventually(&mut c4, &["DBSIZE"], int(600));
    assert_eq!(keys_reply(&c4.cmd(&["KEYS", "key-*"])).len(), 600);
    for i in 0..600 {
        assert_eq!(c4.cmd(&["GET", &format!("key-{i}")]), bulk(format!("value-{i}")));
    }
    assert!(n4.stderr_log().contains("rebalance finished"), "{}", n4.stderr_log());
    // The operator's summary says the same.
    let out = opencluster_tests::node_command()
        .args(["status", "--admin-addr", &n4.admin_addr().to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("members   4 alive") && text.contains("placement 4 nodes"), "{text}");
    assert!(text.contains(&format!("rebalance idle; {held} keys")), "{text}");
    nodes.pop().unwrap()
}

#[test]
fn copies_an_owner_missed_while_paused_are_handed_off_when_it_answers() {
    node_only!("clustering is the node's");
    // n3 is paused, not dead: it stays a member and an owner of every partition.
    let nodes =
        start_cluster(3, &["--gossip-suspicion-timeout", "30s", "--cluster-request-timeout", "500ms"]);
    pause(&nodes[2]);
    let mut n1 = nodes[0].raw();
    let mut acked = 0;
    for i in 0..60 {
        // Keys whose primary is n3 get CLUSTERDOWN; the others reach n1 and n2.
        if n1.cmd(&["SET", &format!("k{i}"), "v"]) == ok() {
            acked += 1;
        }
    }
    assert!(acked > 0);
    let pending = worker(&nodes[0], "handoff")["records_pending"].as_u64().unwrap()
        + worker(&nodes[1], "handoff")["records_pending"].as_u64().unwrap();
    assert!(pending > 0, "no copy for n3 was kept");
    resume(&nodes[2]);
    // Once n3 answers, the kept copies reach it: its own store holds what n1 holds, and
    // both n1 and n2 have delivered theirs (each kept a copy of every write, so n3 can be
    // complete through one of them while the other's next try is still to come).
    let local_keys = |n: &Node| n.admin_json("/v1/status")["store"]["keys"].as_u64().unwrap();
    let delivered_all = || nodes[..2].iter().all(|n| worker(n, "handoff")["records_pending"] == 0);
    assert!(
        wait_until(Duration::from_secs(30), || local_keys(&nodes[2]) == local_keys(&nodes[0])
            && local_keys(&nodes[0]) >= acked
            && delivered_all()),
        "n3 holds {} keys, n1 {}; handoff: {} / {}",
        local_keys(&nodes[2]),
        local_keys(&nodes[0]),
        worker(&nodes[0], "handoff"),
        worker(&nodes[1], "handoff")
    );
    for node in &nodes[..2] {
        let h = worker(node, "handoff");
        assert_eq!(h["records_pending"], 0, "{h}");
    }
    let delivered: u64 =
        nodes[..2].iter().map(|n| worker(n, "handoff")["records_delivered"].as_u64().unwrap()).sum();
    assert!(delivered >= pending, "{delivered} < {pending}");
}
