//! The gateway alone: tokens signed with the test secret, and the user and
//! session rows written straight into the test's database, stand in for
//! auth; no message service answers forwarded requests.

use natter_gateway::Gateway;
use natter_platform::token::TokenKeys;
use natter_protocol::http::paths;
use natter_protocol::{SessionId, UserId};
use natter_testkit::{TestService, WsClient, ws};
use std::hash::{DefaultHasher, Hash, Hasher};

pub type GatewayApp = TestService<Gateway>;

/// `ws://…/ws/v1/message` of the gateway.
pub fn ws_url(app: &GatewayApp) -> String {
    format!("ws://{}{}", app.addr(), paths::WEBSOCKET)
}

/// The user id `name`'s tokens carry (each test has a namespace of its
/// own, so ids need only differ between names).
pub fn user_id(name: &str) -> UserId {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    UserId(i64::try_from(h.finish() >> 1).expect("63 bits fit"))
}

/// A fresh session's token for `name`, as auth would issue it at login.
pub async fn token(app: &GatewayApp, name: &str) -> String {
    session_token(app, name).await.0
}

/// Logs `name` in as auth would: a user row (once), a live session row,
/// and a token for that session.
pub async fn session_token(app: &GatewayApp, name: &str) -> (String, SessionId) {
    let user = user_id(name);
    let session = SessionId(uuid::Uuid::new_v4());
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, invite_code) VALUES ($1, $2, '', $2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(user.0)
    .bind(name)
    .execute(&app.pool)
    .await
    .expect("user row");
    sqlx::query(
        "INSERT INTO sessions (id, user_id, expires_at) \
         VALUES ($1, $2, now() + make_interval(secs => $3))",
    )
    .bind(session.0)
    .bind(user.0)
    .bind(app.config.token_ttl_secs as f64)
    .execute(&app.pool)
    .await
    .expect("session row");
    let secret = app.config.jwt_secret.as_deref().expect("a JWT secret");
    let token = TokenKeys::new(secret.as_bytes(), app.config.token_ttl_secs)
        .issue(user, name, session)
        .expect("signing a token");
    (token, session)
}

/// Opens a socket with `token`.
pub async fn connect(app: &GatewayApp, token: &str) -> WsClient {
    ws::connect(&ws_url(app), Some(token))
        .await
        .expect("the gateway accepts the socket")
}

/// A token for `name` and a socket opened with it.
pub async fn connect_user(app: &GatewayApp, name: &str) -> (String, WsClient) {
    let token = token(app, name).await;
    let socket = connect(app, &token).await;
    (token, socket)
}
