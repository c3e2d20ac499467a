//! What each node believes during the run: one thread per node polls its placement
//! (`/v1/placement`) and records every change of how many nodes it places partitions on
//! and its write quorum. A node that places partitions on itself alone while the cluster
//! has more nodes shows here, with the time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http;

/// How often each node's placement is read.
const POLL: Duration = Duration::from_millis(200);

/// One node's placement as seen at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Nodes it places partitions on.
    pub nodes: u64,
    /// Owners a write must reach.
    pub write_quorum: u64,
    /// Partitions it owns.
    pub owned: u64,
}

/// A change of one node's view.
#[derive(Clone, Debug)]
pub struct Change {
    pub at: Duration,
    pub node: usize,
    pub view: View,
}

/// The polling threads; [`Watch::finish`] stops them and returns every change, in order.
pub struct Watch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Change>>>,
}

impl Watch {
    pub fn start(admins: &[SocketAddr], start: Instant) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = admins
            .iter()
            .enumerate()
            .map(|(node, &addr)| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut changes: Vec<Change> = Vec::new();
                    let mut last: Option<View> = None;
                    while !stop.load(Ordering::Relaxed) {
                        // An unreachable node (killed, restarting) records nothing; its
                        // first view once back is recorded even if unchanged.
                        match read_view(addr) {
                            Some(view) if last.as_ref() != Some(&view) => {
                                changes.push(Change { at: start.elapsed(), node, view: view.clone() });
                                last = Some(view);
                            }
                            Some(_) => {}
                            None => last = None,
                        }
                        std::thread::sleep(POLL);
                    }
                    changes
                })
            })
            .collect();
        Watch { stop, threads }
    }

    pub fn finish(mut self) -> Vec<Change> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Change> =
            self.threads.drain(..).flat_map(|t| t.join().expect("watch thread")).collect();
        all.sort_by_key(|c| (c.at, c.node));
        all
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_view(admin: SocketAddr) -> Option<View> {
    let (status, body) = http::get(admin, "/v1/placement").ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(View {
        nodes: v["nodes"].as_u64()?,
        write_quorum: v["write_quorum"].as_u64()?,
        owned: v["owned"].as_u64()?,
    })
}

/// The view `node` last reported at or before `at`, if any.
pub fn view_at(changes: &[Change], node: usize, at: Duration) -> Option<&View> {
    changes.iter().rev().find(|c| c.node == node && c.at <= at).map(|c| &c.view)
}
