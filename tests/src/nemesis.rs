//! A Jepsen-style nemesis for real node processes (issue 13): writers write distinct
//! keys through every node while a seeded schedule of faults hits one random node at a
//! time (kill -9 and restart, SIGSTOP and SIGCONT, SIGTERM and restart, a cut of its
//! gossip and peer RPC ports); then every acknowledged key must read back through every
//! node and be held by its owners.
//!
//! The cluster starts the way a real one does: n1 alone, the others joining n1. A
//! restart keeps the node's data dir and all its ports, so its peers' `join` still
//! names it. The output (summary line, fault timeline, each node's placement over time,
//! the lost keys with the node and time of their acknowledgement) is meant to diagnose
//! a failure without running it again; the seed replays the same plan.
//!
//! - `schedule`: the seeded plan of faults.
//! - `cut`: iptables rules on loopback, removed by a guard.
//! - `writers`: the clients and what they were told.
//! - `watch`: each node's placement, polled through the run.
//! - `check`: reads through every node, and lookups in the owners' own stores.
//! - `report`: the printed outcome.

mod check;
pub mod cut;
mod report;
mod schedule;
mod watch;
mod writers;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::cluster::{member_opts, pause, placed_nodes, resume, wait_placed};
use crate::node::Node;
use crate::wait::wait_until;

pub use check::{ReadCheck, StoreCheck};
pub use schedule::{Fault, FaultKind, Schedule};
pub use watch::{Change, View};
pub use writers::{Ack, CLIENT_TIMEOUT, WriteReport};

/// How long the cluster may take to place every node again once the last fault is over,
/// before the checker starts anyway (and the outcome says it did not converge).
const CONVERGE: Duration = Duration::from_secs(60);

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seed of the fault plan (and part of every key).
    pub seed: u64,
    /// Planned time of faults and calm in between (restarts add real time).
    pub duration: Duration,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// `--cluster-replicas` of every node.
    pub replicas: usize,
    /// Kinds of fault to draw from.
    pub kinds: Vec<FaultKind>,
    /// Writer threads.
    pub writers: usize,
    /// How long the checker retries keys that did not read back in its first pass.
    pub check_for: Duration,
}

impl Options {
    /// 40 s of every kind of fault on 5 nodes with 3 replicas, 4 writers, 90 s to check.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            duration: Duration::from_secs(40),
            nodes: 5,
            replicas: 3,
            kinds: FaultKind::ALL.to_vec(),
            writers: 4,
            check_for: Duration::from_secs(90),
        }
    }

    /// A run by hand: `None` unless `NEMESIS_SECS` is set. `NEMESIS_SEED` (default: the
    /// time), `NEMESIS_NODES` (5), `NEMESIS_REPLICAS` (3), `NEMESIS_FAULTS` (`all`, or a
    /// comma list of kill,stop,term,cut), `NEMESIS_CHECK_SECS` (90).
    pub fn from_env() -> Result<Option<Options>, String> {
        fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
            match std::env::var(name) {
                Ok(v) => v.trim().parse().map(Some).map_err(|_| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(None),
            }
        }
        let Some(secs) = var::<u64>("NEMESIS_SECS")? else { return Ok(None) };
        let seed = var("NEMESIS_SEED")?.unwrap_or_else(|| crate::wait::unix_ms() / 1000);
        let mut opts = Options::new(seed);
        opts.duration = Duration::from_secs(secs);
        opts.nodes = var("NEMESIS_NODES")?.unwrap_or(opts.nodes);
        opts.replicas = var("NEMESIS_REPLICAS")?.unwrap_or(opts.replicas);
        if let Ok(list) = std::env::var("NEMESIS_FAULTS") {
            opts.kinds = FaultKind::parse_list(&list)?;
        }
        opts.check_for = var("NEMESIS_CHECK_SECS")?.map_or(opts.check_for, Duration::from_secs);
        if opts.nodes < 2 {
            return Err(format!("NEMESIS_NODES={}: a cluster needs at least 2 nodes", opts.nodes));
        }
        Ok(Some(opts))
    }

    /// The prefix of every key the run writes.
    pub fn prefix(&self) -> String {
        format!("nemesis-{}", self.seed)
    }
}

/// One fault as it happened.
#[derive(Clone, Debug)]
pub struct Happened {
    /// 1-based position in the plan.
    pub number: usize,
    pub kind: FaultKind,
    pub node: usize,
    /// When it began and when it was over (node ready again, resumed, uncut), from the
    /// start of the writes.
    pub began: Duration,
    pub ended: Duration,
    /// What was done, with the times of the steps.
    pub note: String,
}

/// Everything a run saw.
pub struct Outcome {
    pub options: Options,
    /// Notices about the run itself (fault kinds skipped, and why).
    pub notices: Vec<String>,
    pub faults: Vec<Happened>,
    pub writes: WriteReport,
    /// Each node's placement over the run.
    pub views: Vec<Change>,
    /// How long after the last fault every node placed every node again, or what they
    /// placed at the deadline.
    pub converged: Result<Duration, String>,
    pub read: ReadCheck,
    pub stores: StoreCheck,
    /// Where the nodes' logs were kept (on failure).
    pub logs: Option<std::path::PathBuf>,
    /// Wall clock at the first write (to place log lines on the run's time line).
    pub started_unix_ms: u64,
    /// How long each phase took.
    pub timings: Timings,
}

/// How long each phase of a run took.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub start_cluster: Duration,
    /// Faults and the calm after them (the writers' time).
    pub faults: Duration,
    /// From the writers' stop until every node placed every node (or the deadline).
    pub converge: Duration,
    pub read_check: Duration,
    pub store_check: Duration,
}

impl Outcome {
    pub fn acked(&self) -> usize {
        self.writes.acked.len()
    }

    pub fn errors(&self) -> u64 {
        self.writes.error_count()
    }

    /// Acknowledged keys not readable through every node at the checker's deadline.
    pub fn lost(&self) -> usize {
        self.read.lost.len()
    }

    /// The kinds of fault the run inflicted.
    pub fn kinds(&self) -> BTreeSet<FaultKind> {
        self.faults.iter().map(|f| f.kind).collect()
    }

    /// No acknowledged key lost, and each one held by some owner.
    pub fn passed(&self) -> bool {
        self.read.lost.is_empty() && self.stores.unheld.is_empty()
    }

    /// `nemesis seed=S nodes=N faults=F duration=Ds: acked A errors E lost L`
    pub fn summary(&self) -> String {
        let o = &self.options;
        format!(
            "nemesis seed={} nodes={} faults={} duration={}s: acked {} errors {} lost {}",
            o.seed,
            o.nodes,
            self.faults.len(),
            o.duration.as_secs(),
            self.acked(),
            self.errors(),
            self.lost()
        )
    }
}

/// Runs the nemesis and prints its report (and, on failure, the nodes' log tails).
pub fn run(options: &Options) -> Outcome {
    let mut notices = Vec::new();
    let mut kinds = options.kinds.clone();
    if kinds.contains(&FaultKind::Cut) {
        match cut::available() {
            Ok(()) => cut::sweep_own_stale(),
            Err(why) => {
                let notice = format!("NOTICE: nemesis: network cuts SKIPPED, iptables is not usable: {why}");
                println!("{notice}");
                notices.push(notice);
                kinds.retain(|k| *k != FaultKind::Cut);
            }
        }
    }
    let schedule = if kinds.is_empty() {
        Schedule { faults: Vec::new(), tail: options.duration }
    } else {
        Schedule::plan(options.seed, options.duration, options.nodes, &kinds)
    };
    println!(
        "nemesis seed={}: {} faults planned over {}s ({}), {} nodes, replicas {}",
        options.seed,
        schedule.faults.len(),
        options.duration.as_secs(),
        schedule.kinds().iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        options.nodes,
        options.replicas
    );

    let mut timings = Timings::default();
    let phase = Instant::now();
    let (mut nodes, ports) = start_cluster(options);
    timings.start_cluster = phase.elapsed();
    let names: Vec<String> = (1..=nodes.len()).map(|i| format!("n{i}")).collect();
    let start = Instant::now();
    let started_unix_ms = crate::wait::unix_ms();
    let clients: Vec<_> = nodes.iter().map(Node::client_addr).collect();
    let admins: Vec<_> = nodes.iter().map(Node::admin_addr).collect();
    let writers = writers::Writers::start(&options.prefix(), options.writers, &clients, start);
    let watch = watch::Watch::start(&admins, start);

    let mut faults = Vec::new();
    for (i, fault) in schedule.faults.iter().enumerate() {
        std::thread::sleep(fault.pause);
        let happened = inflict(&mut nodes[fault.node], ports[fault.node], fault, i + 1, start);
        println!(
            "nemesis: #{} {} {} {}..{}: {}",
            happened.number,
            happened.kind,
            names[happened.node],
            report::secs(happened.began),
            report::secs(happened.ended),
            happened.note
        );
        faults.push(happened);
    }
    std::thread::sleep(schedule.tail);
    let writes = writers.finish();
    timings.faults = start.elapsed();
    let calm = Instant::now();
    let all: Vec<&Node> = nodes.iter().collect();
    let converged = if wait_until(CONVERGE, || all.iter().all(|n| placed_nodes(n) == all.len() as u64)) {
        Ok(calm.elapsed())
    } else {
        Err(all
            .iter()
            .zip(&names)
            .map(|(n, name)| format!("{name} places {}", placed_nodes(n)))
            .collect::<Vec<_>>()
            .join(", "))
    };
    timings.converge = calm.elapsed();
    let views = watch.finish();

    let keys: BTreeSet<String> = writes.acked.keys().cloned().collect();
    let phase = Instant::now();
    let read = check::read_through_all(&nodes, &keys, options.check_for);
    timings.read_check = phase.elapsed();
    let phase = Instant::now();
    let stores = check::owners_stores(&nodes, &names, &options.prefix(), &keys);
    timings.store_check = phase.elapsed();
    let mut outcome = Outcome {
        options: options.clone(),
        notices,
        faults,
        writes,
        views,
        converged,
        read,
        stores,
        logs: None,
        started_unix_ms,
        timings,
    };
    if !outcome.passed() {
        outcome.logs = report::keep_logs(&nodes, &names, options.seed);
    }
    report::print(&outcome, &names);
    if !outcome.passed() {
        report::print_logs(&outcome, &nodes, &names);
    }
    outcome
}

/// Starts `options.nodes` nodes, n1 alone and the others joining n1, each on its own
/// gossip and RPC ports (kept across restarts), and waits until each places all of them.
/// Returns the nodes and their (gossip, rpc) ports.
fn start_cluster(options: &Options) -> (Vec<Node>, Vec<(u16, u16)>) {
    let ports = free_udp_ports(options.nodes * 2);
    let ports: Vec<(u16, u16)> = ports.chunks(2).map(|p| (p[0], p[1])).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (i, &(gossip, rpc)) in ports.iter().enumerate() {
        let (gossip_addr, rpc_addr) = (format!("127.0.0.1:{gossip}"), format!("127.0.0.1:{rpc}"));
        let replicas = options.replicas.to_string();
        let extra = ["--gossip-addr", &gossip_addr, "--rpc-addr", &rpc_addr, "--cluster-replicas", &replicas];
        let node = Node::start(member_opts(&format!("n{}", i + 1), nodes.first(), &extra));
        let own = node.admin_json("/v1/members");
        let own =
            own.as_array().and_then(|l| l.iter().find(|m| m["self"] == true)).cloned().unwrap_or_default();
        assert_eq!(own["rpc_addr"].as_str(), Some(rpc_addr.as_str()), "n{}'s rpc_addr: {own}", i + 1);
        assert_eq!(node.gossip_addr().to_string(), gossip_addr, "n{}'s gossip_addr", i + 1);
        nodes.push(node);
    }
    wait_placed(&nodes.iter().collect::<Vec<_>>(), options.nodes as u64);
    (nodes, ports)
}

/// `n` distinct UDP ports free on loopback right now (all held while choosing).
fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<UdpSocket> =
        (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0")).collect();
    sockets.iter().map(|s| s.local_addr().expect("local_addr").port()).collect()
}

/// Inflicts one fault on `node` and returns once it is over.
fn inflict(
    node: &mut Node,
    (gossip, rpc): (u16, u16),
    fault: &Fault,
    number: usize,
    start: Instant,
) -> Happened {
    let at = || start.elapsed();
    let began = at();
    let note = match fault.kind {
        FaultKind::Kill => {
            node.kill9();
            std::thread::sleep(fault.hold);
            let restarting = at();
            node.restart();
            format!(
                "SIGKILL; restarted at {} (down {}), ready at {}",
                report::secs(restarting),
                report::secs(restarting - began),
                report::secs(at())
            )
        }
        FaultKind::Stop => {
            pause(node);
            std::thread::sleep(fault.hold);
            resume(node);
            format!("SIGSTOP, SIGCONT after {}", report::secs(fault.hold))
        }
        FaultKind::Term => {
            let status = node.sigterm_and_wait();
            let exited = at();
            node.restart();
            format!(
                "SIGTERM; exited ({status}) at {}, restarted, ready at {}",
                report::secs(exited),
                report::secs(at())
            )
        }
        FaultKind::Cut => {
            let cut = cut::Cut::ports(&[gossip, rpc]);
            let tag = cut.tag().to_string();
            std::thread::sleep(fault.hold);
            drop(cut);
            format!(
                "UDP ports {gossip} (gossip) and {rpc} (rpc) dropped for {} ({tag})",
                report::secs(fault.hold)
            )
        }
    };
    Happened { number, kind: fault.kind, node: fault.node, began, ended: at(), note }
}
