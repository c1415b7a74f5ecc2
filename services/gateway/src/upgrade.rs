//! `GET /ws/v1/message`: authenticate, then upgrade. A missing, invalid,
//! expired or revoked token gets 401 with the JSON error body and no
//! socket; a draining or full gateway gets 503; a user who already holds
//! as many sockets as they may, on any gateway, gets 429. Revoked means
//! known revoked from the sessions stream, or not live in Postgres
//! (checked after the cheap refusals, as the one step that costs a round
//! trip, and before the socket counts against the user's limit).

use crate::{Shared, socket};
use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use natter_platform::http_error::ApiError;
use natter_platform::{presence, token};
use natter_protocol::ErrorCode;
use natter_protocol::limits::MAX_FRAME_BYTES;
use std::sync::Arc;

/// Bytes tungstenite reserves to read into per socket (its default, 128
/// KiB, would cost 25 GiB at 200,000 sockets); frames larger than this
/// still arrive, the buffer grows for them. Every idle socket keeps this
/// much: at 512 instead of 1,024 an idle socket measured ~700 B less (3.2
/// against 3.9–4.1 KB) and throughput the same within the noise.
const READ_BUFFER: usize = 512;
/// Bytes of frames tungstenite gathers before it writes them; a flush
/// writes the rest. With 0 (every frame written as it is fed) a batch of
/// queued pushes cost a `sendto` each. tungstenite keeps the buffer's
/// capacity once grown, so this also bounds what a busy socket holds
/// between writes; an idle socket holds none.
const WRITE_BUFFER: usize = 8 * 1024;

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let unauthorized = || {
        ApiError::new(ErrorCode::Unauthorized, "missing, invalid or revoked token").into_response()
    };
    let Some(raw) = token::bearer(&headers) else {
        return unauthorized();
    };
    let Ok(claims) = shared.keys.verify(raw) else {
        return unauthorized();
    };
    let Ok(user_id) = claims.user_id() else {
        return unauthorized();
    };
    if shared.revoked.contains(claims.session_id()) {
        return unauthorized();
    }
    if shared.readiness.is_draining() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "gateway is shutting down; reconnect",
        )
        .into_response();
    }
    let Ok(permit) = shared.sockets.clone().try_acquire_owned() else {
        return ApiError::new(ErrorCode::Unavailable, "gateway is full; try another")
            .into_response();
    };
    if !shared.sessions.is_live(claims.session_id(), user_id).await {
        return unauthorized();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(ErrorCode::InvalidRequest, rejection.body_text()).into_response();
        }
    };
    let socket_id = shared.registry.next_id();
    let limit = shared.settings.sockets_per_user;
    if !shared.presence.admit(user_id, socket_id, limit).await {
        let mut refusal = ApiError::new(
            ErrorCode::RateLimited,
            format!("you already hold {limit} sockets; close one first"),
        );
        refusal.retry_after = Some(presence::HEARTBEAT.as_secs());
        return refusal.into_response();
    }
    let admitted = socket::Admitted::new(user_id, socket_id, claims, shared.presence.clone());
    let tracked = shared.tracker.token();
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |ws| socket::run(ws, shared, admitted, permit, tracked))
}
