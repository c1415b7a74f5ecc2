use natter_protocol::http::{TokenResponse, UserView, paths};
use natter_testkit::{PASSWORD, TestApp};
use serde_json::Value;

#[tokio::test]
async fn login_returns_a_bearer_token_that_opens_me() {
    let app = TestApp::spawn().await;
    app.register("alice", PASSWORD).await;
    let r = app.login("alice", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let token: TokenResponse = r.json().await.expect("token");
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expires_in, 3600);
    let me = app.get(paths::ME, Some(&token.token)).await;
    assert_eq!(me.status(), 200);
    let user: UserView = me.json().await.expect("user");
    assert_eq!(user.username, "alice");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.register("alice", PASSWORD).await;
    let wrong = app.login("alice", "wrong password").await;
    let unknown = app.login("nobody", PASSWORD).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let a: Value = wrong.json().await.expect("json");
    let b: Value = unknown.json().await.expect("json");
    assert_eq!(a, b);
    assert_eq!(a["code"], "invalid_credentials");
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_even_for_the_right_password() {
    let app = TestApp::spawn().await;
    app.register("alice", PASSWORD).await;
    for _ in 0..5 {
        assert_eq!(app.login("alice", "wrong password").await.status(), 401);
    }
    let r = app.login("alice", PASSWORD).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=900).contains(&retry), "{retry}");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "rate_limited");
    // Another username is not affected.
    app.register("bob", PASSWORD).await;
    assert_eq!(app.login("bob", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn unknown_usernames_are_rate_limited_too() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        assert_eq!(app.login("ghost", PASSWORD).await.status(), 401);
    }
    assert_eq!(app.login("ghost", PASSWORD).await.status(), 429);
}
