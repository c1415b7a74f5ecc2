//! natter's test kit: every integration test starts the real services
//! in-process on port 0 against the machine's real Postgres, NATS and Redis,
//! each test with its own database (cloned from a migrated template), its
//! own namespace for NATS subjects/streams and Redis keys. Tests therefore
//! run in parallel and, when a [`TestApp`] is dropped, leave nothing behind.

mod database;
pub mod logs;
pub mod ws;

use natter_platform::Config;
use natter_protocol::http::{TokenResponse, paths};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

pub use database::TestDatabase;
pub use ws::{Closed, ErrorFrame, WsClient};

/// The password [`TestApp::user`] registers with.
pub const PASSWORD: &str = "correct horse battery";

/// One of natter's services, as a test starts and stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// HTTP auth.
    Auth,
    /// The WebSocket gateway.
    Gateway,
    /// The domain.
    Message,
    /// The fan-out.
    Push,
}

impl Part {
    /// All four, in start order (message before push declares the streams).
    pub const ALL: [Self; 4] = [Self::Auth, Self::Message, Self::Push, Self::Gateway];
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A running natter for one test.
pub struct TestApp {
    /// The configuration the services run with.
    pub config: Config,
    /// A pool on the test's database, for assertions.
    pub pool: PgPool,
    /// An HTTP client.
    pub http: reqwest::Client,
    parts: std::collections::BTreeMap<Part, Running>,
    _db: TestDatabase,
}

/// A fresh configuration for one test: its own database and namespace,
/// every service on 127.0.0.1 port 0, a fixed JWT secret.
///
/// # Panics
/// When the defaults cannot be read (never, with sane environment).
#[must_use]
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::from_env().expect("config defaults");
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.database_url = database_url.to_owned();
    config.namespace = format!("t{}", &id[..16]);
    config.jwt_secret = Some("test-secret-that-is-long-enough-for-hs256".into());
    let local: SocketAddr = ([127, 0, 0, 1], 0).into();
    config.auth_addr = local;
    config.gateway_addr = local;
    config.message_addr = local;
    config.push_addr = local;
    config.gateway_id = Some(format!("gw-{}", &id[..8]));
    // Tests run in parallel against one Postgres (100 connections by
    // default): small pools keep a full run under that.
    config.database_pool = 5;
    config
}

/// Builds one service on `config` and runs it until `stop`: its bound
/// address and task.
///
/// # Panics
/// When the service cannot start: the test cannot go on.
pub async fn start_part(
    part: Part,
    config: &Config,
    stop: CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    match part {
        Part::Auth => {
            let s = natter_auth::Auth::build(config).await.expect("auth starts");
            (s.local_addr().expect("addr"), tokio::spawn(s.run(stop)))
        }
        Part::Gateway => {
            let s = natter_gateway::Gateway::build(config)
                .await
                .expect("gateway starts");
            (s.local_addr().expect("addr"), tokio::spawn(s.run(stop)))
        }
        Part::Message => {
            let s = natter_message::Message::build(config)
                .await
                .expect("message starts");
            (s.local_addr().expect("addr"), tokio::spawn(s.run(stop)))
        }
        Part::Push => {
            let s = natter_push::Push::build(config).await.expect("push starts");
            (s.local_addr().expect("addr"), tokio::spawn(s.run(stop)))
        }
    }
}

impl TestApp {
    /// Starts all four services with the default test configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts all four services after `tweak` adjusts the configuration.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        logs::init();
        let db = TestDatabase::create().await;
        let mut config = test_config(&db.url);
        tweak(&mut config);
        let mut app = Self {
            pool: db.pool().await,
            http: reqwest::Client::new(),
            config,
            parts: std::collections::BTreeMap::new(),
            _db: db,
        };
        for part in Part::ALL {
            app.start(part).await;
        }
        app
    }

    /// Starts (or restarts) one service.
    pub async fn start(&mut self, part: Part) {
        let stop = CancellationToken::new();
        let (addr, task) = start_part(part, &self.config, stop.clone()).await;
        self.parts.insert(part, Running { addr, stop, task });
    }

    /// Stops one service gracefully and waits for it.
    ///
    /// # Panics
    /// When it was not running or did not stop cleanly.
    pub async fn stop_part(&mut self, part: Part) {
        let running = self.parts.remove(&part).expect("service was running");
        running.stop.cancel();
        running
            .task
            .await
            .expect("service task")
            .expect("service stopped cleanly");
    }

    /// Stops every service and waits for each to stop cleanly.
    pub async fn stop(mut self) {
        let parts: Vec<Part> = self.parts.keys().copied().collect();
        for part in parts {
            self.stop_part(part).await;
        }
    }

    /// Where a running service listens (HTTP/WebSocket or health).
    ///
    /// # Panics
    /// When it is not running.
    #[must_use]
    pub fn addr(&self, part: Part) -> SocketAddr {
        self.parts.get(&part).expect("service is running").addr
    }

    /// `http://…` of auth.
    #[must_use]
    pub fn auth_url(&self) -> String {
        format!("http://{}", self.addr(Part::Auth))
    }

    /// `ws://…/ws/v1/message` of the gateway.
    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr(Part::Gateway), paths::WEBSOCKET)
    }

    /// POSTs JSON to an auth path, with a bearer token if given.
    ///
    /// # Panics
    /// When auth does not answer.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("{}{path}", self.auth_url()))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("auth answers")
    }

    /// `POST /register`.
    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.post(
            paths::REGISTER,
            &json!({"username": username, "password": password}),
            None,
        )
        .await
    }

    /// `POST /login`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.post(
            paths::LOGIN,
            &json!({"username": username, "password": password}),
            None,
        )
        .await
    }

    /// Registers `username` with [`PASSWORD`] and logs in: the token.
    ///
    /// # Panics
    /// When either step fails.
    pub async fn user(&self, username: &str) -> String {
        let r = self.register(username, PASSWORD).await;
        assert_eq!(r.status(), 201, "register {username}");
        self.token(username).await
    }

    /// Logs in an existing user with [`PASSWORD`]: the token.
    ///
    /// # Panics
    /// When login fails.
    pub async fn token(&self, username: &str) -> String {
        let r = self.login(username, PASSWORD).await;
        assert_eq!(r.status(), 200, "login {username}");
        r.json::<TokenResponse>().await.expect("token body").token
    }

    /// Opens a WebSocket on the gateway with `token`.
    ///
    /// # Panics
    /// When the gateway refuses.
    pub async fn ws(&self, token: &str) -> WsClient {
        ws::connect(&self.ws_url(), Some(token))
            .await
            .expect("the gateway accepts the socket")
    }

    /// Registers and logs in `username`, then opens a socket: the token and
    /// the socket.
    pub async fn ws_user(&self, username: &str) -> (String, WsClient) {
        let token = self.user(username).await;
        let socket = self.ws(&token).await;
        (token, socket)
    }

    /// `GET` an auth path with a bearer token.
    ///
    /// # Panics
    /// When auth does not answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.auth_url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("auth answers")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for running in self.parts.values() {
            running.stop.cancel();
            running.task.abort();
        }
        cleanup_namespace(&self.config);
    }
}

/// Runs `cleanup` to completion on a thread of its own with its own
/// runtime: `Drop` cannot await, and may run inside the test's runtime.
/// Failures are ignored; a cleanup that cannot reach a service has nothing
/// to clean there.
pub(crate) fn block_on_cleanup(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let work = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cleanup);
        }
    });
    let _ = work.join();
}

/// Deletes a test namespace's JetStream streams and Redis keys.
fn cleanup_namespace(config: &Config) {
    let ns = config.namespace();
    let nats_url = config.nats_url.clone();
    let redis_url = config.redis_url.clone();
    block_on_cleanup(async move {
        if let Ok(client) = async_nats::connect(&nats_url).await {
            let js = async_nats::jetstream::new(client);
            for stream in [ns.events_stream(), ns.dlq_stream(), ns.sessions_stream()] {
                let _ = js.delete_stream(stream).await;
            }
        }
        if let Ok(client) = redis::Client::open(redis_url.as_str())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            let pattern = format!("{}*", ns.redis_prefix());
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
        }
    });
}
