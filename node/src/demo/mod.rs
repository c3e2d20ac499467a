//! `opencluster-node demo`: a cluster of N nodes as processes on this machine, for trying
//! OpenCluster without Docker; with `--datacenters D`, D such clusters bridged by one
//! connector each.
//!
//! The demo starts N child processes of its own executable, each a `--dev` node on
//! loopback ports of its own with a data directory and a log file in the demo directory,
//! all joined to the first. With several datacenters it does so per datacenter (each on
//! the default keys of dc1, dc2, dc3) and also starts `opencluster-connector` from beside
//! its own executable, one per datacenter, linked in a full mesh ([`layout`]). It waits
//! until every node is healthy and places partitions on all N (and every connector sees
//! its N nodes), prints where to connect, and then watches them: a process that dies is
//! reported (with the end of its log) while the others keep running, as a real cluster
//! would. SIGINT or SIGTERM stops every process with SIGTERM (each leaves the cluster and
//! flushes), kills what has not exited after `--stop-timeout`, and removes the demo
//! directory unless `--data-dir` named it.

mod args;
mod child;
mod layout;
mod ports;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};

use args::check_node_args;
use child::NodeProcess;
use layout::Datacenter;
pub use layout::MAX_DATACENTERS;
use ports::NodePorts;

/// Most nodes a demo runs: each is a full node process; more would only starve the machine.
pub const MAX_NODES: usize = 16;
/// How often the demo asks the nodes whether they are ready, and checks stopping ones.
const POLL: Duration = Duration::from_millis(100);
/// How long one admin request may take while waiting for the nodes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Log lines shown when a node fails.
const LOG_TAIL_LINES: usize = 20;
/// The connector binary, looked for beside this one.
const CONNECTOR_BINARY: &str = "opencluster-connector";

/// What `opencluster-node demo` was asked for.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How many nodes per datacenter, 1 to [`MAX_NODES`].
    pub nodes: usize,
    /// How many datacenters, 1 to [`MAX_DATACENTERS`]; more than one adds a connector
    /// per datacenter.
    pub datacenters: usize,
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
    #[error(
        "--datacenters {datacenters} needs the connector binary, {path}, beside this program, and it is missing: \
         build it (cargo build -p opencluster-connector) or install it next to opencluster-node"
    )]
    NoConnector { datacenters: usize, path: PathBuf },
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
    if !(1..=MAX_DATACENTERS).contains(&opts.datacenters) {
        return Err(DemoError::Flags(format!(
            "--datacenters {}: give 1 to {MAX_DATACENTERS} (the default keys cover dc1, dc2 and dc3)",
            opts.datacenters
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|source| DemoError::Io { what: "find this program's executable".into(), source })?;
    let connector_exe = exe.with_file_name(CONNECTOR_BINARY);
    if opts.datacenters > 1 && !connector_exe.is_file() {
        return Err(DemoError::NoConnector { datacenters: opts.datacenters, path: connector_exe });
    }
    let (total_nodes, connectors) =
        (opts.nodes * opts.datacenters, if opts.datacenters > 1 { opts.datacenters } else { 0 });
    let plan = match opts.base_port {
        Some(base) => ports::from_base(base, total_nodes, connectors)?,
        None => ports::free(total_nodes, connectors)?,
    };
    let dcs = layout::datacenters(&opts, &plan);
    if opts.base_port.is_some() {
        let (node_names, connector_names) = layout::names(&dcs);
        ports::check_free(&plan, &node_names, &connector_names)?;
    }
    // The last node's command line has every kind of flag there is (`--join` too).
    let check = layout::all_node_args(&opts, Path::new("demo"), &dcs);
    check_node_args(check.last().expect("at least one node"))?;
    let dir = DemoDir::create(opts.data_dir.clone())?;
    let procs = Procs {
        node_args: layout::all_node_args(&opts, &dir.path, &dcs),
        connector_args: layout::all_connector_args(&opts, &dir.path, &dcs),
        exe,
        connector_exe,
        dcs,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DemoError::Io { what: "start the demo's runtime".into(), source })?;
    let result = rt.block_on(supervise(&opts, &dir.path, procs));
    // A node that did not come up leaves its log for the user; otherwise a temporary
    // directory goes.
    if !matches!(result, Err(DemoError::NotReady { .. })) {
        dir.remove();
    }
    result
}

/// The processes to start: the datacenters and the command lines of their nodes and
/// connectors, in the same order.
struct Procs {
    dcs: Vec<Datacenter>,
    node_args: Vec<Vec<String>>,
    connector_args: Vec<Vec<String>>,
    exe: PathBuf,
    connector_exe: PathBuf,
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

async fn supervise(opts: &DemoOptions, dir: &Path, procs: Procs) -> Result<(), DemoError> {
    // Listening before the first node starts: no exit or Ctrl-C can slip past.
    let mut signals = Signals::listen()?;
    let several = procs.dcs.len() > 1;
    if several {
        println!(
            "starting {} datacenters of {} node(s) and a connector each in {}",
            procs.dcs.len(),
            opts.nodes,
            dir.display()
        );
    } else {
        println!("starting {} node(s) in {}", opts.nodes, dir.display());
    }
    // What each process must see before it counts as ready: a node, its datacenter's
    // nodes and connector alive; a connector, its datacenter's nodes.
    let members = opts.nodes as u64 + u64::from(several);
    let replicas = opts.replicas.map(|r| r.to_string());
    // The connector has no flag for cluster.replicas; it needs it to count quorums.
    let connector_env: Vec<(&str, &str)> =
        replicas.iter().map(|r| ("OPENCLUSTER_CLUSTER_REPLICAS", r.as_str())).collect();

    let mut running = Vec::new();
    let mut probes = Vec::new();
    let nodes = procs.dcs.iter().flat_map(|d| d.nodes.iter());
    let mut spawned = Ok(());
    for ((name, ports), args) in nodes.zip(&procs.node_args) {
        let log = dir.join(format!("{name}.log"));
        match NodeProcess::spawn(&procs.exe, name.clone(), ports.admin_addr(), args, &[], log) {
            Ok(p) => {
                running.push(p);
                probes.push(Probe::Node { members, placed: opts.nodes as u64 });
            }
            Err(e) => {
                spawned = Err(e);
                break;
            }
        }
    }
    let connectors = procs.dcs.iter().filter_map(|d| d.connector.as_ref());
    for ((name, ports), args) in connectors.zip(&procs.connector_args) {
        if spawned.is_err() {
            break;
        }
        let log = dir.join(format!("{name}.log"));
        match NodeProcess::spawn(
            &procs.connector_exe,
            name.clone(),
            ports.admin_addr(),
            args,
            &connector_env,
            log,
        ) {
            Ok(p) => {
                running.push(p);
                probes.push(Probe::Connector { data_nodes: opts.nodes as u64 });
            }
            Err(e) => spawned = Err(e),
        }
    }
    if let Err(e) = spawned {
        stop_all(&mut running, opts.stop_timeout, &mut signals).await;
        return Err(e);
    }

    let ready = tokio::select! {
        ready = wait_ready(&mut running, &probes, opts.start_timeout) => Ok(ready),
        name = interrupted(&mut signals) => Err(name),
    };
    let first_status = match ready {
        Ok(Ok(status)) => status,
        Ok(Err(not_ready)) => {
            stop_all(&mut running, opts.stop_timeout, &mut signals).await;
            return Err(not_ready.into_error(dir));
        }
        Err(name) => {
            println!("{name}: stopping before every node was ready");
            stop_all(&mut running, opts.stop_timeout, &mut signals).await;
            return Ok(());
        }
    };
    let insecure = first_status["insecure_default_keys"].as_bool().unwrap_or(true);
    if insecure {
        eprintln!(
            "WARNING: the demo's {} use the INSECURE well-known default keys: anyone who can reach their \
             ports can join or read this cluster. They listen on 127.0.0.1 only; never keep real data in them.",
            if several { "nodes and connectors" } else { "nodes" }
        );
    }
    let pids: Vec<u32> = running.iter().map(NodeProcess::pid).collect();
    let text = if several {
        summary_datacenters(&procs.dcs, &pids, &opts.program, dir, opts.data_dir.is_none(), insecure)
    } else {
        let rows: Vec<Row> = procs.dcs[0]
            .nodes
            .iter()
            .zip(&pids)
            .map(|((name, ports), pid)| Row { name: name.clone(), pid: *pid, ports: *ports })
            .collect();
        summary(&rows, &opts.program, dir, opts.data_dir.is_none(), insecure)
    };
    print!("{text}");

    let (stop, died) = watch(&mut running, &mut signals).await;
    match stop {
        Stop::Signal(name) => {
            let left: Vec<&NodeProcess> = running.iter().filter(|p| !died.contains(&p.name)).collect();
            println!("{name}: stopping {}", count(left.into_iter()))
        }
        Stop::AllDied => eprintln!("opencluster-node demo: every process has exited; stopping"),
    }
    let unclean = stop_all(&mut running, opts.stop_timeout, &mut signals).await;
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
        let connectors = nodes.iter().filter(|n| layout::is_connector(&n.name)).count();
        for n in nodes.iter_mut() {
            if died.contains(&n.name) {
                continue;
            }
            if let Some(status) = n.try_exit() {
                died.push(n.name.clone());
                eprintln!(
                    "opencluster-node demo: {} (pid {}) exited unexpectedly ({status}); {} keep running. \
                     Last lines of {}:\n{}",
                    n.name,
                    n.pid(),
                    count_of(
                        total - died.len(),
                        connectors - died.iter().filter(|d| layout::is_connector(d)).count()
                    ),
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

/// "3 node(s)", or "2 node(s) and 2 connector(s)" when there are connectors.
fn count<'a>(procs: impl Iterator<Item = &'a NodeProcess>) -> String {
    let (mut all, mut connectors) = (0, 0);
    for p in procs {
        all += 1;
        connectors += usize::from(layout::is_connector(&p.name));
    }
    count_of(all, connectors)
}

fn count_of(all: usize, connectors: usize) -> String {
    match connectors {
        0 => format!("{all} node(s)"),
        c => format!("{} node(s) and {c} connector(s)", all - c),
    }
}

/// Why a node is not ready yet.
struct NotReady {
    node: String,
    reason: String,
    log: PathBuf,
    tail: String,
}

impl NotReady {
    fn into_error(self, dir: &Path) -> DemoError {
        DemoError::NotReady {
            node: self.node,
            reason: self.reason,
            log: self.log,
            tail: self.tail,
            dir: dir.to_path_buf(),
        }
    }
}

/// What a process must show before it counts as ready.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// A node: healthy, `members` members alive (its datacenter's nodes and connector),
    /// partitions placed on `placed` nodes.
    Node { members: u64, placed: u64 },
    /// A connector: healthy, seeing `data_nodes` nodes of its datacenter.
    Connector { data_nodes: u64 },
}

/// Polls every process until each passes its probe; returns the first one's `/v1/status`.
/// Fails at once when a process exits, or at `timeout` naming the first one not ready
/// and why.
async fn wait_ready(
    procs: &mut [NodeProcess],
    probes: &[Probe],
    timeout: Duration,
) -> Result<Value, NotReady> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ready: Vec<Option<Value>> = vec![None; procs.len()];
    loop {
        tick.tick().await;
        for (i, p) in procs.iter_mut().enumerate() {
            let fail = |p: &NodeProcess, reason: String| NotReady {
                node: p.name.clone(),
                reason,
                log: p.log.clone(),
                tail: p.log_tail(LOG_TAIL_LINES),
            };
            if let Some(status) = p.try_exit() {
                return Err(fail(p, format!("it exited ({status})")));
            }
            if ready[i].is_some() {
                continue;
            }
            match probe(p.admin, probes[i]).await {
                Ok(status) => ready[i] = Some(status),
                Err(reason) if Instant::now() >= deadline => {
                    return Err(fail(p, format!("not ready within {timeout:?}: {reason}")));
                }
                Err(_) => {}
            }
        }
        if ready.iter().all(Option::is_some) {
            return Ok(ready.swap_remove(0).expect("all ready"));
        }
    }
}

/// Ok with the process's `/v1/status` when it passes `probe`; else what it lacks.
async fn probe(admin: std::net::SocketAddr, probe: Probe) -> Result<Value, String> {
    crate::admin::check_health(admin, PROBE_TIMEOUT).await.map_err(|e| e.to_string())?;
    let status = crate::admin::client::get_status(admin, PROBE_TIMEOUT).await.map_err(|e| e.to_string())?;
    match probe {
        Probe::Node { members, placed: n } => {
            let alive = status["members"]["alive"].as_u64().unwrap_or(0);
            let placed = status["placement"]["nodes"].as_u64().unwrap_or(0);
            if alive == members && placed == n {
                Ok(status)
            } else {
                Err(format!(
                    "it sees {alive} of {members} members alive and places partitions on {placed} of {n} nodes"
                ))
            }
        }
        Probe::Connector { data_nodes } => {
            let seen = status["data_nodes"].as_u64().unwrap_or(0);
            if seen == data_nodes {
                Ok(status)
            } else {
                Err(format!("it sees {seen} of the {data_nodes} nodes of its datacenter"))
            }
        }
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
                eprintln!("opencluster-node demo: {name} again: killing the processes still running");
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
        println!("stopped {}", count(stopping.iter().map(|&i| &nodes[i])));
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
    let mut out = format!("\nOpenCluster demo: {} node(s) running as one cluster.\n\n", rows.len());
    out += &node_table(rows);
    let admin = rows[0].ports.admin_addr();
    out += &format!(
        "\n  status:   {program} status --admin-addr {admin}\n  members:  {program} members --admin-addr {admin}\n"
    );
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    out += &footer(&names, dir, temporary, insecure);
    out += "Any node answers any key. Stop with Ctrl-C.\n";
    out
}

/// What the demo prints once every node and connector of several datacenters is ready;
/// `pids` in start order: every node, datacenter by datacenter, then the connectors.
fn summary_datacenters(
    dcs: &[Datacenter],
    pids: &[u32],
    program: &str,
    dir: &Path,
    temporary: bool,
    insecure: bool,
) -> String {
    let nodes = dcs[0].nodes.len();
    let mut out = format!(
        "\nOpenCluster demo: {} datacenters of {nodes} node(s), each with a connector that copies its writes \
         to the others.\n",
        dcs.len()
    );
    let mut names = Vec::new();
    let connector_program = Path::new(program).with_file_name(CONNECTOR_BINARY);
    for (d, dc) in dcs.iter().enumerate() {
        let rows: Vec<Row> = dc
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (name, ports))| Row { name: name.clone(), pid: pids[d * nodes + i], ports: *ports })
            .collect();
        out += &format!("\nDatacenter {}:\n", dc.label());
        out += &node_table(&rows);
        let admin = rows[0].ports.admin_addr();
        out += &format!("  members:   {program} members --admin-addr {admin}\n");
        names.extend(dc.nodes.iter().map(|(n, _)| n.as_str()));
        if let Some((name, ports)) = &dc.connector {
            out += &format!(
                "  connector: {name} (pid {}), WAN {}\n  links:     {} status --admin-addr {}\n",
                pids[dcs.len() * nodes + d],
                ports.wan_addr(),
                connector_program.display(),
                ports.admin_addr()
            );
            names.push(name);
        }
    }
    out += "\n";
    out += &footer(&names, dir, temporary, insecure);
    out += "Any node answers any key; a write in one datacenter reaches the others asynchronously, through the \
            connectors. Stop with Ctrl-C.\n";
    out
}

/// The table of nodes with their addresses and a redis-cli line each.
fn node_table(rows: &[Row]) -> String {
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
    let mut out = String::new();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out += &format!("  {}\n", cells.join("  ").trim_end());
    }
    out
}

/// The logs, data and keys lines.
fn footer(names: &[&str], dir: &Path, temporary: bool, insecure: bool) -> String {
    let others: Vec<String> = names[1..].iter().map(|n| format!("{n}.log")).collect();
    let logs = std::iter::once(dir.join(format!("{}.log", names[0])).display().to_string()).chain(others);
    let mut out = format!("  logs:     {}\n", logs.collect::<Vec<_>>().join(", "));
    let fate = if temporary { "removed when the demo stops" } else { "kept" };
    out += &format!("  data:     {} ({fate})\n", dir.display());
    out += if insecure {
        "  keys:     INSECURE default keys (development only)\n"
    } else {
        "  keys:     the keys given to the nodes\n"
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn opts() -> DemoOptions {
        DemoOptions {
            nodes: 3,
            datacenters: 1,
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
        let plan = ports::from_base(7000, 2, 0).unwrap().nodes;
        let rows: Vec<Row> = plan
            .iter()
            .enumerate()
            .map(|(i, p)| Row { name: format!("n{}", i + 1), pid: 100 + i as u32, ports: *p })
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
        let mut o = opts();
        o.datacenters = 4;
        let e = run(o).unwrap_err().to_string();
        assert!(e.starts_with("--datacenters 4: give 1 to 3"), "{e}");
    }

    #[test]
    fn the_summary_of_two_datacenters_shows_each_with_its_connector() {
        let mut o = opts();
        o.nodes = 1;
        o.datacenters = 2;
        let plan = ports::from_base(7000, 2, 2).unwrap();
        let dcs = layout::datacenters(&o, &plan);
        let text =
            summary_datacenters(&dcs, &[100, 101, 200, 201], "/bin/oc-node", Path::new("/d"), true, true);
        assert!(text.contains("\nDatacenter dc1:\n  Node    PID  Client"), "{text}");
        assert!(
            text.contains("  dc2-n1  101  127.0.0.1:7001  127.0.0.1:7003  redis-cli -p 7001\n"),
            "{text}"
        );
        assert!(
            text.contains("  connector: dc2-connector (pid 201), WAN 127.0.0.1:7015\n  links:     /bin/opencluster-connector status --admin-addr 127.0.0.1:7009\n"),
            "{text}"
        );
        assert!(text.contains("dc1-n1.log, dc1-connector.log, dc2-n1.log, dc2-connector.log"), "{text}");
        assert!(text.ends_with("Stop with Ctrl-C.\n"), "{text}");
    }
}
