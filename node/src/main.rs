//! The `opencluster-node` binary: flags -> config -> logging -> run.

use std::process::ExitCode;

use opencluster_node::cli::{self, Invocation};
use opencluster_node::process::Program;
use opencluster_node::{admin, config, demo, node};

fn main() -> ExitCode {
    opencluster_pki::install_crypto_provider();
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => return NODE.fail(e),
    };
    match invocation {
        Invocation::Health { load, admin_addr, timeout, ready } => health(load, admin_addr, timeout, ready),
        Invocation::Members { load, admin_addr, timeout, format } => {
            members(load, admin_addr, timeout, format)
        }
        Invocation::Status { load, admin_addr, timeout, format } => {
            NODE.admin_command("status", &load, admin_addr, |addr| async move {
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

const NODE: Program = Program("opencluster-node");

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

fn health(
    load: config::LoadOptions,
    admin_addr: Option<std::net::SocketAddr>,
    timeout: std::time::Duration,
    ready: bool,
) -> ExitCode {
    NODE.admin_command("health", &load, admin_addr, |addr| async move {
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
    NODE.admin_command("members", &load, admin_addr, |addr| async move {
        let list = admin::get_members(addr, timeout).await?;
        match format {
            cli::MembersFormat::Table => print!("{}", admin::client::members_table(&list)),
            cli::MembersFormat::Json => println!("{}", serde_json::Value::Array(list)),
        }
        Ok(())
    })
}

fn run(load: config::LoadOptions, dev: bool) -> ExitCode {
    NODE.serve(
        load,
        |config| node_runtime(config.budget.worker_threads),
        |config, shutdown| async move {
            let listeners = node::Listeners::bind(&config).await?;
            if dev {
                print_dev_banner(&config, &listeners);
            }
            node::run(config, listeners, shutdown).await
        },
    )
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
