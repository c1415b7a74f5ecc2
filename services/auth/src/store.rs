//! Auth's SQL. Constraint names map to domain errors here, so a taken
//! username is a 409 decided by the unique index, never by a racy check.

use crate::client_addr::ClientAddr;
use crate::error::AuthError;
use natter_platform::outbox;
use natter_protocol::events::SessionRevoked;
use natter_protocol::http::UserView;
use natter_protocol::subjects::Namespace;
use natter_protocol::{SessionId, UserId, Username};
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use time::OffsetDateTime;

/// Inserts a user with a fresh invite code.
#[tracing::instrument(skip_all)]
pub(crate) async fn insert_user(
    pool: &PgPool,
    username: &Username,
    password_hash: &str,
) -> Result<UserView, AuthError> {
    let result: Result<(i64,), sqlx::Error> = sqlx::query_as(
        "INSERT INTO users (username, password_hash, invite_code) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(username.as_str())
    .bind(password_hash)
    .bind(natter_platform::random::invite_code())
    .fetch_one(pool)
    .await;
    match result {
        Ok((id,)) => Ok(UserView {
            user_id: UserId(id),
            username: username.to_string(),
        }),
        Err(e) if constraint(&e) == Some("users_username_live_key") => {
            Err(AuthError::UsernameTaken)
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether a live user has the name (register asks before hashing).
#[tracing::instrument(skip_all)]
pub(crate) async fn username_taken(pool: &PgPool, username: &Username) -> Result<bool, AuthError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM users WHERE username = $1 AND deleted_at IS NULL)",
    )
    .bind(username.as_str())
    .fetch_one(pool)
    .await?)
}

fn constraint(e: &sqlx::Error) -> Option<&str> {
    e.as_database_error().and_then(|d| d.constraint())
}

/// The live user of that name and their password hash.
#[tracing::instrument(skip_all)]
pub(crate) async fn find_login(
    pool: &PgPool,
    username: &Username,
) -> Result<Option<(UserView, String)>, AuthError> {
    let row: Option<(i64, String, String)> = sqlx::query_as(
        "SELECT id, username, password_hash FROM users WHERE username = $1 AND deleted_at IS NULL",
    )
    .bind(username.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(id, username, hash)| {
        (
            UserView {
                user_id: UserId(id),
                username,
            },
            hash,
        )
    }))
}

/// The login limit's settings (docs/protocol.md §1, §2.6).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoginLimits {
    /// Failures per username and client address within the window before
    /// that address is refused.
    pub max_failures: i64,
    /// The window, in seconds.
    pub window_secs: i64,
    /// The longest a username's logins are slowed by.
    pub max_delay: Duration,
}

/// The slowdown's first step: a username that failed `max_failures` times
/// in the window, over all addresses, is slowed by this, doubled with
/// each further failure up to `max_delay`.
const FIRST_DELAY: Duration = Duration::from_millis(100);

impl LoginLimits {
    /// How long a login for a username that failed `failures` times in the
    /// window (from any address) waits before its password is checked.
    /// It grows with the failures but is capped: failures from many
    /// addresses slow the name's owner down, never lock them out.
    pub(crate) fn delay(&self, failures: i64) -> Duration {
        let over = failures.saturating_sub(self.max_failures);
        if over < 0 {
            return Duration::ZERO;
        }
        let doublings = u32::try_from(over).unwrap_or(u32::MAX).min(31);
        FIRST_DELAY
            .checked_mul(2_u32.saturating_pow(doublings))
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    fn window(&self) -> f64 {
        self.window_secs as f64
    }
}

/// What the login limit says about an attempt.
#[derive(Debug)]
pub(crate) enum LoginGate {
    /// Too many recent failures from this address: retry after this many
    /// seconds.
    Blocked { retry_after: u64 },
    /// The attempt may go on after `delay`; it is already counted as a
    /// failure, stamped `attempt`, until [`withdraw_attempt`] takes it back.
    Open {
        attempt: OffsetDateTime,
        delay: Duration,
    },
}

/// Decides whether `username` may try to log in from `client` and, if so,
/// records a provisional failure for the attempt in the same transaction.
/// The advisory lock of the pair (name, address) serializes the count and
/// the insert, so however many attempts from one address run in parallel
/// at most `max_failures` get past here within the window. The name's
/// failures from every address decide the delay. Failures of this name
/// older than the window are forgotten on the way.
#[tracing::instrument(skip_all)]
pub(crate) async fn begin_login(
    pool: &PgPool,
    username: &Username,
    client: &ClientAddr,
    limits: &LoginLimits,
) -> Result<LoginGate, AuthError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
        .bind(username.as_str())
        .bind(&client.0)
        .execute(&mut *tx)
        .await?;
    let (count, retry_after): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), \
                EXTRACT(EPOCH FROM (min(failed_at) + make_interval(secs => $3) - clock_timestamp()))::float8 \
         FROM (SELECT failed_at FROM login_failures \
               WHERE username = $1 AND client_addr = $2 \
                 AND failed_at > clock_timestamp() - make_interval(secs => $3) \
               ORDER BY failed_at DESC LIMIT $4) recent",
    )
    .bind(username.as_str())
    .bind(&client.0)
    .bind(limits.window())
    .bind(limits.max_failures)
    .fetch_one(&mut *tx)
    .await?;
    if count >= limits.max_failures {
        tx.rollback().await?;
        let retry_after = retry_after.unwrap_or(1.0).ceil().max(1.0) as u64;
        return Ok(LoginGate::Blocked { retry_after });
    }
    // Counted only as far as the delay can grow.
    let everywhere: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM login_failures \
           WHERE username = $1 AND failed_at > clock_timestamp() - make_interval(secs => $2) \
           LIMIT $3) recent",
    )
    .bind(username.as_str())
    .bind(limits.window())
    .bind(limits.max_failures + 64)
    .fetch_one(&mut *tx)
    .await?;
    let attempt: OffsetDateTime = sqlx::query_scalar(
        "WITH old AS (DELETE FROM login_failures \
                      WHERE username = $1 AND failed_at <= clock_timestamp() - make_interval(secs => $3)) \
         INSERT INTO login_failures (username, client_addr) VALUES ($1, $2) RETURNING failed_at",
    )
    .bind(username.as_str())
    .bind(&client.0)
    .bind(limits.window())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(LoginGate::Open {
        attempt,
        delay: limits.delay(everywhere),
    })
}

/// Withdraws the provisional failure [`begin_login`] recorded for an
/// attempt that turned out right (or was never decided). Attempts of one
/// name and address are stamped one after another under their lock, so
/// the stamp picks that row; should two ever share a stamp, only one of
/// them goes.
#[tracing::instrument(skip_all)]
pub(crate) async fn withdraw_attempt(
    pool: &PgPool,
    username: &Username,
    client: &ClientAddr,
    attempt: OffsetDateTime,
) -> Result<(), AuthError> {
    sqlx::query(
        "DELETE FROM login_failures WHERE ctid = \
           (SELECT ctid FROM login_failures \
            WHERE username = $1 AND client_addr = $2 AND failed_at = $3 LIMIT 1)",
    )
    .bind(username.as_str())
    .bind(&client.0)
    .bind(attempt)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets every name's failures older than the window: names that are
/// never tried again would otherwise keep their rows forever.
#[tracing::instrument(skip_all)]
pub(crate) async fn prune_login_failures(
    pool: &PgPool,
    limits: &LoginLimits,
) -> Result<u64, AuthError> {
    Ok(sqlx::query(
        "DELETE FROM login_failures WHERE failed_at <= clock_timestamp() - make_interval(secs => $1)",
    )
    .bind(limits.window())
    .execute(pool)
    .await?
    .rows_affected())
}

/// How long a session's tokens live.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetimes {
    /// Of an access token, in seconds.
    pub token_secs: u64,
    /// Of a refresh token, in seconds.
    pub refresh_secs: u64,
}

/// Opens a session for a successful login, with its first refresh token
/// (`refresh_hash`), in one transaction.
#[tracing::instrument(skip_all)]
pub(crate) async fn create_session(
    pool: &PgPool,
    user: UserId,
    lifetimes: Lifetimes,
    refresh_hash: &[u8],
) -> Result<SessionId, AuthError> {
    let id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO sessions (id, user_id, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(id)
    .bind(user.0)
    .bind(lifetimes.token_secs as f64)
    .execute(&mut *tx)
    .await?;
    insert_refresh_token(&mut tx, SessionId(id), refresh_hash, lifetimes.refresh_secs).await?;
    tx.commit().await?;
    Ok(SessionId(id))
}

async fn insert_refresh_token(
    tx: &mut PgConnection,
    session: SessionId,
    hash: &[u8],
    ttl_secs: u64,
) -> Result<(), AuthError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(hash)
    .bind(session.0)
    .bind(ttl_secs as f64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What presenting a refresh token came to.
#[derive(Debug)]
pub(crate) enum Refresh {
    /// The token was current: it is rotated, the next one stored, and the
    /// session's user may be issued a token.
    Rotated { user: UserView, session: SessionId },
    /// Unknown, expired, or its session is over: nothing changed.
    Refused,
    /// It had been rotated already: someone holds a copy, so the session
    /// is revoked (and its sockets told).
    Reused { session: SessionId },
}

/// Exchanges the token hashed `presented` for the one hashed `next`.
///
/// Every change to a session's refresh tokens happens under the session's
/// row lock, taken before the token row is read: two refreshes of one
/// session run one after the other, so of two racing with the same token
/// exactly one rotates it and the other finds it rotated — a reuse. The
/// lock also orders a refresh against a logout, which updates the same
/// row: a refresh never issues a token for a session revoked before it.
#[tracing::instrument(skip_all)]
pub(crate) async fn refresh(
    pool: &PgPool,
    ns: &Namespace,
    presented: &[u8],
    next: &[u8],
    lifetimes: Lifetimes,
) -> Result<Refresh, AuthError> {
    let session: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(presented)
            .fetch_optional(pool)
            .await?;
    let Some(session) = session.map(SessionId) else {
        return Ok(Refresh::Refused);
    };
    let mut tx = pool.begin().await?;
    let owner: Option<(i64, String, bool)> = sqlx::query_as(
        "SELECT s.user_id, u.username, s.revoked_at IS NULL AND u.deleted_at IS NULL \
         FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id = $1 FOR NO KEY UPDATE OF s",
    )
    .bind(session.0)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, username, true)) = owner else {
        return Ok(Refresh::Refused);
    };
    let user_id = UserId(user_id);
    let token: Option<(bool, bool)> = sqlx::query_as(
        "SELECT expires_at <= now(), rotated_at IS NOT NULL FROM refresh_tokens \
         WHERE token_hash = $1",
    )
    .bind(presented)
    .fetch_optional(&mut *tx)
    .await?;
    match token {
        // Pruned since the first read, or expired: a dead token proves
        // nothing about theft, so it is refused without revoking.
        None | Some((true, _)) => return Ok(Refresh::Refused),
        Some((false, true)) => {
            revoke_in(&mut tx, ns, user_id, session).await?;
            tx.commit().await?;
            return Ok(Refresh::Reused { session });
        }
        Some((false, false)) => {}
    }
    sqlx::query("UPDATE refresh_tokens SET rotated_at = now() WHERE token_hash = $1")
        .bind(presented)
        .execute(&mut *tx)
        .await?;
    insert_refresh_token(&mut tx, session, next, lifetimes.refresh_secs).await?;
    sqlx::query("UPDATE sessions SET expires_at = now() + make_interval(secs => $2) WHERE id = $1")
        .bind(session.0)
        .bind(lifetimes.token_secs as f64)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Refresh::Rotated {
        user: UserView { user_id, username },
        session,
    })
}

/// Deletes refresh tokens past their expiry. Until then a rotated one is
/// kept, so that presenting it again is known for a reuse; a token of an
/// ended session is refused by the session check meanwhile.
#[tracing::instrument(skip_all)]
pub(crate) async fn prune_refresh_tokens(pool: &PgPool) -> Result<u64, AuthError> {
    Ok(
        sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= now()")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// The username if the session is live and its user not deleted.
#[tracing::instrument(skip_all)]
pub(crate) async fn live_session_user(
    pool: &PgPool,
    session: SessionId,
    user: UserId,
) -> Result<Option<String>, AuthError> {
    Ok(sqlx::query_scalar(
        "SELECT u.username FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND u.deleted_at IS NULL",
    )
    .bind(session.0)
    .bind(user.0)
    .fetch_optional(pool)
    .await?)
}

/// Revokes a session and, in the same transaction, queues the announcement
/// that makes every gateway close its sockets.
#[tracing::instrument(skip_all)]
pub(crate) async fn revoke_session(
    pool: &PgPool,
    ns: &Namespace,
    user: UserId,
    session: SessionId,
) -> Result<(), AuthError> {
    let mut tx = pool.begin().await?;
    revoke_in(&mut tx, ns, user, session).await?;
    tx.commit().await?;
    Ok(())
}

/// Revokes a session inside the caller's transaction, announcing it once.
async fn revoke_in(
    tx: &mut PgConnection,
    ns: &Namespace,
    user: UserId,
    session: SessionId,
) -> Result<(), AuthError> {
    let revoked =
        sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(session.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    if revoked > 0 {
        let revoked = SessionRevoked {
            session_id: session,
            user_id: user,
        };
        outbox::session_revoked(tx, ns, &revoked).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_starts_at_the_limit_doubles_and_is_capped() {
        let limits = LoginLimits {
            max_failures: 5,
            window_secs: 900,
            max_delay: Duration::from_secs(5),
        };
        let ms = |failures| limits.delay(failures).as_millis();
        assert_eq!([ms(0), ms(4)], [0, 0]);
        assert_eq!([ms(5), ms(6), ms(7), ms(10)], [100, 200, 400, 3200]);
        assert_eq!([ms(11), ms(69), ms(i64::MAX)], [5000, 5000, 5000]);
    }
}
