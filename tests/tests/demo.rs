//! `opencluster-node demo`: a local cluster of node processes that serves any key through
//! any node, reports a node that dies, and leaves nothing behind on SIGTERM. Node-only.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use opencluster_tests::node::send_signal;
use opencluster_tests::{http, node_command, node_only, run_with_deadline, wait_until};

/// How long the demo may take to print its table: N debug nodes starting on two busy cores.
const READY: Duration = Duration::from_secs(90);
/// How long the demo may take to exit after SIGTERM (its nodes drain for up to 10 s).
const STOPPED: Duration = Duration::from_secs(60);

/// One node as the demo's table lists it.
#[derive(Debug)]
struct Listed {
    name: String,
    pid: u32,
    client: SocketAddr,
    admin: SocketAddr,
}

/// A running `opencluster-node demo`, stopped (with its nodes) on Drop, also when the
/// test fails.
struct Demo {
    child: Option<Child>,
    out: tempfile::TempDir,
    nodes: Vec<Listed>,
    dir: PathBuf,
}

impl Demo {
    /// Starts `demo` with `args` and waits for its table.
    fn start(args: &[&str]) -> Demo {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = node_command();
        cmd.arg("demo").args(args);
        cmd.stdout(fs::File::create(out.path().join("stdout")).unwrap());
        cmd.stderr(fs::File::create(out.path().join("stderr")).unwrap());
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut demo = Demo { child: Some(child), out, nodes: Vec::new(), dir: PathBuf::new() };
        let printed = wait_until(READY, || {
            demo.stdout().contains("Stop with Ctrl-C.")
                || demo.child.as_mut().unwrap().try_wait().unwrap().is_some()
        });
        assert!(
            printed && demo.stdout().contains("Stop with Ctrl-C."),
            "no table within {READY:?}\n{}",
            demo.output()
        );
        demo.nodes = parse_table(&demo.stdout());
        demo.dir = parse_data_dir(&demo.stdout());
        demo
    }

    fn stdout(&self) -> String {
        fs::read_to_string(self.out.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.out.path().join("stderr")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!("--- demo stdout ---\n{}--- demo stderr ---\n{}--- end ---", self.stdout(), self.stderr())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("demo running").id()
    }

    /// SIGTERM, then waits for the demo to exit.
    fn sigterm_and_wait(&mut self) -> ExitStatus {
        send_signal(self.pid(), libc::SIGTERM);
        let mut status = None;
        let child = self.child.as_mut().unwrap();
        wait_until(STOPPED, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        let status = status
            .unwrap_or_else(|| panic!("demo still running {STOPPED:?} after SIGTERM\n{}", self.output()));
        self.child = None;
        status
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets the demo stop its nodes; a demo that hangs is killed, and then
            // its nodes get SIGTERM from the kernel (they asked for it at start).
            send_signal(child.id(), libc::SIGTERM);
            if !wait_until(STOPPED, || child.try_wait().unwrap().is_some()) {
                let _ = child.kill(); // it may have exited just now; wait() reaps either way
                child.wait().unwrap();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.output());
            for n in &self.nodes {
                let log = self.dir.join(format!("{}.log", n.name));
                eprintln!("--- {} ---\n{}", log.display(), fs::read_to_string(&log).unwrap_or_default());
            }
        }
    }
}

/// The rows of the table: `  n1  PID  CLIENT  ADMIN  redis-cli -p PORT`.
fn parse_table(stdout: &str) -> Vec<Listed> {
    stdout
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let is_row =
                cells.len() == 7 && cells[0].starts_with('n') && cells[0][1..].parse::<u32>().is_ok();
            is_row.then(|| {
                assert_eq!(cells[4..], ["redis-cli", "-p", cells[2].rsplit(':').next().unwrap()], "{l}");
                Listed {
                    name: cells[0].to_string(),
                    pid: cells[1].parse().unwrap(),
                    client: cells[2].parse().unwrap(),
                    admin: cells[3].parse().unwrap(),
                }
            })
        })
        .collect()
}

/// The directory of `  data:     DIR (removed when the demo stops)`.
fn parse_data_dir(stdout: &str) -> PathBuf {
    let line = stdout.lines().find_map(|l| l.trim_start().strip_prefix("data:")).expect("a data: line");
    PathBuf::from(line.split_whitespace().next().expect("a path"))
}

fn redis_conn(addr: SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}/")).unwrap();
    let con = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    con.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    con
}

/// `(name, state)` of every member the node at `admin` lists, sorted.
fn member_states(admin: SocketAddr) -> Vec<(String, String)> {
    let (code, body) = http::get(admin, "/v1/members").unwrap();
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut states: Vec<(String, String)> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
        .collect();
    states.sort();
    states
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
}

#[test]
fn three_nodes_serve_any_key_through_any_node_and_sigterm_removes_everything() {
    node_only!("the demo runs the node");
    let mut demo = Demo::start(&["--nodes", "3"]);
    let names: Vec<&str> = demo.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["n1", "n2", "n3"], "{}", demo.output());
    assert!(demo.stderr().contains("INSECURE"), "the default-keys warning is missing\n{}", demo.output());
    assert!(demo.dir.starts_with(std::env::temp_dir()) && demo.dir.is_dir(), "{}", demo.output());
    for n in &demo.nodes {
        assert!(demo.dir.join(format!("{}.log", n.name)).is_file(), "no log for {}", n.name);
        assert!(process_exists(n.pid), "{} (pid {}) is not running", n.name, n.pid);
    }

    let (n1, n3) = (&demo.nodes[0], &demo.nodes[2]);
    redis::cmd("SET").arg("demo-key").arg("written-through-n1").exec(&mut redis_conn(n1.client)).unwrap();
    let got: Option<String> = redis::cmd("GET").arg("demo-key").query(&mut redis_conn(n3.client)).unwrap();
    assert_eq!(got.as_deref(), Some("written-through-n1"));
    let alive: Vec<(String, String)> =
        ["n1", "n2", "n3"].iter().map(|n| (n.to_string(), "alive".to_string())).collect();
    for n in &demo.nodes {
        assert_eq!(member_states(n.admin), alive, "members as {} sees them", n.name);
    }

    let status = demo.sigterm_and_wait();
    assert!(status.success(), "demo exited with {status}\n{}", demo.output());
    assert!(demo.stdout().contains("stopped 3 node(s)"), "{}", demo.output());
    for n in &demo.nodes {
        assert!(!process_exists(n.pid), "{} (pid {}) outlived the demo", n.name, n.pid);
        assert!(refuses(n.client) && refuses(n.admin), "{}'s ports still accept connections", n.name);
    }
    assert!(!demo.dir.exists(), "{} was not removed\n{}", demo.dir.display(), demo.output());
}

#[test]
fn a_node_that_dies_is_reported_and_the_others_keep_running() {
    node_only!("the demo runs the node");
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("demo");
    let mut demo = Demo::start(&["--nodes", "2", "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(demo.dir, dir, "{}", demo.output());
    let n2 = &demo.nodes[1];
    send_signal(n2.pid, libc::SIGKILL);
    let report =
        format!("n2 (pid {}) exited unexpectedly (signal: 9 (SIGKILL)); 1 node(s) keep running", n2.pid);
    assert!(
        wait_until(READY, || demo.stderr().contains(&report)),
        "no report of n2's death\n{}",
        demo.output()
    );
    let pong: String = redis::cmd("PING").query(&mut redis_conn(demo.nodes[0].client)).unwrap();
    assert_eq!(pong, "PONG");

    let status = demo.sigterm_and_wait();
    assert_eq!(status.code(), Some(1), "a node died, so the demo fails\n{}", demo.output());
    assert!(demo.stderr().contains("n2 exited while the demo ran"), "{}", demo.output());
    assert!(!process_exists(demo.nodes[0].pid), "n1 outlived the demo");
    // --data-dir keeps the data and the logs.
    for name in ["n1", "n2"] {
        assert!(dir.join(name).join("node-id").is_file(), "{name}'s data dir is gone");
        assert!(dir.join(format!("{name}.log")).is_file(), "{name}'s log is gone");
    }
}

#[test]
fn a_node_that_cannot_start_is_named_with_its_log_and_the_others_are_stopped() {
    node_only!("the demo runs the node");
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().join("demo");
    fs::create_dir(&dir).unwrap();
    // n2's data directory cannot be made: a file has its name.
    fs::write(dir.join("n2"), "not a directory").unwrap();
    let mut cmd = node_command();
    cmd.args(["demo", "--nodes", "2", "--data-dir", dir.to_str().unwrap()]);
    let out = run_with_deadline(cmd, READY).expect("the demo gives up");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("n2 did not come up: it exited (exit status: 2)"), "{stderr}");
    assert!(stderr.contains(&format!("last lines of its log {}", dir.join("n2.log").display())), "{stderr}");
    assert!(stderr.contains(&dir.join("n2").display().to_string()), "the log tail names the path: {stderr}");
    assert!(stdout.contains("stopped 1 node(s)") && !stdout.contains("Stop with Ctrl-C."), "{stdout}");
    assert!(dir.join("n1.log").is_file(), "the logs stay for the user");
}

#[test]
fn wrong_flags_are_refused_before_anything_starts() {
    node_only!("the demo runs the node");
    let out = run_with_deadline(
        {
            let mut c = node_command();
            c.args(["demo", "--nodes", "17"]);
            c
        },
        Duration::from_secs(10),
    )
    .expect("exits");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value '17' for '--nodes <N>': 17 is not in 1..=16"), "{stderr}");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = node_command();
    cmd.args(["demo", "--nodes", "1", "--base-port", &port.to_string()]);
    let out = run_with_deadline(cmd, Duration::from_secs(10)).expect("exits");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} (client port of n1, from --base-port) cannot be bound")),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "nothing may start: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut cmd = node_command();
    cmd.args(["demo", "--", "--log-format", "yaml"]);
    let out = run_with_deadline(cmd, Duration::from_secs(10)).expect("exits");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the node flags after `--`: invalid setting `log_format` (from --log-format)"),
        "{stderr}"
    );
}

/// The rows of the tables of a demo of several datacenters:
/// `  dcK-nI  PID  CLIENT  ADMIN  redis-cli -p PORT`.
fn parse_datacenter_tables(stdout: &str) -> Vec<Listed> {
    stdout
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let is_row = cells.len() == 7 && cells[0].starts_with("dc") && cells[0].contains("-n");
            is_row.then(|| Listed {
                name: cells[0].to_string(),
                pid: cells[1].parse().unwrap(),
                client: cells[2].parse().unwrap(),
                admin: cells[3].parse().unwrap(),
            })
        })
        .collect()
}

/// `(name, pid)` of each connector line: `  connector: dcK-connector (pid P), WAN ADDR`.
fn parse_connectors(stdout: &str) -> Vec<(String, u32)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix("connector: ")?;
            let (name, rest) = rest.split_once(" (pid ")?;
            Some((name.to_string(), rest.split_once(')')?.0.parse().ok()?))
        })
        .collect()
}

#[test]
fn two_datacenters_copy_a_write_from_dc1_to_dc2_and_sigint_stops_every_process() {
    node_only!("the demo runs the node and the connector");
    opencluster_tests::connector::connector_binary(); // beside the node binary, or the test says how to build it
    let mut demo = Demo::start(&["--datacenters", "2", "--nodes", "1"]);
    demo.nodes = parse_datacenter_tables(&demo.stdout());
    let names: Vec<&str> = demo.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["dc1-n1", "dc2-n1"], "{}", demo.output());
    let connectors = parse_connectors(&demo.stdout());
    let connector_names: Vec<&str> = connectors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(connector_names, ["dc1-connector", "dc2-connector"], "{}", demo.output());
    assert!(demo.stderr().contains("INSECURE"), "the default-keys warning is missing\n{}", demo.output());
    for (name, pid) in &connectors {
        assert!(process_exists(*pid), "{name} (pid {pid}) is not running");
        let log = fs::read_to_string(demo.dir.join(format!("{name}.log"))).unwrap();
        let dc = &name[..3];
        assert!(
            log.contains(&format!("spiffe://opencluster-demo/dc/{dc}/connector/{name}")),
            "{name} has no certificate of the demo cluster's {dc}:\n{log}"
        );
    }
    // Each datacenter is a cluster of its own: its node and its connector.
    assert_eq!(
        member_states(demo.nodes[1].admin),
        [("dc2-connector".to_string(), "alive".to_string()), ("dc2-n1".to_string(), "alive".to_string())]
    );

    let (dc1, dc2) = (&demo.nodes[0], &demo.nodes[1]);
    let key = format!("demo-dc-{}", std::process::id());
    redis::cmd("SET").arg(&key).arg("written-in-dc1").exec(&mut redis_conn(dc1.client)).unwrap();
    let mut in_dc2 = redis_conn(dc2.client);
    let mut got: Option<String> = None;
    let arrived = wait_until(Duration::from_secs(30), || {
        got = redis::cmd("GET").arg(&key).query(&mut in_dc2).unwrap();
        got.is_some()
    });
    assert!(arrived, "the write in dc1 did not reach dc2 within 30s\n{}", demo.output());
    assert_eq!(got.as_deref(), Some("written-in-dc1"));

    send_signal(demo.pid(), libc::SIGINT);
    let mut status = None;
    let child = demo.child.as_mut().unwrap();
    wait_until(STOPPED, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status =
        status.unwrap_or_else(|| panic!("demo still running {STOPPED:?} after SIGINT\n{}", demo.output()));
    demo.child = None;
    assert!(status.success(), "demo exited with {status}\n{}", demo.output());
    assert!(demo.stdout().contains("stopped 2 node(s) and 2 connector(s)"), "{}", demo.output());
    for n in &demo.nodes {
        assert!(!process_exists(n.pid), "{} (pid {}) outlived the demo", n.name, n.pid);
        assert!(refuses(n.client) && refuses(n.admin), "{}'s ports still accept connections", n.name);
    }
    for (name, pid) in &connectors {
        assert!(!process_exists(*pid), "{name} (pid {pid}) outlived the demo");
    }
    assert!(!demo.dir.exists(), "{} was not removed\n{}", demo.dir.display(), demo.output());
}
