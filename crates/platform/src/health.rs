//! `/healthz` (alive), `/readyz` (dependencies answer, no condition
//! fails, no background task died, not draining) and `/metrics`
//! (Prometheus text), served by every service on its own port.

use crate::cache::Redis;
use crate::lifecycle::Readiness;
use crate::serve::HttpLimits;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The dependencies whose answers decide readiness.
#[derive(Clone, Default)]
pub struct Dependencies {
    /// Checked with `SELECT 1`.
    pub postgres: Option<PgPool>,
    /// Checked by its connection state.
    pub nats: Option<async_nats::Client>,
    /// Checked with `PING`.
    pub redis: Option<Redis>,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Dependencies {
    /// The names of the dependencies that do not answer.
    pub async fn failing(&self) -> Vec<&'static str> {
        let mut failing = Vec::new();
        if let Some(pool) = &self.postgres {
            let ok = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(pool))
                .await
                .is_ok_and(|r| r.is_ok());
            if !ok {
                failing.push("postgres");
            }
        }
        if let Some(nats) = &self.nats
            && nats.connection_state() != async_nats::connection::State::Connected
        {
            failing.push("nats");
        }
        if let Some(redis) = &self.redis {
            let mut conn = redis.clone();
            let ok = tokio::time::timeout(
                CHECK_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if !ok {
                failing.push("redis");
            }
        }
        failing
    }
}

#[derive(Clone)]
struct HealthState {
    deps: Dependencies,
    readiness: Readiness,
    /// The dependencies that failed the last check: a change is logged
    /// once, not every probe.
    last_failing: Arc<Mutex<Vec<&'static str>>>,
}

/// The three endpoints. `/readyz` answers 503 `draining` once shutdown has
/// begun, so load balancers move on, and 503 `unavailable` naming what
/// fails: a dependency that does not answer, a condition that fails or a
/// background task that died.
pub fn router(deps: Dependencies, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HealthState {
            deps,
            readiness,
            last_failing: Arc::default(),
        })
}

async fn readyz(State(state): State<HealthState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.readiness.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        );
    }
    let mut failing = state.deps.failing().await;
    log_changes(&state.last_failing, &failing);
    failing.extend(state.readiness.failing_conditions());
    failing.extend(state.readiness.dead_tasks());
    if failing.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "failing": failing})),
        )
    }
}

async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::telemetry::metrics::CONTENT_TYPE,
        )],
        crate::telemetry::metrics::render(),
    )
}

/// Logs the dependencies that began or stopped failing since the last
/// check.
fn log_changes(last: &Mutex<Vec<&'static str>>, now: &[&'static str]) {
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    for dependency in now.iter().filter(|d| !last.contains(d)) {
        tracing::warn!(dependency, "a dependency does not answer; not ready");
    }
    for dependency in last.iter().filter(|d| !now.contains(d)) {
        tracing::info!(dependency, "a dependency answers again");
    }
    *last = now.to_vec();
}

/// Serves the health endpoints and `extra` (message's admin API; empty for
/// push) on `listener` until `shutdown`: what message and push expose.
pub async fn serve(
    listener: tokio::net::TcpListener,
    deps: Dependencies,
    readiness: Readiness,
    extra: Router,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let app = router(deps, readiness).merge(extra);
    crate::serve::serve(listener, app, limits, shutdown).await;
}
