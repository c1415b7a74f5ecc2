use natter_auth::Auth;
use natter_protocol::http::{TokenResponse, UserView, paths};
use natter_testkit::{PASSWORD, TestService};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[tokio::test]
async fn login_returns_a_bearer_token_that_opens_me() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let r = api.login("alice", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let token: TokenResponse = r.json().await.expect("token");
    assert_eq!(token.token_type, "Bearer");
    assert_eq!(token.expires_in, 3600);
    let me = api.get(paths::ME, Some(&token.token)).await;
    assert_eq!(me.status(), 200);
    let user: UserView = me.json().await.expect("user");
    assert_eq!(user.username, "alice");
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let wrong = api.login("alice", "wrong password").await;
    let unknown = api.login("nobody", PASSWORD).await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    let a: Value = wrong.json().await.expect("json");
    let b: Value = unknown.json().await.expect("json");
    assert_eq!(a, b);
    assert_eq!(a["code"], "invalid_credentials");
}

#[tokio::test]
async fn repeated_failures_are_rate_limited_even_for_the_right_password() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    for _ in 0..5 {
        assert_eq!(api.login("alice", "wrong password").await.status(), 401);
    }
    let r = api.login("alice", PASSWORD).await;
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
    api.register("bob", PASSWORD).await;
    assert_eq!(api.login("bob", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn unknown_usernames_are_rate_limited_too() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    for _ in 0..5 {
        assert_eq!(api.login("ghost", PASSWORD).await.status(), 401);
    }
    assert_eq!(api.login("ghost", PASSWORD).await.status(), 429);
}

#[tokio::test]
async fn parallel_wrong_logins_cannot_outrun_the_rate_limit() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let attempts = (0..20).map(|_| api.login("alice", "wrong password"));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let refused = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        refused <= 5,
        "{refused} wrong passwords were checked: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert_eq!(api.login("alice", PASSWORD).await.status(), 429);
}

#[tokio::test]
async fn a_right_password_leaves_no_failure_behind() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    for _ in 0..4 {
        assert_eq!(api.login("alice", "wrong password").await.status(), 401);
    }
    for _ in 0..3 {
        assert_eq!(api.login("alice", PASSWORD).await.status(), 200);
    }
    assert_eq!(api.login("alice", "wrong password").await.status(), 401);
    assert_eq!(api.login("alice", PASSWORD).await.status(), 429);
}

#[tokio::test]
async fn names_that_cannot_exist_are_refused_without_a_trace() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    let junk = [
        "al\u{0}ice".to_owned(),
        "Alice".to_owned(),
        "x".repeat(5000),
        "ab".to_owned(),
    ];
    for name in &junk {
        let r = api.login(name, PASSWORD).await;
        assert_eq!(r.status(), 401, "{name:?}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["code"], "invalid_credentials");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM login_failures")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_password_that_cannot_exist_is_just_wrong() {
    let app = TestService::<Auth>::spawn().await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    let r = api.login("alice", "correct\u{0}horse").await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn failures_older_than_the_window_are_pruned_for_every_name() {
    let mut app = TestService::<Auth>::spawn().await;
    app.stop_service().await;
    sqlx::query(
        "INSERT INTO login_failures (username, client_addr, failed_at) \
         SELECT 'name' || i, '192.0.2.1', now() - interval '16 minutes' FROM generate_series(1, 50) AS i",
    )
    .execute(&app.pool)
    .await
    .expect("old failures");
    sqlx::query(
        "INSERT INTO login_failures (username, client_addr) VALUES ('recent', '192.0.2.1')",
    )
    .execute(&app.pool)
    .await
    .expect("recent failure");
    app.start_service().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: Vec<String> = sqlx::query_scalar("SELECT username FROM login_failures")
            .fetch_all(&app.pool)
            .await
            .expect("rows");
        if left == ["recent"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "old failures were never pruned: {} rows",
            left.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `POST /login` as if from `client`, through a proxy that says so in
/// `X-Forwarded-For`.
async fn login_from(
    app: &TestService<Auth>,
    client: &str,
    username: &str,
    password: &str,
) -> reqwest::Response {
    app.http
        .post(format!("{}{}", app.url(), paths::LOGIN))
        .header("x-forwarded-for", client)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("auth answers")
}

#[tokio::test]
async fn an_attackers_address_is_locked_out_and_the_owner_still_logs_in() {
    let app = TestService::<Auth>::spawn_with(|c| c.trusted_proxies = "127.0.0.1".into()).await;
    app.client().register("alice", PASSWORD).await;
    let attacker = "203.0.113.9";
    for _ in 0..5 {
        let r = login_from(&app, attacker, "alice", "wrong password").await;
        assert_eq!(r.status(), 401);
    }
    // The attacker's address is refused, even with the right password.
    let r = login_from(&app, attacker, "alice", PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // The owner, from their own address, is not.
    let r = login_from(&app, "198.51.100.7", "alice", PASSWORD).await;
    assert_eq!(r.status(), 200);
    let failures: Vec<(String, String)> =
        sqlx::query_as("SELECT username, client_addr FROM login_failures")
            .fetch_all(&app.pool)
            .await
            .expect("rows");
    assert_eq!(failures.len(), 5);
    assert!(failures.iter().all(|(u, a)| u == "alice" && a == attacker));
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = TestService::<Auth>::spawn().await;
    app.client().register("alice", PASSWORD).await;
    // Each guess claims another address; the peer (127.0.0.1) is no
    // trusted proxy, so all count against it.
    for i in 0..5 {
        let r = login_from(&app, &format!("203.0.113.{i}"), "alice", "wrong password").await;
        assert_eq!(r.status(), 401);
    }
    let r = login_from(&app, "198.51.100.7", "alice", PASSWORD).await;
    assert_eq!(r.status(), 429);
    let addresses: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT client_addr FROM login_failures")
            .fetch_all(&app.pool)
            .await
            .expect("rows");
    assert_eq!(addresses, ["127.0.0.1"]);
}

#[tokio::test]
async fn failures_from_many_addresses_slow_the_name_but_never_lock_it() {
    let app = TestService::<Auth>::spawn_with(|c| {
        c.trusted_proxies = "127.0.0.0/8".into();
        c.login_max_delay_ms = 400;
    })
    .await;
    app.client().register("alice", PASSWORD).await;
    // 10 addresses, 4 guesses each: none is locked, the name failed 40
    // times.
    let guesses = (0..10).flat_map(|a| (0..4).map(move |_| a)).map(|a| {
        let app = &app;
        async move {
            login_from(app, &format!("203.0.113.{a}"), "alice", "wrong password")
                .await
                .status()
        }
    });
    let statuses = futures::future::join_all(guesses).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    // The owner gets in, after the longest delay: the server waits it
    // before checking the password, so this floor is the server's own,
    // not a measure of speed.
    let started = Instant::now();
    let r = login_from(&app, "198.51.100.7", "alice", PASSWORD).await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
}
