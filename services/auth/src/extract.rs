//! Who is calling is in the signature: [`AuthUser`] verifies the bearer
//! token and that its session is live, once per request.

use crate::error::AuthError;
use crate::{AppState, store};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use natter_platform::token;
use natter_protocol::{SessionId, UserId};

/// An authenticated caller with a live session.
#[derive(Debug, Clone)]
pub(crate) struct AuthUser {
    pub user_id: UserId,
    pub username: String,
    pub session_id: SessionId,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AuthError> {
        let raw = token::bearer(&parts.headers).ok_or(AuthError::Unauthorized)?;
        let claims = state
            .keys
            .verify(raw)
            .map_err(|_| AuthError::Unauthorized)?;
        let user_id = claims.user_id().map_err(|_| AuthError::Unauthorized)?;
        let username = store::live_session_user(&state.pool, claims.session_id(), user_id)
            .await?
            .ok_or(AuthError::Unauthorized)?;
        Ok(Self {
            user_id,
            username,
            session_id: claims.session_id(),
        })
    }
}
