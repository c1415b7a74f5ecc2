//! The auth service's HTTP bodies (docs/protocol.md §1).

use crate::UserId;
use serde::{Deserialize, Serialize};

/// `POST /register` and `POST /login` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    /// 3–32 of `[a-z0-9_.-]`.
    pub username: String,
    /// 8–128 chars.
    pub password: String,
}

/// A user as auth shows it (`/register` 201, `/me`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    /// The user's id.
    pub user_id: UserId,
    /// The user's name.
    pub username: String,
}

/// `POST /login` 200 body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Paths of the auth API, shared by the service, the client and tests.
pub mod paths {
    /// `POST` credentials → 201 user.
    pub const REGISTER: &str = "/api/v1/auth/register";
    /// `POST` credentials → 200 token.
    pub const LOGIN: &str = "/api/v1/auth/login";
    /// `POST` (Bearer) → 204.
    pub const LOGOUT: &str = "/api/v1/auth/logout";
    /// `POST` (Bearer) → 204.
    pub const UNREGISTER: &str = "/api/v1/auth/unregister";
    /// `GET` (Bearer) → the user.
    pub const ME: &str = "/api/v1/auth/me";
    /// The gateway's WebSocket path.
    pub const WEBSOCKET: &str = "/ws/v1/message";
}
