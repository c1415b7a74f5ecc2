//! Stopping: `/readyz` says `draining` while requests already taken are
//! finished, and they are answered before the service exits.

use natter_message::Message;
use natter_platform::lifecycle;
use natter_protocol::frames::Request;
use natter_protocol::rpc::{Caller, RpcReply, RpcRequest, SocketRef};
use natter_protocol::{SessionId, SocketId, UserId};
use natter_testkit::Sandbox;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Backends of the test's database waiting for a lock.
async fn waiting_on_locks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

#[tokio::test]
async fn readyz_says_draining_while_a_request_in_flight_is_finished() {
    let sandbox = Sandbox::new(|_| {}).await;
    let config = sandbox.config();
    let pool = sandbox.pool().await;
    let user: i64 = sqlx::query_scalar(
        "INSERT INTO users (username, password_hash, invite_code) \
         VALUES ('alice', 'x', 'alices-code') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .expect("a user");
    let stop = CancellationToken::new();
    let message = lifecycle::start::<Message>(config, stop.clone())
        .await
        .expect("message starts");
    let readyz = format!("http://{}/readyz", message.addr);
    let http = reqwest::Client::new();
    let ready = http.get(&readyz).send().await.expect("readyz answers");
    assert_eq!(ready.status(), 200);

    // Every read of `users` waits while this is held: the request below
    // stays in flight until the test lets it go.
    let mut lock = pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("lock");
    let nats = async_nats::connect(&config.nats_url).await.expect("nats");
    let request = RpcRequest {
        caller: Caller {
            user_id: UserId(user),
            username: "alice".into(),
            session_id: SessionId(uuid::Uuid::new_v4()),
            socket: SocketRef {
                gateway_id: "gw".into(),
                socket_id: SocketId(1),
            },
        },
        request: Request::FetchUserInviteCode,
    };
    let body = serde_json::to_vec(&request).expect("serialize");
    let subject = config.namespace().rpc_message();
    let headers = natter_testkit::bus_signed(&subject, &body);
    let answer = tokio::spawn(async move {
        nats.request_with_headers(subject, headers, body.into())
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting_on_locks(&pool).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached Postgres"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop.cancel();
    let deadline = Instant::now() + Duration::from_secs(10);
    let draining = loop {
        let r = http
            .get(&readyz)
            .send()
            .await
            .expect("readyz answers while draining");
        if r.status() == 503 {
            break r.json::<Value>().await.expect("JSON");
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(draining, json!({"status": "draining"}));
    assert!(!answer.is_finished(), "answered while the lock was held");
    assert!(
        !message.task.is_finished(),
        "exited with a request in flight"
    );

    lock.rollback().await.expect("unlock");
    let reply = answer
        .await
        .expect("joined")
        .expect("the request is answered");
    match serde_json::from_slice::<RpcReply>(&reply.payload).expect("an RpcReply") {
        RpcReply::Ok(v) => assert_eq!(v["invite_code"], "alices-code"),
        RpcReply::Err(e) => panic!("refused: {e:?}"),
    }
    message
        .task
        .await
        .expect("joined")
        .expect("message stopped cleanly");
}
