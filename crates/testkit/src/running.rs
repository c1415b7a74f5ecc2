//! One service running in-process on a task of its own, started through
//! the [`Runnable`] every service implements, so the kit starts any
//! service without depending on it.

use natter_platform::Config;
use natter_platform::lifecycle::{self, Runnable, Started};
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running service; aborted if dropped without [`Running::stop`].
pub struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Builds `S` on `config` and runs it.
    ///
    /// # Panics
    /// When it cannot start: the test cannot go on.
    pub async fn start<S: Runnable>(config: &Config) -> Self {
        let stop = CancellationToken::new();
        let started = lifecycle::start::<S>(config, stop.clone())
            .await
            .unwrap_or_else(|e| panic!("{} starts: {e:?}", std::any::type_name::<S>()));
        Self::new(started, stop)
    }

    /// A service already started, stopped by `stop`.
    #[must_use]
    pub fn new(started: Started, stop: CancellationToken) -> Self {
        Self {
            addr: started.addr,
            stop,
            task: Some(started.task),
        }
    }

    /// Where it listens (its API, or only health).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it gracefully and waits for it.
    ///
    /// # Panics
    /// When it did not stop cleanly.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("service task")
                .expect("service stopped cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            self.stop.cancel();
            task.abort();
        }
    }
}
