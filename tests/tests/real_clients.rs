//! Real client libraries against a real cluster: redis-py's client-side cache (which
//! turns on only for servers reporting Redis 7.4 or later), a RESP2 client tracking in
//! REDIRECT mode, and pub/sub across nodes (`tests/clients/redis_py_caching.py`).
//!
//! redis-py (5.1 or later) is a Python package, not part of the Rust toolchain: where it
//! is missing the test says so and passes, unless `OPENCLUSTER_REQUIRE_REDIS_PY=1` (set
//! by `.ci/run`, which installs it) makes its absence a failure.

use std::process::Command;
use std::time::Duration;

use opencluster_tests::cluster::start_cluster;
use opencluster_tests::{node_only, run_with_deadline};

fn redis_py_available() -> bool {
    let check = Command::new("python3")
        .args([
            "-c",
            "import redis, redis.cache; assert tuple(map(int, redis.__version__.split('.')[:2])) >= (5, 1)",
        ])
        .output();
    matches!(check, Ok(out) if out.status.success())
}

#[test]
fn redis_py_caches_on_one_node_and_sees_writes_through_another() {
    node_only!("the near cache and client tracking across nodes");
    if !redis_py_available() {
        assert!(
            std::env::var("OPENCLUSTER_REQUIRE_REDIS_PY").as_deref() != Ok("1"),
            "redis-py 5.1 or later is required here (pip install 'redis>=5.1')"
        );
        eprintln!("skipping: python3 with redis-py 5.1 or later is not installed");
        return;
    }
    let nodes = start_cluster(3, &["--cluster-replicas", "2"]);
    // A key node A (n3) does not own: its reads go through its near cache.
    let key = (0..500)
        .map(|i| format!("py{i}"))
        .find(|k| {
            let owners = nodes[0].admin_json(&format!("/v1/placement?key={k}"))["owners"].clone();
            !owners.as_array().unwrap().iter().any(|o| o["name"] == "n3")
        })
        .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/redis_py_caching.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(nodes[2].port().to_string())
        .arg(nodes[1].port().to_string())
        .arg(nodes[0].port().to_string())
        .arg(&key)
        .arg(nodes[2].admin_addr().to_string());
    let out = run_with_deadline(cmd, Duration::from_secs(60)).expect("the client script finishes");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "redis-py script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
