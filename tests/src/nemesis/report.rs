//! The nemesis's printed outcome: the summary line, then enough to diagnose a failure
//! from the output alone: the fault timeline, each node's placement over time, the
//! writes and errors per node, and each lost key with the node it was acknowledged
//! through, when, and what that node believed then.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::watch::view_at;
use super::{Happened, Outcome};
use crate::node::Node;

/// Lost (or unheld) keys printed one by one.
const SHOWN: usize = 20;
/// Last lines of each node's log printed on failure.
const LOG_LINES: usize = 20;
/// Log printed before the first lost write through a node, and after the last.
const LOG_BEFORE: Duration = Duration::from_secs(5);
const LOG_AFTER: Duration = Duration::from_secs(2);
/// Most lines of one node's log printed around its lost writes.
const LOG_WINDOW_LINES: usize = 120;

/// `12.3s`
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Where an instant of the run falls relative to the faults: during one, or after one
/// (and how long after).
fn context(faults: &[Happened], names: &[String], at: Duration) -> (String, Option<Duration>) {
    let name = |f: &Happened| format!("#{} {} {}", f.number, f.kind, names[f.node]);
    if let Some(f) = faults.iter().find(|f| f.began <= at && at <= f.ended) {
        return (format!("during {} ({}..{})", name(f), secs(f.began), secs(f.ended)), None);
    }
    match faults.iter().rev().find(|f| f.ended < at) {
        Some(f) => (format!("after {} ended at {}", name(f), secs(f.ended)), Some(at - f.ended)),
        None => ("before the first fault".to_string(), None),
    }
}

/// [`context`] as one phrase: `during #2 kill n1 (...)`, `1.2s after #2 kill n1 ended at 13.4s`.
fn context_phrase(faults: &[Happened], names: &[String], at: Duration) -> String {
    match context(faults, names, at) {
        (what, Some(after)) => format!("{} {what}", secs(after)),
        (what, None) => what,
    }
}

pub fn print(o: &Outcome, names: &[String]) {
    let name = |i: usize| names[i].as_str();
    println!("{}", o.summary());
    for notice in &o.notices {
        println!("{notice}");
    }

    println!("fault timeline (seconds from the first write):");
    for f in &o.faults {
        println!(
            "  #{:<3} {:>6}..{:<6} {:<4} {}: {}",
            f.number,
            secs(f.began),
            secs(f.ended),
            f.kind,
            name(f.node),
            f.note
        );
    }
    match &o.converged {
        Ok(d) => println!("every node placed every node {} after the writes stopped", secs(*d)),
        Err(views) => println!("NOT CONVERGED {} after the writes stopped: {views}", secs(super::CONVERGE)),
    }

    println!("placement views (a node placing fewer nodes than the cluster has is alone or split off):");
    for c in &o.views {
        let v = &c.view;
        println!(
            "  {:>6} {} places {} node(s), write quorum {}, owns {} partitions",
            secs(c.at),
            name(c.node),
            v.nodes,
            v.write_quorum,
            v.owned
        );
    }

    let w = &o.writes;
    println!("writes per node:");
    for (i, n) in names.iter().enumerate() {
        println!(
            "  through {n}: acked {}, errors {}",
            w.acked_by_node.get(&i).copied().unwrap_or(0),
            w.errors_by_node.get(&i).copied().unwrap_or(0)
        );
    }
    let kinds: Vec<String> = w.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("errors by kind: {}", if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") });

    let r = &o.read;
    println!(
        "read check: {} acked keys through {} nodes: first pass {} ({} missing through some node), {} retry \
         round(s) until {}; lost {}",
        o.acked(),
        names.len(),
        secs(r.first_pass),
        r.missing_after_first_pass,
        r.rounds - 1,
        secs(r.took),
        r.lost.len()
    );
    if !r.lost.is_empty() {
        // Group by the node the write went through and the fault around it.
        let mut groups: BTreeMap<(usize, String), (usize, Duration, Duration)> = BTreeMap::new();
        for key in r.lost.keys() {
            let ack = &w.acked[key];
            let g =
                groups.entry((ack.node, context(&o.faults, names, ack.at).0)).or_insert((0, ack.at, ack.at));
            *g = (g.0 + 1, g.1.min(ack.at), g.2.max(ack.at));
        }
        println!("lost keys by the node they were acknowledged through, and when:");
        for ((node, when), (n, first, last)) in &groups {
            println!(
                "  {n:>5} through {} {when}, acknowledged {}..{}",
                name(*node),
                secs(*first),
                secs(*last)
            );
        }
        // A few of each group, in the order they were acknowledged.
        let per_group = (SHOWN / groups.len()).max(1);
        let mut by_time: Vec<(&String, &Vec<(usize, String)>)> = r.lost.iter().collect();
        by_time.sort_by_key(|(key, _)| w.acked[*key].at);
        let mut shown: BTreeMap<(usize, String), usize> = BTreeMap::new();
        let sample: Vec<_> = by_time
            .into_iter()
            .filter(|(key, _)| {
                let ack = &w.acked[*key];
                let n = shown.entry((ack.node, context(&o.faults, names, ack.at).0)).or_default();
                *n += 1;
                *n <= per_group
            })
            .take(SHOWN)
            .collect();
        println!("lost keys ({} of {}, a few of each group, by time):", sample.len(), r.lost.len());
        for (key, reads) in sample {
            let ack = &w.acked[key];
            let view = view_at(&o.views, ack.node, ack.at)
                .map(|v| {
                    format!("{} then placed {} node(s), quorum {}", name(ack.node), v.nodes, v.write_quorum)
                })
                .unwrap_or_else(|| format!("no view of {} yet", name(ack.node)));
            let answers: Vec<String> = reads.iter().map(|(i, got)| format!("{} {got}", name(*i))).collect();
            println!(
                "  {key}: acked through {} at {} ({}; {view}); read: {}",
                name(ack.node),
                secs(ack.at),
                context_phrase(&o.faults, names, ack.at),
                answers.join(", ")
            );
        }
    }

    let s = &o.stores;
    println!(
        "owners' own stores: {} keys held by no owner, {} by some but not all owners",
        s.unheld.len(),
        s.under_replicated
    );
    let mut unheld: Vec<&(String, Vec<String>)> = s.unheld.iter().collect();
    unheld.sort_by_key(|(key, _)| w.acked.get(key).map(|a| a.at));
    if !unheld.is_empty() {
        println!("  (first {} by time)", unheld.len().min(SHOWN));
    }
    for (key, owners) in unheld.into_iter().take(SHOWN) {
        let ack = w.acked.get(key);
        let through =
            ack.map_or(String::new(), |a| format!(", acked through {} at {}", name(a.node), secs(a.at)));
        println!("  {key}: owners {} hold none{through}", owners.join(","));
    }
    for d in s.disputed.iter().take(SHOWN) {
        println!("  views differ: {d}");
    }
    if let Some(dir) = &o.logs {
        println!("nodes' logs kept in {}", dir.display());
    }
    let t = &o.timings;
    println!(
        "phases: cluster start {}, faults and calm {}, convergence {}, read check {}, store check {}",
        secs(t.start_cluster),
        secs(t.faults),
        secs(t.converge),
        secs(t.read_check),
        secs(t.store_check)
    );
    println!("{}", o.summary());
}

/// Copies every node's log out of its temp dir (removed when the node is dropped).
pub fn keep_logs(nodes: &[Node], names: &[String], seed: u64) -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("opencluster-nemesis-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    for (node, name) in nodes.iter().zip(names) {
        if let Err(e) = std::fs::write(dir.join(format!("{name}.log")), node.log()) {
            eprintln!("nemesis: could not keep {name}'s log in {}: {e}", dir.display());
            return None;
        }
    }
    Some(dir)
}

/// On failure: the log lines of each node that acknowledged lost writes from a little
/// before the first to a little after the last (with times from the first write), then
/// the last lines of every node's log.
pub fn print_logs(o: &Outcome, nodes: &[Node], names: &[String]) {
    let mut windows: BTreeMap<usize, (Duration, Duration)> = BTreeMap::new();
    for key in o.read.lost.keys().chain(o.stores.unheld.iter().map(|(k, _)| k)) {
        let Some(ack) = o.writes.acked.get(key) else { continue };
        let w = windows.entry(ack.node).or_insert((ack.at, ack.at));
        w.0 = w.0.min(ack.at);
        w.1 = w.1.max(ack.at);
    }
    for (&node, &(first, last)) in &windows {
        let (from, to) = (first.saturating_sub(LOG_BEFORE), last + LOG_AFTER);
        println!(
            "--- {}'s log from {} to {} (lost writes went through it from {} to {}) ---",
            names[node],
            secs(from),
            secs(to),
            secs(first),
            secs(last)
        );
        let log = nodes[node].stderr_log();
        let lines: Vec<String> = log
            .lines()
            .filter_map(|line| {
                let at = log_time(line, o.started_unix_ms)?;
                (from.as_millis() as i64 <= at && at <= to.as_millis() as i64)
                    .then(|| format!("[{:.1}s] {line}", at as f64 / 1000.0))
            })
            .collect();
        for line in lines.iter().take(LOG_WINDOW_LINES) {
            println!("{line}");
        }
        if lines.len() > LOG_WINDOW_LINES {
            println!("... {} more lines", lines.len() - LOG_WINDOW_LINES);
        }
    }
    for (node, name) in nodes.iter().zip(names) {
        let log = node.stderr_log();
        let lines: Vec<&str> = log.lines().collect();
        println!("--- last {LOG_LINES} lines of {name}'s log ---");
        for line in &lines[lines.len().saturating_sub(LOG_LINES)..] {
            match log_time(line, o.started_unix_ms) {
                Some(at) => println!("[{:.1}s] {line}", at as f64 / 1000.0),
                None => println!("{line}"),
            }
        }
    }
    println!("--- end of the nodes' logs ---");
}

/// Milliseconds from `started_unix_ms` to the time a log line starts with
/// (`2026-12-06T02:18:54.166389Z ...`, UTC), negative before it. Runs last less than
/// half a day, so the time of day is enough.
fn log_time(line: &str, started_unix_ms: u64) -> Option<i64> {
    const DAY_MS: i64 = 86_400_000;
    let clock = line.get(11..)?.split('Z').next()?;
    let mut parts = clock.split(':');
    let (h, m, s): (i64, i64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    let of_day = (h * 3600 + m * 60) * 1000 + (s * 1000.0) as i64;
    let rel = (of_day - (started_unix_ms as i64 % DAY_MS)).rem_euclid(DAY_MS);
    Some(if rel > DAY_MS / 2 { rel - DAY_MS } else { rel })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_relative_to_the_start() {
        // 2026-12-06T02:18:54.000Z
        let start = 1_796_523_534_000;
        let line = |t: &str| format!("2026-12-06T{t}Z  INFO opencluster_node::cluster: placement updated");
        assert_eq!(log_time(&line("02:18:55.250000"), start), Some(1250));
        assert_eq!(log_time(&line("02:18:53.000000"), start), Some(-1000));
        assert_eq!(log_time("--- server stderr ---", start), None);
    }
}
