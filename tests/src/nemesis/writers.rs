//! The nemesis's clients: threads that write distinct keys (`SET key key`) round-robin
//! through every node, the one under a fault included, and remember which writes were
//! acknowledged, through which node and when.
//!
//! Only `+OK` counts as acknowledged. Anything else is an error counted by its kind: the
//! first word of an error reply (`CLUSTERDOWN`, `ERR`, ...), or the I/O error (refused,
//! reset, timed out). A write that timed out may still land later; it is not
//! acknowledged, so it is never checked.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::resp::{RawConn, Reply};

/// How long a client waits to connect or for a reply before it counts the write as
/// failed: long enough for a busy debug node, short enough that a stopped node costs a
/// writer a few seconds, not the run.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// An acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// Index of the node the write went through.
    pub node: usize,
    /// When the acknowledgement arrived, from the start of the run.
    pub at: Duration,
}

/// What the writers saw.
#[derive(Default)]
pub struct WriteReport {
    /// Every acknowledged key (its value is the key itself).
    pub acked: BTreeMap<String, Ack>,
    /// Failed writes by kind of error.
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged writes by node.
    pub acked_by_node: BTreeMap<usize, u64>,
    /// Failed writes by node.
    pub errors_by_node: BTreeMap<usize, u64>,
}

impl WriteReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn extend(&mut self, other: WriteReport) {
        self.acked.extend(other.acked);
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, n) in other.acked_by_node {
            *self.acked_by_node.entry(k).or_default() += n;
        }
        for (k, n) in other.errors_by_node {
            *self.errors_by_node.entry(k).or_default() += n;
        }
    }

    fn failed(&mut self, node: usize, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
        *self.errors_by_node.entry(node).or_default() += 1;
    }
}

/// Writer threads; stopped by [`Writers::finish`] or on drop.
pub struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<WriteReport>>,
}

impl Writers {
    /// `count` writers of keys `<prefix>-<writer>-<n>`, writer `w`'s n-th write going
    /// through node `(w + n) % nodes`; times are measured from `start`.
    pub fn start(prefix: &str, count: usize, clients: &[SocketAddr], start: Instant) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..count)
            .map(|w| {
                let (stop, prefix, clients) = (stop.clone(), format!("{prefix}-{w}"), clients.to_vec());
                std::thread::spawn(move || write_until(&stop, &prefix, w, &clients, start))
            })
            .collect();
        Writers { stop, threads }
    }

    /// Stops the writers and returns what they saw.
    pub fn finish(mut self) -> WriteReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = WriteReport::default();
        for t in self.threads.drain(..) {
            report.extend(t.join().expect("writer thread"));
        }
        report
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        // On a panic of the test, the threads stop on their own instead of writing to
        // killed nodes until the process exits.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn write_until(
    stop: &AtomicBool,
    prefix: &str,
    w: usize,
    clients: &[SocketAddr],
    start: Instant,
) -> WriteReport {
    let mut report = WriteReport::default();
    let mut conns: Vec<Option<RawConn>> = clients.iter().map(|_| None).collect();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let node = (w + n) % clients.len();
        let key = format!("{prefix}-{n}");
        let conn = match &mut conns[node] {
            Some(c) => c,
            slot => match RawConn::connect_with_timeout(clients[node], CLIENT_TIMEOUT) {
                Ok(c) => slot.insert(c),
                Err(e) => {
                    report.failed(node, io_kind(&e));
                    continue;
                }
            },
        };
        match conn.try_cmd(&["SET", &key, &key]) {
            Ok(Reply::Simple(s)) if s == "OK" => {
                report.acked.insert(key, Ack { node, at: start.elapsed() });
                *report.acked_by_node.entry(node).or_default() += 1;
            }
            Ok(Reply::Error(e)) => {
                report.failed(node, e.split_whitespace().next().unwrap_or("-").to_string())
            }
            Ok(other) => report.failed(node, format!("unexpected reply {other:?}")),
            Err(e) => {
                // After a timeout a late reply could be read as the next command's: start over.
                conns[node] = None;
                report.failed(node, io_kind(&e));
            }
        }
    }
    report
}

/// A short name for an I/O error: its kind, with read timeouts (which Linux reports as
/// WouldBlock) called what they are.
fn io_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "io:timeout".to_string(),
        kind => format!("io:{kind:?}"),
    }
}
