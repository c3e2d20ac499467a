//! The client-facing servers: accepting TCP and Unix-socket connections within
//! `limits.max_clients`, and the state every connection shares.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::commands::CmdError;
use super::connection;
use super::table::{COMMANDS, Spec};
use crate::cluster::Cluster;
use crate::metrics::{CommandMetrics, Metrics};
use crate::store::purger::PurgeStatus;

/// Size limits applied to client input.
#[derive(Clone, Copy, Debug)]
pub struct ClientLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_request_bytes: usize,
}

/// Counts connections against the limit.
#[derive(Debug)]
pub struct Clients {
    pub max: usize,
    connected: AtomicUsize,
    total: AtomicU64,
    next_id: AtomicU64,
}

impl Clients {
    pub fn new(max: usize) -> Self {
        Clients { max, connected: AtomicUsize::new(0), total: AtomicU64::new(0), next_id: AtomicU64::new(1) }
    }
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// A connection's place in the client count; freed on drop.
pub struct ClientSlot {
    state: Arc<ServerState>,
    pub id: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.state.clients.connected.fetch_sub(1, Ordering::Relaxed);
        self.state.metrics.connected_clients.dec();
    }
}

/// What every client connection shares.
pub struct ServerState {
    pub cluster: Arc<Cluster>,
    pub metrics: Arc<Metrics>,
    /// Per-command handles, indexed like [`COMMANDS`].
    pub command_metrics: Vec<CommandMetrics>,
    pub limits: ClientLimits,
    pub password: Option<String>,
    pub allow_flushdb: bool,
    pub clients: Clients,
    pub started: Instant,
    pub node_name: String,
    pub datacenter: String,
    pub tcp_port: Option<u16>,
    pub store_cache_bytes: u64,
    pub fsync_always: bool,
    pub purge_status: Arc<PurgeStatus>,
    /// Connections that receive pub/sub messages and invalidations.
    pub hub: Arc<super::hub::Hub>,
}

impl ServerState {
    /// Resolves the per-command metric handles.
    pub fn command_metrics(metrics: &Metrics) -> Vec<CommandMetrics> {
        COMMANDS.iter().map(|s| metrics.command(s.name)).collect()
    }

    /// Takes a connection slot, or `None` at `limits.max_clients`.
    pub fn try_connect(self: &Arc<Self>) -> Option<ClientSlot> {
        let c = &self.clients;
        let mut n = c.connected.load(Ordering::Relaxed);
        loop {
            if n >= c.max {
                self.metrics.rejected_connections.inc();
                return None;
            }
            match c.connected.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => n = actual,
            }
        }
        c.total.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections_total.inc();
        self.metrics.connected_clients.inc();
        Some(ClientSlot { state: self.clone(), id: c.next_id.fetch_add(1, Ordering::Relaxed) })
    }

    pub fn commands_processed(&self) -> u64 {
        self.command_metrics.iter().map(|m| m.calls.get()).sum()
    }

    pub fn check_value_len(&self, len: usize) -> Result<(), CmdError> {
        if len > self.limits.max_value_bytes {
            return Err(CmdError::too_large(
                "value",
                len,
                "limits.max_value_bytes",
                self.limits.max_value_bytes,
            ));
        }
        Ok(())
    }

    /// Checks every key argument of a command against `limits.max_key_bytes`.
    pub fn check_key_lens(&self, spec: &Spec, args: &[Bytes]) -> Result<(), CmdError> {
        for i in spec.key_positions(args.len()) {
            let len = args[i].len();
            if len > self.limits.max_key_bytes {
                return Err(CmdError::too_large(
                    "key",
                    len,
                    "limits.max_key_bytes",
                    self.limits.max_key_bytes,
                ));
            }
        }
        Ok(())
    }
}

const REFUSED: &[u8] = b"-ERR max number of clients reached\r\n";

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub async fn serve_tcp(
    listener: TcpListener,
    state: Arc<ServerState>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a client connection failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, %peer, "could not set TCP_NODELAY");
        }
        match state.try_connect() {
            Some(slot) => {
                tracker.spawn(connection::serve(
                    state.clone(),
                    slot,
                    stream,
                    peer.to_string(),
                    false,
                    shutdown.clone(),
                ));
            }
            None => {
                tracker.spawn(async move {
                    // The client is being turned away: a failed write changes nothing.
                    let _ = stream.write_all(REFUSED).await;
                });
            }
        }
    }
}

pub async fn serve_unix(
    listener: UnixListener,
    state: Arc<ServerState>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a Unix-socket client failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        match state.try_connect() {
            Some(slot) => {
                // The socket's 0660 mode decides who may connect: no password asked.
                tracker.spawn(connection::serve(
                    state.clone(),
                    slot,
                    stream,
                    "unix".into(),
                    true,
                    shutdown.clone(),
                ));
            }
            None => {
                tracker.spawn(async move {
                    let _ = stream.write_all(REFUSED).await;
                });
            }
        }
    }
}

/// Binds the client Unix socket with mode 0660, replacing a stale socket file left by a
/// previous run (but never another kind of file).
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
