//! Revoked sessions: the gateway verifies tokens itself, so it must learn
//! every logout and unregister. Auth and message announce them through the
//! outbox into the sessions stream, kept as long as a token lives; the
//! gateway reads it from the start with an ordered consumer, so one that
//! starts late still knows every revocation younger than a token, and it
//! closes the sockets of a session when its revocation arrives.
//!
//! The stream lags the commit by as long as the relay takes (seconds when
//! a relay dies, longer in an outage), so an upgrade also asks Postgres,
//! where the revocation is authoritative the moment it commits
//! ([`Sessions::is_live`]: one primary-key lookup). If Postgres does not
//! answer, the upgrade goes on with what the stream says: a Postgres
//! outage must not lock every user out, and the stream then holds every
//! revocation but those committed in the moments before it.

use crate::registry::{CloseRequest, Registry};
use anyhow::Context;
use axum::extract::ws::Utf8Bytes;
use futures::StreamExt;
use natter_platform::lifecycle::Condition;
use natter_protocol::events::SessionRevoked;
use natter_protocol::frames::ServerFrame;
use natter_protocol::subjects::Namespace;
use natter_protocol::{SessionId, UserId, close};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Sessions known to be revoked, until their tokens would have expired
/// anyway.
#[derive(Debug)]
pub(crate) struct Revoked {
    until: Mutex<HashMap<SessionId, Instant>>,
    ttl: Duration,
}

impl Revoked {
    pub(crate) fn new(token_ttl: Duration) -> Self {
        Self {
            until: Mutex::new(HashMap::new()),
            // A token issued just before the revocation lives this long.
            ttl: token_ttl + natter_platform::nats::REVOCATION_MARGIN,
        }
    }

    /// Whether a session is revoked.
    pub(crate) fn contains(&self, session: SessionId) -> bool {
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&session)
    }

    fn insert(&self, session: SessionId) {
        let mut map = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Pruning on insert keeps the map bounded by the revocation rate.
        if map.len() > 1024 && map.len().is_power_of_two() {
            map.retain(|_, until| *until > now);
        }
        map.insert(session, now + self.ttl);
    }
}

/// How long an upgrade waits for Postgres before it trusts the stream alone.
const SESSION_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The session check of an upgrade, in Postgres.
pub(crate) struct Sessions {
    pool: sqlx::PgPool,
    /// Postgres did not answer the last check: logged once, not per
    /// upgrade.
    unchecked: AtomicBool,
}

impl Sessions {
    pub(crate) fn new(pool: sqlx::PgPool) -> Self {
        Self {
            pool,
            unchecked: AtomicBool::new(false),
        }
    }

    /// Whether `session` of `user` may open a socket: its row exists and is
    /// not revoked. `true` when Postgres does not answer in time (see the
    /// module's doc).
    pub(crate) async fn is_live(&self, session: SessionId, user: UserId) -> bool {
        let check = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM sessions \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL)",
        )
        .bind(session.0)
        .bind(user.0)
        .fetch_one(&self.pool);
        match tokio::time::timeout(SESSION_CHECK_TIMEOUT, check).await {
            Ok(Ok(live)) => {
                if self.unchecked.swap(false, Ordering::Relaxed) {
                    tracing::info!("checking sessions in Postgres again");
                }
                live
            }
            Ok(Err(e)) => self.unchecked(&e),
            Err(elapsed) => self.unchecked(&elapsed),
        }
    }

    fn unchecked(&self, error: &dyn std::fmt::Display) -> bool {
        if !self.unchecked.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error,
                "cannot check sessions in Postgres; upgrades rely on the revocation stream"
            );
        }
        true
    }
}

/// Closes every socket of a revoked session: `session_revoked`, then
/// [`close::POLICY_VIOLATION`].
pub(crate) fn close_session(registry: &Registry, session: SessionId) {
    let frame = Utf8Bytes::from(ServerFrame::SessionRevoked.to_json());
    for control in registry.session(session) {
        control.close(CloseRequest {
            code: close::POLICY_VIOLATION,
            reason: "session revoked",
            last_frame: Some(frame.clone()),
            drain: true,
        });
    }
}

/// How long catching up may wait for the next revocation before it asks
/// the stream whether the rest has aged out meanwhile.
const CATCH_UP_POLL: Duration = Duration::from_secs(1);
/// How long catching up may take in all before the gateway gives up.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// Reads the sessions stream: first up to its current end (returns once
/// caught up, so no revoked token is accepted after start), then follows
/// it in the background until `shutdown`.
///
/// "Its current end" is the last sequence the stream holds when the
/// gateway starts. JetStream keeps that number after the messages age
/// out, so the gateway also counts itself caught up once the stream holds
/// nothing up to it any more: after a quiet hour there is nothing to wait
/// for.
pub(crate) async fn follow(
    js: async_nats::jetstream::Context,
    ns: &Namespace,
    revoked: Arc<Revoked>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut stream = js
        .get_stream(ns.sessions_stream())
        .await
        .context("sessions stream")?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("sessions consumer")?;
    let mut messages = consumer.messages().await.context("sessions messages")?;
    let apply = move |payload: &[u8]| match serde_json::from_slice::<SessionRevoked>(payload) {
        Ok(r) => {
            revoked.insert(r.session_id);
            close_session(&registry, r.session_id);
        }
        Err(e) => tracing::warn!(error = %e, "undecodable session revocation"),
    };
    let state = stream
        .info()
        .await
        .context("sessions stream info")?
        .state
        .clone();
    let last = if state.messages == 0 {
        0
    } else {
        state.last_sequence
    };
    let started = tokio::time::Instant::now();
    let mut seen = 0;
    while seen < last {
        match tokio::time::timeout(CATCH_UP_POLL, messages.next()).await {
            Ok(Some(Ok(msg))) => {
                seen = msg.info().map_or(seen, |i| i.stream_sequence);
                apply(&msg.payload);
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "sessions consumer error while catching up");
            }
            Ok(None) => anyhow::bail!("revoked sessions stream ended while catching up"),
            Err(_) => {
                let now = stream
                    .info()
                    .await
                    .context("sessions stream info")?
                    .state
                    .clone();
                if now.messages == 0 || now.first_sequence > last {
                    break;
                }
            }
        }
        anyhow::ensure!(
            started.elapsed() < CATCH_UP_LIMIT,
            "catching up with revoked sessions timed out at sequence {seen} of {last}"
        );
    }
    let following = Condition::detached("revocation follower");
    Ok(tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                () = shutdown.cancelled() => break,
            };
            match next {
                Some(Ok(msg)) => {
                    following.ok();
                    apply(&msg.payload);
                }
                Some(Err(e)) => {
                    following.failing(&anyhow::Error::new(e).context("revoked sessions consumer"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => break,
            }
        }
    }))
}
