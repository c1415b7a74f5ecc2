//! Channels and their members.
//!
//! `head_count` changes only under the channel's row lock, in the same
//! transaction as the member row, so it always equals the number of
//! members and a full channel is refused under the lock, never after the
//! fact. Joining locks the joiner's user row `FOR NO KEY UPDATE` after the
//! channel lock (create locks its members' rows the same way), so it cannot
//! race an unregister (which locks channels, then users), and a user's
//! memberships are counted under that lock: the membership limit
//! (docs/protocol.md §2.6) holds under any concurrency.

use crate::Limits;
use crate::error::DomainError;
use crate::store::retrying;
use natter_platform::outbox;
use natter_protocol::events::{Event, Joiner};
use natter_protocol::frames::LeaveReason;
use natter_protocol::frames::results::{ChannelCreated, ChannelEntry};
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, ErrorCode, Seq, UserId, Username};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;

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
    limits: Limits,
    creator: UserId,
    title: &str,
    usernames: &[String],
) -> Result<ChannelCreated, DomainError> {
    // A name that cannot be a username reveals nothing: no user has it.
    let impossible: Vec<&str> = usernames
        .iter()
        .map(String::as_str)
        .filter(|n| Username::parse(*n).is_err())
        .collect();
    if !impossible.is_empty() {
        return Err(DomainError::rule(
            ErrorCode::UnknownUsers,
            names_message("unknown users", &impossible),
        ));
    }
    retrying(|| create_once(pool, ns, limits, creator, title, usernames)).await
}

/// Whether `$2` (a user row's id) is an accepted connection of `$1`.
const ACCEPTED_WITH: &str = "EXISTS (SELECT 1 FROM user_connections c WHERE c.status = 'accepted' \
     AND c.user_low = LEAST($1, u.id) AND c.user_high = GREATEST($1, u.id))";

async fn create_once(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
    creator: UserId,
    title: &str,
    usernames: &[String],
) -> Result<ChannelCreated, DomainError> {
    let mut tx = pool.begin().await?;
    // Only the creator and their connections are locked, and only they
    // are told apart: every other name — someone's or no one's — is
    // answered alike (docs/protocol.md §2.6), and naming strangers locks
    // nothing of theirs. The locks (`FOR NO KEY UPDATE`, users ascending)
    // serialize every membership change of these users until commit, so
    // none can unregister, drop the connection or join elsewhere between
    // the checks and the insert.
    let locked: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT u.id FROM users u WHERE u.deleted_at IS NULL \
           AND (u.id = $1 OR (u.username = ANY($2) AND {ACCEPTED_WITH})) \
         ORDER BY u.id FOR NO KEY UPDATE"
    ))
    .bind(creator.0)
    .bind(usernames)
    .fetch_all(&mut *tx)
    .await?;
    if !locked.contains(&creator.0) {
        return Err(gone());
    }
    // Read again under the locks: the filter above may have seen a pair
    // that a transaction we waited for has since disconnected.
    let connected: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(&format!(
        "SELECT u.username, u.id FROM users u \
         WHERE u.id = ANY($2) AND u.id <> $1 AND u.deleted_at IS NULL AND {ACCEPTED_WITH}"
    ))
    .bind(creator.0)
    .bind(&locked)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // Maps and sets, not list scans: `usernames` may be long (the service
    // takes any caller's list), and matching must stay linear in it.
    let unconnected: Vec<&str> = usernames
        .iter()
        .map(String::as_str)
        .filter(|n| !connected.contains_key(*n))
        .collect();
    if !unconnected.is_empty() {
        return Err(DomainError::rule(
            ErrorCode::UnconnectedUsers,
            names_message("not connected with", &unconnected),
        ));
    }
    let others: Vec<i64> = usernames
        .iter()
        .filter_map(|n| connected.get(n.as_str()).copied())
        .collect();
    let head_count = i32::try_from(others.len() + 1).unwrap_or(i32::MAX);
    if head_count > limits.head_limit {
        return Err(DomainError::limit(
            "head",
            format!("a channel has at most {} members", limits.head_limit),
        ));
    }
    let mut members = others;
    members.push(creator.0);
    members.sort_unstable();
    let full = at_membership_limit(&mut tx, &members, limits.channels_per_user).await?;
    if !full.is_empty() {
        let names: HashMap<i64, &str> = connected.iter().map(|(n, id)| (*id, n.as_str())).collect();
        let full: Vec<&str> = full
            .iter()
            .map(|id| names.get(id).copied().unwrap_or("you"))
            .collect();
        return Err(DomainError::limit(
            "memberships",
            names_message(
                &format!(
                    "in as many channels as a user may ({})",
                    limits.channels_per_user
                ),
                &full,
            ),
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
    sqlx::query(
        "INSERT INTO channel_members (channel_id, user_id) SELECT $1, u FROM UNNEST($2::bigint[]) AS u",
    )
    .bind(channel)
    .bind(&members)
    .execute(&mut *tx)
    .await?;
    let channel_id = ChannelId(channel);
    let mut added: Vec<Joiner> = connected
        .into_iter()
        .map(|(username, id)| Joiner {
            user_id: UserId(id),
            username,
        })
        .collect();
    added.sort_unstable_by_key(|joiner| joiner.user_id.0);
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

/// Most names an error message lists: the reply must stay small however
/// many a request named.
const NAMES_LISTED: usize = 20;

/// `"<what>: a, b, c"`, with at most [`NAMES_LISTED`] names and a count of
/// the rest.
fn names_message(what: &str, names: &[&str]) -> String {
    let shown = names[..names.len().min(NAMES_LISTED)].join(", ");
    match names.len().saturating_sub(NAMES_LISTED) {
        0 => format!("{what}: {shown}"),
        more => format!("{what}: {shown} and {more} more"),
    }
}

/// Which of `users` (whose rows the caller has locked) are already in as
/// many channels as a user may be.
async fn at_membership_limit(
    tx: &mut PgConnection,
    users: &[i64],
    limit: i32,
) -> Result<Vec<i64>, DomainError> {
    Ok(sqlx::query_scalar(
        "SELECT user_id FROM channel_members WHERE user_id = ANY($1) \
         GROUP BY user_id HAVING count(*) >= $2 ORDER BY user_id",
    )
    .bind(users)
    .bind(i64::from(limit))
    .fetch_all(&mut *tx)
    .await?)
}

/// `join` by a channel's invite code.
#[tracing::instrument(level = "debug", skip(pool, ns, code))]
pub(crate) async fn join(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
    actor: Actor<'_>,
    code: &str,
) -> Result<ChannelCreated, DomainError> {
    retrying(|| join_once(pool, ns, limits, actor, code)).await
}

async fn join_once(
    pool: &PgPool,
    ns: &Namespace,
    limits: Limits,
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
    if head_count >= limits.head_limit {
        return Err(DomainError::limit(
            "head",
            format!("channel {channel_id} is full"),
        ));
    }
    if !at_membership_limit(&mut tx, &[user.0], limits.channels_per_user)
        .await?
        .is_empty()
    {
        return Err(DomainError::limit(
            "memberships",
            format!(
                "you are in as many channels as a user may ({})",
                limits.channels_per_user
            ),
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

/// Locks the user's row `FOR NO KEY UPDATE`: an unregister waits for this
/// transaction, or already marked the user deleted, and the user's other
/// joins and creates wait too, so their membership count holds until
/// commit.
async fn lock_live_user(tx: &mut PgConnection, user: UserId) -> Result<(), DomainError> {
    let live: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM users WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE",
    )
    .bind(user.0)
    .fetch_optional(&mut *tx)
    .await?;
    live.map(|_| ()).ok_or_else(gone)
}

fn gone() -> DomainError {
    DomainError::rule(ErrorCode::Unauthorized, "your account no longer exists")
}
