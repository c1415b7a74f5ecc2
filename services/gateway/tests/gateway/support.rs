//! The gateway alone: tokens signed with the test secret stand in for
//! auth, and no message service answers forwarded requests.

use natter_gateway::Gateway;
use natter_protocol::UserId;
use natter_protocol::http::paths;
use natter_testkit::{TestService, WsClient, token_for, ws};
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
pub fn token(app: &GatewayApp, name: &str) -> String {
    token_for(&app.config, user_id(name), name)
}

/// Opens a socket with `token`.
pub async fn connect(app: &GatewayApp, token: &str) -> WsClient {
    ws::connect(&ws_url(app), Some(token))
        .await
        .expect("the gateway accepts the socket")
}

/// A token for `name` and a socket opened with it.
pub async fn connect_user(app: &GatewayApp, name: &str) -> (String, WsClient) {
    let token = token(app, name);
    let socket = connect(app, &token).await;
    (token, socket)
}
