//! The admin API: what an operator asks of a running natter, served under
//! `/admin/v1` on message's own port (health and `/metrics`, never behind
//! the ingress). Message hosts it because it already reaches everything the
//! answers need: Postgres, Redis presence and JetStream.
//!
//! Every request carries `Authorization: Bearer <NATTER_ADMIN_SECRET>`,
//! compared in constant time; with no secret configured every request is
//! refused, so the API is off until an operator turns it on.
//! `natter-server admin …` is its command-line client.
//!
//! - `GET online`: users with live sockets, each socket's gateway and
//!   entered channel;
//! - `GET gateways`: sockets and users per gateway;
//! - `POST users/{username}/disconnect`: revokes every session of the
//!   user, so every gateway closes their sockets (as a logout does: the
//!   revocation goes through the outbox), and their tokens stop working;
//! - `GET streams`: natter's JetStream streams (and key-value buckets)
//!   with their consumers;
//! - `GET dlq`, `POST dlq/redrive`: the dead letters ([`crate::dlq`]).

use crate::dlq::{self, DeadLetterId, Selection};
use anyhow::Context;
use async_nats::jetstream;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::TryStreamExt;
use natter_platform::Config;
use natter_platform::outbox;
use natter_platform::presence::PresenceReader;
use natter_protocol::events::SessionRevoked;
use natter_protocol::ids::{SessionId, UserId};
use natter_protocol::subjects::Namespace;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// What the handlers use.
#[derive(Clone)]
struct AdminState {
    /// The whole configuration: the dead-letter functions take it, as
    /// `natter-server dlq` does.
    config: Config,
    pool: PgPool,
    presence: PresenceReader,
    js: jetstream::Context,
    ns: Namespace,
}

/// The admin routes, each behind the secret check.
pub fn router(
    config: &Config,
    pool: PgPool,
    presence: PresenceReader,
    js: jetstream::Context,
) -> Router {
    let state = AdminState {
        config: config.clone(),
        pool,
        presence,
        js,
        ns: config.namespace(),
    };
    Router::new()
        .route("/admin/v1/online", get(online))
        .route("/admin/v1/gateways", get(gateways))
        .route("/admin/v1/users/{username}/disconnect", post(disconnect))
        .route("/admin/v1/streams", get(streams))
        .route("/admin/v1/dlq", get(dead_letters))
        .route("/admin/v1/dlq/redrive", post(redrive))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Whether `given` is `expected`, in time independent of where they
/// differ: both are hashed first, so neither the length nor a common
/// prefix shows.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.admin_secret.as_ref() else {
        return refuse(
            StatusCode::FORBIDDEN,
            "the admin API is off: set NATTER_ADMIN_SECRET",
        );
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_secret(given, expected.expose()) => next.run(request).await,
        _ => refuse(StatusCode::UNAUTHORIZED, "missing or wrong admin secret"),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let code = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

/// A failure inside a handler: logged with its cause, answered opaquely.
struct Failure(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        tracing::error!(error = ?self.0, "admin request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"code": "internal", "message": "internal error"})),
        )
            .into_response()
    }
}

#[derive(Serialize)]
struct OnlineSocket {
    gateway: String,
    socket: u64,
    entered: Option<i64>,
}

#[derive(Serialize)]
struct OnlineUser {
    user_id: UserId,
    username: String,
    sockets: Vec<OnlineSocket>,
}

async fn online(State(state): State<AdminState>) -> Result<Json<Value>, Failure> {
    let live = state.presence.everyone().await?;
    let ids: Vec<i64> = live.keys().map(|u| u.0).collect();
    let names: BTreeMap<i64, String> =
        sqlx::query_as("SELECT id, username FROM users WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&state.pool)
            .await
            .context("reading usernames")?
            .into_iter()
            .collect();
    let mut users: Vec<OnlineUser> = live
        .into_iter()
        .map(|(user, sockets)| OnlineUser {
            user_id: user,
            username: names.get(&user.0).cloned().unwrap_or_default(),
            sockets: sockets
                .into_iter()
                .map(|s| OnlineSocket {
                    gateway: s.gateway.to_string(),
                    socket: s.socket.0,
                    entered: s.entered.map(|c| c.0),
                })
                .collect(),
        })
        .collect();
    users.sort_by(|a, b| a.username.cmp(&b.username));
    Ok(Json(json!({ "users": users })))
}

async fn gateways(State(state): State<AdminState>) -> Result<Json<Value>, Failure> {
    let mut by_gateway: BTreeMap<String, (usize, std::collections::BTreeSet<UserId>)> =
        BTreeMap::new();
    for (user, sockets) in state.presence.everyone().await? {
        for socket in sockets {
            let entry = by_gateway.entry(socket.gateway.to_string()).or_default();
            entry.0 += 1;
            entry.1.insert(user);
        }
    }
    let gateways: Vec<Value> = by_gateway
        .into_iter()
        .map(|(gateway, (sockets, users))| {
            json!({"gateway": gateway, "sockets": sockets, "users": users.len()})
        })
        .collect();
    Ok(Json(json!({ "gateways": gateways })))
}

/// Revokes the user's live sessions and queues one revocation per session
/// in the same transaction, as auth's logout does (the sessions table is
/// auth's; this is the one other writer, and it writes only what a logout
/// writes).
async fn disconnect(
    State(state): State<AdminState>,
    Path(username): Path<String>,
) -> Result<Response, Failure> {
    let mut tx = state.pool.begin().await?;
    let user: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM users WHERE username = $1 AND deleted_at IS NULL")
            .bind(&username)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((user,)) = user else {
        return Ok((
            StatusCode::NOT_FOUND,
            Json(json!({"code": "not_found", "message": format!("no user {username}")})),
        )
            .into_response());
    };
    let sessions: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "UPDATE sessions SET revoked_at = now() \
         WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    for (session,) in &sessions {
        let revoked = SessionRevoked {
            session_id: SessionId(*session),
            user_id: UserId(user),
        };
        outbox::session_revoked(&mut tx, &state.ns, &revoked).await?;
    }
    tx.commit().await?;
    tracing::info!(%username, sessions = sessions.len(), "admin disconnected a user");
    Ok(Json(json!({"user_id": user, "sessions_revoked": sessions.len()})).into_response())
}

async fn streams(State(state): State<AdminState>) -> Result<Json<Value>, Failure> {
    let upper = state.ns.as_str().to_uppercase();
    let ours = |name: &str| {
        name.strip_prefix("KV_")
            .unwrap_or(name)
            .strip_prefix(&upper)
            .is_some_and(|rest| rest.starts_with('_'))
    };
    let infos: Vec<jetstream::stream::Info> = state.js.streams().try_collect().await?;
    let mut out = Vec::new();
    for info in infos.into_iter().filter(|i| ours(&i.config.name)) {
        let stream = state.js.get_stream(&info.config.name).await?;
        let consumers: Vec<Value> = stream
            .consumers()
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "pending": c.num_pending,
                    "ack_pending": c.num_ack_pending,
                    "delivered_stream_seq": c.delivered.stream_sequence,
                })
            })
            .collect();
        out.push(json!({
            "name": info.config.name,
            "subjects": info.config.subjects,
            "replicas": info.config.num_replicas,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "first_seq": info.state.first_sequence,
            "last_seq": info.state.last_sequence,
            "consumers": consumers,
        }));
    }
    Ok(Json(json!({ "streams": out })))
}

async fn dead_letters(State(state): State<AdminState>) -> Result<Json<Value>, Failure> {
    let letters = dlq::list(&state.config).await?;
    Ok(Json(json!({ "dead_letters": letters })))
}

/// Which dead letters to send again: `{"all": true}` or `{"ids": […]}`.
#[derive(Deserialize)]
struct RedriveRequest {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    ids: Vec<DeadLetterId>,
}

async fn redrive(
    State(state): State<AdminState>,
    Json(request): Json<RedriveRequest>,
) -> Result<Json<Value>, Failure> {
    let selection = if request.all {
        Selection::All
    } else {
        Selection::Ids(request.ids)
    };
    let outcome = dlq::redrive(&state.config, &selection).await?;
    Ok(Json(serde_json::to_value(outcome)?))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3cre"));
        assert!(!same_secret("", "s3cret"));
        assert!(!same_secret("S3cret", "s3cret"));
    }
}
