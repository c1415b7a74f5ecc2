//! One handler per request type (docs/protocol.md §2.1 and §2.2).
//!
//! Handlers stay thin: the request's stateless limits are checked again
//! here (the message service does not trust its callers), then the rules
//! that need state run in [`crate::store`], in the order docs/protocol.md writes
//! them. `write_message` goes through the batching [`crate::writer`].

use crate::AppState;
use crate::error::DomainError;
use crate::store::channels::Actor;
use crate::store::messages::{Page, WriteRequest};
use crate::store::{channels, connections, messages, users};
use anyhow::Context;
use natter_platform::telemetry::propagation;
use natter_protocol::events::Event;
use natter_protocol::frames::results::{
    ChannelInviteCode, Channels, ConnectionEntry, Connections, Empty, Entered, MemberEntry,
    Members, Messages, Quit, UserInviteCode,
};
use natter_protocol::frames::{ConnectionFilter, ConnectionStatus, Request};
use natter_protocol::rpc::Caller;
use natter_protocol::{ChannelId, ErrorCode, limits};
use serde::Serialize;

/// Answers one forwarded request: its `result`, or why not.
#[tracing::instrument(level = "debug", skip_all, fields(request = request.kind(), user = %caller.user_id))]
pub(crate) async fn handle(
    state: &AppState,
    caller: &Caller,
    request: Request,
) -> Result<serde_json::Value, DomainError> {
    request.validate().map_err(DomainError::Rule)?;
    let me = caller.user_id;
    let actor = Actor {
        id: me,
        username: &caller.username,
    };
    let pool = &state.pool;
    match request {
        // Answered by the gateway; harmless if one arrives anyway.
        Request::KeepAlive | Request::Leave => result(&Empty {}),
        Request::FetchUserInviteCode => result(&UserInviteCode {
            invite_code: users::invite_code(pool, me).await?,
        }),
        Request::Invite { invite_code } => {
            result(&connections::invite(pool, &state.ns, state.limits, me, &invite_code).await?)
        }
        Request::Accept { username } => {
            result(&connections::accept(pool, &state.ns, state.limits, me, &username).await?)
        }
        Request::Reject { username } => result(&connections::reject(pool, me, &username).await?),
        Request::Disconnect { username } => {
            result(&connections::disconnect(pool, &state.ns, me, &username).await?)
        }
        Request::FetchConnections { status } => fetch_connections(state, caller, status).await,
        Request::Create { title, usernames } => {
            if usernames.contains(&caller.username) {
                return Err(DomainError::rule(
                    ErrorCode::InvalidRequest,
                    "usernames must not include your own",
                ));
            }
            let limits = state.limits;
            result(&channels::create(pool, &state.ns, limits, me, &title, &usernames).await?)
        }
        Request::Join { invite_code } => {
            result(&channels::join(pool, &state.ns, state.limits, actor, &invite_code).await?)
        }
        Request::FetchChannels => {
            let mut channels = channels::list(pool, me).await?;
            let fit = limits::fitting(&channels, limits::MAX_LIST_BYTES);
            if fit < channels.len() {
                // Unreachable within the default limits (README
                // "Security"): only a raised NATTER_CHANNELS_PER_USER gets
                // here, and the reply must still fit.
                tracing::warn!(
                    user = %me,
                    channels = channels.len(),
                    listed = fit,
                    "fetch_channels cut to the reply size limit"
                );
                channels.truncate(fit);
            }
            result(&Channels { channels })
        }
        Request::FetchMembers { channel_id } => fetch_members(state, caller, channel_id).await,
        Request::FetchChannelInviteCode { channel_id } => {
            let member = channels::membership(pool, channel_id, me).await?;
            result(&ChannelInviteCode {
                channel_id,
                invite_code: member.invite_code,
            })
        }
        Request::Enter { channel_id } => {
            let member = channels::membership(pool, channel_id, me).await?;
            result(&Entered {
                channel_id,
                title: member.title,
                last_read_seq: member.last_read_seq,
                last_seq: member.last_seq,
            })
        }
        Request::Quit { channel_id } => {
            channels::quit(pool, &state.ns, channel_id, actor).await?;
            result(&Quit { channel_id })
        }
        Request::WriteMessage {
            channel_id,
            client_msg_id,
            content,
        } => {
            let written = state
                .writer
                .write(WriteRequest {
                    user_id: me,
                    username: caller.username.clone(),
                    origin: caller.socket.clone(),
                    channel_id,
                    client_msg_id,
                    content,
                    traceparent: natter_platform::telemetry::propagation::traceparent(),
                })
                .await?;
            result(&written)
        }
        Request::FetchMessages {
            channel_id,
            after_seq,
            before_seq,
            limit,
        } => {
            let page = after_seq.map_or(Page::Before(before_seq), Page::After);
            let limit = limit.unwrap_or(limits::FETCH_LIMIT_DEFAULT);
            result(&Messages {
                channel_id,
                messages: messages::fetch(pool, &state.history, channel_id, me, page, limit)
                    .await?,
            })
        }
        Request::Read { channel_id, seq } => {
            channels::mark_read(pool, channel_id, me, seq).await?;
            result(&Empty {})
        }
        Request::Typing { channel_id } => typing(state, caller, channel_id).await,
    }
}

/// Most rows a connection list reads: as many of the smallest entries
/// (`{"username":"abc","status":"pending","online":true},`, 52 bytes) as
/// fit in a reply.
const MAX_CONNECTION_ROWS: i64 = (limits::MAX_LIST_BYTES / 52 + 1) as i64;

/// `fetch_connections` with each partner's `online` flag, as many as fit
/// in a reply (docs/protocol.md §2.6). Accepted connections always fit
/// (1,000 of at most 83 bytes); received invitations have no limit of
/// their own, so a flood of them lists the first that fit, and answering
/// those brings up the rest.
async fn fetch_connections(
    state: &AppState,
    caller: &Caller,
    filter: ConnectionFilter,
) -> Result<serde_json::Value, DomainError> {
    let partners =
        connections::list(&state.pool, caller.user_id, filter, MAX_CONNECTION_ROWS).await?;
    let status = match filter {
        ConnectionFilter::Accepted => ConnectionStatus::Accepted,
        ConnectionFilter::Pending => ConnectionStatus::Pending,
    };
    // Sized with `online: false`, the longer value, before presence is
    // asked about only the users listed.
    let mut entries: Vec<ConnectionEntry> = partners
        .iter()
        .map(|(_, username)| ConnectionEntry {
            username: username.clone(),
            status,
            online: false,
        })
        .collect();
    entries.truncate(limits::fitting(&entries, limits::MAX_LIST_BYTES));
    let ids: Vec<_> = partners[..entries.len()]
        .iter()
        .map(|(id, _)| *id)
        .collect();
    let online = state.presence.online(&ids).await?;
    for (entry, id) in entries.iter_mut().zip(&ids) {
        entry.online = online.contains(id);
    }
    result(&Connections {
        connections: entries,
    })
}

/// `fetch_members` with each member's `online` flag, as many as fit in a
/// reply (docs/protocol.md §2.6): all of them within the default head
/// limit; only a raised `NATTER_HEAD_LIMIT` can list fewer.
async fn fetch_members(
    state: &AppState,
    caller: &Caller,
    channel_id: ChannelId,
) -> Result<serde_json::Value, DomainError> {
    let members = channels::members(
        &state.pool,
        channel_id,
        caller.user_id,
        state.limits.head_limit,
    )
    .await?;
    // Sized with `online: false`, the longer value, before presence is
    // asked about only the members listed.
    let mut entries: Vec<MemberEntry> = members
        .iter()
        .map(|(_, username)| MemberEntry {
            username: username.clone(),
            online: false,
        })
        .collect();
    entries.truncate(limits::fitting(&entries, limits::MAX_LIST_BYTES));
    let ids: Vec<_> = members[..entries.len()].iter().map(|(id, _)| *id).collect();
    let online = state.presence.online(&ids).await?;
    for (entry, id) in entries.iter_mut().zip(&ids) {
        entry.online = online.contains(id);
    }
    result(&Members { members: entries })
}

/// `typing`: ephemeral, so published with core NATS on its own subject,
/// outside the events stream (no outbox row, nothing kept anywhere);
/// push fans it out if it is listening, and a lost notice costs nothing.
async fn typing(
    state: &AppState,
    caller: &Caller,
    channel_id: ChannelId,
) -> Result<serde_json::Value, DomainError> {
    channels::membership(&state.pool, channel_id, caller.user_id).await?;
    let event = Event::Typing {
        channel_id,
        user_id: caller.user_id,
        username: caller.username.clone(),
        origin: caller.socket.clone(),
    };
    let payload = serde_json::to_vec(&event).map_err(anyhow::Error::from)?;
    let subject = state.ns.typing_subject(channel_id);
    let headers = propagation::headers();
    if headers.is_empty() {
        state.nats.publish(subject, payload.into()).await
    } else {
        state
            .nats
            .publish_with_headers(subject, headers, payload.into())
            .await
    }
    .context("publishing typing")?;
    result(&Empty {})
}

fn result(value: &impl Serialize) -> Result<serde_json::Value, DomainError> {
    serde_json::to_value(value).map_err(|e| DomainError::Internal(e.into()))
}
