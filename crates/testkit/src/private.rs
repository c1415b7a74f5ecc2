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
    /// The user and group it runs as, when not ours (Postgres refuses root).
    user: Option<(u32, u32)>,
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
        if let Some((uid, gid)) = self.user {
            std::os::unix::process::CommandExt::uid(&mut command, uid);
            std::os::unix::process::CommandExt::gid(&mut command, gid);
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
            user: None,
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
            user: None,
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

/// Where the Postgres 15 server binaries are.
const POSTGRES_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The server itself.
const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

/// A private Postgres cluster that takes only TLS connections from
/// 127.0.0.1, with a password (`scram-sha-256`) for user `postgres`; run as
/// the system user `postgres`, deleted on drop.
pub struct PrivatePostgres {
    server: Server,
    dir: PathBuf,
}

impl PrivatePostgres {
    /// Initializes a cluster whose superuser `postgres` has `password`,
    /// serving `certificate` and `key` (PEM), and starts it on a free port.
    ///
    /// # Panics
    /// When the Postgres binaries or the `postgres` user are missing, or
    /// the cluster does not start.
    #[must_use]
    pub fn start_tls(certificate: &str, key: &str, password: &str) -> Self {
        let (uid, gid) = postgres_user();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("natter-pg-{}", uuid::Uuid::new_v4()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let owned = |path: &std::path::Path| {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        };
        owned(&dir);
        let pwfile = dir.join("password");
        std::fs::write(&pwfile, password).expect("writing the password file");
        owned(&pwfile);
        let mut initdb = Command::new(format!("{POSTGRES_BIN}/initdb"));
        std::os::unix::process::CommandExt::uid(&mut initdb, uid);
        std::os::unix::process::CommandExt::gid(&mut initdb, gid);
        let status = initdb
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(status.success(), "initdb failed");
        for (name, contents) in [("server.crt", certificate), ("server.key", key)] {
            let path = data.join(name);
            std::fs::write(&path, contents).expect("writing a certificate");
            owned(&path);
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("writing pg_hba.conf");
        let mut server = Server {
            program: POSTGRES,
            args: [
                "-D",
                &data.display().to_string(),
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", dir.display()),
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=30",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            user: Some((uid, gid)),
            dir: Some(dir.clone()),
            env: Vec::new(),
            port,
            child: None,
        };
        server.start();
        Self { server, dir }
    }

    /// The port it listens on, at 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.server.port
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGQUIT: the postmaster takes its backends down with it (SIGKILL
        // would leave them behind).
        if let Some(child) = &self.server.child {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
        }
        self.server.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The uid and gid of the system user `postgres`.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a user postgres")
    };
    (id("-u"), id("-g"))
}
