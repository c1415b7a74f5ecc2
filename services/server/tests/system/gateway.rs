//! The gateway with auth's revocations and the message service behind it.

use natter_protocol::close;
use natter_protocol::http::{TokenResponse, paths};
use natter_server::Service;
use natter_server::testing::{PASSWORD, TestApp, ws};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn answers_to_bad_frames_wait_their_turn_behind_earlier_requests() {
    let app = TestApp::spawn().await;
    let (_, mut ws) = app.ws_user("alice").await;
    // fetch_channels goes to the message service and back; the bad frames
    // behind it are refused at the gateway, yet answered after it.
    ws.send_text(r#"{"id":1,"type":"fetch_channels"}"#).await;
    ws.send_text("garbage").await;
    ws.send_binary(vec![0]).await;
    ws.send_text(r#"{"id":2,"type":"keep_alive"}"#).await;
    let order: Vec<serde_json::Value> = vec![
        ws.next_answer().await["id"].clone(),
        ws.next_answer().await["id"].clone(),
        ws.next_answer().await["id"].clone(),
        ws.next_answer().await["id"].clone(),
    ];
    assert_eq!(order, vec![json!(1), json!(null), json!(null), json!(2)]);
}

#[tokio::test]
async fn logout_closes_the_sessions_sockets_and_the_token_cannot_reconnect() {
    let app = TestApp::spawn().await;
    let (token, mut first) = app.ws_user("alice").await;
    let mut second = app.ws(&token).await;
    let other_token = app.token("alice").await;
    let mut other = app.ws(&other_token).await;

    let r = app.post(paths::LOGOUT, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 204);
    for socket in [&mut first, &mut second] {
        socket.push("session_revoked").await;
        assert_eq!(
            socket.closed_within(Duration::from_secs(5)).await.code,
            close::POLICY_VIOLATION
        );
    }
    let refusal = ws::connect(&app.ws_url(), Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.0, 401);
    assert_eq!(other.call("keep_alive", json!({})).await, Ok(json!({})));
}

#[tokio::test]
async fn a_refresh_keeps_the_sockets_and_a_reused_refresh_token_closes_them() {
    let app = TestApp::spawn().await;
    app.register("alice", PASSWORD).await;
    let login: TokenResponse = app
        .login("alice", PASSWORD)
        .await
        .json()
        .await
        .expect("token body");
    let mut first = app.ws(&login.token).await;
    let refresh = |token: &str| json!({"refresh_token": token});
    let r = app
        .post(paths::REFRESH, &refresh(&login.refresh_token), None)
        .await;
    assert_eq!(r.status(), 200);
    let next: TokenResponse = r.json().await.expect("token body");
    let mut second = app.ws(&next.token).await;
    assert_eq!(first.call("keep_alive", json!({})).await, Ok(json!({})));

    let reuse = app
        .post(paths::REFRESH, &refresh(&login.refresh_token), None)
        .await;
    assert_eq!(reuse.status(), 401);
    for socket in [&mut first, &mut second] {
        socket.push("session_revoked").await;
        assert_eq!(
            socket.closed_within(Duration::from_secs(5)).await.code,
            close::POLICY_VIOLATION
        );
    }
    let refusal = ws::connect(&app.ws_url(), Some(&next.token))
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.0, 401);
}

#[tokio::test]
async fn unregister_closes_every_socket_of_the_user() {
    let app = TestApp::spawn().await;
    let (token, mut ws) = app.ws_user("alice").await;
    let r = app.post(paths::UNREGISTER, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 204);
    ws.push("session_revoked").await;
    assert_eq!(
        ws.closed_within(Duration::from_secs(5)).await.code,
        close::POLICY_VIOLATION
    );
}

#[tokio::test]
async fn a_gateway_started_after_a_logout_still_refuses_the_token() {
    let mut app = TestApp::spawn().await;
    let token = app.user("alice").await;
    app.post(paths::LOGOUT, &json!({}), Some(&token)).await;
    // Let the relay publish the revocation, then start a fresh gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop_part(Service::Gateway).await;
    app.start(Service::Gateway).await;
    let refusal = ws::connect(&app.ws_url(), Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.0, 401);
}

#[tokio::test]
async fn a_logged_out_token_is_refused_while_the_relay_has_not_announced_it() {
    let mut app = TestApp::spawn().await;
    let token = app.user("alice").await;
    app.ws(&token).await.close().await;
    // The relay runs in the message service: without it, nothing reaches
    // the sessions stream.
    app.stop_part(Service::Message).await;
    let r = app.post(paths::LOGOUT, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 204);
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(unpublished, 1, "the revocation is still in the outbox");
    let refusal = ws::connect(&app.ws_url(), Some(&token))
        .await
        .err()
        .expect("refused");
    assert_eq!(refusal.0, 401);
}
