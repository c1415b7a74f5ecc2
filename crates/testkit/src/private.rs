//! Dependencies of a test's own, for tests that must kill or age one: a
//! `nats-server -js` (alone or a three-node cluster), a `redis-server` or
//! a Postgres cluster on free loopback ports, which the test stops
//! (SIGKILL, as a crash) and starts again on the same port (and, for NATS
//! and Postgres, the same store, so data survives). [`Process`] is the
//! handle beneath them, also for a test's own `natter-server` processes.
//! Every process is killed when its handle drops, on panic too; a
//! server's directory is deleted then, unless the test is failing, when
//! it stays for its log. The machine's shared servers are never touched.
//! Each can run with a configuration of the test's own (NATS accounts,
//! TLS certificates).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a started process gets to listen on its port.
const START_WAIT: Duration = Duration::from_secs(20);

/// A TCP port on 127.0.0.1 that is free now, picked at random below the
/// OS's ephemeral range when there is room there, and never handed out
/// twice by this test process.
///
/// A port that `bind(0)` hands out comes from the ephemeral range, where
/// any other test's `bind(0)` or outgoing connection can take it between
/// this pick and the bind of the process it is meant for: a dependency
/// that then finds its port taken exits, and a check that only connects
/// would take the squatter for it. Below that range only another test
/// process's picks can clash, at random over some twenty thousand ports;
/// the private servers start again on a new port when one does.
///
/// # Panics
/// When the OS has no port to give.
#[must_use]
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((low, high)) = below_ephemeral() {
        let span = u128::from(high - low);
        for _ in 0..1_000 {
            let offset = u16::try_from(uuid::Uuid::new_v4().as_u128() % span).unwrap_or(0);
            let port = low + offset;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The ports from 10,000 (clear of the well-known ports of Postgres,
/// Redis and NATS) up to the start of the ephemeral range, if that range
/// is Linux's and leaves a thousand or more below it.
fn below_ephemeral() -> Option<(u16, u16)> {
    const LOW: u16 = 10_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let start: u16 = range.split_whitespace().next()?.parse().ok()?;
    (start >= LOW + 1_000).then_some((LOW, start))
}

/// Whether process `pid` holds a socket listening on TCP `port`, by
/// `/proc` (Linux): the listening sockets on that port, and the process's
/// file descriptors. Where those cannot be read (a process of another
/// user, without `CAP_SYS_PTRACE`), a listener on the port owned by the
/// process's user counts. None where `/proc/net/tcp` is missing.
fn holds_listener(pid: u32, port: u16) -> Option<bool> {
    let listeners = listeners_on(port)?;
    if listeners.is_empty() {
        return Some(false);
    }
    let fds: Option<Vec<PathBuf>> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|fds| fds.flatten().map(|fd| fd.path()).collect());
    let targets: Vec<PathBuf> = fds
        .iter()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd).ok())
        .collect();
    // Unreadable: the directory, or every link in it (an exited process's
    // directory is empty, and readable).
    if targets.is_empty() && fds.is_none_or(|fds| !fds.is_empty()) {
        let uid = uid_of(pid)?;
        return Some(listeners.iter().any(|l| l.uid == uid));
    }
    let sockets: Vec<String> = listeners
        .iter()
        .map(|l| format!("socket:[{}]", l.inode))
        .collect();
    Some(
        targets
            .iter()
            .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str())),
    )
}

/// A socket listening on a port, from `/proc/net/tcp`.
struct Listener {
    uid: u32,
    inode: u64,
}

/// The sockets listening on TCP `port` (IPv4 and IPv6); none where
/// `/proc/net/tcp` is missing.
fn listeners_on(port: u16) -> Option<Vec<Listener>> {
    const LISTEN: &str = "0A";
    let mut listeners = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&LISTEN), Some(uid), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(7), fields.get(9))
            else {
                continue;
            };
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok())
                == Some(port);
            if let (true, Ok(uid), Ok(inode)) = (on_port, uid.parse(), inode.parse()) {
                listeners.push(Listener { uid, inode });
            }
        }
    }
    readable.then_some(listeners)
}

/// The real user id of process `pid`, from `/proc/<pid>/status`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Starts the process `make` builds for a free port, on a new port while
/// the one picked turns out taken (its process exits while starting).
///
/// # Panics
/// When it exits while starting three times.
fn start_on_free_port(what: &str, mut make: impl FnMut(u16) -> Process) -> Process {
    for _ in 0..3 {
        let mut server = make(free_port());
        if server.try_start() {
            return server;
        }
    }
    panic!(
        "{what} exited while starting three times, on three ports (see its log in the test's directory)"
    );
}

/// The status of `GET path` on `127.0.0.1:port`, if it answers within
/// 5 s (a readiness check waits up to 2 s on each dependency): enough
/// HTTP for a health probe without an async runtime.
#[must_use]
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let wait = Duration::from_secs(5);
    let connect = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), connect).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream.set_write_timeout(Some(wait)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// One child process, started again with the same command as often as a
/// test likes: SIGKILL for a crash, SIGTERM for an orderly stop. Its
/// output goes to a log file when one is given (a failing test's best
/// witness), else nowhere.
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    user: Option<(u32, u32)>,
    /// Its working directory, where relative paths in its configuration
    /// point.
    dir: Option<PathBuf>,
    port: u16,
    log: Option<PathBuf>,
    child: Option<Child>,
}

impl Process {
    /// A process named `name` (for messages) that runs `program` and
    /// listens on `port` once it is up. Nothing runs until [`Self::spawn`]
    /// or [`Self::start`].
    #[must_use]
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, port: u16) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            user: None,
            dir: None,
            port,
            log: None,
            child: None,
        }
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs it as this user and group (a root test starting Postgres).
    #[must_use]
    pub fn user(mut self, user: Option<(u32, u32)>) -> Self {
        self.user = user;
        self
    }

    /// Runs it in `dir`.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Appends its stdout and stderr to `path`.
    #[must_use]
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its output goes, if anywhere.
    #[must_use]
    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Starts it without waiting for anything.
    ///
    /// # Panics
    /// When it is already running or cannot be started.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let output = || match &self.log {
            Some(path) => File::options()
                .create(true)
                .append(true)
                .open(path)
                .map_or_else(|_| Stdio::null(), Stdio::from),
            None => Stdio::null(),
        };
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{} ({}) starts: {e}", self.name, self.program.display()));
        self.child = Some(child);
    }

    /// Starts it and waits until it listens on its port.
    ///
    /// # Panics
    /// When it exits or does not listen within 20 s.
    pub fn start(&mut self) {
        assert!(
            self.try_start(),
            "{} exited while starting (port {})",
            self.name,
            self.port
        );
    }

    /// Starts it and waits until it listens on its port: false when it
    /// exits first (e.g. because another process has the port).
    ///
    /// # Panics
    /// When it neither listens nor exits within 20 s.
    pub fn try_start(&mut self) -> bool {
        self.spawn();
        let deadline = Instant::now() + START_WAIT;
        loop {
            if self.listens() {
                return true;
            }
            if !self.is_running() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "{} never listened on {}",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it listens on its port itself: another process that took
    /// the port would answer a mere connect.
    fn listens(&self) -> bool {
        let Some(pid) = self.pid() else {
            return false;
        };
        holds_listener(pid, self.port)
            .unwrap_or_else(|| TcpStream::connect(("127.0.0.1", self.port)).is_ok())
    }

    /// Whether it was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !running {
            self.child = None;
        }
        running
    }

    /// Its process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends it `signal` (`-TERM`, `-QUIT`, `-STOP`, …), if it runs.
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Kills it (SIGKILL: no goodbye to anyone) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with `signal` as an orchestrator does and waits for it to
    /// exit, killing it after `grace`: how long it took.
    pub fn stop_with(&mut self, signal: &str, grace: Duration) -> Duration {
        let started = Instant::now();
        self.signal(signal);
        while self.is_running() {
            if started.elapsed() > grace {
                self.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        started.elapsed()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

/// A fresh directory under the system's temp dir, `natter-<what>-<uuid>`.
fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("natter-{what}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{} created: {e}", dir.display()));
    dir
}

/// Deletes a private server's directory, but keeps it, with its log,
/// when a test is failing: that log is what says why.
fn remove_unless_panicking(dir: &Path) {
    if std::thread::panicking() {
        eprintln!("kept {} for the failing test", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// What a private server runs with beyond its defaults.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// Configuration added to the defaults: for NATS, lines of its
    /// configuration file (an `include`, a `tls` block); for Redis, extra
    /// command-line arguments, one per line.
    pub config: String,
    /// Files written beside it first (an included file, certificates),
    /// by name; relative paths in `config` find them.
    pub files: Vec<(String, Vec<u8>)>,
    /// Its environment (passwords a NATS configuration reads).
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// A fresh directory holding [`Self::files`].
    fn directory(&self, what: &str) -> PathBuf {
        let dir = scratch_dir(what);
        for (name, contents) in &self.files {
            std::fs::write(dir.join(name), contents).expect("writing a server file");
        }
        dir
    }

    /// `process` with this setup's environment.
    fn environment(&self, mut process: Process) -> Process {
        for (key, value) in &self.env {
            process = process.env(key.clone(), value.clone());
        }
        process
    }
}

/// A private `nats-server` with JetStream and a directory of its own
/// (configuration, store, log; deleted on drop).
pub struct PrivateNats {
    server: Process,
    dir: PathBuf,
}

impl PrivateNats {
    /// Starts one on a free port.
    ///
    /// # Panics
    /// When `nats-server` is not installed or does not start.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&Setup::default())
    }

    /// Starts one on a free port with `setup.config` appended to its
    /// configuration file.
    ///
    /// # Panics
    /// When `nats-server` is not installed or does not start.
    #[must_use]
    pub fn start_with(setup: &Setup) -> Self {
        let dir = setup.directory("nats");
        let server = start_on_free_port("nats-server", |port| {
            let config = format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{}\n",
                dir.join("store").display(),
                setup.config
            );
            std::fs::write(dir.join("nats.conf"), config).expect("writing nats.conf");
            setup.environment(
                Process::new("nats-server", "nats-server", port)
                    .args(["-c", "nats.conf", "-l", "nats.log"])
                    .dir(&dir),
            )
        });
        Self { server, dir }
    }

    /// What it has logged so far (permission violations, TLS errors).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.server.port())
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.server.start();
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.server.kill();
        remove_unless_panicking(&self.dir);
    }
}

/// A private JetStream cluster on loopback: each node with its own client,
/// cluster and monitoring port and its own store directory (all deleted on
/// drop), so one can be killed and rejoin with what it stored.
pub struct PrivateNatsCluster {
    nodes: Vec<Process>,
    monitors: Vec<u16>,
    dir: PathBuf,
}

impl PrivateNatsCluster {
    /// Starts `size` nodes and waits until JetStream is healthy on each.
    ///
    /// # Panics
    /// When `nats-server` is not installed or the cluster does not form.
    #[must_use]
    pub fn start(size: usize) -> Self {
        // A port picked free can be taken by another test before the node
        // binds it: a node that exits while starting means new ports.
        for _ in 0..2 {
            if let Some(cluster) = Self::try_start(size) {
                return cluster;
            }
        }
        Self::try_start(size).expect("a nats-server node exited while starting, three times")
    }

    /// [`Self::start`] once: none when a node exits while starting.
    fn try_start(size: usize) -> Option<Self> {
        let dir = scratch_dir("nats-cluster");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(size);
        let mut monitors = Vec::with_capacity(size);
        for (i, cluster_port) in cluster_ports.iter().enumerate() {
            let port = free_port();
            let monitor = free_port();
            let name = format!("n{i}");
            let node = Process::new(format!("nats-server {name}"), "nats-server", port)
                .args([
                    "-js".into(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "-m".into(),
                    monitor.to_string(),
                    "-n".into(),
                    name.clone(),
                    "-sd".into(),
                    dir.join(&name).display().to_string(),
                    "--cluster_name".into(),
                    "natter".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.clone(),
                ])
                .log(dir.join(format!("{name}.log")));
            nodes.push(node);
            monitors.push(monitor);
        }
        let mut cluster = Self {
            nodes,
            monitors,
            dir,
        };
        if !cluster.nodes.iter_mut().all(Process::try_start) {
            return None;
        }
        cluster.wait_healthy();
        Some(cluster)
    }

    /// Every node's URL, comma-separated (as `NATTER_NATS_URL` takes them).
    #[must_use]
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store, and waits until the
    /// cluster's JetStream is healthy again.
    ///
    /// # Panics
    /// When it does not rejoin within 30 s.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start();
        self.wait_healthy();
    }

    /// Waits until every running node says JetStream is healthy (it has a
    /// meta leader and is current).
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (node, monitor) in self.nodes.iter().zip(&self.monitors) {
            while http_status(*monitor, "/healthz") != Some(200) {
                assert!(
                    Instant::now() < deadline,
                    "{} never became healthy",
                    node.name()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for PrivateNatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        remove_unless_panicking(&self.dir);
    }
}

/// A private `redis-server`, in memory only.
pub struct PrivateRedis {
    server: Process,
    dir: PathBuf,
    tls: bool,
}

impl PrivateRedis {
    /// Starts one on a free port.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&Setup::default())
    }

    /// Starts one on a free port with the arguments of `setup.config`
    /// added.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start.
    #[must_use]
    pub fn start_with(setup: &Setup) -> Self {
        Self::spawn(setup, false)
    }

    /// Starts one that speaks only TLS on a free port (`rediss://`), with
    /// the arguments of `setup.config` (its `--tls-cert-file` and so on).
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start.
    #[must_use]
    pub fn start_tls(setup: &Setup) -> Self {
        Self::spawn(setup, true)
    }

    fn spawn(setup: &Setup, tls: bool) -> Self {
        let dir = setup.directory("redis");
        let server = start_on_free_port("redis-server", |port| {
            let ports = if tls {
                [
                    "--port".to_owned(),
                    "0".to_owned(),
                    "--tls-port".to_owned(),
                    port.to_string(),
                ]
                .to_vec()
            } else {
                ["--port".to_owned(), port.to_string()].to_vec()
            };
            setup.environment(
                Process::new("redis-server", "redis-server", port)
                    .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .args(["--logfile", "redis.log"])
                    .args(ports)
                    .args(setup.config.lines())
                    .dir(&dir),
            )
        });
        Self { server, dir, tls }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` with TLS.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.server.port())
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.server.start();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.server.kill();
        remove_unless_panicking(&self.dir);
    }
}

/// A private Postgres cluster (`initdb` into a temp dir, then `postgres`
/// on a free loopback port), run as the `postgres` user when the test runs
/// as root (Postgres refuses root). Killing it SIGKILLs the postmaster, as
/// a crashed node; it restarts on the same port and data, with crash
/// recovery.
pub struct PrivatePostgres {
    server: Process,
    dir: PathBuf,
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, user `postgres`) and
    /// starts it.
    ///
    /// # Panics
    /// When Postgres is not installed (`/usr/lib/postgresql/<v>/bin` or
    /// `pg_config --bindir`) or does not start.
    #[must_use]
    pub fn start() -> Self {
        Self::create(None)
    }

    /// Creates a cluster that takes only TLS connections from 127.0.0.1,
    /// serving `certificate` and `key` (PEM), whose user `postgres` needs
    /// `password` (`scram-sha-256`), and starts it.
    ///
    /// # Panics
    /// As [`Self::start`].
    #[must_use]
    pub fn start_tls(certificate: &str, key: &str, password: &str) -> Self {
        Self::create(Some(Tls {
            certificate,
            key,
            password,
        }))
    }

    fn create(tls: Option<Tls<'_>>) -> Self {
        let bin = postgres_bin();
        let user = postgres_user();
        let dir = scratch_dir("postgres");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the data dir");
        }
        let owned = |path: &Path| {
            if let Some((uid, gid)) = user {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        };
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
        if let Some(tls) = &tls {
            let pwfile = dir.join("password");
            std::fs::write(&pwfile, tls.password).expect("writing the password file");
            owned(&pwfile);
            initdb
                .arg("--auth-host=scram-sha-256")
                .arg(format!("--pwfile={}", pwfile.display()));
        }
        initdb
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let status = initdb.status().expect("initdb runs");
        assert!(status.success(), "initdb failed: {status}");
        let mut settings = vec![
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "full_page_writes=off",
        ];
        if let Some(tls) = &tls {
            for (name, contents) in [("server.crt", tls.certificate), ("server.key", tls.key)] {
                let path = data.join(name);
                std::fs::write(&path, contents).expect("writing a certificate");
                owned(&path);
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("chmod");
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("writing pg_hba.conf");
            settings.extend(["ssl=on", "max_connections=30"]);
        }
        let server = start_on_free_port("postgres", |port| {
            Process::new("postgres", bin.join("postgres"), port)
                .args([
                    "-D".into(),
                    data.display().to_string(),
                    "-p".into(),
                    port.to_string(),
                    "-k".into(),
                    dir.display().to_string(),
                ])
                .args(settings.iter().flat_map(|s| ["-c", s]))
                .user(user)
                .log(dir.join("postgres.log"))
        });
        Self { server, dir }
    }

    /// The port it listens on, at 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    #[must_use]
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}",
            self.server.port()
        )
    }

    /// SIGKILLs the postmaster. Its backends notice and exit on their own.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Starts it again on the same port and data (crash recovery), trying
    /// again while the killed one's backends still hold its shared memory.
    ///
    /// # Panics
    /// When it does not start within 20 s.
    pub fn restart(&mut self) {
        let deadline = Instant::now() + START_WAIT;
        while !self.server.try_start() {
            assert!(Instant::now() < deadline, "postgres did not start again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends along.
        self.server.stop_with("-QUIT", Duration::from_secs(5));
        remove_unless_panicking(&self.dir);
    }
}

/// What a TLS-only private Postgres serves and asks for.
struct Tls<'a> {
    certificate: &'a str,
    key: &'a str,
    password: &'a str,
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else `pg_config
/// --bindir`.
fn postgres_bin() -> PathBuf {
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max();
    if let Some((_, bin)) = installed {
        return bin;
    }
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("Postgres is installed (pg_config)");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The `postgres` user's uid and gid when we run as root, else none (we
/// run Postgres as ourselves).
fn postgres_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let output = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    if id(&["-u"])? != 0 {
        return None;
    }
    Some((id(&["-u", "postgres"])?, id(&["-g", "postgres"])?))
}

/// A private three-node Redis Cluster (no replicas), in memory only, each
/// node with its own directory for its `nodes.conf` (deleted on drop).
pub struct PrivateRedisCluster {
    nodes: Vec<Process>,
    dir: PathBuf,
}

impl PrivateRedisCluster {
    /// Starts three `redis-server --cluster-enabled yes` on free ports and
    /// joins them with `redis-cli --cluster create`, waiting until every
    /// node reports the cluster `ok`.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is not installed, or the cluster
    /// does not form.
    #[must_use]
    pub fn start() -> Self {
        let dir = scratch_dir("redis-cluster");
        let mut nodes = Vec::new();
        for n in 0..3 {
            let node_dir = dir.join(n.to_string());
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            let port = free_port();
            let mut server =
                Process::new(format!("redis-server {n}"), "redis-server", port).args([
                    "--port".into(),
                    port.to_string(),
                    "--bind".into(),
                    "127.0.0.1".into(),
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-port".into(),
                    free_port().to_string(),
                    "--dir".into(),
                    node_dir.display().to_string(),
                    "--save".into(),
                    String::new(),
                    "--appendonly".into(),
                    "no".into(),
                ]);
            server.start();
            nodes.push(server);
        }
        let cluster = Self { nodes, dir };
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.addresses())
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port().to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the Redis Cluster never formed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// Every node's `redis://` URL, comma-separated (`NATTER_REDIS_URL`).
    #[must_use]
    pub fn url(&self) -> String {
        self.addresses()
            .iter()
            .map(|a| format!("redis://{a}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        remove_unless_panicking(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_come_from_below_the_ephemeral_range_and_never_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        if let Some((low, high)) = below_ephemeral() {
            for port in ports {
                assert!((low..high).contains(&port), "{port} not in {low}..{high}");
            }
        }
    }

    #[test]
    fn a_listener_is_found_with_its_owner() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id();
        let found = listeners_on(port).expect("/proc/net/tcp");
        assert_eq!(found.len(), 1);
        assert_eq!(Some(found[0].uid), uid_of(me));
        assert_eq!(holds_listener(me, port), Some(true));
        drop(listener);
        assert_eq!(holds_listener(me, port), Some(false));
    }

    #[test]
    fn a_process_is_not_taken_to_listen_where_another_holds_its_port() {
        let squatter = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = squatter.local_addr().expect("addr").port();
        let mut process = Process::new("sleeper", "sleep", port).args(["0.3"]);
        assert!(
            !process.try_start(),
            "the squatter's listener was taken for the process's"
        );
    }

    #[test]
    fn a_process_listening_on_its_port_is_started() {
        let port = free_port();
        let mut process = Process::new("redis-server", "redis-server", port).args([
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
        ]);
        assert!(process.try_start());
        assert_eq!(holds_listener(std::process::id(), port), Some(false));
        process.kill();
    }
}
