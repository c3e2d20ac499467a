//! A process's own certificate: chosen at boot from its tls dir, and renewed while it runs.
//!
//! At boot, a leaf given by hand (`node.crt`/`node.key`) is used when it is valid now,
//! carries this process's role and name, and is not yet due for renewal. Otherwise the
//! process issues itself a short-lived leaf (default 7 days) from the datacenter
//! intermediate (`dc.crt`/`dc.key`), with its name and addresses as SANs. Self-issued
//! leaves live in memory only: nothing is written back to the tls dir, which may be
//! read-only (a baked image, a mounted secret).
//!
//! [`Renewal`] is the task that re-issues the leaf at two thirds of its lifetime and swaps
//! it into the [`MutualTls`] resolver (new handshakes use it; open connections carry on)
//! and a `watch` channel. Its decision, [`renew_at`], is a pure function; the task reads
//! wall time through a [`Clock`], so tests drive it with tokio's paused clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ca::{CaError, LeafRequest, SELF_ISSUED_VALIDITY, Validity};
use crate::files::{LEAF_CERT, TlsDir};
use crate::identity::{Identity, IdentityError, Role};
use crate::tls::{Credentials, MutualTls, Origin, TlsError};
use crate::verify;

/// How often the renewal task re-reads the clock at the latest, so a wall clock that
/// jumps (suspend, NTP step) delays a renewal by at most this much.
pub const RENEWAL_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// How long the renewal task waits after a failed renewal before trying again.
pub const RENEWAL_RETRY: Duration = Duration::from_secs(60);

/// Certificates hold whole seconds: a leaf ending this much before the requested end was
/// cut short by its intermediate, not by rounding.
const CLAMP_TOLERANCE: Duration = Duration::from_secs(2);

/// Who this process is and how long its self-issued certificates live.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// The process name: URI SAN and DNS SAN.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// More SANs: the addresses (IPs) and DNS names peers may dial it at.
    pub addresses: Vec<String>,
    /// Lifetime of self-issued leaves.
    pub lifetime: Duration,
}

impl BootRequest {
    /// A request with the default lifetime (7 days).
    pub fn new(name: &str, role: Role, addresses: Vec<String>) -> Self {
        BootRequest { name: name.to_string(), role, addresses, lifetime: SELF_ISSUED_VALIDITY }
    }
}

/// Why a process could not get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The process name is not a valid identity name.
    #[error(transparent)]
    Name(#[from] IdentityError),
    /// No usable leaf and no intermediate key to issue one.
    #[error("{dir}: no usable certificate: {reason}, and no dc.key to issue one")]
    NoCertificate {
        /// The tls dir.
        dir: String,
        /// Why the given leaf (if any) is not usable.
        reason: String,
    },
    /// Issuing from the intermediate failed (for example, it expired).
    #[error("{dir}: cannot issue a certificate from dc.crt: {cause}")]
    Issue {
        /// The tls dir.
        dir: String,
        /// The CA error.
        cause: CaError,
    },
    /// The new certificate could not be put into the TLS configs.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Picks or issues this process's certificate at `now` (see the module doc).
pub fn boot_identity(tls: &TlsDir, request: &BootRequest, now: SystemTime) -> Result<Credentials, BootError> {
    let wanted = Identity::new(&tls.cluster, &tls.datacenter, request.role, &request.name)?;
    let reason = match &tls.leaf {
        None => format!("no {LEAF_CERT}"),
        Some(leaf) => match verify::verify_chain(&tls.root, &leaf.chain, now) {
            Err(e) => format!("{}/{LEAF_CERT}: {e}", tls.source),
            Ok(id) if id != wanted => {
                format!("{}/{LEAF_CERT} is for {id}, not for this process ({wanted})", tls.source)
            }
            Ok(_) if now >= renew_at(leaf.info.not_before, leaf.info.not_after) => {
                format!("{}/{LEAF_CERT} is due for renewal", tls.source)
            }
            Ok(id) => {
                return Ok(Credentials {
                    identity: id,
                    chain: leaf.chain.clone(),
                    key: leaf.key.clone_key(),
                    info: leaf.info.clone(),
                    origin: Origin::Provided,
                });
            }
        },
    };
    if tls.leaf.is_some() && tls.intermediate.is_some() {
        tracing::warn!(%reason, "issuing a certificate from dc.crt instead");
    }
    self_issue(tls, request, now).map_err(|e| match e {
        BootError::NoCertificate { dir, .. } => BootError::NoCertificate { dir, reason },
        e => e,
    })
}

/// Issues a leaf for `request` from the tls dir's intermediate.
pub fn self_issue(tls: &TlsDir, request: &BootRequest, now: SystemTime) -> Result<Credentials, BootError> {
    let dc = tls.intermediate.as_ref().ok_or_else(|| BootError::NoCertificate {
        dir: tls.source.clone(),
        reason: format!("no {LEAF_CERT}"),
    })?;
    let leaf = dc
        .issue(&LeafRequest {
            role: request.role,
            name: request.name.clone(),
            sans: request.addresses.clone(),
            validity: Validity::starting(now, request.lifetime),
        })
        .map_err(|cause| match cause {
            CaError::Name(e) => BootError::Name(e),
            cause => BootError::Issue { dir: tls.source.clone(), cause },
        })?;
    Ok(Credentials::self_issued(leaf))
}

/// When to renew a certificate valid from `not_before` to `not_after`: at two thirds of its
/// lifetime, which leaves a third (over two days for 7-day leaves) to retry failures.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime * 2 / 3
}

/// Wall-clock time for the renewal task.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Wall time that follows tokio's clock from a starting point: under
/// `tokio::time::pause` it advances only as virtual time does. For tests.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall: SystemTime,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Starts at the current wall time and tokio instant.
    pub fn new() -> Self {
        TokioClock { wall: SystemTime::now(), start: tokio::time::Instant::now() }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.wall + self.start.elapsed()
    }
}

/// The task that keeps this process's certificate fresh.
pub struct Renewal {
    tls_dir: Arc<TlsDir>,
    request: BootRequest,
    tls: MutualTls,
    tx: watch::Sender<Arc<Credentials>>,
    clock: Arc<dyn Clock>,
}

impl Renewal {
    /// A renewal task for the process that booted with `current` and presents it through
    /// `tls`. Subscribe before spawning [`Renewal::run`].
    pub fn new(
        tls_dir: Arc<TlsDir>,
        request: BootRequest,
        tls: MutualTls,
        current: Arc<Credentials>,
    ) -> Self {
        let (tx, _) = watch::channel(current);
        Renewal { tls_dir, request, tls, tx, clock: Arc::new(SystemClock) }
    }

    /// Reads wall time from `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The current credentials, updated on every renewal.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.tx.subscribe()
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let current = self.tx.borrow().clone();
            let now = self.clock.now();
            let due = renew_at(current.not_before(), current.not_after());
            let wait = match due.duration_since(now) {
                Ok(left) => left.min(RENEWAL_CHECK_INTERVAL),
                Err(_) => self.renew(&current, now),
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One renewal attempt; returns how long to wait before looking again.
    fn renew(&self, current: &Credentials, now: SystemTime) -> Duration {
        if self.tls_dir.intermediate.is_none() {
            tracing::warn!(
                identity = %current.identity,
                expires = %crate::format_time(current.not_after()),
                "the certificate from {} is due for renewal but cannot be renewed here (no dc.key): \
                 install a new {LEAF_CERT} and restart",
                self.tls_dir.source
            );
            return RENEWAL_CHECK_INTERVAL;
        }
        let fresh = match self_issue(&self.tls_dir, &self.request, now) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?RENEWAL_RETRY, "certificate renewal failed");
                return RENEWAL_RETRY;
            }
        };
        if let Err(e) = self.tls.rotate(&fresh) {
            tracing::error!(error = %e, retry_in = ?RENEWAL_RETRY, "renewed certificate refused by TLS");
            return RENEWAL_RETRY;
        }
        tracing::info!(
            identity = %fresh.identity,
            fingerprint = %fresh.info.fingerprint,
            expires = %crate::format_time(fresh.not_after()),
            "certificate renewed"
        );
        let next_due = renew_at(fresh.not_before(), fresh.not_after());
        if fresh.not_after() + CLAMP_TOLERANCE < now + self.request.lifetime {
            // The leaf was cut to the intermediate's end: renewals come closer and closer.
            tracing::warn!(
                dc_expires = %crate::format_time(fresh.not_after()),
                "dc.crt in {} expires before a full-length certificate would: issue a new datacenter CA",
                self.tls_dir.source
            );
        }
        self.tx.send_replace(Arc::new(fresh));
        if next_due <= now {
            // The intermediate is about to expire and cuts every new leaf short: do not
            // re-issue in a tight loop.
            tracing::error!(
                "dc.crt in {} expires soon and limits new certificates: issue a new datacenter CA",
                self.tls_dir.source
            );
            return RENEWAL_RETRY;
        }
        Duration::ZERO
    }
}
