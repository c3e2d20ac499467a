//! One demo process (a node, or a connector when the demo runs several datacenters): a
//! child process, its admin address, its log file, and the signals the demo sends it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use super::DemoError;

/// Bytes read from the end of a log to show its last lines.
const LOG_TAIL_BYTES: u64 = 64 << 10;

/// A process the demo started.
pub struct NodeProcess {
    /// `n1`, `n2`, ... (`dc1-n1`, `dc1-connector`, ... with several datacenters)
    pub name: String,
    /// Where its admin API answers: the demo asks it whether the process is ready.
    pub admin: SocketAddr,
    pub log: PathBuf,
    child: Child,
    /// Set once the process has exited and was reaped.
    exit: Option<ExitStatus>,
}

impl NodeProcess {
    /// Starts `exe` with `args`, its stdout and stderr appended to `log`, in a process
    /// group of its own: a Ctrl-C in the terminal reaches only the demo, which then stops
    /// the nodes in order. On Linux the node also gets SIGTERM if the demo dies without
    /// stopping it (killed with SIGKILL), so no node outlives the demo. `env` is set for
    /// it after the demo's own `OPENCLUSTER_*` variables are removed.
    pub fn spawn(
        exe: &Path,
        name: String,
        admin: SocketAddr,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<NodeProcess, DemoError> {
        let io = |what: &str, source| DemoError::Io { what: format!("{what} {}", log.display()), source };
        let out = OpenOptions::new().create(true).append(true).open(&log).map_err(|e| io("open", e))?;
        let err = out.try_clone().map_err(|e| io("open", e))?;
        let mut cmd = Command::new(exe);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        // The demo's own OPENCLUSTER_* settings are not meant for its nodes: each is a
        // `--dev` node configured by its flags (and the flags after `--`).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OPENCLUSTER_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().copied());
        stop_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|source| DemoError::Io { what: format!("start {name} ({})", exe.display()), source })?;
        Ok(NodeProcess { name, admin, log, child, exit: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            // An error here means the child was already reaped, which only this struct does.
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// SIGTERM: the node stops in order (drain, leave the cluster, flush).
    pub fn terminate(&mut self) {
        if self.is_running() {
            signal(self.child.id(), libc::SIGTERM);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.is_running() {
            if let Err(e) = self.child.kill() {
                eprintln!(
                    "opencluster-node demo: could not kill {} (pid {}): {e}",
                    self.name,
                    self.child.id()
                );
            }
            self.exit = self.child.wait().ok();
        }
    }

    /// The last `lines` lines of the node's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log, lines)
    }
}

/// The last `lines` lines of the file at `path` (of at most its last 64 KiB), or a note
/// saying why it could not be read.
pub fn tail_lines(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is a
    // child of this process that `try_wait` has not reaped, so it names that child.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        eprintln!("opencluster-node demo: kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
}

/// Asks Linux to send the child SIGTERM when the thread that started it exits. The demo
/// starts its nodes from its main thread, which lives as long as the demo.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn stop_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: prctl and getppid are plain system calls, and
    // nothing here allocates or takes a lock.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The demo died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn stop_with_parent(_cmd: &mut Command) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.log");
        std::fs::write(&path, "one\ntwo\nthree\nfour\n").unwrap();
        assert_eq!(tail_lines(&path, 2), "three\nfour");
        assert_eq!(tail_lines(&path, 10), "one\ntwo\nthree\nfour");
        let missing = tail_lines(&dir.path().join("n2.log"), 2);
        assert!(missing.starts_with("(cannot read ") && missing.contains("n2.log"), "{missing}");
    }
}
