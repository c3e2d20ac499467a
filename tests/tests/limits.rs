//! Limits and bad input: oversized keys and values are refused with an error and the
//! connection stays usable; a malformed frame closes only its own connection; beyond
//! the maximum number of clients a new connection is refused.

use std::time::Duration;

use opencluster_tests::{
    Node, NodeOpts, RawConn, Reply, bulk, err, int, nil, node_only, ok, simple, wait_until,
};

fn assert_error_prefix(r: &Reply, prefix: &str, what: &str) {
    match r {
        Reply::Error(e) if e.starts_with(prefix) => {}
        other => panic!("{what}: expected an error starting with {prefix:?}, got {other:?}"),
    }
}

#[test]
fn oversized_key_is_refused_with_the_default_limit() {
    node_only!("key size limits are the node's (Redis accepts 512 MB keys)");
    let node = Node::start_default();
    let mut c = node.raw();
    let max = "k".repeat(65536);
    let over = "k".repeat(65537);
    assert_eq!(c.cmd(&["SET", &max, "v"]), ok(), "a key of exactly 65536 bytes is allowed");
    assert_error_prefix(&c.cmd(&["SET", &over, "v"]), "ERR key too large", "SET with a 65537-byte key");
    assert_eq!(c.cmd(&["PING"]), simple("PONG"), "the connection stays usable");
    assert_eq!(c.cmd(&["GET", &max]), bulk("v"));
    assert_eq!(c.cmd(&["DBSIZE"]), int(1), "the oversized key was not stored");
}

#[test]
fn oversized_value_is_refused_with_the_default_limit() {
    node_only!("value size limits are the node's");
    let node = Node::start_default();
    let mut c = node.raw();
    let max = vec![b'v'; 16 * 1024 * 1024];
    let over = vec![b'v'; 16 * 1024 * 1024 + 1];
    assert_eq!(c.cmd(&[&b"SET"[..], b"big", &max]), ok(), "a value of exactly 16 MiB is allowed");
    assert_error_prefix(&c.cmd(&[&b"SET"[..], b"over", &over]), "ERR value too large", "SET with 16 MiB + 1");
    assert_eq!(c.cmd(&["PING"]), simple("PONG"), "the connection stays usable");
    assert_eq!(c.cmd(&["STRLEN", "big"]), int(16 * 1024 * 1024));
    assert_eq!(c.cmd(&["EXISTS", "over"]), int(0));
}

#[test]
fn configured_key_and_value_limits_apply_to_every_write() {
    node_only!("key and value size limits are the node's");
    let node = Node::start(NodeOpts::new().args(&[
        "--limits-max-key-bytes",
        "16",
        "--limits-max-value-bytes",
        "100",
    ]));
    let mut c = node.raw();
    let key16 = "k".repeat(16);
    let key17 = "k".repeat(17);
    let v100 = "v".repeat(100);
    let v101 = "v".repeat(101);
    assert_eq!(c.cmd(&["SET", &key16, &v100]), ok());
    assert_error_prefix(&c.cmd(&["SET", &key17, "v"]), "ERR key too large", "SET key17");
    assert_error_prefix(&c.cmd(&["SET", "k", &v101]), "ERR value too large", "SET v101");
    assert_error_prefix(&c.cmd(&["MSET", "a", "1", &key17, "2"]), "ERR key too large", "MSET key17");
    assert_error_prefix(&c.cmd(&["MSET", "a", "1", "b", &v101]), "ERR value too large", "MSET v101");
    assert_eq!(c.cmd(&["EXISTS", "a", "b"]), int(0), "a refused MSET writes none of its pairs");
    assert_error_prefix(&c.cmd(&["SETEX", "k", "100", &v101]), "ERR value too large", "SETEX v101");
    assert_error_prefix(&c.cmd(&["SETNX", &key17, "v"]), "ERR key too large", "SETNX key17");
    assert_error_prefix(&c.cmd(&["GETSET", "k", &v101]), "ERR value too large", "GETSET v101");
    assert_eq!(c.cmd(&["PING"]), simple("PONG"));
    assert_eq!(c.cmd(&["DBSIZE"]), int(1));
    assert_eq!(c.cmd(&["GET", &key16]), bulk(&v100));
}

#[test]
fn value_limit_also_bounds_append_and_setrange() {
    node_only!("value size limits are the node's");
    let node = Node::start(NodeOpts::new().args(&["--limits-max-value-bytes", "100"]));
    let mut c = node.raw();
    assert_eq!(c.cmd(&["SET", "k", &"v".repeat(90)]), ok());
    assert_eq!(c.cmd(&["APPEND", "k", &"x".repeat(10)]), int(100));
    assert_error_prefix(&c.cmd(&["APPEND", "k", "x"]), "ERR value too large", "APPEND past 100 bytes");
    assert_error_prefix(
        &c.cmd(&["SETRANGE", "k", "100", "x"]),
        "ERR value too large",
        "SETRANGE past 100 bytes",
    );
    assert_error_prefix(
        &c.cmd(&["SETRANGE", "new", "1000000", "x"]),
        "ERR value too large",
        "SETRANGE at 1e6",
    );
    assert_eq!(c.cmd(&["STRLEN", "k"]), int(100));
    assert_eq!(c.cmd(&["EXISTS", "new"]), int(0));
}

/// Sends `bytes` and checks that the server closes the connection, after answering
/// the valid commands before the bad frame and at most an error for the bad frame.
fn assert_closed_after(node: &Node, bytes: &[u8], valid_before: usize) {
    let mut bad = node.raw();
    bad.send_raw(bytes).unwrap();
    let replies = bad.read_until_closed().unwrap_or_else(|e| {
        panic!("connection not closed after malformed {:?}: {e}", String::from_utf8_lossy(bytes))
    });
    assert!(replies.len() >= valid_before, "replies {replies:?}");
    for r in &replies[..valid_before] {
        assert_eq!(r, &simple("PONG"), "the commands before the bad frame are answered");
    }
    for r in &replies[valid_before..] {
        assert!(r.is_error(), "after a malformed frame only an error may come: {replies:?}");
    }
}

#[test]
fn a_request_beyond_max_request_bytes_closes_the_connection_and_writes_nothing() {
    node_only!("the request size limit is the node's");
    let node = Node::start(NodeOpts::new().args(&[
        "--limits-max-key-bytes",
        "64",
        "--limits-max-value-bytes",
        "64",
        "--limits-max-request-bytes",
        "4KiB",
    ]));
    // Many small arguments: no single one is large, the request as a whole is (~12 KB).
    let mut mset: Vec<String> = vec!["MSET".into()];
    for i in 0..600 {
        mset.push(format!("key:{i:04}"));
        mset.push(format!("value:{i:04}"));
    }
    let args: Vec<&str> = mset.iter().map(|s| s.as_str()).collect();
    let mut big = node.raw();
    big.send_raw(&opencluster_tests::encode_command(&args)).unwrap();
    let replies = big.read_until_closed().expect("the connection is closed");
    assert_eq!(replies.len(), 1, "one error, then the connection closes: {replies:?}");
    assert_error_prefix(&replies[0], "ERR request too large", "an MSET of 12 KB with a 4 KiB limit");
    let mut c = node.raw();
    assert_eq!(c.cmd(&["DBSIZE"]), int(0), "none of the refused MSET's pairs was written");
    // A request under the limit is served.
    assert_eq!(c.cmd(&args[..41]), ok());
    assert_eq!(c.cmd(&["DBSIZE"]), int(20));
}

#[test]
fn a_malformed_frame_closes_only_that_connection() {
    let node = Node::start_default();
    let mut good = node.raw();
    assert_eq!(good.cmd(&["SET", "k", "v"]), ok());
    let malformed: &[&[u8]] =
        &[b"*abc\r\n", b"*1\r\n$abc\r\n", b"*1\r\n+PING\r\n", b"*2\r\n$3\r\nGET\r\n$-7\r\n"];
    for bytes in malformed {
        assert_closed_after(&node, bytes, 0);
        assert_eq!(good.cmd(&["GET", "k"]), bulk("v"), "another connection keeps working");
    }
    assert_closed_after(&node, b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*x\r\n", 2);
    assert_eq!(good.cmd(&["PING"]), simple("PONG"));
    assert_eq!(node.raw().cmd(&["GET", "k"]), bulk("v"), "new connections work too");
}

#[test]
fn a_client_that_closes_mid_frame_does_not_disturb_others() {
    let node = Node::start_default();
    let mut good = node.raw();
    for partial in [&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nab"[..], b"*2\r\n$3\r\nGET", b"*"] {
        let mut c = node.raw();
        c.send_raw(partial).unwrap();
        c.shutdown_write().unwrap();
        let replies = c.read_until_closed().expect("server closes after EOF");
        assert!(replies.iter().all(Reply::is_error), "{replies:?}");
    }
    assert_eq!(good.cmd(&["GET", "k"]), nil(), "the half-sent SET was not applied");
    assert_eq!(good.cmd(&["PING"]), simple("PONG"));
}

fn connected_clients(c: &mut RawConn) -> u64 {
    let info = c.cmd(&["INFO", "clients"]).text();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap_or_else(|| panic!("no connected_clients in {info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn beyond_max_clients_a_new_connection_is_refused() {
    let node = Node::start(NodeOpts::new().max_clients(5));
    let mut first = node.raw();
    // The readiness probe's connection may still be counted for a moment.
    assert!(
        wait_until(Duration::from_secs(10), || connected_clients(&mut first) == 1),
        "connected_clients never settled to 1"
    );
    let mut conns = vec![first];
    for _ in 0..4 {
        let mut c = node.raw();
        assert_eq!(c.cmd(&["PING"]), simple("PONG"));
        conns.push(c);
    }
    let mut extra = node.raw();
    let replies = extra.read_until_closed().expect("the 6th connection is closed");
    assert_eq!(replies, vec![err("ERR max number of clients reached")]);
    for c in &mut conns {
        assert_eq!(c.cmd(&["PING"]), simple("PONG"), "the admitted clients keep working");
    }
    drop(conns.pop());
    let admitted = wait_until(Duration::from_secs(10), || {
        let mut c = node.raw();
        c.try_cmd(&["PING"]).map(|r| r == simple("PONG")).unwrap_or(false)
    });
    assert!(admitted, "a slot freed by a closed connection is never reused");
}
