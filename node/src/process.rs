//! What both binaries (`opencluster-node` and `opencluster-connector`) do around their
//! work: report an error and exit, run an admin subcommand against a running process, and
//! serve until SIGTERM or SIGINT, removing a `--dev` run's temporary data directory after.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::admin::client::ClientError;
use crate::config::{self, Config, LoadOptions};

/// One of the binaries, by the name its messages start with.
#[derive(Clone, Copy)]
pub struct Program(pub &'static str);

impl Program {
    /// Prints `<program>: <message>` and gives exit status 2 (bad usage, config or start).
    pub fn fail(self, message: impl Display) -> ExitCode {
        eprintln!("{}: {message}", self.0);
        ExitCode::from(2)
    }

    /// Runs a subcommand that talks to the admin API of a running process: finds the
    /// address (`--admin-addr`, else the config's `admin_addr`), runs `call` on a small
    /// runtime, and turns its error into `<program> <name>: <error>` and exit status 1.
    pub fn admin_command<F, Fut>(
        self,
        name: &str,
        load: &LoadOptions,
        given: Option<SocketAddr>,
        call: F,
    ) -> ExitCode
    where
        F: FnOnce(SocketAddr) -> Fut,
        Fut: Future<Output = Result<(), ClientError>>,
    {
        let addr = match given {
            Some(a) => a,
            None => match config::load_unvalidated(load).map(|c| c.admin_addr) {
                Ok(Some(a)) => a,
                Ok(None) => return self.fail("admin_addr is disabled in the config: give --admin-addr"),
                Err(e) => return self.fail(e),
            },
        };
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return self.fail(e),
        };
        match rt.block_on(call(addr)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{} {name}: {e}", self.0);
                ExitCode::FAILURE
            }
        }
    }

    /// Loads the config, starts logging, builds the runtime `runtime` makes for the config,
    /// and runs `serve` on it until it returns; SIGTERM or SIGINT cancels the token it is
    /// given. A temporary data directory of `--dev` is removed after.
    pub fn serve<R, F, Fut, E>(self, load: LoadOptions, runtime: R, serve: F) -> ExitCode
    where
        R: FnOnce(&Config) -> std::io::Result<tokio::runtime::Runtime>,
        F: FnOnce(Config, CancellationToken) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let config = match config::load(&load) {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        if let Err(e) = crate::logging::init(&config) {
            return self.fail(e);
        }
        let rt = match runtime(&config) {
            Ok(rt) => rt,
            Err(e) => return self.fail(e),
        };
        let temporary_dir = load.dev_data_dir.filter(|d| *d == config.data_dir);
        let result = rt.block_on(async {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(self, shutdown.clone()));
            serve(config, shutdown).await
        });
        if let Some(dir) = temporary_dir
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("{}: could not remove the temporary data directory {}: {e}", self.0, dir.display());
        }
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => self.fail(e),
        }
    }
}

/// Cancels `shutdown` at the first SIGTERM or SIGINT.
async fn stop_on_signal(program: Program, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, program = program.0, "cannot listen for SIGTERM/SIGINT; stop it with SIGKILL");
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
