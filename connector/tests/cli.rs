//! The binary's command line. (Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `opencluster-connector` binary that the scenarios in
//! the `opencluster-tests` crate run.)

use std::process::Command;

fn connector() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opencluster-connector"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OPENCLUSTER_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn help_names_the_wan_flags_and_the_subcommands() {
    let out = connector().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--peer",
        "--wan-addr",
        "--wan-advertise",
        "--join",
        "--gossip-addr",
        "--rpc-addr",
        "--dev",
        "status",
        "health",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn status_of_a_connector_that_is_not_there_fails_and_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = connector()
        .args(["status", "--admin-addr", &format!("127.0.0.1:{port}"), "--timeout", "2s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("opencluster-connector status:"), "{stderr}");
}
