//! The unix socket listener: clients connect through it with the `redis` crate
//! (`unix:///path`), it shares the keyspace with TCP, its file mode is 0660 and that mode
//! is what guards it (no password needed, while TCP asks for one), and a stale socket
//! file left by `kill -9` does not stop a restart.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use opencluster_tests::{Node, NodeOpts, RawConn, bulk, err, node_only, ok, simple};

fn unix_client(node: &Node) -> redis::Connection {
    let url = format!("unix://{}", node.unix_socket_path().display());
    redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap_or_else(|e| panic!("connect to {url}: {e}\n{}", node.log()))
}

#[test]
fn clients_connect_through_the_unix_socket_and_share_the_keyspace() {
    let node = Node::start(NodeOpts::new().unix_socket());
    let mut unix = unix_client(&node);
    let () = redis::cmd("SET").arg("via-unix").arg("1").query(&mut unix).unwrap();
    let mut tcp = node.raw();
    assert_eq!(tcp.cmd(&["GET", "via-unix"]), bulk("1"));
    assert_eq!(tcp.cmd(&["SET", "via-tcp", "2"]), ok());
    let v: String = redis::cmd("GET").arg("via-tcp").query(&mut unix).unwrap();
    assert_eq!(v, "2");

    let mut raw = RawConn::connect_unix(&node.unix_socket_path()).unwrap();
    assert_eq!(raw.cmd(&["PING"]), simple("PONG"));
    assert_eq!(raw.cmd(&["MGET", "via-unix", "via-tcp"]).array(), &[bulk("1"), bulk("2")]);
}

#[test]
fn the_socket_file_has_mode_0660() {
    let node = Node::start(NodeOpts::new().unix_socket());
    let meta = std::fs::metadata(node.unix_socket_path()).unwrap();
    assert!(meta.file_type().is_socket(), "{:?} is not a socket", node.unix_socket_path());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode is {mode:o}");
}

#[test]
fn the_unix_socket_is_guarded_by_its_file_mode_not_the_password() {
    node_only!("Redis asks every connection for the password; the node trusts its 0660 socket");
    let node = Node::start(NodeOpts::new().unix_socket().password("pw"));
    let mut unix = RawConn::connect_unix(&node.unix_socket_path()).unwrap();
    assert_eq!(unix.cmd(&["SET", "k", "v"]), ok(), "no AUTH needed on the socket");
    let mut tcp = node.raw();
    assert_eq!(tcp.cmd(&["GET", "k"]), err("NOAUTH Authentication required."), "TCP still needs it");
    // Clients configured with the password still send AUTH: right passes, wrong is refused.
    assert_eq!(unix.cmd(&["AUTH", "pw"]), ok());
    assert_eq!(
        unix.cmd(&["AUTH", "nope"]),
        err("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert_eq!(unix.cmd(&["GET", "k"]), bulk("v"));
}

#[test]
fn a_stale_socket_file_from_kill_9_does_not_block_a_restart() {
    let mut node = Node::start(NodeOpts::new().unix_socket());
    let mut raw = RawConn::connect_unix(&node.unix_socket_path()).unwrap();
    assert_eq!(raw.cmd(&["SET", "k", "v"]), ok());
    drop(raw);
    node.kill9();
    assert!(node.unix_socket_path().exists(), "kill -9 leaves the socket file behind");
    node.restart();
    let mut raw = RawConn::connect_unix(&node.unix_socket_path()).unwrap();
    assert_eq!(raw.cmd(&["PING"]), simple("PONG"));
}
