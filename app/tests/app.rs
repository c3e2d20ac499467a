//! The example app against a real node: it writes through the Unix socket and over TCP
//! with the password, finds every acknowledged write again, and exits 1 when writes it
//! saved are gone.

use std::process::{Command, Output};

use opencluster_tests::{Node, NodeOpts};

fn app(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_opencluster-example-app"))
        .args(args)
        .env_remove("OPENCLUSTER_APP_SOCKET")
        .env_remove("OPENCLUSTER_APP_URL")
        .env_remove("OPENCLUSTER_APP_PASSWORD")
        .output()
        .expect("run the example app");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn writes_through_the_socket_are_all_found_and_lost_ones_are_reported() {
    let node = Node::start(NodeOpts::new().unix_socket().password("pw").allow_flushdb());
    let dir = tempfile::tempdir().unwrap();
    let acked = dir.path().join("acked.txt");
    let socket = node.unix_socket_path();
    let (socket, acked_arg) = (socket.to_str().unwrap(), acked.to_str().unwrap());

    let out = app(&[
        "--socket",
        socket,
        "--password",
        "pw",
        "load",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--prefix",
        "t",
        "--acked",
        acked_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("lost=0 unverified=0"), "{}", stderr(&out));
    let saved = std::fs::read_to_string(&acked).unwrap();
    assert!(saved.lines().count() >= 50, "too few writes acknowledged:\n{saved}");
    assert!(saved.starts_with("t:1\t1-"), "{saved}");

    // The same list checked later over TCP, as another process would after a fault.
    let url = format!("redis://:pw@127.0.0.1:{}", node.port());
    let out = app(&["--url", &url, "verify", "--acked", acked_arg]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut admin = node.client();
    redis::cmd("FLUSHDB").query::<()>(&mut admin).unwrap();
    let out = app(&["--url", &url, "verify", "--acked", acked_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("LOST t:1:") && stderr(&out).contains("FAILED"), "{}", stderr(&out));
}

#[test]
fn a_wrong_password_or_no_node_is_an_error_not_a_success() {
    let node = Node::start(NodeOpts::new().unix_socket().password("pw"));
    let socket = node.unix_socket_path();
    let out =
        app(&["--socket", socket.to_str().unwrap(), "--password", "nope", "load", "--duration", "300ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = app(&["--socket", "/nonexistent/oc.sock", "load", "--duration", "300ms", "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}
