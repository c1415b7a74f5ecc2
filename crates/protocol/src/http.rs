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

/// `POST /login` and `POST /refresh` 200 body (docs/protocol.md §1, §2.7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// Opaque; exchanged once, at `POST /refresh`, for the next pair.
    pub refresh_token: String,
}

/// `POST /refresh` body (docs/protocol.md §2.7).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh.
    pub refresh_token: String,
}

/// Paths of the auth API, shared by the service, the client and tests.
pub mod paths {
    /// `POST` credentials → 201 user.
    pub const REGISTER: &str = "/api/v1/auth/register";
    /// `POST` credentials → 200 token.
    pub const LOGIN: &str = "/api/v1/auth/login";
    /// `POST` a refresh token → 200 token (§2.7).
    pub const REFRESH: &str = "/api/v1/auth/refresh";
    /// `POST` (Bearer) → 204.
    pub const LOGOUT: &str = "/api/v1/auth/logout";
    /// `POST` (Bearer) → 204.
    pub const UNREGISTER: &str = "/api/v1/auth/unregister";
    /// `GET` (Bearer) → the user.
    pub const ME: &str = "/api/v1/auth/me";
    /// The gateway's WebSocket path.
    pub const WEBSOCKET: &str = "/ws/v1/message";
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_token_response_carries_the_refresh_token_beside_the_token() {
        let body = TokenResponse {
            token: "t".into(),
            token_type: "Bearer".into(),
            expires_in: 3600,
            refresh_token: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serialize"),
            json!({"token": "t", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "r"})
        );
        let request: RefreshRequest =
            serde_json::from_value(json!({"refresh_token": "r"})).expect("decode");
        assert_eq!(request.refresh_token, "r");
    }
}
