//! A memory cgroup a test creates for the processes it starts, and removes afterwards.
//!
//! Made under this process's own memory cgroup (so whatever limits the test run also
//! limits it): cgroup v1 (`memory/<own path>/<name>`, with `memory.limit_in_bytes` and,
//! where swap is accounted, `memory.memsw.limit_in_bytes`) or v2 (`<own path>/<name>`
//! with `memory.max` and `memory.swap.max`). Needs root; [`Cgroup::create`] returns why
//! not otherwise, and the test skips itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Cgroup {
    dir: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// A new cgroup limited to `limit` bytes of memory and no swap.
    pub fn create(name: &str, limit: u64) -> Result<Cgroup, String> {
        let me =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let unique = format!("oc-test-{name}-{}-{}", std::process::id(), crate::unix_ms());
        let root = Path::new("/sys/fs/cgroup");
        let (dir, v2) = if let Some(path) = me.lines().find_map(|l| {
            l.split(':').nth(1).filter(|c| c.split(',').any(|c| c == "memory")).and(l.split(':').nth(2))
        }) {
            (root.join("memory").join(path.trim_start_matches('/')).join(&unique), false)
        } else if let Some(path) = me.lines().find_map(|l| l.strip_prefix("0::")) {
            (root.join(path.trim_start_matches('/')).join(&unique), true)
        } else {
            return Err("no memory cgroup found in /proc/self/cgroup".into());
        };
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cg = Cgroup { dir, v2 };
        let set = |file: &str, value: &str| {
            std::fs::write(cg.dir.join(file), value).map_err(|e| format!("{}/{file}: {e}", cg.dir.display()))
        };
        if v2 {
            set("memory.max", &limit.to_string())?;
            if cg.dir.join("memory.swap.max").exists() {
                set("memory.swap.max", "0")?;
            }
        } else {
            set("memory.limit_in_bytes", &limit.to_string())?;
            if cg.dir.join("memory.memsw.limit_in_bytes").exists() {
                set("memory.memsw.limit_in_bytes", &limit.to_string())?;
            }
        }
        Ok(cg)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The file a process writes its pid to, to join.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// How many times the kernel's OOM killer ran in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            })
            .unwrap_or(0)
    }

    /// The largest memory use charged to the cgroup (v1 only; RSS plus page cache).
    pub fn max_usage(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }
}

impl Drop for Cgroup {
    /// Removes the cgroup once its processes are gone (the test's nodes are killed first:
    /// declare the cgroup before them).
    fn drop(&mut self) {
        crate::wait::wait_until(Duration::from_secs(10), || std::fs::remove_dir(&self.dir).is_ok());
        if self.dir.exists() {
            eprintln!("could not remove the test cgroup {}", self.dir.display());
        }
    }
}

/// A field of `/proc/<pid>/status` in bytes: `VmRSS` (resident), `RssAnon` (resident
/// less mapped files and shared memory), `RssFile` (mapped file pages resident).
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
