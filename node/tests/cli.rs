//! The binary's command line. (Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `opencluster-node` binary that the scenarios in the
//! `opencluster-tests` crate run.)

use std::process::Command;

use opencluster_node::config::settings::SETTINGS;

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opencluster-node"))
}

#[test]
fn help_lists_every_setting_with_its_flag_and_environment_variable() {
    let out = node().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for s in SETTINGS {
        assert!(help.contains(&format!("--{}", s.flag())), "--help lacks --{}", s.flag());
        assert!(help.contains(&s.env()), "--help lacks {}", s.env());
    }
    for fixed in ["--config", "--dev", "health"] {
        assert!(help.contains(fixed), "--help lacks {fixed}");
    }
}

#[test]
fn version_is_the_crate_version() {
    let out = node().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("opencluster-node {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_setting() {
    let out = node().args(["--dev", "--store-fsync", "sometimes"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("`store.fsync`") && err.contains("--store-fsync"), "{err}");
}
