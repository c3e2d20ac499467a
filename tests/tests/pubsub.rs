//! Pub/sub: Redis's replies and pub/sub mode on one node, delivery to subscribers on
//! every node of a cluster, and slow subscribers cut off at the output limit.

use std::time::Duration;

use opencluster_tests::cluster::start_cluster;
use opencluster_tests::{Node, NodeOpts, Reply, bulk, int, nil, node_only, simple, wait_until};

fn confirm(kind: &str, name: &str, count: i64) -> Reply {
    Reply::Array(vec![bulk(kind), bulk(name), int(count)])
}

#[test]
fn a_resp2_subscriber_is_in_pubsub_mode_until_it_unsubscribes() {
    let node = Node::start_default();
    let mut s = node.raw();
    assert_eq!(s.cmd(&["SUBSCRIBE", "a", "b"]), confirm("subscribe", "a", 1));
    assert_eq!(s.read_reply().unwrap(), confirm("subscribe", "b", 2));
    assert!(
        s.cmd(&["GET", "k"]).error().contains("only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET")
    );
    assert_eq!(s.cmd(&["PING"]), Reply::Array(vec![bulk("pong"), bulk("")]));
    assert_eq!(s.cmd(&["PSUBSCRIBE", "c*"]), confirm("psubscribe", "c*", 3));
    assert_eq!(node.raw().cmd(&["PUBLISH", "cat", "meow"]), int(1));
    assert_eq!(
        s.read_reply().unwrap(),
        Reply::Array(vec![bulk("pmessage"), bulk("c*"), bulk("cat"), bulk("meow")])
    );
    assert_eq!(s.cmd(&["UNSUBSCRIBE"]), confirm("unsubscribe", "a", 2));
    assert_eq!(s.read_reply().unwrap(), confirm("unsubscribe", "b", 1));
    assert_eq!(s.cmd(&["PUNSUBSCRIBE"]), confirm("punsubscribe", "c*", 0));
    assert_eq!(s.cmd(&["UNSUBSCRIBE"]), Reply::Array(vec![bulk("unsubscribe"), nil(), int(0)]));
    assert_eq!(s.cmd(&["PING"]), simple("PONG"), "out of pub/sub mode");
    assert_eq!(s.cmd(&["SUBSCRIBE", "x"]), confirm("subscribe", "x", 1));
    assert_eq!(s.cmd(&["RESET"]), simple("RESET"));
    assert_eq!(node.raw().cmd(&["PUBLISH", "x", "gone"]), int(0));
}

#[test]
fn a_message_published_through_any_node_reaches_subscribers_on_every_node() {
    node_only!("pub/sub across a cluster");
    let nodes = start_cluster(3, &[]);
    let mut subs: Vec<_> = nodes.iter().map(|n| n.raw()).collect();
    for s in &mut subs {
        assert_eq!(s.cmd(&["SUBSCRIBE", "news"]), confirm("subscribe", "news", 1));
    }
    let mut resp3 = nodes[1].raw();
    resp3.cmd(&["HELLO", "3"]);
    assert_eq!(resp3.cmd(&["PSUBSCRIBE", "n*"]), Reply::Push(vec![bulk("psubscribe"), bulk("n*"), int(1)]));
    for (i, node) in nodes.iter().enumerate() {
        let text = format!("from n{}", i + 1);
        assert_eq!(node.raw().cmd(&["PUBLISH", "news", &text]), int(4), "receivers in the datacenter");
        for s in &mut subs {
            assert_eq!(
                s.read_reply().unwrap(),
                Reply::Array(vec![bulk("message"), bulk("news"), bulk(&text)])
            );
        }
        assert_eq!(
            resp3.read_reply().unwrap(),
            Reply::Push(vec![bulk("pmessage"), bulk("n*"), bulk("news"), bulk(&text)])
        );
    }
    let mut c = nodes[0].raw();
    assert_eq!(
        c.cmd(&["PUBSUB", "NUMSUB", "news", "none"]),
        Reply::Array(vec![bulk("news"), int(3), bulk("none"), int(0)])
    );
    assert_eq!(c.cmd(&["PUBSUB", "NUMPAT"]), int(1));
    assert_eq!(c.cmd(&["PUBSUB", "CHANNELS", "ne*"]), Reply::Array(vec![bulk("news")]));
    assert_eq!(c.cmd(&["PUBSUB", "CHANNELS", "x*"]), Reply::Array(vec![]));
}

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_at_the_output_limit() {
    node_only!("the node's output limits");
    let node = Node::start(NodeOpts::new().args(&[
        "--limits-pubsub-output-hard-bytes",
        "256KiB",
        "--limits-pubsub-output-soft-bytes",
        "128KiB",
    ]));
    let mut slow = node.raw();
    assert_eq!(slow.cmd(&["SUBSCRIBE", "flood"]), confirm("subscribe", "flood", 1));
    let payload = "x".repeat(16 << 10);
    let mut publisher = node.raw();
    // Sockets buffer a few MiB on loopback; past them the node queues, up to the limit.
    let cut = wait_until(Duration::from_secs(20), || {
        for _ in 0..64 {
            publisher.cmd(&["PUBLISH", "flood", &payload]);
        }
        publisher.cmd(&["PUBLISH", "flood", "probe"]) == int(0)
    });
    assert!(cut, "the subscriber was never cut off");
    assert!(
        wait_until(Duration::from_secs(5), || node
            .log()
            .contains("disconnecting a client that does not read")),
        "no log line says why"
    );
    // Its connection is closed: after what the sockets had buffered, the stream ends.
    let end = loop {
        if let Err(e) = slow.read_reply() {
            break e;
        }
    };
    assert!(
        !matches!(end.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        "the connection stayed open: {end}"
    );
}
