//! auth with the message service and the outbox relay behind it.

use natter_protocol::http::{TokenResponse, paths};
use natter_server::testing::{PASSWORD, TestApp};
use serde_json::json;

#[tokio::test]
async fn logout_announces_the_revocation_through_the_outbox() {
    let app = TestApp::spawn().await;
    let token = app.user("alice").await;
    app.post(paths::LOGOUT, &json!({}), Some(&token)).await;
    // The relay publishes and deletes the row; the stream keeps it.
    let client = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let ns = app.config.namespace();
    let mut stream = js.get_stream(ns.sessions_stream()).await.expect("stream");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let info = stream.info().await.expect("info");
        if info.state.messages == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "revocation never published"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unregister_revokes_every_session_and_frees_the_name() {
    let app = TestApp::spawn().await;
    let first = app.user("alice").await;
    let second = app.token("alice").await;
    let third: TokenResponse = app
        .login("alice", PASSWORD)
        .await
        .json()
        .await
        .expect("token body");
    let r = app.post(paths::UNREGISTER, &json!({}), Some(&first)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.get(paths::ME, Some(&first)).await.status(), 401);
    assert_eq!(app.get(paths::ME, Some(&second)).await.status(), 401);
    let refresh = json!({"refresh_token": third.refresh_token});
    assert_eq!(
        app.post(paths::REFRESH, &refresh, None).await.status(),
        401,
        "the refresh token ends with the session"
    );
    assert_eq!(app.login("alice", PASSWORD).await.status(), 401);
    assert_eq!(app.register("alice", PASSWORD).await.status(), 201);
    let fresh = app.token("alice").await;
    assert_eq!(app.get(paths::ME, Some(&fresh)).await.status(), 200);
}
