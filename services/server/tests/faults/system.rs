//! natter as an operator runs it, on dependencies of the test's own: a
//! private Postgres cluster, Redis and NATS (one node, or a three-node
//! JetStream cluster with every stream at three replicas), and every
//! service as a real `natter-server` process — auth, two message, two
//! push, two gateways — each on its own port, all in one namespace. Any
//! of them can be killed (SIGKILL), stopped (SIGTERM) and started again;
//! everything is killed when the `System` drops, on panic too.

use natter_testkit::private::{
    PrivateNats, PrivateNatsCluster, PrivatePostgres, PrivateRedis, Process, free_port, http_status,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The HS256 secret every process shares.
const JWT_SECRET: &str = "faults-secret-that-is-long-enough-for-hs256";

/// How long a (re)started process gets to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(60);

/// How many of a process's last log lines a readiness failure shows.
const LOG_TAIL: usize = 30;

/// The natter processes, in the order they start.
pub const SERVICES: [&str; 7] = [
    "auth",
    "message-1",
    "message-2",
    "push-1",
    "push-2",
    "gateway-1",
    "gateway-2",
];

/// One NATS server or a cluster of them.
pub enum Nats {
    One(PrivateNats),
    Cluster(PrivateNatsCluster),
}

/// A dependency the suite takes away.
#[derive(Debug, Clone, Copy)]
pub enum Dependency {
    Nats,
    Postgres,
    Redis,
}

/// The whole deployment.
pub struct System {
    // Declared first so they drop first: natter stops before what it uses.
    natter: Vec<Process>,
    nats: Nats,
    postgres: PrivatePostgres,
    redis: PrivateRedis,
    logs: PathBuf,
    /// Times a natter process exited on its own and was started again (as
    /// Kubernetes would), e.g. one that found NATS or Postgres gone at
    /// start.
    pub respawns: usize,
}

impl System {
    /// Starts the dependencies (`nats_nodes` 1, or 3 for a cluster whose
    /// streams get three replicas), migrates, starts every service and
    /// waits until each is ready.
    pub async fn start(nats_nodes: usize) -> Self {
        let logs = std::env::temp_dir().join(format!("natter-faults-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&logs).expect("log dir");
        println!("faults: process logs in {}", logs.display());
        let (nats, postgres, redis) = tokio::task::block_in_place(|| {
            let nats = if nats_nodes > 1 {
                Nats::Cluster(PrivateNatsCluster::start(nats_nodes))
            } else {
                Nats::One(PrivateNats::start())
            };
            (nats, PrivatePostgres::start(), PrivateRedis::start())
        });
        let nats_url = match &nats {
            Nats::One(one) => one.url(),
            Nats::Cluster(cluster) => cluster.urls(),
        };
        let env = [
            ("NATTER_DATABASE_URL", postgres.url("natter")),
            ("NATTER_DATABASE_POOL", "4".into()),
            ("NATTER_NATS_URL", nats_url),
            ("NATTER_REDIS_URL", redis.url()),
            ("NATTER_NAMESPACE", "faults".into()),
            ("NATTER_JWT_SECRET", JWT_SECRET.into()),
            ("NATTER_BUS_KEY", natter_testkit::BUS_KEY.into()),
            ("NATTER_STREAM_REPLICAS", nats_nodes.to_string()),
            ("NATTER_EVENTS_MAX_BYTES", (64_u64 << 20).to_string()),
            ("NATTER_HASH_WAIT_MS", "60000".into()),
            ("RUST_LOG", "info".into()),
        ];
        let migrate = Command::new(env!("CARGO_BIN_EXE_natter-server"))
            .arg("migrate")
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .output()
            .expect("natter-server migrate runs");
        assert!(
            migrate.status.success(),
            "migrate: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        let natter = SERVICES
            .iter()
            .map(|name| {
                let (target, addr_var) = match name.split('-').next() {
                    Some("auth") => ("auth", "NATTER_AUTH_ADDR"),
                    Some("message") => ("message", "NATTER_MESSAGE_ADDR"),
                    Some("push") => ("push", "NATTER_PUSH_ADDR"),
                    _ => ("gateway", "NATTER_GATEWAY_ADDR"),
                };
                let port = free_port();
                let mut process = Process::new(*name, env!("CARGO_BIN_EXE_natter-server"), port)
                    .args([target])
                    .env(addr_var, format!("127.0.0.1:{port}"))
                    .log(logs.join(format!("{name}.log")));
                if target == "gateway" {
                    process = process.env("NATTER_GATEWAY_ID", *name);
                }
                for (key, value) in &env {
                    process = process.env(*key, value.clone());
                }
                process
            })
            .collect();
        let mut system = Self {
            natter,
            nats,
            postgres,
            redis,
            logs,
            respawns: 0,
        };
        for name in SERVICES {
            system.process(name).spawn();
        }
        for name in SERVICES {
            system.wait_ready(name).await;
        }
        system
    }

    /// The gateways' WebSocket URLs.
    pub fn gateways(&self) -> Vec<String> {
        self.natter
            .iter()
            .filter(|p| p.name().starts_with("gateway"))
            .map(|p| format!("ws://127.0.0.1:{}/ws/v1/message", p.port()))
            .collect()
    }

    /// Auth's base URL.
    pub fn auth_url(&self) -> String {
        let auth = self.natter.iter().find(|p| p.name() == "auth");
        format!("http://127.0.0.1:{}", auth.expect("auth").port())
    }

    fn process(&mut self, name: &str) -> &mut Process {
        self.natter
            .iter_mut()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// SIGKILLs one natter process.
    pub fn kill(&mut self, name: &str) {
        self.process(name).kill();
    }

    /// SIGTERMs one natter process and waits until it has exited (it is
    /// killed after 30 s): how long its shutdown took.
    pub fn terminate(&mut self, name: &str) -> Duration {
        let process = self.process(name);
        tokio::task::block_in_place(|| process.stop_with("-TERM", Duration::from_secs(30)))
    }

    /// Starts a stopped natter process again and waits until it is ready:
    /// the moment it was.
    pub async fn restart(&mut self, name: &str) -> Instant {
        self.process(name).spawn();
        self.wait_ready(name).await;
        Instant::now()
    }

    /// Waits until `name` answers `/readyz` with 200, starting it again
    /// whenever it exits.
    ///
    /// # Panics
    /// When it is not ready within a minute, with the end of its log.
    pub async fn wait_ready(&mut self, name: &str) {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let status = self.readyz(name).await;
            if status == Some(200) {
                return;
            }
            if !self.process(name).is_running() {
                self.respawns += 1;
                println!("faults: {name} exited; starting it again");
                self.process(name).spawn();
            }
            if Instant::now() >= deadline {
                let log = self.logs.join(format!("{name}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                panic!(
                    "{name} not ready within {READY_WAIT:?}, last /readyz {status:?}; the end of {}:\n{}",
                    log.display(),
                    lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every natter process is ready.
    pub async fn wait_all_ready(&mut self) {
        for name in SERVICES {
            self.wait_ready(name).await;
        }
    }

    /// Whether `name`'s `/readyz` says 503 within `within` (it may take a
    /// probe or two to notice).
    pub async fn turns_unready(&mut self, name: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.readyz(name).await == Some(503) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `name`'s `/readyz` status, if it answers.
    async fn readyz(&mut self, name: &str) -> Option<u16> {
        let port = self.process(name).port();
        tokio::task::spawn_blocking(move || http_status(port, "/readyz"))
            .await
            .expect("probe")
    }

    /// SIGKILLs a dependency (on a cluster: node `node`).
    pub fn kill_dependency(&mut self, dependency: Dependency, node: usize) {
        match dependency {
            Dependency::Nats => match &mut self.nats {
                Nats::One(one) => one.kill(),
                Nats::Cluster(cluster) => cluster.kill(node),
            },
            Dependency::Postgres => self.postgres.kill(),
            Dependency::Redis => self.redis.kill(),
        }
    }

    /// Starts a killed dependency again on its port and store: the moment
    /// it listens (a cluster: is healthy) again.
    pub fn restart_dependency(&mut self, dependency: Dependency, node: usize) -> Instant {
        tokio::task::block_in_place(|| match dependency {
            Dependency::Nats => match &mut self.nats {
                Nats::One(one) => one.restart(),
                Nats::Cluster(cluster) => cluster.restart(node),
            },
            Dependency::Postgres => self.postgres.restart(),
            Dependency::Redis => self.redis.restart(),
        });
        Instant::now()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for process in &mut self.natter {
            process.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}
