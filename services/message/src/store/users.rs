//! Users as the domain sees them: their invite code, and unregistering.

use crate::error::DomainError;
use natter_platform::outbox;
use natter_protocol::events::{Event, SessionRevoked};
use natter_protocol::frames::LeaveReason;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, ErrorCode, SessionId, UserId};
use sqlx::PgPool;

/// A live user's own invite code; `unauthorized` once they unregistered.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn invite_code(pool: &PgPool, user: UserId) -> Result<String, DomainError> {
    let code: Option<String> =
        sqlx::query_scalar("SELECT invite_code FROM users WHERE id = $1 AND deleted_at IS NULL")
            .bind(user.0)
            .fetch_optional(pool)
            .await?;
    code.ok_or_else(|| DomainError::rule(ErrorCode::Unauthorized, "your account no longer exists"))
}

/// How often unregister starts over because the user's channels or
/// partners changed while it was taking its locks.
const ATTEMPTS: u32 = 10;

/// Unregisters a user in one transaction: its accepted connections are
/// disconnected (partners' counts −1; each partner gets
/// `connection_ended`), its memberships quit (head counts −1; the other
/// members get `member_left` with reason `unregistered`), the user marked
/// deleted (the name is free again, messages stay), its sessions revoked;
/// the outbox announces each change. Deadlocks, and
/// a join or accept that slipped in while it locked, make it start over.
#[tracing::instrument(level = "debug", skip(pool, ns))]
pub(crate) async fn unregister(
    pool: &PgPool,
    ns: &Namespace,
    user: UserId,
) -> Result<(), DomainError> {
    let mut attempt = 1;
    loop {
        match unregister_once(pool, ns, user).await {
            Ok(Unregister::Done) => return Ok(()),
            Ok(Unregister::Moved) if attempt < ATTEMPTS => {
                tracing::debug!(attempt, "channels or partners moved; starting over");
                attempt += 1;
            }
            Ok(Unregister::Moved) => {
                return Err(DomainError::Internal(anyhow::anyhow!(
                    "the user's channels or partners kept changing during unregister"
                )));
            }
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// How one unregister transaction ended.
enum Unregister {
    /// Committed.
    Done,
    /// Rolled back: the sets it locked are no longer the user's.
    Moved,
}

async fn unregister_once(
    pool: &PgPool,
    ns: &Namespace,
    user: UserId,
) -> Result<Unregister, DomainError> {
    let mut tx = pool.begin().await?;
    // Lock order: channels, then users. The member and partner sets are
    // read, locked, and read again under the locks. If they moved in
    // between (a join or accept raced us), locking the newcomers now would
    // take channel locks after user locks, so the whole transaction starts
    // over instead.
    let channels: Vec<i64> = sqlx::query_scalar(
        "SELECT channel_id FROM channel_members WHERE user_id = $1 ORDER BY channel_id",
    )
    .bind(user.0)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("SELECT id FROM channels WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
        .bind(&channels)
        .execute(&mut *tx)
        .await?;
    let partners = accepted_partners(&mut tx, user).await?;
    let mut ids = partners.clone();
    ids.push(user.0);
    let live: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    if !live.contains(&user.0) {
        return Err(DomainError::rule(ErrorCode::NotFound, "no such user"));
    }
    let still_channels: Vec<i64> = sqlx::query_scalar(
        "SELECT channel_id FROM channel_members WHERE user_id = $1 ORDER BY channel_id",
    )
    .bind(user.0)
    .fetch_all(&mut *tx)
    .await?;
    if still_channels != channels || accepted_partners(&mut tx, user).await? != partners {
        tx.rollback().await?;
        return Ok(Unregister::Moved);
    }
    let username: Option<String> = sqlx::query_scalar(
        "UPDATE users SET deleted_at = now(), connection_count = 0 \
         WHERE id = $1 AND deleted_at IS NULL RETURNING username",
    )
    .bind(user.0)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(username) = username else {
        return Err(DomainError::rule(ErrorCode::NotFound, "no such user"));
    };
    sqlx::query(
        "UPDATE user_connections SET status = 'disconnected', updated_at = now() \
         WHERE (user_low = $1 OR user_high = $1) AND status <> 'disconnected'",
    )
    .bind(user.0)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET connection_count = connection_count - 1 WHERE id = ANY($1)")
        .bind(&partners)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM channel_members WHERE user_id = $1")
        .bind(user.0)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE channels SET head_count = head_count - 1 WHERE id = ANY($1)")
        .bind(&channels)
        .execute(&mut *tx)
        .await?;
    let left = channels.iter().map(|channel| Event::MemberLeft {
        channel_id: ChannelId(*channel),
        user_id: user,
        username: Some(username.clone()),
        reason: LeaveReason::Unregistered,
    });
    let ended = partners.iter().map(|partner| Event::ConnectionEnded {
        to: UserId(*partner),
        from_username: username.clone(),
    });
    // One statement however many channels and partners the user had.
    let traceparent = natter_platform::telemetry::propagation::traceparent();
    let rows = left
        .chain(ended)
        .map(|event| outbox::OutboxRow::event(ns, &event, traceparent.clone()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    outbox::insert(&mut tx, &rows).await?;
    let sessions: Vec<uuid::Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
    )
    .bind(user.0)
    .fetch_all(&mut *tx)
    .await?;
    for session in sessions {
        outbox::session_revoked(
            &mut tx,
            ns,
            &SessionRevoked {
                session_id: SessionId(session),
                user_id: user,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Unregister::Done)
}

async fn accepted_partners(
    tx: &mut sqlx::PgConnection,
    user: UserId,
) -> Result<Vec<i64>, DomainError> {
    Ok(sqlx::query_scalar(
        "SELECT CASE WHEN user_low = $1 THEN user_high ELSE user_low END AS partner \
         FROM user_connections WHERE (user_low = $1 OR user_high = $1) AND status = 'accepted' \
         ORDER BY partner",
    )
    .bind(user.0)
    .fetch_all(tx)
    .await?)
}
