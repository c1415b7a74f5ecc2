//! natter in-process for tests that need several services (feature
//! `testing`): [`TestApp`] starts every service in [`Service::ALL`]'s
//! order on port 0, in a [`Sandbox`] of its own (database, namespace), and
//! lets a test stop and restart any of them.
//!
//! It lives beside the composition root rather than in `natter-testkit`
//! because it needs every service: the kit stays below the services (a
//! service's own tests use it without linking another service), and only
//! this crate, which links them all anyway, knows the list and the order.
//! `natter-server`'s integration tests and the client's use it; a service
//! crate never does.

use crate::Service;
use natter_platform::Config;
use natter_protocol::http::paths;
use natter_testkit::{AuthClient, Running, Sandbox};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use natter_testkit::{
    Closed, ErrorFrame, PASSWORD, TestDatabase, WsClient, test_config, token_for, ws,
};

/// Builds one service on `config` and runs it until `stop`: its bound
/// address and task (for a second instance beside a [`TestApp`]'s).
///
/// # Panics
/// When the service cannot start: the test cannot go on.
pub async fn start_part(
    part: Service,
    config: &Config,
    stop: CancellationToken,
) -> (SocketAddr, JoinHandle<anyhow::Result<()>>) {
    let started = part
        .start(config, stop)
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    (started.addr, started.task)
}

/// A running natter for one test.
pub struct TestApp {
    /// The configuration the services run with.
    pub config: Config,
    /// A pool on the test's database, for assertions.
    pub pool: PgPool,
    /// An HTTP client.
    pub http: reqwest::Client,
    // Declared before the sandbox: the services are aborted before their
    // database and namespace are deleted.
    parts: BTreeMap<Service, Running>,
    _sandbox: Sandbox,
}

impl TestApp {
    /// Starts all four services with the default test configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts all four services after `tweak` adjusts the configuration.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let sandbox = Sandbox::new(tweak).await;
        let mut app = Self {
            config: sandbox.config().clone(),
            pool: sandbox.pool().await,
            http: reqwest::Client::new(),
            parts: BTreeMap::new(),
            _sandbox: sandbox,
        };
        for part in Service::ALL {
            app.start(part).await;
        }
        app
    }

    /// Starts (or restarts) one service.
    pub async fn start(&mut self, part: Service) {
        let stop = CancellationToken::new();
        let started = part
            .start(&self.config, stop.clone())
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        self.parts.insert(part, Running::new(started, stop));
    }

    /// Stops one service gracefully and waits for it.
    ///
    /// # Panics
    /// When it was not running or did not stop cleanly.
    pub async fn stop_part(&mut self, part: Service) {
        let running = self.parts.remove(&part).expect("service was running");
        running.stop().await;
    }

    /// Stops every service, in the reverse of the start order, and waits
    /// for each to stop cleanly.
    pub async fn stop(mut self) {
        for part in Service::ALL.into_iter().rev() {
            if self.parts.contains_key(&part) {
                self.stop_part(part).await;
            }
        }
    }

    /// Where a running service listens (HTTP/WebSocket or health).
    ///
    /// # Panics
    /// When it is not running.
    #[must_use]
    pub fn addr(&self, part: Service) -> SocketAddr {
        self.parts.get(&part).expect("service is running").addr()
    }

    /// `http://…` of auth.
    #[must_use]
    pub fn auth_url(&self) -> String {
        format!("http://{}", self.addr(Service::Auth))
    }

    /// `ws://…/ws/v1/message` of the gateway.
    #[must_use]
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr(Service::Gateway), paths::WEBSOCKET)
    }

    /// A client of auth where it listens now.
    #[must_use]
    pub fn auth(&self) -> AuthClient {
        AuthClient::new(self.http.clone(), self.auth_url())
    }

    /// POSTs JSON to an auth path, with a bearer token if given.
    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> reqwest::Response {
        self.auth().post(path, body, token).await
    }

    /// `GET` an auth path with a bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        self.auth().get(path, token).await
    }

    /// `POST /register`.
    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.auth().register(username, password).await
    }

    /// `POST /login`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.auth().login(username, password).await
    }

    /// Registers `username` with [`PASSWORD`] and logs in: the token.
    pub async fn user(&self, username: &str) -> String {
        self.auth().user(username).await
    }

    /// Logs in an existing user with [`PASSWORD`]: the token.
    pub async fn token(&self, username: &str) -> String {
        self.auth().token(username).await
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
}
