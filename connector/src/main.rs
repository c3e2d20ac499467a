//! The `opencluster-connector` binary: flags -> config -> logging -> run.

use std::process::ExitCode;

use opencluster_connector::cli::{self, Invocation};
use opencluster_connector::{admin, run};
use opencluster_node::config;
use opencluster_node::process::Program;

const CONNECTOR: Program = Program("opencluster-connector");

fn main() -> ExitCode {
    opencluster_pki::install_crypto_provider();
    let invocation = match cli::parse_from(std::env::args_os()) {
        Ok(i) => i,
        Err(e) => e.exit(),
    };
    match invocation {
        Invocation::Run { load, dev } => serve(load, dev),
        Invocation::Status { load, admin_addr, timeout, json } => {
            CONNECTOR.admin_command("status", &load, admin_addr, |addr| async move {
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
            CONNECTOR.admin_command("health", &load, admin_addr, |addr| async move {
                let body = opencluster_node::admin::check_health(addr, timeout).await?;
                println!("{}", body.trim());
                Ok(())
            })
        }
    }
}

fn serve(load: config::LoadOptions, dev: bool) -> ExitCode {
    CONNECTOR.serve(
        load,
        |_| tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        |config, shutdown| async move {
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
            run::run(config, listeners, shutdown).await
        },
    )
}
