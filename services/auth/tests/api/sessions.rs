use natter_auth::Auth;
use natter_protocol::http::paths;
use natter_testkit::TestService;
use serde_json::{Value, json};

#[tokio::test]
async fn logout_revokes_only_that_session() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    let first = api.user("alice").await;
    let second = api.token("alice").await;
    let r = api.post(paths::LOGOUT, &json!({}), Some(&first)).await;
    assert_eq!(r.status(), 204);
    let refused = api.get(paths::ME, Some(&first)).await;
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");
    assert_eq!(
        api.post(paths::LOGOUT, &json!({}), Some(&first))
            .await
            .status(),
        401
    );
    assert_eq!(api.get(paths::ME, Some(&second)).await.status(), 200);
}

#[tokio::test]
async fn a_missing_or_forged_token_is_unauthorized() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    assert_eq!(api.get(paths::ME, None).await.status(), 401);
    assert_eq!(api.get(paths::ME, Some("not-a-jwt")).await.status(), 401);
    assert_eq!(
        api.post(paths::UNREGISTER, &json!({}), None).await.status(),
        401
    );
}

#[tokio::test]
async fn unregister_without_a_message_service_is_unavailable_and_changes_nothing() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    let token = api.user("alice").await;
    let r = api.post(paths::UNREGISTER, &json!({}), Some(&token)).await;
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "unavailable");
    assert_eq!(api.get(paths::ME, Some(&token)).await.status(), 200);
}
