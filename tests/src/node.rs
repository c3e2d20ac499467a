//! `Node`: one server process owned by one test.
//!
//! Each test starts its own process on its own free ports with its own temp dir, so
//! tests run in parallel without sharing state. The process is killed and reaped on
//! Drop, also when the test panics, and a panicking test prints the server's log.
//!
//! The same tests can run against a real `redis-server` (`OPENCLUSTER_TEST_TARGET=redis`):
//! that is how the expected replies are checked to be what Redis 7 answers. Options
//! that both servers understand (password, unix socket, max clients, fsync) are typed
//! fields of `NodeOpts` and are translated for each target; node-only flags go in
//! `NodeOpts::args`, and tests using them skip themselves against Redis.

use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http;
use crate::resp::{RawConn, Reply};
use crate::wait::wait_until;

/// How long a server may take to become ready.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// Which server the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The `opencluster-node` binary (the default).
    Node,
    /// A real `redis-server`, to check the tests' expectations.
    Redis,
}

/// The target chosen by `OPENCLUSTER_TEST_TARGET` (`redis` or, by default, the node).
pub fn target() -> Target {
    match std::env::var("OPENCLUSTER_TEST_TARGET").as_deref() {
        Ok("redis") => Target::Redis,
        Ok("node") | Ok("") | Err(_) => Target::Node,
        Ok(other) => panic!("OPENCLUSTER_TEST_TARGET={other:?}: expected `node` or `redis`"),
    }
}

/// Returns early from a test (with a printed notice) when running against Redis.
#[macro_export]
macro_rules! node_only {
    ($why:expr) => {
        if $crate::target() == $crate::Target::Redis {
            eprintln!("skipping against redis-server: {}", $why);
            return;
        }
    };
}

/// How the store syncs writes to disk.
#[derive(Clone, Debug)]
pub enum Fsync {
    /// fsync before every acknowledgement.
    Always,
    /// fsync in the background at this interval.
    Interval(Duration),
}

/// What to start. Typed fields work on both targets; `args` and `env` are node-only.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    pub client_password: Option<String>,
    pub unix_socket: bool,
    pub allow_flushdb: bool,
    pub max_clients: Option<u32>,
    pub fsync: Option<Fsync>,
    /// Host for `--client-addr` instead of 127.0.0.1 (e.g. `0.0.0.0`); node-only. The
    /// harness still reaches the node through 127.0.0.1.
    pub client_host: Option<String>,
    /// Extra command-line arguments for the node (ignored against Redis).
    pub args: Vec<String>,
    /// A cgroup's `cgroup.procs`: the node joins it before it starts (node-only).
    pub cgroup_procs: Option<PathBuf>,
    /// The node's data directory instead of one in its temp dir (node-only).
    pub data_dir: Option<PathBuf>,
    /// Extra environment for the node (ignored against Redis).
    pub env: Vec<(String, String)>,
}

impl NodeOpts {
    pub fn new() -> NodeOpts {
        NodeOpts::default()
    }
    pub fn password(mut self, p: &str) -> NodeOpts {
        self.client_password = Some(p.to_string());
        self
    }
    pub fn unix_socket(mut self) -> NodeOpts {
        self.unix_socket = true;
        self
    }
    pub fn allow_flushdb(mut self) -> NodeOpts {
        self.allow_flushdb = true;
        self
    }
    pub fn max_clients(mut self, n: u32) -> NodeOpts {
        self.max_clients = Some(n);
        self
    }
    pub fn fsync(mut self, f: Fsync) -> NodeOpts {
        self.fsync = Some(f);
        self
    }
    pub fn client_host(mut self, host: &str) -> NodeOpts {
        self.client_host = Some(host.to_string());
        self
    }
    pub fn arg(mut self, a: &str) -> NodeOpts {
        self.args.push(a.to_string());
        self
    }
    pub fn args(mut self, args: &[&str]) -> NodeOpts {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> NodeOpts {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Keeps the node's data in `dir` (e.g. a small file system the test mounted).
    pub fn data_dir(mut self, dir: &std::path::Path) -> NodeOpts {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Starts the node inside `cgroup` (node-only).
    pub fn in_cgroup(mut self, cgroup: &crate::cgroup::Cgroup) -> NodeOpts {
        self.cgroup_procs = Some(cgroup.procs_file());
        self
    }
}

/// A running (or stopped, between `kill9` and `restart`) server process.
pub struct Node {
    opts: NodeOpts,
    target: Target,
    root: TempDir,
    client_port: u16,
    admin_port: u16,
    child: Option<Child>,
}

impl Node {
    /// Starts a server and waits until it is ready; panics (with its log) otherwise.
    pub fn start(opts: NodeOpts) -> Node {
        let root = tempfile::Builder::new().prefix("oc-test-").tempdir().expect("create temp dir");
        fs::create_dir_all(root.path().join("data")).expect("create data dir");
        let (client_port, admin_port) = free_port_pair();
        let mut node = Node { opts, target: target(), root, client_port, admin_port, child: None };
        node.spawn_and_wait();
        node
    }

    /// Starts the node with default options.
    pub fn start_default() -> Node {
        Node::start(NodeOpts::new())
    }

    pub fn target(&self) -> Target {
        self.target
    }

    pub fn client_addr(&self) -> SocketAddr {
        loopback(self.client_port)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        loopback(self.admin_port)
    }

    pub fn port(&self) -> u16 {
        self.client_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.opts.data_dir.clone().unwrap_or_else(|| self.root.path().join("data"))
    }

    /// Where the unix socket is (only meaningful with `NodeOpts::unix_socket`).
    pub fn unix_socket_path(&self) -> PathBuf {
        self.root.path().join("node.sock")
    }

    pub fn password(&self) -> Option<&str> {
        self.opts.client_password.as_deref()
    }

    /// `redis://127.0.0.1:PORT/`, with the password when one is set.
    pub fn url(&self) -> String {
        match &self.opts.client_password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.client_port),
            None => format!("redis://127.0.0.1:{}/", self.client_port),
        }
    }

    /// A `redis` crate connection (authenticated when a password is set).
    pub fn client(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("valid redis url");
        let con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.url(), self.log()));
        con.set_read_timeout(Some(Duration::from_secs(15))).expect("set read timeout");
        con
    }

    /// A raw RESP connection, not authenticated.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.client_addr())
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.client_addr(), self.log()))
    }

    /// A raw RESP connection, authenticated when a password is set.
    pub fn raw_authed(&self) -> RawConn {
        let mut c = self.raw();
        if let Some(p) = &self.opts.client_password {
            assert_eq!(c.cmd(&["AUTH", p]), crate::resp::ok());
        }
        c
    }

    /// `GET` on the admin API: (status, body). Panics against Redis, which has none.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        assert_eq!(self.target, Target::Node, "the admin API exists only on the node");
        http::get(self.admin_addr(), path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    /// `POST` of a JSON body on the admin API, with a bearer token when given: (status, body).
    pub fn admin_post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        assert_eq!(self.target, Target::Node, "the admin API exists only on the node");
        http::post(self.admin_addr(), path, token, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.log()))
    }

    /// `GET` on the admin API, parsed as JSON, expecting 200.
    pub fn admin_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.admin_get(path);
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: body is not JSON ({e}): {body}"))
    }

    /// The value of an unlabelled series in `/metrics`, e.g. `opencluster_insecure_default_keys`.
    pub fn metric(&self, name: &str) -> String {
        let (_, text) = self.admin_get("/metrics");
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .map(|l| l[name.len() + 1..].to_string())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// SIGKILL and reap: the process gets no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // fails only if it already exited, which is fine here
            c.wait().expect("reap killed server");
        }
    }

    /// Sends SIGKILL without reaping, through a shared reference: for killing the server
    /// while other threads still use it. Call `kill9` (or `restart`) afterwards to reap.
    pub fn send_sigkill(&self) {
        send_signal(self.child.as_ref().expect("server is running").id(), libc::SIGKILL);
    }

    /// Sends SIGTERM through a shared reference: for stopping the server while other
    /// threads still use it. Call `wait_for_exit` afterwards.
    pub fn send_sigterm(&self) {
        send_signal(self.child.as_ref().expect("server is running").id(), libc::SIGTERM);
    }

    /// SIGTERM and wait for the exit (panics if it takes longer than 30 s).
    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.wait_for_exit()
    }

    /// Waits for the server to exit (panics, killing it, if it takes longer than 30 s).
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is running");
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within {STOP_DEADLINE:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data dir and ports (stopping it with
    /// SIGTERM first if it is still running).
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take_if(|c| c.try_wait().expect("try_wait").is_some()) {
            c.wait().expect("reap");
        }
        if self.is_running() {
            let status = self.sigterm_and_wait();
            assert!(status.success(), "server exited with {status} on SIGTERM\n{}", self.log());
        }
        self.child = None;
        self.spawn_and_wait();
    }

    /// What the server wrote to stderr (where the node logs), over all its runs.
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(self.root.path().join("stderr.log")).unwrap_or_default()
    }

    /// Everything the server printed, over all its runs.
    pub fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.root.path().join(name)).unwrap_or_default();
        format!(
            "--- server stdout ---\n{}--- server stderr ---\n{}--- end of server log ---",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    fn spawn_and_wait(&mut self) {
        let mut cmd = match self.target {
            Target::Node => self.node_command(),
            Target::Redis => self.redis_command(),
        };
        let append = |name: &str| -> File {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.root.path().join(name))
                .expect("open log file")
        };
        cmd.stdin(Stdio::null()).stdout(append("stdout.log")).stderr(append("stderr.log"));
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        self.child = Some(child);
        self.wait_ready(&format!("{cmd:?}"));
    }

    fn node_command(&self) -> Command {
        let mut cmd = match &self.opts.cgroup_procs {
            // The shell joins the cgroup and becomes the node (same pid), so the node
            // reads its limit at start and every byte it touches is charged there.
            Some(procs) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg("echo $$ > \"$0\" && exec \"$@\"").arg(procs).arg(node_binary());
                sh
            }
            None => Command::new(node_binary()),
        };
        let client_addr = match &self.opts.client_host {
            Some(host) => format!("{host}:{}", self.client_port),
            None => self.client_addr().to_string(),
        };
        cmd.arg("--dev")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--client-addr")
            .arg(client_addr)
            .arg("--admin-addr")
            .arg(self.admin_addr().to_string());
        let o = &self.opts;
        if let Some(p) = &o.client_password {
            cmd.arg("--client-password").arg(p);
        }
        if o.unix_socket {
            cmd.arg("--unix-socket").arg(self.unix_socket_path());
        }
        if o.allow_flushdb {
            cmd.arg("--allow-flushdb");
        }
        if let Some(n) = o.max_clients {
            cmd.arg("--limits-max-clients").arg(n.to_string());
        }
        match &o.fsync {
            None => {}
            Some(Fsync::Always) => {
                cmd.arg("--store-fsync").arg("always");
            }
            Some(Fsync::Interval(d)) => {
                cmd.arg("--store-fsync").arg("interval");
                cmd.arg("--store-fsync-interval").arg(format!("{}ms", d.as_millis()));
            }
        }
        cmd.args(&o.args);
        clear_opencluster_env(&mut cmd);
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The gossip address the node advertises, from its own entry in `/v1/members`.
    pub fn gossip_addr(&self) -> SocketAddr {
        let members = self.admin_json("/v1/members");
        let own = members
            .as_array()
            .and_then(|list| list.iter().find(|m| m["self"] == true))
            .unwrap_or_else(|| panic!("no self entry in /v1/members: {members}"));
        own["gossip_addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("membership is off or gossip_addr unreadable: {own}"))
    }

    fn redis_command(&self) -> Command {
        let mut cmd = Command::new("redis-server");
        // An AOF (not the brief's `--appendonly no`) so that the restart and kill -9
        // tests check their expectations against Redis too. One database, as the node has.
        cmd.args(["--port", &self.client_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--databases", "1"])
            .arg("--dir")
            .arg(self.data_dir());
        let o = &self.opts;
        let appendfsync = match o.fsync {
            Some(Fsync::Always) => "always",
            _ => "everysec",
        };
        cmd.args(["--appendfsync", appendfsync]);
        if let Some(p) = &o.client_password {
            cmd.args(["--requirepass", p]);
        }
        if o.unix_socket {
            cmd.arg("--unixsocket").arg(self.unix_socket_path()).args(["--unixsocketperm", "660"]);
        }
        if let Some(n) = o.max_clients {
            cmd.args(["--maxclients", &n.to_string()]);
        }
        cmd
    }

    fn wait_ready(&mut self, what: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                self.child = None;
                panic!("server exited with {status} before it was ready: {what}\n{}", self.log());
            }
            if self.is_ready() {
                return;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("server not ready within {START_DEADLINE:?}: {what}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn is_ready(&self) -> bool {
        if self.target == Target::Node {
            match http::get(self.admin_addr(), "/v1/health") {
                Ok((200, _)) => {}
                _ => return false,
            }
        }
        // With a password the node answers PING with NOAUTH: that too shows it serves RESP.
        let Ok(mut c) = RawConn::connect(self.client_addr()) else { return false };
        match c.try_cmd(&["PING"]) {
            Ok(Reply::Simple(s)) => s == "PONG",
            Ok(Reply::Error(e)) => e.starts_with("NOAUTH"),
            _ => false,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log(), 20_000));
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The node binary: `OPENCLUSTER_NODE_BIN`, else `opencluster-node` in the cargo
/// profile dir of this test executable (`target/<profile>/deps/<test>` ->
/// `target/<profile>/opencluster-node`).
pub fn node_binary() -> PathBuf {
    workspace_binary("opencluster-node", "OPENCLUSTER_NODE_BIN")
}

/// The `opencluster-pki` binary, found like [`node_binary`] (env `OPENCLUSTER_PKI_BIN`).
pub fn pki_binary() -> PathBuf {
    workspace_binary("opencluster-pki", "OPENCLUSTER_PKI_BIN")
}

fn workspace_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test executable has a parent dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    if !bin.exists() {
        panic!(
            "{name} not found at {}: run `cargo build --workspace` first (or set {env}, or \
             OPENCLUSTER_TEST_TARGET=redis)",
            bin.display()
        );
    }
    bin
}

/// A `Command` for the node binary with a clean `OPENCLUSTER_*` environment, for tests
/// that run it with their own arguments (config errors, the `health` subcommand).
pub fn node_command() -> Command {
    let mut cmd = Command::new(node_binary());
    clear_opencluster_env(&mut cmd);
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs `cmd` and waits up to `deadline` for it to exit on its own. Returns the output,
/// or `None` (after killing it) if it was still running: e.g. a node that should have
/// refused to start.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Option<Output> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdout(File::create(&out_path).expect("create")).stderr(File::create(&err_path).expect("create"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status = None;
    wait_until(deadline, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let read = |p: &PathBuf| fs::read(p).unwrap_or_default();
    match status {
        Some(status) => Some(Output { status, stdout: read(&out_path), stderr: read(&err_path) }),
        None => {
            let _ = child.kill(); // it may have exited just now; either way it is reaped below
            child.wait().expect("reap");
            eprintln!(
                "process still running after {deadline:?}; its output:\n{}{}",
                String::from_utf8_lossy(&read(&out_path)),
                String::from_utf8_lossy(&read(&err_path))
            );
            None
        }
    }
}

/// Clears the `OPENCLUSTER_*` environment, then gives the node gossip and peer RPC sockets
/// on free loopback ports (`127.0.0.1:0`) so that nodes of parallel tests never share the
/// default ports 7946 and 7947; a test's own flags or environment override them.
fn clear_opencluster_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("OPENCLUSTER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("OPENCLUSTER_GOSSIP_ADDR", "127.0.0.1:0");
    cmd.env("OPENCLUSTER_RPC_ADDR", "127.0.0.1:0");
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// A port nobody listens on right now (bind `127.0.0.1:0`, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local_addr").port()
}

/// Two distinct free ports (both held while choosing, so they differ).
pub fn free_port_pair() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    (a.local_addr().expect("addr").port(), b.local_addr().expect("addr").port())
}

/// Sends `signal` to `pid`, a process the test started (directly or through the demo)
/// and that has not been reaped; panics if kill(2) fails.
#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers and has no memory effects; the pid is a child
    // (of the test or of a demo it runs) not reaped yet, so it cannot name another process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({signal}) failed: {}", std::io::Error::last_os_error());
}
