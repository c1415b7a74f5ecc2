use natter_protocol::http::paths;
use natter_testkit::{PASSWORD, Part, TestApp};
use serde_json::{Value, json};

#[tokio::test]
async fn logout_revokes_only_that_session() {
    let app = TestApp::spawn().await;
    let first = app.user("alice").await;
    let second = app.token("alice").await;
    let r = app.post(paths::LOGOUT, &json!({}), Some(&first)).await;
    assert_eq!(r.status(), 204);
    let refused = app.get(paths::ME, Some(&first)).await;
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(
        app.post(paths::LOGOUT, &json!({}), Some(&first))
            .await
            .status(),
        401
    );
    assert_eq!(app.get(paths::ME, Some(&second)).await.status(), 200);
}

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
async fn a_missing_or_forged_token_is_unauthorized() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get(paths::ME, None).await.status(), 401);
    assert_eq!(app.get(paths::ME, Some("not-a-jwt")).await.status(), 401);
    assert_eq!(
        app.post(paths::UNREGISTER, &json!({}), None).await.status(),
        401
    );
}

#[tokio::test]
async fn unregister_revokes_every_session_and_frees_the_name() {
    let app = TestApp::spawn().await;
    let first = app.user("alice").await;
    let second = app.token("alice").await;
    let r = app.post(paths::UNREGISTER, &json!({}), Some(&first)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.get(paths::ME, Some(&first)).await.status(), 401);
    assert_eq!(app.get(paths::ME, Some(&second)).await.status(), 401);
    assert_eq!(app.login("alice", PASSWORD).await.status(), 401);
    assert_eq!(app.register("alice", PASSWORD).await.status(), 201);
    let fresh = app.token("alice").await;
    assert_eq!(app.get(paths::ME, Some(&fresh)).await.status(), 200);
}

#[tokio::test]
async fn unregister_without_a_message_service_is_unavailable_and_changes_nothing() {
    let mut app = TestApp::spawn().await;
    let token = app.user("alice").await;
    app.stop_part(Part::Message).await;
    let r = app.post(paths::UNREGISTER, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "unavailable");
    assert_eq!(app.get(paths::ME, Some(&token)).await.status(), 200);
}
