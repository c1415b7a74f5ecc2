//! One service alone in a sandbox: what a service crate's own tests
//! start, with nothing else of natter running.

use crate::{AuthClient, Running, Sandbox};
use natter_platform::Config;
use natter_platform::lifecycle::Runnable;
use sqlx::PgPool;
use std::marker::PhantomData;
use std::net::SocketAddr;

/// Service `S` running in-process on port 0 in a [`Sandbox`] of its own.
pub struct TestService<S> {
    /// The configuration it runs with.
    pub config: Config,
    /// A pool on the test's database, for assertions and seeding.
    pub pool: PgPool,
    /// An HTTP client.
    pub http: reqwest::Client,
    // Declared before the sandbox: the service is aborted before its
    // database and namespace are deleted.
    running: Option<Running>,
    _sandbox: Sandbox,
    service: PhantomData<fn() -> S>,
}

impl<S: Runnable> TestService<S> {
    /// Starts `S` with the default test configuration.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts `S` after `tweak` adjusts the configuration.
    pub async fn spawn_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let sandbox = Sandbox::new(tweak).await;
        let mut app = Self {
            config: sandbox.config().clone(),
            pool: sandbox.pool().await,
            http: reqwest::Client::new(),
            running: None,
            _sandbox: sandbox,
            service: PhantomData,
        };
        app.start_service().await;
        app
    }

    /// Starts it again after [`TestService::stop_service`].
    pub async fn start_service(&mut self) {
        self.running = Some(Running::start::<S>(&self.config).await);
    }

    /// Stops it gracefully and waits for it; the sandbox stays.
    ///
    /// # Panics
    /// When it was not running or did not stop cleanly.
    pub async fn stop_service(&mut self) {
        self.running
            .take()
            .expect("the service is running")
            .stop()
            .await;
    }

    /// Stops it and waits for it to stop cleanly.
    pub async fn stop(mut self) {
        if self.running.is_some() {
            self.stop_service().await;
        }
    }

    /// Where it listens (its API, or only health).
    ///
    /// # Panics
    /// When it is not running.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.running
            .as_ref()
            .expect("the service is running")
            .addr()
    }

    /// `http://…` of it.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A client of auth's API at its address (for `S` = auth).
    #[must_use]
    pub fn client(&self) -> AuthClient {
        AuthClient::new(self.http.clone(), self.url())
    }
}
