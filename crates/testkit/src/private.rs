//! Dependencies of a test's own, for tests that must kill or age one: a
//! `nats-server -js` or a `redis-server` on a free loopback port, which
//! the test stops (SIGKILL, as a crash) and starts again on the same port
//! (and, for NATS, the same store directory, so streams survive). The
//! machine's shared servers are never touched.

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
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.program);
        let child = Command::new(self.program)
            .args(&self.args)
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

/// A private `nats-server` with JetStream and a store directory of its
/// own (deleted on drop).
pub struct PrivateNats {
    server: Server,
    store: PathBuf,
}

impl PrivateNats {
    /// Starts one on a free port.
    ///
    /// # Panics
    /// When `nats-server` is not installed or does not start.
    #[must_use]
    pub fn start() -> Self {
        let port = free_port();
        let store = std::env::temp_dir().join(format!("natter-nats-{}", uuid::Uuid::new_v4()));
        let mut server = Server {
            program: "nats-server",
            args: vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-sd".into(),
                store.display().to_string(),
            ],
            port,
            child: None,
        };
        server.start();
        Self { server, store }
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
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A private `redis-server`, in memory only.
pub struct PrivateRedis {
    server: Server,
}

impl PrivateRedis {
    /// Starts one on a free port.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start.
    #[must_use]
    pub fn start() -> Self {
        let port = free_port();
        let mut server = Server {
            program: "redis-server",
            args: vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
            ],
            port,
            child: None,
        };
        server.start();
        Self { server }
    }

    /// `redis://127.0.0.1:<port>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.server.port)
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

/// A private three-node Redis Cluster (no replicas), in memory only, each
/// node with its own directory for its `nodes.conf` (deleted on drop).
pub struct PrivateRedisCluster {
    nodes: Vec<Server>,
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
        let dir =
            std::env::temp_dir().join(format!("natter-redis-cluster-{}", uuid::Uuid::new_v4()));
        let mut nodes = Vec::new();
        for n in 0..3 {
            let node_dir = dir.join(n.to_string());
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            let port = free_port();
            let mut server = Server {
                program: "redis-server",
                args: vec![
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
                ],
                port,
                child: None,
            };
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
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
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
            .map(|n| format!("127.0.0.1:{}", n.port))
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
