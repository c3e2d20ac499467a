//! `opencluster-node demo`: a cluster of N nodes as processes on this machine, for trying
//! OpenCluster without Docker.
//!
//! The demo starts N child processes of its own executable, each a `--dev` node on
//! loopback ports of its own with a data directory and a log file in the demo directory,
//! all joined to the first. It waits until every node is healthy and places partitions
//! on all N, prints where to connect, and then watches them: a node that dies is
//! reported (with the end of its log) while the others keep running, as a real cluster
//! would. SIGINT or SIGTERM stops every node with SIGTERM (each leaves the cluster and
//! flushes), kills what has not exited after `--stop-timeout`, and removes the demo
//! directory unless `--data-dir` named it.

mod args;
mod child;
mod ports;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};

use args::{check_node_args, node_args, node_name};
use child::NodeProcess;
use ports::NodePorts;

/// Most nodes a demo runs: each is a full node process; more would only starve the machine.
pub const MAX_NODES: usize = 16;
/// How often the demo asks the nodes whether they are ready, and checks stopping ones.
const POLL: Duration = Duration::from_millis(100);
/// How long one admin request may take while waiting for the nodes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Log lines shown when a node fails.
const LOG_TAIL_LINES: usize = 20;

/// What `opencluster-node demo` was asked for.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How many nodes, 1 to [`MAX_NODES`].
    pub nodes: usize,
    /// Consecutive ports from here instead of free ones.
    pub base_port: Option<u16>,
    /// Keep the nodes' data and logs here (created if missing) instead of a temporary
    /// directory removed at the end.
    pub data_dir: Option<PathBuf>,
    /// `cluster.replicas` for every node.
    pub replicas: Option<u32>,
    /// A config file every node reads (`--config`).
    pub config_file: Option<PathBuf>,
    /// Node flags given after `--`, passed to every node.
    pub node_args: Vec<String>,
    /// How long the nodes may take to become ready.
    pub start_timeout: Duration,
    /// How long the nodes may take to exit after SIGTERM before they are killed.
    pub stop_timeout: Duration,
    /// How the user ran this program (argv[0]), for the hints printed.
    pub program: String,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A flag is wrong; nothing was started.
    #[error("{0}")]
    Flags(String),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error(
        "{node} did not come up: {reason}\nlast lines of its log {log}:\n{tail}\n(the demo stopped the other nodes; their logs are in {dir})"
    )]
    NotReady { node: String, reason: String, log: PathBuf, tail: String, dir: PathBuf },
    #[error("{0}")]
    Unclean(String),
}

impl DemoError {
    /// 2 for wrong flags (as a node with an invalid config), 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            DemoError::Flags(_) => 2,
            _ => 1,
        }
    }
}

/// Runs the demo until SIGINT or SIGTERM, or until every node has died.
pub fn run(opts: DemoOptions) -> Result<(), DemoError> {
    if !(1..=MAX_NODES).contains(&opts.nodes) {
        return Err(DemoError::Flags(format!("--nodes {}: give 1 to {MAX_NODES}", opts.nodes)));
    }
    let plan = match opts.base_port {
        Some(base) => {
            let plan = ports::from_base(base, opts.nodes)?;
            ports::check_free(&plan)?;
            plan
        }
        None => ports::free(opts.nodes)?,
    };
    let exe = std::env::current_exe()
        .map_err(|source| DemoError::Io { what: "find this program's executable".into(), source })?;
    // The last node's command line has every kind of flag there is (`--join` too).
    let last = plan.len() - 1;
    check_node_args(&node_args(&opts, Path::new("demo"), last, &plan[last], &plan[0]))?;
    let dir = DemoDir::create(opts.data_dir.clone())?;
    let args: Vec<Vec<String>> =
        plan.iter().enumerate().map(|(i, p)| node_args(&opts, &dir.path, i, p, &plan[0])).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DemoError::Io { what: "start the demo's runtime".into(), source })?;
    let result = rt.block_on(supervise(&opts, &exe, &dir.path, plan, args));
    // A node that did not come up leaves its log for the user; otherwise a temporary
    // directory goes.
    if !matches!(result, Err(DemoError::NotReady { .. })) {
        dir.remove();
    }
    result
}

/// The directory holding every node's data directory and log.
struct DemoDir {
    path: PathBuf,
    /// Removed at the end: the demo made it in the temporary directory.
    temporary: bool,
}

impl DemoDir {
    fn create(given: Option<PathBuf>) -> Result<DemoDir, DemoError> {
        let io = |path: &Path, source| DemoError::Io { what: format!("create {}", path.display()), source };
        if let Some(path) = given {
            std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
            return Ok(DemoDir { path, temporary: false });
        }
        let base = std::env::temp_dir().join(format!("opencluster-demo-{}", std::process::id()));
        // A demo killed with SIGKILL leaves its directory; a later demo with the same pid
        // picks the next free name rather than reusing another run's data.
        for n in 0u32.. {
            let path = if n == 0 { base.clone() } else { PathBuf::from(format!("{}-{n}", base.display())) };
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(DemoDir { path, temporary: true }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path, e)),
            }
        }
        unreachable!("u32 names run out")
    }

    fn remove(&self) {
        if !self.temporary {
            return;
        }
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => println!("removed {}", self.path.display()),
            Err(e) => eprintln!("opencluster-node demo: could not remove {}: {e}", self.path.display()),
        }
    }
}

/// The signals the demo reacts to.
struct Signals {
    term: Signal,
    int: Signal,
    child: Signal,
}

impl Signals {
    fn listen() -> Result<Signals, DemoError> {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|source| DemoError::Io { what: format!("listen for {name}"), source })
        };
        Ok(Signals {
            term: listen(SignalKind::terminate(), "SIGTERM")?,
            int: listen(SignalKind::interrupt(), "SIGINT")?,
            child: listen(SignalKind::child(), "SIGCHLD")?,
        })
    }
}

/// Why the demo is stopping its nodes.
enum Stop {
    Signal(&'static str),
    AllDied,
}

async fn supervise(
    opts: &DemoOptions,
    exe: &Path,
    dir: &Path,
    plan: Vec<NodePorts>,
    args: Vec<Vec<String>>,
) -> Result<(), DemoError> {
    // Listening before the first node starts: no exit or Ctrl-C can slip past.
    let mut signals = Signals::listen()?;
    println!("starting {} node(s) in {}", plan.len(), dir.display());
    let mut nodes = Vec::with_capacity(plan.len());
    for (i, (ports, args)) in plan.into_iter().zip(args).enumerate() {
        let log = dir.join(format!("{}.log", node_name(i)));
        match NodeProcess::spawn(exe, node_name(i), ports, &args, log) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                stop_all(&mut nodes, opts.stop_timeout, &mut signals).await;
                return Err(e);
            }
        }
    }

    let ready = tokio::select! {
        ready = wait_ready(&mut nodes, opts.start_timeout) => Ok(ready),
        name = interrupted(&mut signals) => Err(name),
    };
    let first_status = match ready {
        Ok(Ok(status)) => status,
        Ok(Err(not_ready)) => {
            stop_all(&mut nodes, opts.stop_timeout, &mut signals).await;
            return Err(not_ready.into_error(dir));
        }
        Err(name) => {
            println!("{name}: stopping before every node was ready");
            stop_all(&mut nodes, opts.stop_timeout, &mut signals).await;
            return Ok(());
        }
    };
    let insecure = first_status["insecure_default_keys"].as_bool().unwrap_or(true);
    if insecure {
        eprintln!(
            "WARNING: the demo's nodes use the INSECURE well-known default keys: anyone who can reach their \
             ports can join or read this cluster. They listen on 127.0.0.1 only; never keep real data in them."
        );
    }
    let rows: Vec<Row> =
        nodes.iter().map(|n| Row { name: n.name.clone(), pid: n.pid(), ports: n.ports }).collect();
    print!("{}", summary(&rows, &opts.program, dir, opts.data_dir.is_none(), insecure));

    let (stop, died) = watch(&mut nodes, &mut signals).await;
    match stop {
        Stop::Signal(name) => println!("{name}: stopping {} node(s)", opts.nodes - died.len()),
        Stop::AllDied => eprintln!("opencluster-node demo: every node has exited; stopping"),
    }
    let unclean = stop_all(&mut nodes, opts.stop_timeout, &mut signals).await;
    let mut problems = Vec::new();
    if !died.is_empty() {
        problems.push(format!("{} exited while the demo ran", died.join(", ")));
    }
    if !unclean.is_empty() {
        problems.push(format!("{} did not stop cleanly", unclean.join(", ")));
    }
    if problems.is_empty() { Ok(()) } else { Err(DemoError::Unclean(problems.join("; "))) }
}

/// Watches the nodes until SIGINT or SIGTERM, or until every node has exited; reports
/// each node that exits. Returns why it stopped and the nodes that exited.
async fn watch(nodes: &mut [NodeProcess], signals: &mut Signals) -> (Stop, Vec<String>) {
    let mut died = Vec::new();
    let stop = loop {
        let stop = tokio::select! {
            _ = signals.term.recv() => Some(Stop::Signal("SIGTERM")),
            _ = signals.int.recv() => Some(Stop::Signal("SIGINT")),
            _ = signals.child.recv() => None,
        };
        let total = nodes.len();
        for n in nodes.iter_mut() {
            if died.contains(&n.name) {
                continue;
            }
            if let Some(status) = n.try_exit() {
                died.push(n.name.clone());
                eprintln!(
                    "opencluster-node demo: {} (pid {}) exited unexpectedly ({status}); {} node(s) keep running. \
                     Last lines of {}:\n{}",
                    n.name,
                    n.pid(),
                    total - died.len(),
                    n.log.display(),
                    n.log_tail(LOG_TAIL_LINES)
                );
            }
        }
        match stop {
            Some(s) => break s,
            None if died.len() == nodes.len() => break Stop::AllDied,
            None => {}
        }
    };
    (stop, died)
}

/// Waits for the first SIGINT or SIGTERM; its name.
async fn interrupted(signals: &mut Signals) -> &'static str {
    tokio::select! {
        _ = signals.term.recv() => "SIGTERM",
        _ = signals.int.recv() => "SIGINT",
    }
}

/// Why a node is not ready yet.
struct NotReady {
    node: usize,
    reason: String,
    log: PathBuf,
    tail: String,
}

impl NotReady {
    fn into_error(self, dir: &Path) -> DemoError {
        DemoError::NotReady {
            node: node_name(self.node),
            reason: self.reason,
            log: self.log,
            tail: self.tail,
            dir: dir.to_path_buf(),
        }
    }
}

/// Polls every node until each is healthy, sees every node alive and places partitions
/// on all of them; returns the first node's `/v1/status`. Fails at once when a node
/// exits, or at `timeout` naming the first node not ready and why.
async fn wait_ready(nodes: &mut [NodeProcess], timeout: Duration) -> Result<Value, NotReady> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let n = nodes.len() as u64;
    let mut ready: Vec<Option<Value>> = vec![None; nodes.len()];
    loop {
        tick.tick().await;
        for (i, node) in nodes.iter_mut().enumerate() {
            let fail = |node: &NodeProcess, reason: String| NotReady {
                node: i,
                reason,
                log: node.log.clone(),
                tail: node.log_tail(LOG_TAIL_LINES),
            };
            if let Some(status) = node.try_exit() {
                return Err(fail(node, format!("it exited ({status})")));
            }
            if ready[i].is_some() {
                continue;
            }
            match probe(node.ports, n).await {
                Ok(status) => ready[i] = Some(status),
                Err(reason) if Instant::now() >= deadline => {
                    return Err(fail(node, format!("not ready within {timeout:?}: {reason}")));
                }
                Err(_) => {}
            }
        }
        if ready.iter().all(Option::is_some) {
            return Ok(ready.swap_remove(0).expect("all ready"));
        }
    }
}

/// Ok with the node's `/v1/status` when it is healthy, sees `n` members alive and places
/// partitions on `n` nodes; else what it lacks.
async fn probe(ports: NodePorts, n: u64) -> Result<Value, String> {
    let admin = ports.admin_addr();
    crate::admin::check_health(admin, PROBE_TIMEOUT).await.map_err(|e| e.to_string())?;
    let status = crate::admin::client::get_status(admin, PROBE_TIMEOUT).await.map_err(|e| e.to_string())?;
    let alive = status["members"]["alive"].as_u64().unwrap_or(0);
    let placed = status["placement"]["nodes"].as_u64().unwrap_or(0);
    if alive == n && placed == n {
        Ok(status)
    } else {
        Err(format!("it sees {alive} of {n} members alive and places partitions on {placed} of {n} nodes"))
    }
}

/// Sends SIGTERM to every node still running, waits up to `timeout` (a second SIGINT or
/// SIGTERM cuts the wait short), then kills what is left. Returns the nodes that did not
/// exit with status 0 on SIGTERM.
async fn stop_all(nodes: &mut [NodeProcess], timeout: Duration, signals: &mut Signals) -> Vec<String> {
    let stopping: Vec<usize> = (0..nodes.len()).filter(|&i| nodes[i].is_running()).collect();
    for &i in &stopping {
        nodes[i].terminate();
    }
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(POLL);
    let mut hurried = false;
    while stopping.iter().any(|&i| nodes[i].is_running()) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(deadline) => break,
            name = interrupted(signals) => {
                eprintln!("opencluster-node demo: {name} again: killing the nodes still running");
                hurried = true;
                break;
            }
        }
    }
    let mut unclean = Vec::new();
    for &i in &stopping {
        let node = &mut nodes[i];
        if node.is_running() {
            if !hurried {
                eprintln!(
                    "opencluster-node demo: {} did not exit within {timeout:?} of SIGTERM; killing it",
                    node.name
                );
            }
            node.kill();
            unclean.push(node.name.clone());
        } else if let Some(status) = node.try_exit().filter(|s| !s.success()) {
            eprintln!(
                "opencluster-node demo: {} exited with {status} on SIGTERM. Last lines of {}:\n{}",
                node.name,
                node.log.display(),
                node.log_tail(LOG_TAIL_LINES)
            );
            unclean.push(node.name.clone());
        }
    }
    if !stopping.is_empty() && unclean.is_empty() {
        println!("stopped {} node(s)", stopping.len());
    }
    unclean
}

/// One line of the table.
struct Row {
    name: String,
    pid: u32,
    ports: NodePorts,
}

/// What the demo prints once every node is ready.
fn summary(rows: &[Row], program: &str, dir: &Path, temporary: bool, insecure: bool) -> String {
    let mut table = vec![["Node", "PID", "Client", "Admin", "Connect"].map(String::from).to_vec()];
    for r in rows {
        table.push(vec![
            r.name.clone(),
            r.pid.to_string(),
            r.ports.client_addr().to_string(),
            r.ports.admin_addr().to_string(),
            format!("redis-cli -p {}", r.ports.client),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = format!("\nOpenCluster demo: {} node(s) running as one cluster.\n\n", rows.len());
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += &format!("  {}\n", cells.join("  ").trim_end());
    }
    let admin = rows[0].ports.admin_addr();
    out += &format!(
        "\n  status:   {program} status --admin-addr {admin}\n  members:  {program} members --admin-addr {admin}\n"
    );
    let others: Vec<String> = rows[1..].iter().map(|r| format!("{}.log", r.name)).collect();
    let logs = std::iter::once(dir.join(format!("{}.log", rows[0].name)).display().to_string()).chain(others);
    out += &format!("  logs:     {}\n", logs.collect::<Vec<_>>().join(", "));
    let fate = if temporary { "removed when the demo stops" } else { "kept" };
    out += &format!("  data:     {} ({fate})\n", dir.display());
    out += if insecure {
        "  keys:     INSECURE default keys (development only)\n"
    } else {
        "  keys:     the keys given to the nodes\n"
    };
    out += "Any node answers any key. Stop with Ctrl-C.\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn opts() -> DemoOptions {
        DemoOptions {
            nodes: 3,
            base_port: None,
            data_dir: None,
            replicas: None,
            config_file: None,
            node_args: Vec::new(),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            program: "opencluster-node".into(),
        }
    }

    #[test]
    fn the_summary_lists_every_node_with_its_redis_cli_line() {
        let plan = ports::from_base(7000, 2).unwrap();
        let rows: Vec<Row> = plan
            .iter()
            .enumerate()
            .map(|(i, p)| Row { name: node_name(i), pid: 100 + i as u32, ports: *p })
            .collect();
        let text = summary(&rows, "oc", Path::new("/tmp/d"), true, true);
        assert!(text.contains("  Node  PID  Client          Admin           Connect\n"), "{text}");
        assert!(text.contains("  n1    100  127.0.0.1:7000  127.0.0.1:7002  redis-cli -p 7000\n"), "{text}");
        assert!(text.contains("  n2    101  127.0.0.1:7001  127.0.0.1:7003  redis-cli -p 7001\n"), "{text}");
        assert!(text.contains("  status:   oc status --admin-addr 127.0.0.1:7002\n"), "{text}");
        assert!(text.contains("  data:     /tmp/d (removed when the demo stops)\n"), "{text}");
        assert!(text.contains("INSECURE default keys"), "{text}");
    }

    #[test]
    fn a_node_count_out_of_range_is_refused() {
        let mut o = opts();
        o.nodes = 17;
        let e = run(o).unwrap_err();
        assert_eq!((e.to_string().as_str(), e.exit_code()), ("--nodes 17: give 1 to 16", 2));
    }
}
