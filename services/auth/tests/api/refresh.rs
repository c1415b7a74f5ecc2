//! Refresh tokens (docs/protocol.md §2.7): rotation, reuse detection, and
//! every way a refresh token stops working.

use natter_auth::Auth;
use natter_protocol::http::{TokenResponse, paths};
use natter_testkit::{PASSWORD, TestService};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

async fn login(api: &natter_testkit::AuthClient, name: &str) -> TokenResponse {
    let r = api.login(name, PASSWORD).await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("token body")
}

async fn refresh(api: &natter_testkit::AuthClient, refresh_token: &str) -> reqwest::Response {
    api.post(
        paths::REFRESH,
        &json!({"refresh_token": refresh_token}),
        None,
    )
    .await
}

async fn refreshed(api: &natter_testkit::AuthClient, refresh_token: &str) -> TokenResponse {
    let r = refresh(api, refresh_token).await;
    assert_eq!(r.status(), 200);
    r.json().await.expect("token body")
}

async fn assert_unauthorized(r: reqwest::Response) {
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "unauthorized");
}

/// Rows of `refresh_tokens`: (hash, session, rotated).
async fn stored(app: &TestService<Auth>) -> Vec<(Vec<u8>, uuid::Uuid, bool)> {
    sqlx::query_as(
        "SELECT token_hash, session_id, rotated_at IS NOT NULL FROM refresh_tokens ORDER BY created_at",
    )
    .fetch_all(&app.pool)
    .await
    .expect("rows")
}

#[tokio::test]
async fn login_returns_a_refresh_token_the_server_keeps_only_as_its_hash() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let body: Value = api
        .login("alice", PASSWORD)
        .await
        .json()
        .await
        .expect("json");
    let token = body["refresh_token"].as_str().expect("a refresh token");
    assert!(token.len() >= 22, "at least 128 bits: {token}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "URL-safe: {token}"
    );
    let rows = stored(&app).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, Sha256::digest(token.as_bytes()).to_vec());
    assert!(!rows[0].2);
}

#[tokio::test]
async fn a_refresh_gives_a_new_pair_in_the_same_session_and_the_old_refresh_token_stops_working() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let first = login(&api, "alice").await;
    let second = refreshed(&api, &first.refresh_token).await;
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.token_type, "Bearer");
    assert_eq!(second.expires_in, 3600);
    let me: Value = api
        .get(paths::ME, Some(&second.token))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(me["username"], "alice");
    let third = refreshed(&api, &second.refresh_token).await;

    let rows = stored(&app).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.1 == rows[0].1), "one session");
    assert_eq!(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        [true, true, false]
    );
    // The session is the login's: logging out with the newest token ends
    // the first one too.
    let r = api
        .post(paths::LOGOUT, &json!({}), Some(&third.token))
        .await;
    assert_eq!(r.status(), 204);
    assert_unauthorized(api.get(paths::ME, Some(&first.token)).await).await;
}

#[tokio::test]
async fn a_rotated_refresh_token_presented_again_revokes_the_whole_session() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let other = login(&api, "alice").await;
    let first = login(&api, "alice").await;
    let second = refreshed(&api, &first.refresh_token).await;

    assert_unauthorized(refresh(&api, &first.refresh_token).await).await;

    assert_unauthorized(api.get(paths::ME, Some(&second.token)).await).await;
    assert_unauthorized(refresh(&api, &second.refresh_token).await).await;
    let announced: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE subject = $1")
        .bind(app.config.namespace().session_revoked_subject())
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(announced, 1, "the gateways are told to close its sockets");
    // Another login of the same user is untouched.
    assert_eq!(api.get(paths::ME, Some(&other.token)).await.status(), 200);
    refreshed(&api, &other.refresh_token).await;
}

#[tokio::test]
async fn of_two_refreshes_racing_with_one_token_exactly_one_wins_and_the_session_ends() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    for _ in 0..3 {
        let login = login(&api, "alice").await;
        let (a, b) = tokio::join!(
            refresh(&api, &login.refresh_token),
            refresh(&api, &login.refresh_token)
        );
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 401]);
        let winner = if a.status() == 200 { a } else { b };
        let winner: TokenResponse = winner.json().await.expect("token body");
        // The loser presented a rotated token: a reuse, whoever sent it.
        assert_unauthorized(api.get(paths::ME, Some(&winner.token)).await).await;
        assert_unauthorized(refresh(&api, &winner.refresh_token).await).await;
    }
}

#[tokio::test]
async fn unknown_and_expired_refresh_tokens_are_refused_without_ending_anything() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let login = login(&api, "alice").await;
    let long = "x".repeat(10_000);
    for unknown in ["", "not-a-token", login.token.as_str(), long.as_str()] {
        assert_unauthorized(refresh(&api, unknown).await).await;
    }
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("expire");
    assert_unauthorized(refresh(&api, &login.refresh_token).await).await;
    assert_eq!(api.get(paths::ME, Some(&login.token)).await.status(), 200);

    let r = api.post(paths::REFRESH, &json!({}), None).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "invalid_request");
}

#[tokio::test]
async fn logout_ends_the_refresh_token_with_the_session() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let login = login(&api, "alice").await;
    let r = api
        .post(paths::LOGOUT, &json!({}), Some(&login.token))
        .await;
    assert_eq!(r.status(), 204);
    assert_unauthorized(refresh(&api, &login.refresh_token).await).await;
}

#[tokio::test]
async fn refresh_tokens_live_as_configured_and_expired_ones_are_pruned() {
    let mut app = TestService::<Auth>::spawn_with(|c| c.refresh_ttl_secs = 120).await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let login = login(&api, "alice").await;
    let lifetime: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM expires_at - created_at)::float8 FROM refresh_tokens",
    )
    .fetch_one(&app.pool)
    .await
    .expect("lifetime");
    assert!((lifetime - 120.0).abs() < 1.0, "{lifetime}");
    let next = refreshed(&app.client(), &login.refresh_token).await;

    // The rotated token expires; the pruner (run at every start) deletes
    // it and leaves the current one.
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() WHERE rotated_at IS NOT NULL")
        .execute(&app.pool)
        .await
        .expect("expire");
    app.stop_service().await;
    app.start_service().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&app).await.len() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired row is pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    refreshed(&app.client(), &next.refresh_token).await;
}
