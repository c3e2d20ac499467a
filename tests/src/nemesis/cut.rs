//! Network cuts with iptables on loopback: a node's gossip and peer RPC (QUIC) UDP ports
//! dropped in both directions while its client port keeps serving, as when a host loses
//! its cluster network but not its applications.
//!
//! Every rule carries the comment `opencluster-nemesis-<pid>-<n>`, unique to one cut of
//! one test process, and is removed by a Drop guard, also when the test panics. Other
//! tests (and other runs) may cut ports at the same time: nothing here ever removes a
//! rule it did not add, except rules tagged with this very process id, which a dead
//! earlier process with the same id left behind.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of every rule's comment.
const TAG: &str = "opencluster-nemesis";

/// Cuts made by this process so far, for unique tags.
static CUTS: AtomicU64 = AtomicU64::new(0);

fn iptables() -> Command {
    let path =
        ["/usr/sbin/iptables", "/sbin/iptables"].into_iter().find(|p| std::path::Path::new(p).exists());
    let mut cmd = Command::new(path.unwrap_or("iptables"));
    // Wait for the xtables lock: parallel tests change rules at the same time.
    cmd.arg("-w");
    cmd
}

/// Runs iptables with `args`; the error names the command and what it printed.
fn run(args: &[String]) -> Result<String, String> {
    let out = iptables().args(args).output().map_err(|e| format!("iptables {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether cuts can be made here (iptables present and usable: root); the error says why not.
pub fn available() -> Result<(), String> {
    run(&["-S".into(), "INPUT".into()]).map(|_| ())
}

/// Removes rules this process id left from an earlier life (a test process killed with
/// SIGKILL cannot run its guards), and names, without touching them, rules of other
/// processes that are gone.
pub fn sweep_own_stale() {
    let Ok(rules) = run(&["-S".into(), "INPUT".into()]) else { return };
    let own = format!("{TAG}-{}-", std::process::id());
    for line in rules.lines().filter(|l| l.starts_with("-A INPUT ") && l.contains(TAG)) {
        let Some(tag) = line.split_whitespace().find(|w| w.starts_with(TAG)) else { continue };
        if tag.starts_with(&own) {
            let mut args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
            args[0] = "-D".into();
            match run(&args) {
                Ok(_) => println!("nemesis: removed a stale rule of this process id: {line}"),
                Err(e) => eprintln!("nemesis: could not remove a stale rule: {e}"),
            }
        } else if !pid_alive(tag) {
            println!(
                "NOTICE: nemesis: a rule of a process that is gone is still there (left alone; \
                 `iptables {}` removes it): {line}",
                line.replacen("-A", "-D", 1)
            );
        }
    }
}

/// Whether the process named in `opencluster-nemesis-<pid>-<n>` still runs.
fn pid_alive(tag: &str) -> bool {
    let pid = tag.strip_prefix(TAG).and_then(|rest| rest.trim_start_matches('-').split('-').next());
    pid.is_none_or(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// The rules of one cut; dropping it removes them.
pub struct Cut {
    tag: String,
    /// The rule specifications added (without `-I INPUT` / `-D INPUT`).
    rules: Vec<Vec<String>>,
}

impl Cut {
    /// Drops every UDP packet to or from `ports` on this host (loopback included) until
    /// the returned guard is dropped. Panics if a rule cannot be added (the ones already
    /// added are removed).
    pub fn ports(ports: &[u16]) -> Cut {
        let n = CUTS.fetch_add(1, Ordering::Relaxed);
        let mut cut = Cut { tag: format!("{TAG}-{}-{n}", std::process::id()), rules: Vec::new() };
        for port in ports {
            for dir in ["--dport", "--sport"] {
                let port = port.to_string();
                let rule: Vec<String> =
                    ["-p", "udp", dir, &port, "-m", "comment", "--comment", &cut.tag, "-j", "DROP"]
                        .map(str::to_string)
                        .to_vec();
                let args: Vec<String> =
                    ["-I".to_string(), "INPUT".to_string()].into_iter().chain(rule.clone()).collect();
                if let Err(e) = run(&args) {
                    drop(cut);
                    panic!("nemesis: cannot cut port {port}: {e}");
                }
                cut.rules.push(rule);
            }
        }
        cut
    }

    /// The comment every rule of this cut carries.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            let args: Vec<String> = ["-D".to_string(), "INPUT".to_string()].into_iter().chain(rule).collect();
            if let Err(e) = run(&args) {
                // A rule left behind would cut a later test's node that gets the same
                // port: say loudly how to remove it.
                eprintln!("NOTICE: nemesis: could not remove a cut rule ({e}); remove it by hand");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_names_its_process() {
        assert!(pid_alive(&format!("{TAG}-{}-3", std::process::id())));
        assert!(!pid_alive(&format!("{TAG}-4000000000-3")));
    }
}
