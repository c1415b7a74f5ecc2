//! The outbox survives the message service stopping between commit and
//! publish, and JetStream keeps each event once however often it is
//! published.

use natter_message::Message;
use natter_platform::outbox::{self, OutboxRow};
use natter_protocol::events::Event;
use natter_protocol::{ChannelId, UserId};
use natter_testkit::TestService;
use std::time::{Duration, Instant};

/// A row announcing that user `n` joined channel 1.
fn joined(app: &TestService<Message>, n: i64) -> OutboxRow {
    let event = Event::MemberJoined {
        channel_id: ChannelId(1),
        user_id: UserId(n),
        username: Some(format!("user-{n}")),
    };
    OutboxRow::event(&app.config.namespace(), &event, None).expect("encoded")
}

async fn insert_row(app: &TestService<Message>, row: &OutboxRow) {
    let mut conn = app.pool.acquire().await.expect("connection");
    outbox::insert(&mut conn, std::slice::from_ref(row))
        .await
        .expect("outbox row");
}

async fn stream(app: &TestService<Message>) -> async_nats::jetstream::stream::Stream {
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    async_nats::jetstream::new(nats)
        .get_stream(app.config.namespace().events_stream())
        .await
        .expect("events stream")
}

async fn stored_events(app: &TestService<Message>) -> u64 {
    stream(app).await.info().await.expect("info").state.messages
}

async fn outbox_rows(app: &TestService<Message>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Waits until the relay has emptied the outbox.
async fn drained(app: &TestService<Message>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while outbox_rows(app).await > 0 {
        assert!(Instant::now() < deadline, "the outbox was never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rows_committed_while_the_service_is_down_are_published_once_after_restart() {
    let mut app = TestService::<Message>::spawn().await;
    insert_row(&app, &joined(&app, 1)).await;
    drained(&app).await;
    assert_eq!(stored_events(&app).await, 1);
    app.stop_service().await;
    for n in 2..=4 {
        insert_row(&app, &joined(&app, n)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(outbox_rows(&app).await, 3, "nothing publishes while down");
    app.start_service().await;
    drained(&app).await;
    assert_eq!(stored_events(&app).await, 4);
}

#[tokio::test]
async fn publishing_the_same_row_twice_stores_one_event() {
    let mut app = TestService::<Message>::spawn().await;
    app.stop_service().await;
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(nats);
    let row = joined(&app, 7);
    for _ in 0..2 {
        insert_row(&app, &row).await;
        let published = outbox::relay::publish_batch(&app.pool, &js)
            .await
            .expect("published");
        assert_eq!(published, 1);
        assert_eq!(outbox_rows(&app).await, 0);
    }
    assert_eq!(stored_events(&app).await, 1);
}

/// The backend holding the relay's advisory lock in `pool`'s database.
async fn lock_holder(pool: &sqlx::PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_optional(pool)
    .await
    .expect("pg_locks")
}

/// If only the relay's lock connection dies, its lock is gone and another
/// relay may take over: the relay must notice and stop publishing (here,
/// with no rival, it takes the lock again).
#[tokio::test]
async fn a_relay_whose_lock_connection_dies_stops_being_active() {
    let db = natter_testkit::TestDatabase::create().await;
    let pool = db.pool().await;
    let config = natter_testkit::test_config(&db.url);
    let nats = async_nats::connect(&config.nats_url).await.expect("nats");
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(outbox::relay::run(
        pool.clone(),
        async_nats::jetstream::new(nats),
        stop.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(pid) = lock_holder(&pool).await {
            break pid;
        }
        assert!(Instant::now() < deadline, "the relay never took its lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&pool)
        .await
        .expect("terminate");
    assert!(killed);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lock_holder(&pool).await {
            Some(pid) if pid != first => break,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the relay kept running without its lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    relay.await.expect("relay task");
}
