//! Connections (friendships): one row per pair in `user_connections`,
//! lower id first, with the inviter remembered.
//!
//! Every change of a pair happens under row locks on both users, taken
//! lower id first (`FOR NO KEY UPDATE`), so changes of one pair are
//! serialized and the counts in `users.connection_count` — changed only
//! here and by unregister — never pass the limit and always equal the
//! number of accepted pairs. A deleted user is invisible: its name and
//! code are unknown.

use crate::Limits;
use crate::error::DomainError;
use crate::store::retrying;
use natter_platform::outbox;
use natter_protocol::events::Event;
use natter_protocol::frames::{ConnectionFilter, ConnectionStatus, results::ConnectionChange};
use natter_protocol::subjects::Namespace;
use natter_protocol::{ErrorCode, UserId};
use sqlx::{PgConnection, PgPool};

/// A user row as locked for a pair change.
#[derive(Debug, sqlx::FromRow)]
struct Locked {
    id: i64,
    username: String,
    connection_count: i32,
    deleted: bool,
}

/// Both users of a pair, locked: the caller and the other one.
struct Pair {
    me: Locked,
    other: Locked,
}

impl Pair {
    fn key(&self) -> (i64, i64) {
        (self.me.id.min(self.other.id), self.me.id.max(self.other.id))
    }
}

/// `invite` by `me` with another user's invite code.
#[tracing::instrument(level = "debug", skip(pool, ns, code))]
pub(crate) async fn invite(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
    me: UserId,
    code: &str,
) -> Result<ConnectionChange, DomainError> {
    retrying(|| invite_once(pool, ns, limits, me, code)).await
}

async fn invite_once(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
    me: UserId,
    code: &str,
) -> Result<ConnectionChange, DomainError> {
    let invalid_code = || DomainError::rule(ErrorCode::InvalidInviteCode, "unknown invite code");
    let mut tx = pool.begin().await?;
    let invitee: Option<i64> =
        sqlx::query_scalar("SELECT id FROM users WHERE invite_code = $1 AND deleted_at IS NULL")
            .bind(code)
            .fetch_optional(&mut *tx)
            .await?;
    let invitee = invitee.ok_or_else(invalid_code)?;
    if invitee == me.0 {
        return Err(DomainError::rule(
            ErrorCode::SelfInvite,
            "that is your own invite code",
        ));
    }
    let pair = lock_pair(&mut tx, me.0, invitee).await?;
    if pair.other.deleted {
        return Err(invalid_code());
    }
    match state(&mut tx, &pair).await? {
        Some((ConnectionStatus::Accepted, _)) => {
            return Err(DomainError::rule(
                ErrorCode::AlreadyConnected,
                format!("already connected with {}", pair.other.username),
            ));
        }
        Some((ConnectionStatus::Pending | ConnectionStatus::Rejected, _)) => {
            return Err(DomainError::rule(
                ErrorCode::AlreadyInvited,
                format!("an invitation with {} is open", pair.other.username),
            ));
        }
        Some((ConnectionStatus::Disconnected, _)) | None => {}
    }
    if pair.me.connection_count >= limits.connection_limit {
        return Err(DomainError::rule(
            ErrorCode::ConnectionLimitReached,
            "you have reached the connection limit",
        ));
    }
    set_state(&mut tx, &pair, ConnectionStatus::Pending, pair.me.id).await?;
    outbox::event(
        &mut tx,
        ns,
        &Event::InviteReceived {
            to: UserId(pair.other.id),
            from_username: pair.me.username.clone(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ConnectionChange {
        username: pair.other.username,
        status: ConnectionStatus::Pending,
    })
}

/// `accept` by `me` of an invitation from `inviter`.
#[tracing::instrument(level = "debug", skip(pool, ns))]
pub(crate) async fn accept(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
    me: UserId,
    inviter: &str,
) -> Result<ConnectionChange, DomainError> {
    retrying(|| accept_once(pool, ns, limits, me, inviter)).await
}

async fn accept_once(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
    me: UserId,
    inviter: &str,
) -> Result<ConnectionChange, DomainError> {
    let invalid = || {
        DomainError::rule(
            ErrorCode::InvalidUsername,
            format!("no invitation from {inviter}"),
        )
    };
    let mut tx = pool.begin().await?;
    let pair = lock_partner(&mut tx, me, inviter)
        .await?
        .ok_or_else(invalid)?;
    match state(&mut tx, &pair).await? {
        Some((ConnectionStatus::Accepted, _)) => {
            return Err(DomainError::rule(
                ErrorCode::AlreadyConnected,
                format!("already connected with {inviter}"),
            ));
        }
        Some((ConnectionStatus::Pending, by)) if by == pair.other.id => {}
        _ => return Err(invalid()),
    }
    if pair.me.connection_count >= limits.connection_limit {
        return Err(DomainError::rule(
            ErrorCode::ConnectionLimitReached,
            "you have reached the connection limit",
        ));
    }
    if pair.other.connection_count >= limits.connection_limit {
        return Err(DomainError::rule(
            ErrorCode::PartnerConnectionLimitReached,
            format!("{inviter} has reached the connection limit"),
        ));
    }
    set_state(&mut tx, &pair, ConnectionStatus::Accepted, pair.other.id).await?;
    change_counts(&mut tx, &pair, 1).await?;
    outbox::event(
        &mut tx,
        ns,
        &Event::InviteAccepted {
            to: UserId(pair.other.id),
            from_username: pair.me.username.clone(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ConnectionChange {
        username: pair.other.username,
        status: ConnectionStatus::Accepted,
    })
}

/// `reject` by `me` of an invitation from `inviter`; the inviter is not
/// told.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn reject(
    pool: &PgPool,
    me: UserId,
    inviter: &str,
) -> Result<ConnectionChange, DomainError> {
    retrying(|| reject_once(pool, me, inviter)).await
}

async fn reject_once(
    pool: &PgPool,
    me: UserId,
    inviter: &str,
) -> Result<ConnectionChange, DomainError> {
    let invalid = || {
        DomainError::rule(
            ErrorCode::InvalidUsername,
            format!("no invitation from {inviter}"),
        )
    };
    let mut tx = pool.begin().await?;
    let pair = lock_partner(&mut tx, me, inviter)
        .await?
        .ok_or_else(invalid)?;
    match state(&mut tx, &pair).await? {
        Some((ConnectionStatus::Pending, by)) if by == pair.other.id => {}
        _ => return Err(invalid()),
    }
    set_state(&mut tx, &pair, ConnectionStatus::Rejected, pair.other.id).await?;
    tx.commit().await?;
    Ok(ConnectionChange {
        username: pair.other.username,
        status: ConnectionStatus::Rejected,
    })
}

/// `disconnect` by `me` of `partner`: ends an accepted pair (both counts
/// −1; the partner gets `connection_ended`), or clears a pair `me`
/// rejected (the partner is told nothing, as they were not told of the
/// rejection).
#[tracing::instrument(level = "debug", skip(pool, ns))]
pub(crate) async fn disconnect(
    pool: &PgPool,
    ns: &Namespace,
    me: UserId,
    partner: &str,
) -> Result<ConnectionChange, DomainError> {
    retrying(|| disconnect_once(pool, ns, me, partner)).await
}

async fn disconnect_once(
    pool: &PgPool,
    ns: &Namespace,
    me: UserId,
    partner: &str,
) -> Result<ConnectionChange, DomainError> {
    let not_connected = || {
        DomainError::rule(
            ErrorCode::NotConnected,
            format!("not connected with {partner}"),
        )
    };
    let mut tx = pool.begin().await?;
    let pair = lock_partner(&mut tx, me, partner)
        .await?
        .ok_or_else(not_connected)?;
    match state(&mut tx, &pair).await? {
        Some((ConnectionStatus::Accepted, by)) => {
            set_state(&mut tx, &pair, ConnectionStatus::Disconnected, by).await?;
            change_counts(&mut tx, &pair, -1).await?;
            outbox::event(
                &mut tx,
                ns,
                &Event::ConnectionEnded {
                    to: UserId(pair.other.id),
                    from_username: pair.me.username.clone(),
                },
            )
            .await?;
        }
        // The inviter of a rejected pair is the other one: `me` rejected it.
        Some((ConnectionStatus::Rejected, by)) if by == pair.other.id => {
            set_state(&mut tx, &pair, ConnectionStatus::Disconnected, by).await?;
        }
        _ => return Err(not_connected()),
    }
    tx.commit().await?;
    Ok(ConnectionChange {
        username: pair.other.username,
        status: ConnectionStatus::Disconnected,
    })
}

/// `fetch_connections`: accepted partners, or invitations received; by
/// username.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn list(
    pool: &PgPool,
    me: UserId,
    filter: ConnectionFilter,
    max_rows: i64,
) -> Result<Vec<(UserId, String)>, DomainError> {
    let sql = match filter {
        ConnectionFilter::Accepted => {
            "SELECT u.id, u.username FROM user_connections c \
             JOIN users u ON u.id = CASE WHEN c.user_low = $1 THEN c.user_high ELSE c.user_low END \
             WHERE (c.user_low = $1 OR c.user_high = $1) AND c.status = 'accepted' \
               AND u.deleted_at IS NULL ORDER BY u.username LIMIT $2"
        }
        ConnectionFilter::Pending => {
            "SELECT u.id, u.username FROM user_connections c \
             JOIN users u ON u.id = c.inviter \
             WHERE (c.user_low = $1 OR c.user_high = $1) AND c.status = 'pending' \
               AND c.inviter <> $1 AND u.deleted_at IS NULL ORDER BY u.username LIMIT $2"
        }
    };
    let rows: Vec<(i64, String)> = sqlx::query_as(sql)
        .bind(me.0)
        .bind(max_rows)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name)| (UserId(id), name))
        .collect())
}

/// Resolves a live user by name and locks the pair with `me`; `None` when
/// the name is unknown, deleted, or `me`.
async fn lock_partner(
    tx: &mut PgConnection,
    me: UserId,
    username: &str,
) -> Result<Option<Pair>, DomainError> {
    let other: Option<i64> =
        sqlx::query_scalar("SELECT id FROM users WHERE username = $1 AND deleted_at IS NULL")
            .bind(username)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(other) = other.filter(|id| *id != me.0) else {
        return Ok(None);
    };
    let pair = lock_pair(tx, me.0, other).await?;
    Ok((!pair.other.deleted).then_some(pair))
}

/// Locks both users, lower id first. A caller who has unregistered meanwhile
/// is `unauthorized`.
async fn lock_pair(tx: &mut PgConnection, me: i64, other: i64) -> Result<Pair, DomainError> {
    let rows: Vec<Locked> = sqlx::query_as(
        "SELECT id, username, connection_count, deleted_at IS NOT NULL AS deleted \
         FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&[me, other][..])
    .fetch_all(&mut *tx)
    .await?;
    let mut me_row = None;
    let mut other_row = None;
    for row in rows {
        if row.id == me {
            me_row = Some(row);
        } else {
            other_row = Some(row);
        }
    }
    match (me_row, other_row) {
        (Some(me), Some(other)) if !me.deleted => Ok(Pair { me, other }),
        (Some(_), Some(_)) | (None, _) => Err(DomainError::rule(
            ErrorCode::Unauthorized,
            "your account no longer exists",
        )),
        (Some(_), None) => Err(DomainError::Internal(anyhow::anyhow!(
            "user {other} vanished while locked"
        ))),
    }
}

/// The pair's state and inviter, if it ever had one.
async fn state(
    tx: &mut PgConnection,
    pair: &Pair,
) -> Result<Option<(ConnectionStatus, i64)>, DomainError> {
    let (low, high) = pair.key();
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT status, inviter FROM user_connections WHERE user_low = $1 AND user_high = $2",
    )
    .bind(low)
    .bind(high)
    .fetch_optional(&mut *tx)
    .await?;
    row.map(|(status, inviter)| {
        ConnectionStatus::parse(&status)
            .map(|s| (s, inviter))
            .ok_or_else(|| {
                DomainError::Internal(anyhow::anyhow!("unknown connection status {status}"))
            })
    })
    .transpose()
}

async fn set_state(
    tx: &mut PgConnection,
    pair: &Pair,
    status: ConnectionStatus,
    inviter: i64,
) -> Result<(), DomainError> {
    let (low, high) = pair.key();
    sqlx::query(
        "INSERT INTO user_connections (user_low, user_high, status, inviter) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_low, user_high) DO UPDATE \
         SET status = excluded.status, inviter = excluded.inviter, updated_at = now()",
    )
    .bind(low)
    .bind(high)
    .bind(status.as_str())
    .bind(inviter)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Both counts by `delta`; the rows are already locked.
async fn change_counts(tx: &mut PgConnection, pair: &Pair, delta: i32) -> Result<(), DomainError> {
    sqlx::query("UPDATE users SET connection_count = connection_count + $2 WHERE id = ANY($1)")
        .bind(&[pair.me.id, pair.other.id][..])
        .bind(delta)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
