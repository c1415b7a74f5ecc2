//! Auth's failures and the one place they become HTTP answers.

use axum::response::{IntoResponse, Response};
use natter_platform::http_error::ApiError;
use natter_protocol::ErrorCode;

/// Everything auth can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A field is malformed; the message names it.
    #[error("{0}")]
    InvalidRequest(String),
    /// The username belongs to a live user.
    #[error("username is taken")]
    UsernameTaken,
    /// Unknown user or wrong password: deliberately the same.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// Too many failed logins; retry after this many seconds.
    #[error("too many failed logins; retry later")]
    RateLimited(u64),
    /// Missing, invalid, expired or revoked token.
    #[error("missing, invalid or revoked token")]
    Unauthorized,
    /// A backend did not answer in time.
    #[error("a backend did not answer in time")]
    Unavailable,
    /// Too many passwords are being hashed; retry after a second.
    #[error("too busy to check passwords now; retry shortly")]
    Busy,
    /// Anything else: logged, answered opaquely.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Postgres out of reach or too slow (a lock wait or statement cut short
/// by the session limits) is a 503 the client may retry; anything else a
/// 500.
impl From<sqlx::Error> for AuthError {
    fn from(e: sqlx::Error) -> Self {
        if natter_platform::db::is_unavailable(&e) {
            // Per request: /readyz and its log say so once.
            tracing::debug!(error = %e, "Postgres did not answer in time");
            Self::Unavailable
        } else {
            Self::Internal(e.into())
        }
    }
}

impl From<crate::password::Busy> for AuthError {
    fn from(_: crate::password::Busy) -> Self {
        Self::Busy
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let code = match &self {
            Self::InvalidRequest(_) => ErrorCode::InvalidRequest,
            Self::UsernameTaken => ErrorCode::UsernameTaken,
            Self::InvalidCredentials => ErrorCode::InvalidCredentials,
            Self::RateLimited(_) => ErrorCode::RateLimited,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::Unavailable | Self::Busy => ErrorCode::Unavailable,
            Self::Internal(e) => return ApiError::internal(e).into_response(),
        };
        let mut error = ApiError::new(code, self.to_string());
        match self {
            Self::RateLimited(secs) => error.retry_after = Some(secs),
            Self::Busy => error.retry_after = Some(1),
            _ => {}
        }
        error.into_response()
    }
}
