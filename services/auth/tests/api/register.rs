use natter_auth::Auth;
use natter_protocol::http::{UserView, paths};
use natter_testkit::{PASSWORD, TestService};
use serde_json::{Value, json};

#[tokio::test]
async fn register_creates_a_user_with_an_invite_code() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    let r = api.register("alice", PASSWORD).await;
    assert_eq!(r.status(), 201);
    let user: UserView = r.json().await.expect("user body");
    assert_eq!(user.username, "alice");
    let (code, hash): (String, String) =
        sqlx::query_as("SELECT invite_code, password_hash FROM users WHERE id = $1")
            .bind(user.user_id.0)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert!(code.len() >= 22, "invite code carries >= 128 bits: {code}");
    assert!(hash.starts_with("$argon2id$"), "argon2id hash: {hash}");
}

#[tokio::test]
async fn a_taken_username_is_a_conflict() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    assert_eq!(api.register("bob", PASSWORD).await.status(), 201);
    let r = api.register("bob", "another password").await;
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], "username_taken");
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_give_exactly_one_user() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    let attempts = (0..8).map(|_| api.register("carol", PASSWORD));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn bad_usernames_and_passwords_name_the_field() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    let cases = [
        ("ab", PASSWORD, "username"),
        ("Alice", PASSWORD, "username"),
        ("with space", PASSWORD, "username"),
        (&"x".repeat(33), PASSWORD, "username"),
        ("dave", "short", "password"),
        ("dave", &"p".repeat(129), "password"),
    ];
    for (name, password, field) in cases {
        let r = api.register(name, password).await;
        assert_eq!(r.status(), 400, "{name}/{password}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["code"], "invalid_request");
        assert!(
            body["message"].as_str().expect("message").contains(field),
            "{body}"
        );
    }
}

#[tokio::test]
async fn missing_and_mistyped_fields_are_invalid_requests_naming_the_field() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    for (body, field) in [
        (json!({"username": "erin"}), "password"),
        (json!({"password": PASSWORD}), "username"),
        (json!({"username": 5, "password": PASSWORD}), "username"),
    ] {
        let r = api.post(paths::REGISTER, &body, None).await;
        assert_eq!(r.status(), 400, "{body}");
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["code"], "invalid_request");
        assert!(
            err["message"].as_str().expect("message").contains(field),
            "{err}"
        );
    }
}

#[tokio::test]
async fn nul_characters_are_invalid_requests_naming_the_field() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    for (name, password, field) in [
        ("da\u{0}ve", PASSWORD, "username"),
        ("dave", "pass\u{0}word-long", "password"),
    ] {
        let r = api.register(name, password).await;
        assert_eq!(r.status(), 400, "{name:?}/{password:?}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["code"], "invalid_request");
        assert!(
            body["message"].as_str().expect("message").contains(field),
            "{body}"
        );
    }
}

/// With no hashing slot to be had, what needs a hash is refused with 503
/// and `Retry-After`, and what does not is answered as always: so nothing
/// hashes for a name that cannot exist or one that is taken.
#[tokio::test]
async fn without_a_hashing_slot_only_what_needs_a_hash_is_refused() {
    let app = TestService::<Auth>::spawn_with(|c| {
        c.hash_concurrency = Some(0);
        c.hash_wait_ms = 100;
    })
    .await;
    let api = app.client();
    for r in [
        api.register("carol", PASSWORD).await,
        api.login("carol", PASSWORD).await,
    ] {
        assert_eq!(r.status(), 503);
        let retry = r.headers().get("retry-after").expect("Retry-After");
        assert_eq!(retry, "1");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["code"], "unavailable");
    }
    // A 503 is not a failed login: nothing counts against carol.
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM login_failures")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(failures, 0);
    sqlx::query(
        "INSERT INTO users (username, password_hash, invite_code) VALUES ('dave', 'x', 'c')",
    )
    .execute(&app.pool)
    .await
    .expect("dave");
    assert_eq!(api.register("dave", PASSWORD).await.status(), 409);
    let r = api.login("Not A Name", PASSWORD).await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], "invalid_credentials");
}
