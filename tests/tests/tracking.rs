//! CLIENT TRACKING as Redis documents it, on one node and across a cluster: default mode,
//! OPTIN/OPTOUT with CLIENT CACHING, NOLOOP, BCAST with prefixes, REDIRECT for RESP2
//! clients, a null invalidation on FLUSHDB, and the errors Redis gives.

use std::time::Duration;

use opencluster_tests::cluster::start_cluster;
use opencluster_tests::{Node, NodeOpts, RawConn, Reply, bulk, int, node_only, ok, simple, wait_until};

fn resp3(node: &Node) -> RawConn {
    let mut c = node.raw();
    assert!(!c.cmd(&["HELLO", "3"]).is_error());
    c
}

/// The invalidation push a RESP3 client gets for `keys`.
fn invalidate(keys: &[&str]) -> Reply {
    Reply::Push(vec![bulk("invalidate"), Reply::Array(keys.iter().map(bulk).collect())])
}

/// The next frame on `c` after its pending pushes: PING's PONG proves nothing else came.
fn nothing_pending(c: &mut RawConn) {
    assert_eq!(c.cmd(&["PING"]), simple("PONG"));
}

#[test]
fn a_key_read_with_tracking_is_invalidated_once_when_another_client_writes_it() {
    let node = Node::start_default();
    let mut reader = resp3(&node);
    let mut writer = node.raw();
    assert_eq!(reader.cmd(&["CLIENT", "TRACKING", "ON"]), ok());
    writer.cmd(&["SET", "k", "1"]);
    assert_eq!(reader.cmd(&["GET", "k"]), bulk("1"));
    assert_eq!(writer.cmd(&["SET", "k", "2"]), ok());
    assert_eq!(reader.read_reply().unwrap(), invalidate(&["k"]));
    // Told once: the key is forgotten until it is read again.
    writer.cmd(&["SET", "k", "3"]);
    nothing_pending(&mut reader);
    assert_eq!(reader.cmd(&["GET", "k"]), bulk("3"));
    writer.cmd(&["DEL", "k"]);
    assert_eq!(reader.read_reply().unwrap(), invalidate(&["k"]));
}

#[test]
fn noloop_keeps_a_clients_own_writes_from_coming_back() {
    let node = Node::start_default();
    let mut c = resp3(&node);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON", "NOLOOP"]), ok());
    c.cmd(&["GET", "k"]);
    assert_eq!(c.cmd(&["SET", "k", "mine"]), ok());
    nothing_pending(&mut c);
    c.cmd(&["GET", "k"]);
    node.raw().cmd(&["SET", "k", "theirs"]);
    assert_eq!(c.read_reply().unwrap(), invalidate(&["k"]));
}

#[test]
fn optin_tracks_only_reads_after_caching_yes_and_optout_all_but_after_caching_no() {
    let node = Node::start_default();
    let mut writer = node.raw();
    let mut c = resp3(&node);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON", "OPTIN"]), ok());
    c.cmd(&["GET", "a"]);
    assert_eq!(c.cmd(&["CLIENT", "CACHING", "yes"]), ok());
    c.cmd(&["GET", "b"]);
    writer.cmd(&["SET", "a", "1"]);
    writer.cmd(&["SET", "b", "1"]);
    assert_eq!(c.read_reply().unwrap(), invalidate(&["b"]));
    nothing_pending(&mut c);
    assert!(c.cmd(&["CLIENT", "CACHING", "no"]).error().contains("OPTOUT"));

    let mut o = resp3(&node);
    assert_eq!(o.cmd(&["CLIENT", "TRACKING", "ON", "OPTOUT"]), ok());
    assert_eq!(o.cmd(&["CLIENT", "CACHING", "no"]), ok());
    o.cmd(&["GET", "x"]);
    o.cmd(&["GET", "y"]);
    writer.cmd(&["SET", "x", "1"]);
    writer.cmd(&["SET", "y", "1"]);
    assert_eq!(o.read_reply().unwrap(), invalidate(&["y"]));
    nothing_pending(&mut o);
}

#[test]
fn broadcast_mode_reports_every_change_under_its_prefixes() {
    let node = Node::start_default();
    let mut c = resp3(&node);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user:", "PREFIX", "cart:"]), ok());
    let mut writer = node.raw();
    writer.cmd(&["SET", "user:1", "x"]);
    assert_eq!(c.read_reply().unwrap(), invalidate(&["user:1"]));
    writer.cmd(&["SET", "other", "x"]);
    writer.cmd(&["SET", "cart:9", "x"]);
    assert_eq!(c.read_reply().unwrap(), invalidate(&["cart:9"]));
    // Not forgotten: broadcast clients hear of every change.
    writer.cmd(&["SET", "user:1", "y"]);
    assert_eq!(c.read_reply().unwrap(), invalidate(&["user:1"]));
    let info = c.cmd(&["CLIENT", "TRACKINGINFO"]);
    assert_eq!(info.field("redirect"), Some(&int(0)));
    assert_eq!(info.field("prefixes").map(|p| p.array().len()), Some(2));
    let flags = format!("{:?}", info.field("flags").unwrap());
    assert!(flags.contains("on") && flags.contains("bcast"), "{flags}");
}

#[test]
fn tracking_options_are_checked_as_redis_checks_them() {
    let node = Node::start_default();
    let mut c = resp3(&node);
    assert!(c.cmd(&["CLIENT", "TRACKING", "ON", "PREFIX", "a"]).error().contains("requires BCAST"));
    assert!(
        c.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a", "PREFIX", "ab"])
            .error()
            .contains("overlap")
    );
    assert!(
        c.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "OPTIN"]).error().contains("not compatible with BCAST")
    );
    assert!(c.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"]).error().contains("does not exist"));
    assert!(c.cmd(&["CLIENT", "CACHING", "yes"]).error().contains("OPTIN or OPTOUT"));
    assert!(c.cmd(&["CLIENT", "TRACKING", "MAYBE"]).is_error());
    assert_eq!(c.cmd(&["CLIENT", "GETREDIR"]), int(-1));
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON", "OPTIN"]), ok());
    assert!(c.cmd(&["CLIENT", "TRACKING", "ON", "OPTOUT"]).error().contains("switch"));
    assert_eq!(c.cmd(&["CLIENT", "GETREDIR"]), int(0));
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "OFF"]), ok());
    assert_eq!(c.cmd(&["CLIENT", "GETREDIR"]), int(-1));
}

#[test]
fn resp2_clients_get_invalidations_through_a_redirect_and_hear_when_it_breaks() {
    let node = Node::start_default();
    let mut listener = node.raw();
    let id = listener.cmd(&["CLIENT", "ID"]).int();
    assert_eq!(
        listener.cmd(&["SUBSCRIBE", "__redis__:invalidate"]),
        Reply::Array(vec![bulk("subscribe"), bulk("__redis__:invalidate"), int(1)])
    );
    let mut tracker = node.raw();
    assert_eq!(tracker.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()]), ok());
    assert_eq!(tracker.cmd(&["CLIENT", "GETREDIR"]), int(id));
    tracker.cmd(&["GET", "k"]);
    node.raw().cmd(&["SET", "k", "v"]);
    assert_eq!(
        listener.read_reply().unwrap(),
        Reply::Array(vec![bulk("message"), bulk("__redis__:invalidate"), Reply::Array(vec![bulk("k")])])
    );
    // A RESP3 client whose target goes away is told so.
    let mut target = node.raw();
    let target_id = target.cmd(&["CLIENT", "ID"]).int();
    let mut c = resp3(&node);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &target_id.to_string()]), ok());
    c.cmd(&["GET", "j"]);
    drop(target);
    // Once the node has seen the target's connection close, the redirect is broken.
    assert!(wait_until(Duration::from_secs(5), || {
        format!("{:?}", c.cmd(&["CLIENT", "TRACKINGINFO"]).field("flags").unwrap())
            .contains("broken_redirect")
    }));
    node.raw().cmd(&["SET", "j", "v"]);
    assert_eq!(c.read_reply().unwrap(), Reply::Push(vec![bulk("tracking-redir-broken"), int(target_id)]));
}

#[test]
fn flushdb_invalidates_everything_with_a_null() {
    let node = Node::start(NodeOpts::new().allow_flushdb());
    let mut c = resp3(&node);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON"]), ok());
    node.raw().cmd(&["SET", "k", "v"]);
    c.cmd(&["GET", "k"]);
    assert_eq!(node.raw().cmd(&["FLUSHDB"]), ok());
    // The key's own invalidation may come first; the null one follows.
    let mut reply = c.read_reply().unwrap();
    if reply == invalidate(&["k"]) {
        reply = c.read_reply().unwrap();
    }
    assert_eq!(reply, Reply::Push(vec![bulk("invalidate"), Reply::Null]));
}

#[test]
fn a_client_tracking_on_one_node_hears_of_writes_through_another() {
    node_only!("tracking across a cluster");
    let nodes = start_cluster(3, &["--cluster-replicas", "2"]);
    // Keys n3 does not own (their owners tell it) and keys it owns (it applies them).
    let mut c = resp3(&nodes[2]);
    assert_eq!(c.cmd(&["CLIENT", "TRACKING", "ON"]), ok());
    for key in ["t1", "t2", "t3", "t4"] {
        nodes[0].raw().cmd(&["SET", key, "old"]);
        assert_eq!(c.cmd(&["GET", key]), bulk("old"));
        assert_eq!(nodes[1].raw().cmd(&["SET", key, "new"]), ok());
        assert_eq!(c.read_reply().unwrap(), invalidate(&[key]), "{key}");
    }
    let mut b = resp3(&nodes[2]);
    assert_eq!(b.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "bc:"]), ok());
    // Broadcast prefixes are registered at every node in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        i += 1;
        let key = format!("bc:{i}");
        nodes[0].raw().cmd(&["SET", &key, "x"]);
        match b.cmd(&["PING"]) {
            Reply::Push(p) => {
                // The invalidation of this key or of an earlier one that came late.
                let text = format!("{p:?}");
                assert!(text.contains("invalidate") && text.contains("bc:"), "{text}");
                break;
            }
            reply => assert_eq!(reply, simple("PONG")),
        }
        assert!(std::time::Instant::now() < deadline, "no broadcast invalidation from another node");
    }
}
