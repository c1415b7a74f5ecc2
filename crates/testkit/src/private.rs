//! Dependencies of a test's own, for tests that must kill or age one: a
//! `nats-server -js` or a `redis-server` on a free loopback port, which
//! the test stops (SIGKILL, as a crash) and starts again on the same port
//! (and, for NATS, the same store directory, so streams survive). The
//! machine's shared servers are never touched. Either can run with a
//! configuration of the test's own (NATS accounts, TLS certificates).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
///
/// # Panics
/// When the OS has none to give.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One server process that can be killed and started again.
struct Server {
    program: &'static str,
    args: Vec<String>,
    /// Its working directory, where relative paths in its configuration
    /// point (the test's temporary directory).
    dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.program);
        let mut command = Command::new(self.program);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.program));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} never listened on {}",
                self.program,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
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
    fn write_files(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).expect("a temporary directory");
        for (name, contents) in &self.files {
            std::fs::write(dir.join(name), contents).expect("writing a server file");
        }
    }
}

/// A private `nats-server` with JetStream and a directory of its own
/// (configuration, store, log; deleted on drop).
pub struct PrivateNats {
    server: Server,
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
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("natter-nats-{}", uuid::Uuid::new_v4()));
        setup.write_files(&dir);
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{}\n",
            dir.join("store").display(),
            setup.config
        );
        std::fs::write(dir.join("nats.conf"), config).expect("writing nats.conf");
        let mut server = Server {
            program: "nats-server",
            args: vec![
                "-c".into(),
                "nats.conf".into(),
                "-l".into(),
                "nats.log".into(),
            ],
            dir: Some(dir.clone()),
            env: setup.env.clone(),
            port,
            child: None,
        };
        server.start();
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
        format!("nats://127.0.0.1:{}", self.server.port)
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private `redis-server`, in memory only.
pub struct PrivateRedis {
    server: Server,
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
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("natter-redis-{}", uuid::Uuid::new_v4()));
        setup.write_files(&dir);
        let ports: Vec<String> = if tls {
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ]
        } else {
            vec!["--port".into(), port.to_string()]
        };
        let args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .into_iter()
            .map(str::to_owned)
            .chain(ports)
            .chain(setup.config.lines().map(str::to_owned))
            .collect();
        let mut server = Server {
            program: "redis-server",
            args,
            dir: Some(dir.clone()),
            env: setup.env.clone(),
            port,
            child: None,
        };
        server.start();
        Self { server, dir, tls }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` with TLS.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.server.port)
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
