//! Relay leadership across processes: a leader frozen with SIGSTOP keeps
//! its connections open but stops renewing its lease, and a standby
//! publishes within seconds.

use crate::process::ServerProcess;
use natter_platform::Config;
use natter_platform::outbox::{self, OutboxRow};
use natter_protocol::events::Event;
use natter_protocol::{ChannelId, UserId};
use natter_server::Service;
use natter_server::testing::start_part;
use natter_testkit::Sandbox;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn insert_event(pool: &PgPool, config: &Config, user: i64) {
    let event = Event::MemberJoined {
        channel_id: ChannelId(1),
        user_id: UserId(user),
        username: None,
    };
    let row = OutboxRow::event(&config.namespace(), &event, None).expect("encoded");
    let mut conn = pool.acquire().await.expect("connection");
    outbox::insert(&mut conn, &[row]).await.expect("outbox row");
}

/// Waits until the outbox is empty: some relay published everything.
async fn published(pool: &PgPool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .expect("count");
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} outbox rows were never published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn lease_holder(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT holder FROM outbox_relay_lease")
        .fetch_one(pool)
        .await
        .expect("a lease")
}

#[tokio::test]
async fn a_standby_relay_publishes_within_seconds_of_the_leader_freezing() {
    let sandbox = Sandbox::new(|_| {}).await;
    let config = sandbox.config().clone();
    let pool = sandbox.pool().await;
    let leader = ServerProcess::start("message", &config).await;
    insert_event(&pool, &config, 1).await;
    published(&pool, Duration::from_secs(20)).await;
    let frozen = lease_holder(&pool).await;

    let stop = CancellationToken::new();
    let (_, standby) = start_part(Service::Message, &config, stop.clone()).await;
    leader.signal("-STOP");
    insert_event(&pool, &config, 2).await;
    // The lease lasts five seconds; a leader holding a session advisory
    // lock would have kept it for hours.
    published(&pool, Duration::from_secs(30)).await;
    assert_ne!(lease_holder(&pool).await, frozen);

    stop.cancel();
    // How it stops is not what this test is about.
    let _stopped = standby.await.expect("the standby's task ends");
}
