//! Unregistering releases connections and seats; messages stay, with a
//! null username.

use crate::support::{channel, connect, connection_count, heads, user};
use natter_protocol::http::paths;
use natter_server::testing::TestApp;
use serde_json::json;

#[tokio::test]
async fn unregister_releases_connections_and_seats_and_keeps_messages_anonymous() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let id = channel(&mut alice, &mut [&mut bob, &mut carol]).await;
    alice
        .ok(
            "write_message",
            json!({"channel_id": id, "client_msg_id": "a1", "content": "bye"}),
        )
        .await;
    assert_eq!(connection_count(&app, bob.id).await, 1);
    let r = app
        .post(paths::UNREGISTER, &json!({}), Some(&alice.token))
        .await;
    assert_eq!(r.status(), 204);
    assert_eq!(connection_count(&app, bob.id).await, 0);
    assert_eq!(connection_count(&app, carol.id).await, 0);
    assert_eq!(heads(&app, id).await, (2, 2));
    let page = bob.ok("fetch_messages", json!({"channel_id": id})).await;
    assert_eq!(page["messages"][0]["content"], "bye");
    assert_eq!(page["messages"][0]["username"], serde_json::Value::Null);
    // The name is unknown now, and so is an old connection with it.
    assert_eq!(
        bob.err("disconnect", json!({"username": "alice"})).await,
        "not_connected"
    );
    let accepted = bob
        .ok("fetch_connections", json!({"status": "accepted"}))
        .await;
    assert_eq!(accepted, json!({"connections": []}));
    // A new alice is somebody else.
    let mut alice2 = user(&app, "alice").await;
    connect(&mut bob, &mut alice2).await;
    let page = bob.ok("fetch_messages", json!({"channel_id": id})).await;
    assert_eq!(page["messages"][0]["username"], serde_json::Value::Null);
}

/// The backend of a transaction.
async fn backend(tx: &mut sqlx::PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(tx)
        .await
        .expect("pid")
}

/// Waits until some backend waits for a lock `blocker` holds.
async fn blocked_by(app: &TestApp, blocker: i32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))",
        )
        .bind(blocker)
        .fetch_one(&app.pool)
        .await
        .expect("activity");
        if waiting {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nobody waits for {blocker}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A membership that appears while unregister waits for the user's lock
/// makes it start over, not lock that channel while holding user rows:
/// a transaction that locks the channel and then the user (as `join`
/// does) must not deadlock with it.
#[tokio::test]
async fn unregister_restarts_instead_of_locking_out_of_order() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    let first = channel(&mut alice, &mut [&mut bob]).await;
    let second = channel(&mut bob, &mut [&mut carol]).await;

    // Holds alice's row so that unregister stops right after reading her
    // channels.
    let mut holder = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR SHARE")
        .bind(alice.id)
        .execute(&mut *holder)
        .await
        .expect("share alice");
    let holder_pid = backend(&mut holder).await;
    let token = alice.token.clone();
    let unregister = {
        let http = app.http.clone();
        let url = format!("{}{}", app.auth_url(), paths::UNREGISTER);
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .expect("answer")
                .status()
        })
    };
    blocked_by(&app, holder_pid).await;

    // A joiner of the second channel: it holds the channel row and will
    // want alice's row next.
    let mut joiner = app.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL deadlock_timeout = '50ms'")
        .execute(&mut *joiner)
        .await
        .expect("deadlock_timeout");
    sqlx::query("SELECT id FROM channels WHERE id = $1 FOR NO KEY UPDATE")
        .bind(second)
        .execute(&mut *joiner)
        .await
        .expect("lock channel");
    let joiner_pid = backend(&mut joiner).await;
    // Meanwhile alice became a member of the second channel.
    sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
        .bind(second)
        .bind(alice.id)
        .execute(&mut *holder)
        .await
        .expect("membership");
    holder.commit().await.expect("commit");
    // Unregister now sees the new membership and waits for the channel.
    blocked_by(&app, joiner_pid).await;
    sqlx::query("SELECT id FROM users WHERE id = $1 FOR SHARE")
        .bind(alice.id)
        .execute(&mut *joiner)
        .await
        .expect("the joiner gets alice's row without a deadlock");
    joiner.commit().await.expect("commit");

    assert_eq!(unregister.await.expect("task"), 204);
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM channel_members WHERE user_id = $1")
            .bind(alice.id)
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(members, 0);
    assert_eq!(heads(&app, first).await, (1, 1));
}
