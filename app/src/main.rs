//! `opencluster-example-app`: the stand-in for "the webapp" beside a node.
//!
//! It talks only to its local node, over the Unix socket the node shares through a volume
//! or over TCP with the client password, like any application would with any Redis
//! client. It doubles as a load generator with a correctness check: `load` writes
//! distinct keys at a given rate, remembers every write the node acknowledged, and checks
//! that each one reads back; `verify` checks a list of acknowledged writes saved by an
//! earlier `load`, through any node. Exit status: 0 all good, 1 an acknowledged write was
//! lost, 2 bad usage, 3 something could not be checked (or nothing was acknowledged).

mod acked;
mod latency;
mod load;
mod target;
mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::acked::Ledger;
use crate::latency::LatencyLog;
use crate::target::NodeTarget;
use crate::verify::Tally;

/// Reads and writes through the local OpenCluster node; a load generator that checks every
/// acknowledged write.
#[derive(Parser, Debug)]
#[command(name = "opencluster-example-app", version, about, long_about = None)]
struct Cli {
    /// Unix socket of the local node [default: /run/opencluster/opencluster.sock when no --url]
    #[arg(long, env = "OPENCLUSTER_APP_SOCKET", conflicts_with = "url", global = true)]
    socket: Option<PathBuf>,
    /// TCP URL of the local node, e.g. redis://n1:6379 (a password in it works too)
    #[arg(long, env = "OPENCLUSTER_APP_URL", global = true)]
    url: Option<String>,
    /// The node's client_password
    #[arg(long, env = "OPENCLUSTER_APP_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,
    /// Longest one command (or connecting) may take before it counts as an error
    #[arg(long, default_value = "5s", global = true)]
    timeout: humantime::Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write distinct keys at a steady rate, then check that every acknowledged one reads back
    Load(LoadArgs),
    /// Check that every write in a list saved by `load --acked` reads back
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Writes per second
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How long to write: a duration (10s, 5m) or `forever` (until SIGTERM or Ctrl-C)
    #[arg(long, default_value = "10s")]
    duration: String,
    /// Key prefix [default: the host name and the start time, so runs never collide]
    #[arg(long)]
    prefix: Option<String>,
    /// Size of each value
    #[arg(long, default_value_t = 32)]
    value_bytes: usize,
    /// Also save every acknowledged write (key TAB value per line) to this file; `-` for stdout
    #[arg(long)]
    acked: Option<PathBuf>,
    /// Check the writes acknowledged so far this often, then forget them (bounds memory when
    /// running forever); without it they are checked once, at the end
    #[arg(long)]
    verify_every: Option<humantime::Duration>,
    /// Also log every write's latency to this file: `<unix µs when due> TAB <latency µs> TAB
    /// <ok|error>` per line, latency counted from when the write was due by the schedule
    #[arg(long)]
    latencies: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// The list `load --acked` saved; `-` for stdin
    #[arg(long)]
    acked: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = match NodeTarget::new(cli.socket, cli.url, cli.password, cli.timeout.into()) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return usage(e),
    };
    match cli.command {
        Command::Load(args) => rt.block_on(run_load(&target, args)),
        Command::Verify(args) => rt.block_on(run_verify(&target, args)),
    }
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("opencluster-example-app: {e}");
    ExitCode::from(2)
}

async fn run_load(target: &NodeTarget, args: LoadArgs) -> ExitCode {
    let duration = match args.duration.as_str() {
        "forever" => None,
        d => match humantime::parse_duration(d) {
            Ok(d) => Some(d),
            Err(e) => return usage(format!("--duration {d:?}: {e} (or `forever`)")),
        },
    };
    if args.rate == 0 {
        return usage("--rate must be at least 1");
    }
    let sink: Option<Box<dyn Write>> = match &args.acked {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout().lock())),
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(Box::new(std::io::BufWriter::new(f))),
            Err(e) => return usage(format!("--acked {}: {e}", p.display())),
        },
    };
    let latencies = match &args.latencies {
        None => None,
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(LatencyLog::new(Box::new(std::io::BufWriter::new(f)))),
            Err(e) => return usage(format!("--latencies {}: {e}", p.display())),
        },
    };
    let settings = load::Settings {
        rate: args.rate,
        duration,
        prefix: args.prefix.unwrap_or_else(default_prefix),
        value_bytes: args.value_bytes,
        verify_every: args.verify_every.map(Duration::from),
    };
    eprintln!(
        "load: writing {}:<n> at {}/s for {} through {}",
        settings.prefix,
        settings.rate,
        args.duration,
        target.describe()
    );
    let stop = stop_signal();
    let report = match load::run(target, &settings, Ledger::new(sink), latencies, stop).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("opencluster-example-app: {e}");
            return ExitCode::from(3);
        }
    };
    report.print();
    let status = report.tally.exit_status();
    if status == ExitCode::SUCCESS && report.acknowledged == 0 {
        eprintln!("load: FAILED: no write was acknowledged");
        return ExitCode::from(3);
    }
    status
}

async fn run_verify(target: &NodeTarget, args: VerifyArgs) -> ExitCode {
    let entries = match acked::read(&args.acked) {
        Ok(e) => e,
        Err(e) => return usage(e),
    };
    eprintln!("verify: {} acknowledged writes through {}", entries.len(), target.describe());
    let tally = match target.connect().await {
        Ok(mut conn) => verify::check(&mut conn, &entries, target.timeout()).await,
        Err(e) => {
            eprintln!("verify: cannot connect: {e}");
            Tally::unverified(entries.len() as u64)
        }
    };
    tally.print("verify");
    tally.exit_status()
}

/// `<host>-<unix ms>`: distinct between hosts and between runs on one host.
fn default_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "app".into());
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("{host}-{ms}")
}

/// Flips to `true` on SIGTERM (`docker stop`) or SIGINT (Ctrl-C). As PID 1 in a container
/// the process gets no default signal handling, so without this `docker stop` would wait
/// for its grace period and then kill it.
fn stop_signal() -> tokio::sync::watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            eprintln!("opencluster-example-app: cannot listen for SIGTERM/SIGINT");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("stopping: checking the writes acknowledged so far");
        tx.send_replace(true);
    });
    rx
}
