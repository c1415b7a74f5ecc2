//! One shutdown shape for every service, and supervision of the tasks a
//! service runs beside its main work.
//!
//! Every service stops in the same sequence, written once in
//! [`Lifecycle::run`]: ready → on shutdown `/readyz` says `draining` →
//! after `NATTER_DRAIN_DELAY_SECS` it stops taking work ([`Lifecycle::intake`])
//! → in-flight work finishes within `NATTER_SHUTDOWN_GRACE_SECS` → its
//! background tasks stop ([`Lifecycle::background`]), within the same
//! grace → exit. A service hands `run` the one future that takes and
//! finishes its work (an HTTP server, an RPC loop, a pull loop).
//!
//! Background tasks (the outbox relay, the gateway's heartbeat, push's
//! followers, …) are spawned through [`Lifecycle::spawn`]. One that dies —
//! returns an error, panics, or ends while the service is not stopping —
//! is logged once and named on `/readyz`, which answers 503 from that
//! moment on; the service also exits with an error when it stops. A dead
//! task is noticed when it dies, not only at shutdown.
//!
//! A task that lives on but cannot do its work for now (the relay that
//! cannot publish, the gateway that cannot write presence, push while a
//! dependency holds its events back) reports it through a [`Condition`]:
//! `/readyz` names it while it fails and is ready again once it recovers,
//! and the log says so once per change (with how long it failed), not once
//! per failed attempt. This is the one way a service says "I cannot do my
//! job because of X".

use crate::Config;
use crate::health::{self, Dependencies};
use crate::serve::HttpLimits;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What each service's bound struct is: built (dependencies connected,
/// listener bound), then run until shutdown. The composition root
/// (`natter-server`) and the test kits start any service through it.
pub trait Runnable: Sized + Send + 'static {
    /// Connects to the dependencies and binds the listener (port 0 picks a
    /// free port: see [`Runnable::local_addr`]).
    fn build(config: &Config) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Where it listens: its API, or only `/healthz` and `/readyz`.
    ///
    /// # Errors
    /// If the socket has no address.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;

    /// Serves until `shutdown`, then stops as [`Lifecycle::run`] does.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A service running on a task of its own.
pub struct Started {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its run; `Ok` once it stopped cleanly.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Builds `S` and runs it on a task of its own until `shutdown`.
///
/// # Errors
/// When it cannot be built.
pub async fn start<S: Runnable>(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<Started> {
    let service = S::build(config).await?;
    let addr = service.local_addr()?;
    Ok(Started {
        addr,
        task: tokio::spawn(service.run(shutdown)),
    })
}

/// What `/readyz` reports besides the dependencies: whether the service is
/// draining, which of its background tasks died, and which conditions it
/// reports about its own work (a dead task stays dead; a condition clears
/// when the service says so). Cheap to clone; every clone sees the same
/// state.
#[derive(Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Default)]
struct ReadinessState {
    draining: AtomicBool,
    dead: Mutex<Vec<&'static str>>,
    /// The conditions failing now, with when each began to.
    failing: Mutex<Vec<(&'static str, Instant)>>,
}

/// What reporting a condition changed.
enum Change {
    Began,
    /// It had failed for this long.
    Recovered(Duration),
    Unchanged,
}

impl Readiness {
    /// Whether shutdown has begun: new work should go elsewhere.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    /// The background tasks that died, in the order they did.
    #[must_use]
    pub fn dead_tasks(&self) -> Vec<&'static str> {
        self.0
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The conditions failing now, in the order they began to.
    #[must_use]
    pub fn failing_conditions(&self) -> Vec<&'static str> {
        self.0
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, _)| *name)
            .collect()
    }

    /// A condition named `name` that decides readiness beside the others.
    #[must_use]
    pub fn condition(&self, name: &'static str) -> Condition {
        Condition {
            name,
            readiness: self.clone(),
        }
    }

    fn drain(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }

    /// Sets whether `name` fails; what that changed.
    fn set_failing(&self, name: &'static str, failing: bool) -> Change {
        let mut list = self
            .0
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let since = list.iter().find(|(n, _)| *n == name).map(|(_, t)| *t);
        match (failing, since) {
            (true, None) => {
                list.push((name, Instant::now()));
                Change::Began
            }
            (false, Some(since)) => {
                list.retain(|(n, _)| *n != name);
                Change::Recovered(since.elapsed())
            }
            _ => Change::Unchanged,
        }
    }

    fn mark_dead(&self, task: &'static str) {
        let mut dead = self.0.dead.lock().unwrap_or_else(PoisonError::into_inner);
        if !dead.contains(&task) {
            dead.push(task);
        }
    }
}

/// Something a service needs to do its job, reported by the code that
/// does it: while it fails, `/readyz` answers 503 naming it (unless it is
/// [`Condition::detached`]). Each change is logged once, not each failed
/// attempt. Cheap to clone; clones report the same condition.
#[derive(Clone)]
pub struct Condition {
    name: &'static str,
    readiness: Readiness,
}

impl Condition {
    /// A condition that only logs its changes and decides no readiness:
    /// for what a service can work without (the gateway while message does
    /// not answer still holds its sockets).
    #[must_use]
    pub fn detached(name: &'static str) -> Self {
        Readiness::default().condition(name)
    }

    /// It fails now, because of `error`: logged when it begins to, at
    /// debug level while it goes on.
    pub fn failing(&self, error: &anyhow::Error) {
        if let Change::Began = self.readiness.set_failing(self.name, true) {
            tracing::warn!(
                condition = self.name,
                error = format!("{error:#}"),
                "failing"
            );
        } else {
            tracing::debug!(
                condition = self.name,
                error = format!("{error:#}"),
                "still failing"
            );
        }
    }

    /// It works (again): logged when it recovers, with how long it failed.
    pub fn ok(&self) {
        if let Change::Recovered(after) = self.readiness.set_failing(self.name, false) {
            tracing::info!(condition = self.name, after = ?after, "recovered");
        }
    }

    /// Whether it fails now.
    #[must_use]
    pub fn is_failing(&self) -> bool {
        self.readiness.failing_conditions().contains(&self.name)
    }
}

/// How a background task ended, as the supervisor reads it: loops that
/// only stop return `()`, those that can fail a `Result`.
pub trait Outcome {
    /// `Ok` when it ended well.
    ///
    /// # Errors
    /// Why it failed.
    fn into_result(self) -> anyhow::Result<()>;
}

impl Outcome for () {
    fn into_result(self) -> anyhow::Result<()> {
        Ok(())
    }
}

impl<E: Into<anyhow::Error>> Outcome for Result<(), E> {
    fn into_result(self) -> anyhow::Result<()> {
        self.map_err(Into::into)
    }
}

/// One service's shutdown sequence and its supervised tasks.
pub struct Lifecycle {
    readiness: Readiness,
    http: HttpLimits,
    drain_delay: Duration,
    grace: Duration,
    intake: CancellationToken,
    background: CancellationToken,
    supervisor: Supervisor,
}

/// Spawns and watches a service's background tasks; cheap to clone, for
/// code that starts tasks of its own (push's workers).
#[derive(Clone)]
pub struct Supervisor {
    service: &'static str,
    readiness: Readiness,
    /// Shutdown was requested: a task that ends from now on has not died.
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl Lifecycle {
    /// A lifecycle for `service` (its name in logs) with the drain delay
    /// and grace period of `config`.
    #[must_use]
    pub fn new(service: &'static str, config: &Config) -> Self {
        let readiness = Readiness::default();
        Self {
            readiness: readiness.clone(),
            http: HttpLimits::from_config(config),
            drain_delay: Duration::from_secs(config.drain_delay_secs),
            grace: Duration::from_secs(config.shutdown_grace_secs),
            intake: CancellationToken::new(),
            background: CancellationToken::new(),
            supervisor: Supervisor {
                service,
                readiness,
                stopping: CancellationToken::new(),
                tasks: TaskTracker::new(),
            },
        }
    }

    /// What `/readyz` and anything else that refuses work while draining
    /// read.
    #[must_use]
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Cancelled when the service must stop taking work (after the drain
    /// delay); work already taken is then finished.
    #[must_use]
    pub fn intake(&self) -> CancellationToken {
        self.intake.clone()
    }

    /// Cancelled once in-flight work is finished (or the grace period is
    /// over): background tasks stop then.
    #[must_use]
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    /// A handle that spawns supervised tasks.
    #[must_use]
    pub fn supervisor(&self) -> Supervisor {
        self.supervisor.clone()
    }

    /// Runs `task` supervised under the name `name`: see [`Supervisor::spawn`].
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Outcome + Send + 'static,
    {
        self.supervisor.spawn(name, task);
    }

    /// Supervises a task already spawned: see [`Supervisor::watch`].
    pub fn watch<O>(&self, name: &'static str, handle: JoinHandle<O>)
    where
        O: Outcome + Send + 'static,
    {
        self.supervisor.watch(name, handle);
    }

    /// Serves `/healthz` and `/readyz` on `listener` (message and push,
    /// whose only port it is) until the background tasks stop, so that
    /// `draining` stays visible while in-flight work finishes.
    pub fn serve_health(&self, listener: TcpListener, deps: Dependencies) {
        self.serve_health_with(listener, deps, axum::Router::new());
    }

    /// [`Lifecycle::serve_health`] with more routes on the same port
    /// (message's admin API).
    pub fn serve_health_with(
        &self,
        listener: TcpListener,
        deps: Dependencies,
        extra: axum::Router,
    ) {
        self.spawn(
            "health server",
            health::serve(
                listener,
                deps,
                self.readiness(),
                extra,
                self.http,
                self.background(),
            ),
        );
    }

    /// The HTTP limits of the service's listeners (from its config).
    #[must_use]
    pub fn http_limits(&self) -> HttpLimits {
        self.http
    }

    /// Runs `work` until `shutdown`, then stops in the one shape: draining
    /// on `/readyz`, the drain delay, [`Lifecycle::intake`] cancelled,
    /// `work` given the grace period to finish what it took,
    /// [`Lifecycle::background`] cancelled and the supervised tasks given
    /// what is left of the grace.
    ///
    /// # Errors
    /// When `work` fails or ends before shutdown, or a supervised task
    /// died.
    pub async fn run<W>(self, shutdown: CancellationToken, work: W) -> anyhow::Result<()>
    where
        W: Future<Output = anyhow::Result<()>> + Send,
    {
        let service = self.supervisor.service;
        tokio::pin!(work);
        let ended_early = tokio::select! {
            result = &mut work => Some(result),
            () = shutdown.cancelled() => None,
        };
        self.supervisor.stopping.cancel();
        self.readiness.drain();
        let served = match ended_early {
            Some(result) => {
                self.intake.cancel();
                self.stop_background(tokio::time::Instant::now() + self.grace)
                    .await;
                result.and_then(|()| {
                    Err(anyhow::anyhow!(
                        "{service} stopped taking work before shutdown"
                    ))
                })
            }
            None => {
                tracing::info!(service, "draining");
                tokio::time::sleep(self.drain_delay).await;
                self.intake.cancel();
                let deadline = tokio::time::Instant::now() + self.grace;
                let finished = tokio::time::timeout_at(deadline, work).await;
                self.stop_background(deadline).await;
                finished.unwrap_or_else(|_| {
                    tracing::warn!(service, "in-flight work outlived the grace period");
                    Ok(())
                })
            }
        };
        served?;
        let dead = self.readiness.dead_tasks();
        if !dead.is_empty() {
            anyhow::bail!("{service}: background tasks died: {}", dead.join(", "));
        }
        tracing::info!(service, "stopped");
        Ok(())
    }

    /// Stops the background tasks and waits for them until `deadline`.
    async fn stop_background(&self, deadline: tokio::time::Instant) {
        self.background.cancel();
        self.supervisor.tasks.close();
        if tokio::time::timeout_at(deadline, self.supervisor.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                service = self.supervisor.service,
                "background tasks outlived the grace period"
            );
        }
    }
}

/// A service that fails before [`Lifecycle::run`] (a subscription
/// refused) still stops the tasks it already started.
impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.supervisor.stopping.cancel();
        self.intake.cancel();
        self.background.cancel();
    }
}

impl Supervisor {
    /// Runs `task` supervised under the name `name`: if it fails, panics
    /// or ends while the service is not stopping, it is logged and named on
    /// `/readyz`, which answers 503 from then on.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Outcome + Send + 'static,
    {
        self.watch(name, tokio::spawn(task));
    }

    /// Supervises a task already spawned (by code that hands out its
    /// handle) under the name `name`.
    pub fn watch<O>(&self, name: &'static str, handle: JoinHandle<O>)
    where
        O: Outcome + Send + 'static,
    {
        let service = self.service;
        let readiness = self.readiness.clone();
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            let failure = match handle.await {
                Ok(outcome) => match outcome.into_result() {
                    Ok(()) if stopping.is_cancelled() => None,
                    Ok(()) => Some(anyhow::anyhow!("it ended while the service was running")),
                    Err(e) => Some(e),
                },
                Err(e) if e.is_panic() => Some(anyhow::anyhow!(
                    "it panicked: {}",
                    panic_message(e.into_panic().as_ref())
                )),
                Err(e) => Some(anyhow::Error::new(e).context("it was cancelled")),
            };
            if let Some(e) = failure {
                readiness.mark_dead(name);
                tracing::error!(
                    service,
                    task = name,
                    error = ?e,
                    "a background task died; the service is not ready"
                );
            }
        });
    }
}

/// The text a panic carried, when it is text.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{Value, json};
    use tokio::sync::oneshot;
    use tower::ServiceExt;

    fn config(grace_secs: u64) -> Config {
        let mut config = Config::from_env().expect("defaults");
        config.shutdown_grace_secs = grace_secs;
        config.drain_delay_secs = 0;
        config
    }

    async fn readyz(readiness: &Readiness) -> (StatusCode, Value) {
        let response = health::router(Dependencies::default(), readiness.clone())
            .oneshot(
                Request::get("/readyz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("an answer");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("JSON"))
    }

    /// Waits until `n` tasks have died: their names, sorted.
    async fn dead(readiness: &Readiness, n: usize) -> Vec<&'static str> {
        let wait = async {
            loop {
                let mut dead = readiness.dead_tasks();
                if dead.len() >= n {
                    dead.sort_unstable();
                    return dead;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the tasks died")
    }

    #[tokio::test]
    async fn a_task_that_fails_turns_readyz_down_naming_it() {
        let lifecycle = Lifecycle::new("test", &config(1));
        let readiness = lifecycle.readiness();
        assert_eq!(readyz(&readiness).await.0, StatusCode::OK);
        lifecycle.spawn("outbox relay", async {
            Err::<(), _>(anyhow::anyhow!("lost its database"))
        });
        assert_eq!(dead(&readiness, 1).await, ["outbox relay"]);
        let (status, body) = readyz(&readiness).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"status": "unavailable", "failing": ["outbox relay"]})
        );
    }

    #[tokio::test]
    async fn a_failing_condition_turns_readyz_down_until_it_recovers() {
        let readiness = Readiness::default();
        let relay = readiness.condition("outbox relay");
        relay.ok();
        assert_eq!(readyz(&readiness).await.0, StatusCode::OK);
        relay.failing(&anyhow::anyhow!("NATS does not answer"));
        relay.failing(&anyhow::anyhow!("NATS does not answer"));
        assert!(relay.is_failing());
        let (status, body) = readyz(&readiness).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            json!({"status": "unavailable", "failing": ["outbox relay"]})
        );
        relay.ok();
        assert!(!relay.is_failing());
        assert_eq!(readyz(&readiness).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_task_that_panics_or_ends_while_the_service_runs_has_died() {
        let lifecycle = Lifecycle::new("test", &config(1));
        let readiness = lifecycle.readiness();
        lifecycle.spawn("worker", async {
            panic!("a bug");
            #[expect(unreachable_code, reason = "the task's output type")]
            ()
        });
        lifecycle.spawn("follower", async {});
        assert_eq!(dead(&readiness, 2).await, ["follower", "worker"]);
        let body = readyz(&readiness).await.1;
        let mut failing: Vec<&str> = body["failing"]
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        failing.sort_unstable();
        assert_eq!(failing, ["follower", "worker"]);
    }

    #[tokio::test]
    async fn a_handed_out_task_is_supervised_too() {
        let lifecycle = Lifecycle::new("test", &config(1));
        let readiness = lifecycle.readiness();
        lifecycle.watch(
            "heartbeat",
            tokio::spawn(async {
                panic!("a bug");
                #[expect(unreachable_code, reason = "the task's output type")]
                ()
            }),
        );
        assert_eq!(dead(&readiness, 1).await, ["heartbeat"]);
    }

    #[tokio::test]
    async fn stopping_says_draining_while_in_flight_work_finishes() {
        let lifecycle = Lifecycle::new("test", &config(30));
        let readiness = lifecycle.readiness();
        let intake = lifecycle.intake();
        let background = lifecycle.background();
        let (stopped_taking, intake_closed) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        lifecycle.spawn("relay", async move { background.cancelled().await });
        let work = async move {
            intake.cancelled().await;
            let _ = stopped_taking.send(());
            let _ = released.await;
            Ok(())
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(lifecycle.run(shutdown.clone(), work));
        assert_eq!(readyz(&readiness).await.0, StatusCode::OK);
        shutdown.cancel();
        intake_closed.await.expect("intake closes on shutdown");
        let (status, body) = readyz(&readiness).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({"status": "draining"}));
        assert!(!running.is_finished(), "exited with work in flight");
        release.send(()).expect("the work is waiting");
        running
            .await
            .expect("joined")
            .expect("a task ending at shutdown has not died");
        assert!(readiness.dead_tasks().is_empty());
    }

    #[tokio::test]
    async fn work_that_outlives_the_grace_period_is_given_up() {
        let lifecycle = Lifecycle::new("test", &config(0));
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        lifecycle
            .run(shutdown, std::future::pending())
            .await
            .expect("the grace period bounds the stop");
    }

    #[tokio::test]
    async fn a_service_whose_task_died_stops_with_an_error_naming_it() {
        let lifecycle = Lifecycle::new("test", &config(1));
        let readiness = lifecycle.readiness();
        let intake = lifecycle.intake();
        lifecycle.spawn("typing follower", async {
            Err::<(), _>(anyhow::anyhow!("subscription lost"))
        });
        dead(&readiness, 1).await;
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let stopped = lifecycle
            .run(shutdown, async move {
                intake.cancelled().await;
                Ok(())
            })
            .await;
        let error = stopped.expect_err("a dead task is an unclean stop");
        assert!(error.to_string().contains("typing follower"), "{error}");
    }

    #[tokio::test]
    async fn work_that_ends_before_shutdown_is_a_failure() {
        let lifecycle = Lifecycle::new("test", &config(1));
        let stopped = lifecycle
            .run(CancellationToken::new(), async { Ok(()) })
            .await;
        assert!(stopped.is_err());
    }
}
