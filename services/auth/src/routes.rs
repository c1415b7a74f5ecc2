//! The handlers of `/api/v1/auth`.

use crate::client_addr::ClientAddr;
use crate::error::AuthError;
use crate::extract::AuthUser;
use crate::refresh::{self, RefreshToken};
use crate::{AppState, store};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use natter_platform::http_error::JsonBody;
use natter_platform::metrics;
use natter_protocol::http::{Credentials, RefreshRequest, TokenResponse, UserView, paths};
use natter_protocol::limits;
use natter_protocol::rpc::{RpcReply, UnregisterRequest};
use natter_protocol::{ErrorCode, SessionId, Username};
use std::time::Duration;

/// How long unregister waits for the message service.
const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(paths::REGISTER, post(register))
        .route(paths::LOGIN, post(login))
        .route(paths::REFRESH, post(refresh))
        .route(paths::LOGOUT, post(logout))
        .route(paths::UNREGISTER, post(unregister))
        .route(paths::ME, get(me))
        .with_state(state)
}

#[tracing::instrument(skip_all, fields(username = %body.username))]
async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<(StatusCode, Json<UserView>), AuthError> {
    let username =
        Username::parse(body.username).map_err(|e| AuthError::InvalidRequest(e.to_string()))?;
    limits::check_password(&body.password).map_err(AuthError::InvalidRequest)?;
    // NUL is refused in every client string (Postgres cannot store it in
    // text); the username check above already excludes it, and login
    // treats such a password as one that cannot exist.
    if body.password.contains('\0') {
        return Err(AuthError::InvalidRequest(
            "password must not contain NUL characters".into(),
        ));
    }
    // A taken name is answered before a hash is spent on it; the unique
    // index still decides a race between two registrations.
    if store::username_taken(&state.pool, &username).await? {
        return Err(AuthError::UsernameTaken);
    }
    let hash = state.passwords.hash(body.password).await??;
    let user = store::insert_user(&state.pool, &username, &hash).await?;
    tracing::info!(user_id = %user.user_id, "registered");
    Ok((StatusCode::CREATED, Json(user)))
}

/// Login. The limit is enforced before the password is looked at: under
/// the (name, address) advisory lock, a failure is recorded up front
/// ([`store::begin_login`]) and withdrawn only on success, so parallel
/// guesses cannot all slip through before any of them is counted. An
/// address past the limit is refused; the name's failures from every
/// address only slow it down (docs/protocol.md §1).
#[tracing::instrument(skip_all, fields(username = %body.username, client = %client.0))]
async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Json<TokenResponse>, AuthError> {
    let logins = &metrics::get().logins;
    // No user can have this name, so there is nothing to protect, no row
    // to store (junk names must not grow the table) and no hash to spend:
    // answering at once tells nothing the name itself does not.
    let Ok(username) = Username::parse(body.username) else {
        logins.add(1, &metrics::attr("outcome", "failure"));
        return Err(AuthError::InvalidCredentials);
    };
    let (attempt, delay) =
        match store::begin_login(&state.pool, &username, &client, &state.login_limits).await? {
            store::LoginGate::Blocked { retry_after } => {
                logins.add(1, &metrics::attr("outcome", "rate_limited"));
                return Err(AuthError::RateLimited(retry_after));
            }
            store::LoginGate::Open { attempt, delay } => (attempt, delay),
        };
    tokio::time::sleep(delay).await;
    let user = store::find_login(&state.pool, &username).await?;
    // A password register would refuse matches no stored hash: verify it
    // against the dummy, which never matches, in the same time.
    let possible = limits::check_password(&body.password).is_ok() && !body.password.contains('\0');
    let (stored, user) = match user {
        Some((view, hash)) if possible => (Some(hash), Some(view)),
        _ => (None, None),
    };
    let ok = match state.passwords.verify(body.password, stored).await {
        Ok(ok) => ok,
        Err(busy) => {
            // Not a failure: the password was never checked.
            store::withdraw_attempt(&state.pool, &username, &client, attempt).await?;
            return Err(busy.into());
        }
    };
    // On failure the provisional row stays: it is this attempt's failure.
    let Some(user) = user.filter(|_| ok) else {
        logins.add(1, &metrics::attr("outcome", "failure"));
        return Err(AuthError::InvalidCredentials);
    };
    store::withdraw_attempt(&state.pool, &username, &client, attempt).await?;
    logins.add(1, &metrics::attr("outcome", "success"));
    let refresh_token = RefreshToken::generate();
    let session = store::create_session(
        &state.pool,
        user.user_id,
        state.lifetimes,
        &refresh_token.hash,
    )
    .await?;
    tracing::info!(user_id = %user.user_id, session_id = %session, "logged in");
    tokens(&state, &user, session, refresh_token).map(Json)
}

/// Refresh (docs/protocol.md §2.7): a current refresh token buys a new
/// token and the next refresh token, in the same session, so its sockets
/// stay open. A token presented a second time revokes the session — the
/// server cannot tell a thief's copy from the owner's, so neither keeps
/// it — and two refreshes racing with one token are such a second time.
#[tracing::instrument(skip_all)]
async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Json<TokenResponse>, AuthError> {
    let outcome = |o: &'static str| {
        metrics::get()
            .refreshes
            .add(1, &metrics::attr("outcome", o))
    };
    let next = RefreshToken::generate();
    let presented = refresh::hash(&body.refresh_token);
    match store::refresh(
        &state.pool,
        &state.ns,
        &presented,
        &next.hash,
        state.lifetimes,
    )
    .await?
    {
        store::Refresh::Rotated { user, session } => {
            outcome("rotated");
            tracing::info!(user_id = %user.user_id, session_id = %session, "refreshed");
            tokens(&state, &user, session, next).map(Json)
        }
        store::Refresh::Refused => {
            outcome("refused");
            Err(AuthError::Unauthorized)
        }
        store::Refresh::Reused { session } => {
            outcome("reused");
            tracing::warn!(session_id = %session, "a rotated refresh token came back; session revoked");
            Err(AuthError::Unauthorized)
        }
    }
}

/// The login/refresh body: a token for `session` and `refresh_token`.
fn tokens(
    state: &AppState,
    user: &UserView,
    session: SessionId,
    refresh_token: RefreshToken,
) -> Result<TokenResponse, AuthError> {
    let token = state
        .keys
        .issue(user.user_id, &user.username, session)
        .map_err(|e| AuthError::Internal(e.into()))?;
    Ok(TokenResponse {
        token,
        token_type: "Bearer".into(),
        expires_in: state.keys.ttl_secs(),
        refresh_token: refresh_token.plain,
    })
}

#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn logout(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, AuthError> {
    store::revoke_session(&state.pool, &state.ns, user.user_id, user.session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The message service owns connections and channels, so it releases them,
/// marks the user deleted and revokes the sessions in one transaction; auth
/// answers 204 only after that, 503 if message does not answer.
#[tracing::instrument(skip_all, fields(user_id = %user.user_id))]
async fn unregister(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<StatusCode, AuthError> {
    let request = serde_json::to_vec(&UnregisterRequest {
        user_id: user.user_id,
    })
    .map_err(|e| AuthError::Internal(e.into()))?;
    let subject = state.ns.rpc_unregister();
    let headers = state.bus.signed(&subject, &request);
    let reply = tokio::time::timeout(
        UNREGISTER_TIMEOUT,
        state
            .nats
            .request_with_headers(subject, headers, request.into()),
    )
    .await
    .map_err(|_| AuthError::Unavailable)?
    .map_err(|e| {
        tracing::warn!(error = %e, "message service did not take the unregister request");
        AuthError::Unavailable
    })?;
    match serde_json::from_slice::<RpcReply>(&reply.payload) {
        Ok(RpcReply::Ok(_)) => {
            tracing::info!("unregistered");
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(RpcReply::Err(e)) if e.code == ErrorCode::NotFound => Err(AuthError::Unauthorized),
        Ok(RpcReply::Err(e)) => Err(AuthError::Internal(
            anyhow::Error::new(e).context("unregister"),
        )),
        Err(e) => Err(AuthError::Internal(e.into())),
    }
}

async fn me(user: AuthUser) -> Json<UserView> {
    Json(UserView {
        user_id: user.user_id,
        username: user.username,
    })
}
