//! Postgres session limits protect the login path: an attempt that waits
//! for the advisory lock of its (name, client address), held by a frozen
//! attempt, gives up with 503 instead of queueing behind it for as long as
//! the holder lives.

use natter_auth::Auth;
use natter_testkit::{PASSWORD, TestService};
use serde_json::Value;
use sqlx::Connection;
use std::time::Duration;

#[tokio::test]
async fn a_login_waiting_on_a_held_name_and_address_lock_gets_503_and_the_next_one_succeeds() {
    let app = TestService::<Auth>::spawn_with(|c| c.database_lock_timeout_secs = 1).await;
    let api = app.client();
    api.register("alice", PASSWORD).await;
    // What a login attempt from this test's address (127.0.0.1), frozen
    // inside its transaction, holds.
    let mut frozen = sqlx::PgConnection::connect(&app.config.database_url)
        .await
        .expect("connection");
    sqlx::query("SELECT pg_advisory_lock(hashtext('alice'), hashtext('127.0.0.1'))")
        .execute(&mut frozen)
        .await
        .expect("lock");
    let waited = tokio::time::timeout(Duration::from_secs(20), api.login("alice", PASSWORD))
        .await
        .expect("the login gives up on the lock");
    assert_eq!(waited.status(), 503);
    let body: Value = waited.json().await.expect("json");
    assert_eq!(body["code"], "unavailable");
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut frozen)
        .await
        .expect("unlock");
    assert_eq!(api.login("alice", PASSWORD).await.status(), 200);
}
