//! Revoked sessions: the gateway verifies tokens itself, so it must learn
//! every logout and unregister. Auth and message announce them through the
//! outbox into the sessions stream, kept as long as a token lives; the
//! gateway reads it from the start with a tail, so one that
//! starts late still knows every revocation younger than a token, and it
//! closes the sockets of a session when its revocation arrives.
//!
//! The stream lags the commit by as long as the relay takes (seconds when
//! a relay dies, longer in an outage), so an upgrade also asks Postgres,
//! where the revocation is authoritative the moment it commits
//! ([`Sessions::is_live`]: primary-key lookups, batched across concurrent
//! upgrades). If Postgres does not
//! answer, the upgrade goes on with what the stream says: a Postgres
//! outage must not lock every user out, and the stream then holds every
//! revocation but those committed in the moments before it.

use crate::registry::{CloseRequest, Registry};
use anyhow::Context;
use axum::extract::ws::Utf8Bytes;
use natter_platform::lifecycle::Condition;
use natter_platform::tail::Tail;
use natter_protocol::events::SessionRevoked;
use natter_protocol::frames::ServerFrame;
use natter_protocol::subjects::Namespace;
use natter_protocol::{SessionId, UserId, close};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
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
/// Most sessions checked in one query.
const SESSION_CHECK_BATCH: usize = 256;
/// Checks waiting for a query; beyond this Postgres is too slow to wait
/// for and upgrades trust the stream.
const SESSION_CHECK_QUEUE: usize = 4096;

/// One upgrade's question: is this session live?
struct SessionCheck {
    session: SessionId,
    user: UserId,
    answer: oneshot::Sender<bool>,
}

/// The session check of an upgrade, in Postgres. Upgrades queue their
/// question; one task asks Postgres about everything queued in one query
/// while the previous query ran, so a reconnect storm costs Postgres a
/// query per round trip, not one per socket, and a lone upgrade waits one
/// round trip.
pub(crate) struct Sessions {
    checks: mpsc::Sender<SessionCheck>,
}

/// The task behind [`Sessions`]: run it with [`SessionChecker::run`].
pub(crate) struct SessionChecker {
    pool: sqlx::PgPool,
    checks: mpsc::Receiver<SessionCheck>,
}

impl Sessions {
    pub(crate) fn new(pool: sqlx::PgPool) -> (Self, SessionChecker) {
        let (tx, rx) = mpsc::channel(SESSION_CHECK_QUEUE);
        (Self { checks: tx }, SessionChecker { pool, checks: rx })
    }

    /// Whether `session` of `user` may open a socket: its row exists and is
    /// not revoked. `true` when Postgres does not answer in time (see the
    /// module's doc).
    pub(crate) async fn is_live(&self, session: SessionId, user: UserId) -> bool {
        let (answer, answered) = oneshot::channel();
        let queued = self.checks.try_send(SessionCheck {
            session,
            user,
            answer,
        });
        if queued.is_err() {
            return true;
        }
        // A dropped question (the query failed) or no answer in time: the
        // checker has said why, once.
        tokio::time::timeout(SESSION_CHECK_TIMEOUT, answered)
            .await
            .map_or(true, |live| live.unwrap_or(true))
    }
}

impl SessionChecker {
    /// Answers the queued checks until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let health = Condition::detached("session check");
        loop {
            let first = tokio::select! {
                check = self.checks.recv() => match check {
                    Some(check) => check,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            let mut batch = vec![first];
            while batch.len() < SESSION_CHECK_BATCH {
                match self.checks.try_recv() {
                    Ok(check) => batch.push(check),
                    Err(_) => break,
                }
            }
            let sessions: Vec<uuid::Uuid> = batch.iter().map(|c| c.session.0).collect();
            let users: Vec<i64> = batch.iter().map(|c| c.user.0).collect();
            let query = sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT s.id FROM sessions s \
                 JOIN UNNEST($1::uuid[], $2::bigint[]) AS q(id, user_id) \
                   ON s.id = q.id AND s.user_id = q.user_id \
                 WHERE s.revoked_at IS NULL",
            )
            .bind(&sessions)
            .bind(&users)
            .fetch_all(&self.pool);
            match tokio::time::timeout(SESSION_CHECK_TIMEOUT, query).await {
                Ok(Ok(live)) => {
                    health.ok();
                    let live: HashSet<uuid::Uuid> = live.into_iter().collect();
                    for check in batch {
                        let _ = check.answer.send(live.contains(&check.session.0));
                    }
                }
                Ok(Err(e)) => health.failing(
                    &anyhow::Error::new(e)
                        .context("cannot check sessions in Postgres; upgrades rely on the revocation stream"),
                ),
                Err(_) => health.failing(&anyhow::anyhow!(
                    "Postgres did not answer a session check in time; upgrades rely on the revocation stream"
                )),
            }
        }
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
/// The pause before a tail that ended is opened again.
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// Reads the sessions stream: first up to its current end (returns once
/// caught up, so no revoked token is accepted after start), then follows
/// it in the background until `shutdown`.
///
/// "Its current end" is the last sequence the stream holds when the
/// gateway starts. JetStream keeps that number after the messages age
/// out, so the gateway also counts itself caught up once the stream holds
/// nothing up to it any more: after a quiet hour there is nothing to wait
/// for.
///
/// The stream is read with a [`Tail`], as push reads the events: an
/// ordered consumer can wait 5 s for nothing on nats-server 2.9, and a
/// revoked session would keep its sockets that long. A tail that ends (a
/// NATS restart, a lost consumer) is opened again after the last
/// revocation applied.
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
    let subject = ns.session_revoked_subject();
    let open = {
        let (js, stream) = (js.clone(), stream.clone());
        move |after: u64| {
            let (js, stream, subject) = (js.clone(), stream.clone(), subject.clone());
            async move {
                Tail::open(&js, &stream, subject, after + 1)
                    .await
                    .context("following the sessions stream")
            }
        }
    };
    // A consumer NATS refuses for a moment does not stop the start; one it
    // refuses for as long as catching up may take does.
    let deadline = tokio::time::Instant::now() + CATCH_UP_LIMIT;
    let starting = |after: u64, pause_first: bool| {
        open_retrying(
            open.clone(),
            after,
            pause_first,
            tokio::time::sleep_until(deadline),
            |e| tracing::debug!(error = %e, "opening the sessions tail again"),
        )
    };
    let mut tail = starting(0, false)
        .await
        .context("the sessions tail did not open while starting")?;
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
    let mut seen = 0;
    while seen < last {
        match tokio::time::timeout(CATCH_UP_POLL, tail.next()).await {
            Ok(Some(Ok(next))) => {
                seen = next.stream_sequence;
                apply(&next.message.payload);
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "the sessions tail ended while catching up");
                tail = starting(seen, true)
                    .await
                    .context("the sessions tail did not open again while catching up")?;
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
            tokio::time::Instant::now() < deadline,
            "catching up with revoked sessions timed out at sequence {seen} of {last}"
        );
    }
    let following = Condition::detached("revocation follower");
    Ok(tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = tail.next() => n,
                () = shutdown.cancelled() => break,
            };
            match next {
                Some(Ok(next)) => {
                    following.ok();
                    seen = next.stream_sequence;
                    apply(&next.message.payload);
                }
                Some(Err(e)) => {
                    following.failing(&anyhow::Error::new(e).context("revoked sessions tail"));
                    // Until a new tail is open after the last revocation
                    // applied, or the gateway stops.
                    let Ok(reopened) =
                        open_retrying(open.clone(), seen, true, shutdown.cancelled(), |e| {
                            following.failing(e)
                        })
                        .await
                    else {
                        return;
                    };
                    following.ok();
                    tail = reopened;
                }
                None => break,
            }
        }
    }))
}

/// Opens a tail after `after`, trying again every [`REOPEN_PAUSE`] and
/// telling `refused` of each refusal, until one opens or `give_up`
/// completes (then the last refusal is the error). `pause_first` pauses
/// before the first try too: a tail that ended at once must not spin.
async fn open_retrying<Open, Opening>(
    open: Open,
    after: u64,
    pause_first: bool,
    give_up: impl std::future::Future<Output = ()>,
    mut refused: impl FnMut(&anyhow::Error),
) -> anyhow::Result<Tail>
where
    Open: Fn(u64) -> Opening,
    Opening: std::future::Future<Output = anyhow::Result<Tail>>,
{
    tokio::pin!(give_up);
    let mut last = None;
    let mut pause = pause_first;
    loop {
        if pause {
            tokio::select! {
                () = tokio::time::sleep(REOPEN_PAUSE) => {}
                () = &mut give_up => break,
            }
        }
        let opened = tokio::select! {
            opened = open(after) => opened,
            () = &mut give_up => break,
        };
        match opened {
            Ok(tail) => return Ok(tail),
            Err(e) => {
                refused(&e);
                last = Some(e);
                pause = true;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("gave up before the tail was opened")))
}
