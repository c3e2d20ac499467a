//! The `opencluster-connector` binary: flags -> config -> logging -> run.

use std::process::ExitCode;

use opencluster_connector::cli::{self, Invocation};
use opencluster_connector::{admin, run};
use opencluster_node::config;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    opencluster_pki::install_crypto_provider();
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => e.exit(),
    };
    match invocation {
        Invocation::Run { load, dev } => serve(load, dev),
        Invocation::Status { load, admin_addr, timeout, json } => {
            admin_call("status", &load, admin_addr, |addr| async move {
                let status = opencluster_node::admin::client::get_status(addr, timeout).await?;
                if json {
                    println!("{status}");
                } else {
                    print!("{}", admin::status_text(&status));
                }
                Ok(())
            })
        }
        Invocation::Health { load, admin_addr, timeout } => {
            admin_call("health", &load, admin_addr, |addr| async move {
                let body = opencluster_node::admin::check_health(addr, timeout).await?;
                println!("{}", body.trim());
                Ok(())
            })
        }
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("opencluster-connector: {message}");
    ExitCode::from(2)
}

fn admin_call<F, Fut>(
    name: &str,
    load: &config::LoadOptions,
    given: Option<std::net::SocketAddr>,
    call: F,
) -> ExitCode
where
    F: FnOnce(std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<(), opencluster_node::admin::client::ClientError>>,
{
    let addr = match given {
        Some(a) => a,
        None => match config::load_unvalidated(load).map(|c| c.admin_addr) {
            Ok(Some(a)) => a,
            Ok(None) => return fail("admin_addr is disabled in the config: give --admin-addr"),
            Err(e) => return fail(e),
        },
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    match rt.block_on(call(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opencluster-connector {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(load: config::LoadOptions, dev: bool) -> ExitCode {
    let config = match config::load(&load) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = opencluster_node::logging::init(&config) {
        return fail(e);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let temporary_dir = load.dev_data_dir.filter(|d| *d == config.data_dir);
    let result = rt.block_on(async {
        let listeners = run::Listeners::bind(&config).await?;
        if dev {
            println!("OpenCluster dev connector {} is running.", opencluster_node::VERSION);
            if let Some(a) = listeners.admin_addr() {
                println!("  status:   http://{a}/v1/status   metrics: http://{a}/metrics");
            }
            if let Some(a) = listeners.wan_addr() {
                println!("  wan:      {a}");
            }
            if config.tls_dir.is_none() {
                println!("  keys:     INSECURE default keys (development only)");
            }
            println!("Stop with Ctrl-C.");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        run::run(config, listeners, shutdown).await
    });
    if let Some(dir) = temporary_dir
        && let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("opencluster-connector: could not remove {}: {e}", dir.display());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM/SIGINT; stop the connector with SIGKILL");
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
