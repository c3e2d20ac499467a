//! The `opencluster-node` binary: flags -> config -> logging -> run.

use std::process::ExitCode;

use opencluster_node::cli::{self, Invocation};
use opencluster_node::{admin, config, demo, logging, node};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    opencluster_pki::install_crypto_provider();
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => return fail(e),
    };
    match invocation {
        Invocation::Health { load, admin_addr, timeout, ready } => health(load, admin_addr, timeout, ready),
        Invocation::Members { load, admin_addr, timeout, format } => {
            members(load, admin_addr, timeout, format)
        }
        Invocation::Status { load, admin_addr, timeout, format } => {
            admin_command("status", &load, admin_addr, |addr| async move {
                let status = admin::client::get_status(addr, timeout).await?;
                match format {
                    cli::MembersFormat::Table => print!("{}", admin::client::status_text(&status)),
                    cli::MembersFormat::Json => println!("{status}"),
                }
                Ok(())
            })
        }
        Invocation::Run { load, dev } => run(load, dev),
        Invocation::Demo(opts) => match demo::run(opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("opencluster-node demo: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("opencluster-node: {message}");
    ExitCode::from(2)
}

fn runtime(multi_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build()
}

/// The node's runtime: `workers` threads (lean mode sizes them from the budget), else
/// one per core.
fn node_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        // Blocking work (flushes, purges, store opening) stays bounded too.
        b.worker_threads(n).max_blocking_threads(n.max(2) * 4);
    }
    b.enable_all().build()
}

/// The admin address given on the command line, else the config's `admin_addr`.
fn admin_addr(
    load: &config::LoadOptions,
    given: Option<std::net::SocketAddr>,
) -> Result<std::net::SocketAddr, String> {
    match given {
        Some(a) => Ok(a),
        None => match config::load_unvalidated(load).map_err(|e| e.to_string())?.admin_addr {
            Some(a) => Ok(a),
            None => Err("admin_addr is disabled in the config: give --admin-addr".to_string()),
        },
    }
}

fn health(
    load: config::LoadOptions,
    admin_addr: Option<std::net::SocketAddr>,
    timeout: std::time::Duration,
    ready: bool,
) -> ExitCode {
    admin_command("health", &load, admin_addr, |addr| async move {
        let body = if ready {
            admin::check_ready(addr, timeout).await?
        } else {
            admin::check_health(addr, timeout).await?
        };
        println!("{}", body.trim());
        Ok(())
    })
}

fn members(
    load: config::LoadOptions,
    admin_addr: Option<std::net::SocketAddr>,
    timeout: std::time::Duration,
    format: cli::MembersFormat,
) -> ExitCode {
    admin_command("members", &load, admin_addr, |addr| async move {
        let list = admin::get_members(addr, timeout).await?;
        match format {
            cli::MembersFormat::Table => print!("{}", admin::client::members_table(&list)),
            cli::MembersFormat::Json => println!("{}", serde_json::Value::Array(list)),
        }
        Ok(())
    })
}

/// Runs a subcommand that talks to a node's admin API: finds the address, runs `call`
/// on a small runtime, and turns its error into `opencluster-node <name>: <error>`.
fn admin_command<F, Fut>(
    name: &str,
    load: &config::LoadOptions,
    admin_addr: Option<std::net::SocketAddr>,
    call: F,
) -> ExitCode
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), admin::client::ClientError>>,
{
    let addr = match self::admin_addr(load, admin_addr) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    match rt.block_on(call(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opencluster-node {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(load: config::LoadOptions, dev: bool) -> ExitCode {
    let config = match config::load(&load) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = logging::init(&config) {
        return fail(e);
    }
    let rt = match node_runtime(config.budget.worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let temporary_dir = load.dev_data_dir.filter(|d| *d == config.data_dir);
    let result = rt.block_on(async {
        let listeners = node::Listeners::bind(&config).await?;
        if dev {
            print_dev_banner(&config, &listeners);
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        node::run(config, listeners, shutdown).await
    });
    if let Some(dir) = temporary_dir
        && let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("opencluster-node: could not remove the temporary data directory {}: {e}", dir.display());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn print_dev_banner(config: &config::Config, listeners: &node::Listeners) {
    println!("OpenCluster dev node {} is running.", opencluster_node::VERSION);
    if let Some(a) = listeners.client_addr() {
        let host = if a.ip().is_unspecified() { "127.0.0.1".to_string() } else { a.ip().to_string() };
        println!("  connect:  redis-cli -h {host} -p {}", a.port());
    }
    if let Some(p) = &config.unix_socket {
        println!("  socket:   redis-cli -s {}", p.display());
    }
    if let Some(a) = listeners.admin_addr() {
        println!("  status:   http://{a}/v1/status   metrics: http://{a}/metrics");
    }
    println!("  data:     {}", config.data_dir.display());
    match &config.tls_dir {
        Some(dir) => println!("  keys:     {}", dir.display()),
        None => println!("  keys:     INSECURE default keys (development only)"),
    }
    println!("Stop with Ctrl-C.");
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stop the node with SIGKILL");
            return;
        }
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "stopping");
    shutdown.cancel();
}
