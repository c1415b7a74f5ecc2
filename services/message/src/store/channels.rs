//! Channels and their members.
//!
//! `head_count` changes only under the channel's row lock, in the same
//! transaction as the member row, so it always equals the number of
//! members and a full channel is refused under the lock, never after the
//! fact. Joining locks the joiner's user row `FOR SHARE` after the channel
//! lock, so it cannot race an unregister (which locks channels, then users).

use crate::error::DomainError;
use crate::store::retrying;
use natter_platform::outbox;
use natter_protocol::events::{Event, Joiner};
use natter_protocol::frames::LeaveReason;
use natter_protocol::frames::results::{ChannelCreated, ChannelEntry};
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, ErrorCode, Seq, UserId};
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};

/// What a member sees of a channel.
#[derive(Debug)]
pub(crate) struct Membership {
    pub title: String,
    pub invite_code: String,
    pub last_seq: Seq,
    pub last_read_seq: Seq,
}

/// The caller's view of a channel they belong to: `not_found` when it does
/// not exist, then `not_joined` when they are not a member — the order of
/// every membership-dependent request.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn membership(
    pool: &PgPool,
    channel: ChannelId,
    user: UserId,
) -> Result<Membership, DomainError> {
    let row: Option<(String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT c.title, c.invite_code, c.last_seq, m.last_read_seq FROM channels c \
         LEFT JOIN channel_members m ON m.channel_id = c.id AND m.user_id = $2 \
         WHERE c.id = $1",
    )
    .bind(channel.0)
    .bind(user.0)
    .fetch_optional(pool)
    .await?;
    let (title, invite_code, last_seq, last_read_seq) = row.ok_or_else(|| not_found(channel))?;
    let last_read_seq = last_read_seq.ok_or_else(|| not_joined(channel))?;
    Ok(Membership {
        title,
        invite_code,
        last_seq: Seq(last_seq),
        last_read_seq: Seq(last_read_seq),
    })
}

pub(crate) fn not_found(channel: ChannelId) -> DomainError {
    DomainError::rule(ErrorCode::NotFound, format!("no channel {channel}"))
}

pub(crate) fn not_joined(channel: ChannelId) -> DomainError {
    DomainError::rule(
        ErrorCode::NotJoined,
        format!("not a member of channel {channel}"),
    )
}

/// `create`: a channel with the creator and `usernames` (already checked
/// distinct and not the creator's) as members.
#[tracing::instrument(level = "debug", skip(pool, ns))]
pub(crate) async fn create(
    pool: &PgPool,
    ns: &Namespace,
    head_limit: i32,
    creator: UserId,
    title: &str,
    usernames: &[String],
) -> Result<ChannelCreated, DomainError> {
    retrying(|| create_once(pool, ns, head_limit, creator, title, usernames)).await
}

async fn create_once(
    pool: &PgPool,
    ns: &Namespace,
    head_limit: i32,
    creator: UserId,
    title: &str,
    usernames: &[String],
) -> Result<ChannelCreated, DomainError> {
    let mut tx = pool.begin().await?;
    // Every member's row stays locked (shared) until commit, so none can
    // unregister or drop the connection between the checks and the insert.
    let live: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, username FROM users \
         WHERE (id = $1 OR username = ANY($2)) AND deleted_at IS NULL \
         ORDER BY id FOR SHARE",
    )
    .bind(creator.0)
    .bind(usernames)
    .fetch_all(&mut *tx)
    .await?;
    if !live.iter().any(|(id, _)| *id == creator.0) {
        return Err(gone());
    }
    // Maps and sets, not list scans: `usernames` may be long (the service
    // takes any caller's list), and matching must stay linear in it.
    let id_of: HashMap<&str, i64> = live
        .iter()
        .filter(|(id, _)| *id != creator.0)
        .map(|(id, name)| (name.as_str(), *id))
        .collect();
    let unknown: Vec<&str> = usernames
        .iter()
        .map(String::as_str)
        .filter(|n| !id_of.contains_key(n))
        .collect();
    if !unknown.is_empty() {
        return Err(DomainError::rule(
            ErrorCode::UnknownUsers,
            format!("unknown users: {}", unknown.join(", ")),
        ));
    }
    let others: Vec<i64> = usernames
        .iter()
        .filter_map(|n| id_of.get(n.as_str()).copied())
        .collect();
    let connected: HashSet<i64> = sqlx::query_scalar(
        "SELECT CASE WHEN user_low = $1 THEN user_high ELSE user_low END FROM user_connections \
         WHERE status = 'accepted' \
           AND ((user_low = $1 AND user_high = ANY($2)) OR (user_high = $1 AND user_low = ANY($2)))",
    )
    .bind(creator.0)
    .bind(&others)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let unconnected: Vec<&str> = usernames
        .iter()
        .map(String::as_str)
        .filter(|n| id_of.get(n).is_some_and(|id| !connected.contains(id)))
        .collect();
    if !unconnected.is_empty() {
        return Err(DomainError::rule(
            ErrorCode::UnconnectedUsers,
            format!("not connected with: {}", unconnected.join(", ")),
        ));
    }
    let head_count = i32::try_from(others.len() + 1).unwrap_or(i32::MAX);
    if head_count > head_limit {
        return Err(DomainError::rule(
            ErrorCode::OverLimit,
            format!("a channel has at most {head_limit} members"),
        ));
    }
    let channel: i64 = sqlx::query_scalar(
        "INSERT INTO channels (title, invite_code, head_count, created_by) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(title)
    .bind(natter_platform::random::invite_code())
    .bind(head_count)
    .bind(creator.0)
    .fetch_one(&mut *tx)
    .await?;
    let mut members = others;
    members.push(creator.0);
    members.sort_unstable();
    sqlx::query(
        "INSERT INTO channel_members (channel_id, user_id) SELECT $1, u FROM UNNEST($2::bigint[]) AS u",
    )
    .bind(channel)
    .bind(&members)
    .execute(&mut *tx)
    .await?;
    let channel_id = ChannelId(channel);
    let added = live
        .into_iter()
        .filter(|(id, _)| *id != creator.0)
        .map(|(id, username)| Joiner {
            user_id: UserId(id),
            username,
        })
        .collect();
    outbox::event(
        &mut tx,
        ns,
        &Event::ChannelCreated {
            channel_id,
            title: title.to_owned(),
            creator,
            members: members.into_iter().map(UserId).collect(),
            added,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ChannelCreated {
        channel_id,
        title: title.to_owned(),
        head_count,
    })
}

/// Who asks for a membership change: the user, and the name the other
/// members' `member_joined` / `member_left` shows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Actor<'a> {
    pub id: UserId,
    pub username: &'a str,
}

/// `join` by a channel's invite code.
#[tracing::instrument(level = "debug", skip(pool, ns, code))]
pub(crate) async fn join(
    pool: &PgPool,
    ns: &Namespace,
    head_limit: i32,
    actor: Actor<'_>,
    code: &str,
) -> Result<ChannelCreated, DomainError> {
    retrying(|| join_once(pool, ns, head_limit, actor, code)).await
}

async fn join_once(
    pool: &PgPool,
    ns: &Namespace,
    head_limit: i32,
    actor: Actor<'_>,
    code: &str,
) -> Result<ChannelCreated, DomainError> {
    let user = actor.id;
    let mut tx = pool.begin().await?;
    let channel: Option<(i64, String, i32)> = sqlx::query_as(
        "SELECT id, title, head_count FROM channels WHERE invite_code = $1 FOR NO KEY UPDATE",
    )
    .bind(code)
    .fetch_optional(&mut *tx)
    .await?;
    let (id, title, head_count) = channel
        .ok_or_else(|| DomainError::rule(ErrorCode::NotFound, "unknown channel invite code"))?;
    let channel_id = ChannelId(id);
    lock_live_user(&mut tx, user).await?;
    if is_member(&mut tx, channel_id, user).await? {
        return Err(DomainError::rule(
            ErrorCode::AlreadyJoined,
            format!("already a member of channel {channel_id}"),
        ));
    }
    if head_count >= head_limit {
        return Err(DomainError::rule(
            ErrorCode::OverLimit,
            format!("channel {channel_id} is full"),
        ));
    }
    sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
        .bind(id)
        .bind(user.0)
        .execute(&mut *tx)
        .await?;
    let head_count: i32 = sqlx::query_scalar(
        "UPDATE channels SET head_count = head_count + 1 WHERE id = $1 RETURNING head_count",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    outbox::event(
        &mut tx,
        ns,
        &Event::MemberJoined {
            channel_id,
            user_id: user,
            username: Some(actor.username.to_owned()),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ChannelCreated {
        channel_id,
        title,
        head_count,
    })
}

/// `quit`: the membership ends and the head count drops, under the
/// channel lock.
#[tracing::instrument(level = "debug", skip(pool, ns))]
pub(crate) async fn quit(
    pool: &PgPool,
    ns: &Namespace,
    channel: ChannelId,
    actor: Actor<'_>,
) -> Result<(), DomainError> {
    retrying(|| quit_once(pool, ns, channel, actor)).await
}

async fn quit_once(
    pool: &PgPool,
    ns: &Namespace,
    channel: ChannelId,
    actor: Actor<'_>,
) -> Result<(), DomainError> {
    let user = actor.id;
    let mut tx = pool.begin().await?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT id FROM channels WHERE id = $1 FOR NO KEY UPDATE")
            .bind(channel.0)
            .fetch_optional(&mut *tx)
            .await?;
    locked.ok_or_else(|| not_found(channel))?;
    let removed = sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
        .bind(channel.0)
        .bind(user.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if removed == 0 {
        return Err(not_joined(channel));
    }
    sqlx::query("UPDATE channels SET head_count = head_count - 1 WHERE id = $1")
        .bind(channel.0)
        .execute(&mut *tx)
        .await?;
    outbox::event(
        &mut tx,
        ns,
        &Event::MemberLeft {
            channel_id: channel,
            user_id: user,
            username: Some(actor.username.to_owned()),
            reason: LeaveReason::Quit,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `fetch_members`: the channel's members by name, at most `limit` of
/// them (the head limit: more can only be there if it was lowered since
/// they joined), after the rules of [`membership`].
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn members(
    pool: &PgPool,
    channel: ChannelId,
    user: UserId,
    limit: i32,
) -> Result<Vec<(UserId, String)>, DomainError> {
    membership(pool, channel, user).await?;
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT u.id, u.username FROM channel_members m JOIN users u ON u.id = m.user_id \
         WHERE m.channel_id = $1 ORDER BY u.username LIMIT $2",
    )
    .bind(channel.0)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name)| (UserId(id), name))
        .collect())
}

/// `fetch_channels`: the caller's channels by id.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn list(pool: &PgPool, user: UserId) -> Result<Vec<ChannelEntry>, DomainError> {
    let rows: Vec<(i64, String, i32, i64, i64)> = sqlx::query_as(
        "SELECT c.id, c.title, c.head_count, c.last_seq, m.last_read_seq \
         FROM channel_members m JOIN channels c ON c.id = m.channel_id \
         WHERE m.user_id = $1 ORDER BY c.id",
    )
    .bind(user.0)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, title, head_count, last_seq, last_read_seq)| ChannelEntry {
                channel_id: ChannelId(id),
                title,
                head_count,
                last_seq: Seq(last_seq),
                last_read_seq: Seq(last_read_seq),
            },
        )
        .collect())
}

/// `read`: moves the member's read pointer forward to `seq` (never back).
/// `seq` above the channel's `last_seq` is `invalid_request`.
#[tracing::instrument(level = "debug", skip(pool))]
pub(crate) async fn mark_read(
    pool: &PgPool,
    channel: ChannelId,
    user: UserId,
    seq: Seq,
) -> Result<(), DomainError> {
    let member = membership(pool, channel, user).await?;
    if seq > member.last_seq {
        return Err(DomainError::rule(
            ErrorCode::InvalidRequest,
            format!(
                "seq {seq} is past the channel's last seq {}",
                member.last_seq
            ),
        ));
    }
    sqlx::query(
        "UPDATE channel_members SET last_read_seq = $3 \
         WHERE channel_id = $1 AND user_id = $2 AND last_read_seq < $3",
    )
    .bind(channel.0)
    .bind(user.0)
    .bind(seq.0)
    .execute(pool)
    .await?;
    Ok(())
}

async fn is_member(
    tx: &mut PgConnection,
    channel: ChannelId,
    user: UserId,
) -> Result<bool, DomainError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM channel_members WHERE channel_id = $1 AND user_id = $2)",
    )
    .bind(channel.0)
    .bind(user.0)
    .fetch_one(&mut *tx)
    .await?)
}

/// Locks the user's row `FOR SHARE`: an unregister waits for this
/// transaction, or already marked the user deleted.
async fn lock_live_user(tx: &mut PgConnection, user: UserId) -> Result<(), DomainError> {
    let live: Option<i64> =
        sqlx::query_scalar("SELECT id FROM users WHERE id = $1 AND deleted_at IS NULL FOR SHARE")
            .bind(user.0)
            .fetch_optional(&mut *tx)
            .await?;
    live.map(|_| ()).ok_or_else(gone)
}

fn gone() -> DomainError {
    DomainError::rule(ErrorCode::Unauthorized, "your account no longer exists")
}
