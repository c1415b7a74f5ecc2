//! The outbox survives the message service stopping between commit and
//! publish, a backlog of many rounds goes out whole and in order (each
//! round's read deletes the round before it), a relay that stops deletes
//! what it published last,
//! JetStream keeps each event once however often it is published, a row NATS refuses for good is parked instead of holding
//! back the rest, an outage parks nothing, a row JetStream does not store
//! holds back the rows behind it (so none overtakes it), a message
//! published beside the relay makes it read the stream's end again instead
//! of stopping it, a dead letter redriven twice waits in the outbox once,
//! and only the lease holder publishes.

use natter_message::Message;
use natter_platform::outbox::{self, OutboxRow};
use natter_protocol::events::Event;
use natter_protocol::partition::Partition;
use natter_protocol::{ChannelId, UserId};
use natter_testkit::TestService;
use std::time::{Duration, Instant};

/// A row announcing that user `n` joined channel 1.
fn joined(app: &TestService<Message>, n: i64) -> OutboxRow {
    joined_in(app, 1, n)
}

/// A row announcing that user `n` joined `channel`.
fn joined_in(app: &TestService<Message>, channel: i64, n: i64) -> OutboxRow {
    let event = Event::MemberJoined {
        channel_id: ChannelId(channel),
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
async fn a_relay_that_stops_right_after_publishing_leaves_no_published_row_behind() {
    let mut app = TestService::<Message>::spawn().await;
    // A first row, published and deleted, leaves the relay idle, waiting
    // for a notification: the next row is then its round's only one.
    insert_row(&app, &joined(&app, 1)).await;
    drained(&app).await;
    insert_row(&app, &joined(&app, 2)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_events(&app).await < 2 {
        assert!(Instant::now() < deadline, "the row was never published");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Published rows are deleted by the next round's read, or within a
    // second when none comes: stopping before that deletes them on the way.
    app.stop_service().await;
    assert_eq!(outbox_rows(&app).await, 0);
    assert_eq!(stored_events(&app).await, 2);
}

#[tokio::test]
async fn a_backlog_of_several_rounds_is_published_whole_and_in_order() {
    let mut app = TestService::<Message>::spawn().await;
    app.stop_service().await;
    // The relay publishes 1,000 rows a round: this is three rounds, each
    // read by the statement that deletes the previous one's rows.
    let rows: Vec<OutboxRow> = (1..=2_500).map(|n| joined(&app, n)).collect();
    let mut conn = app.pool.acquire().await.expect("connection");
    outbox::insert(&mut conn, &rows).await.expect("outbox rows");
    drop(conn);
    app.start_service().await;
    drained(&app).await;
    assert_eq!(stored_joins(&app).await, (1..=2_500).collect::<Vec<i64>>());
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
        let round = outbox::relay::publish_batch(&app.pool, &js, &app.config.namespace())
            .await
            .expect("published");
        assert_eq!(round.published, 1);
        assert_eq!(outbox_rows(&app).await, 0);
    }
    assert_eq!(stored_events(&app).await, 1);
}

/// Inserts a raw row, as a writer with a bug (or another namespace) might
/// have left it: the relay must cope with what it cannot publish.
async fn insert_raw(app: &TestService<Message>, subject: &str, payload: &[u8]) {
    sqlx::query("INSERT INTO outbox (msg_id, subject, payload) VALUES ($1, $2, $3)")
        .bind(uuid::Uuid::now_v7())
        .bind(subject)
        .bind(payload)
        .execute(&app.pool)
        .await
        .expect("outbox row");
}

async fn parked(app: &TestService<Message>) -> Vec<(String, String)> {
    sqlx::query_as("SELECT subject, error FROM outbox_parked ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .expect("parked rows")
}

/// The `user_id`s of the `member_joined` events stored, in stream order.
async fn stored_joins(app: &TestService<Message>) -> Vec<i64> {
    use futures::StreamExt;
    let consumer = stream(app)
        .await
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let count = stored_events(app).await;
    let mut messages = consumer
        .messages()
        .await
        .expect("messages")
        .take(count as usize);
    let mut joins = Vec::new();
    while let Some(msg) = messages.next().await {
        let event: Event = serde_json::from_slice(&msg.expect("message").payload).expect("event");
        if let Event::MemberJoined { user_id, .. } = event {
            joins.push(user_id.0);
        }
    }
    joins
}

#[tokio::test]
async fn rows_nats_refuses_for_good_are_parked_and_the_rows_behind_them_are_published() {
    let mut app = TestService::<Message>::spawn().await;
    app.stop_service().await;
    insert_row(&app, &joined(&app, 1)).await;
    // Larger than the server's largest message (1 MiB by default).
    let too_large = app
        .config
        .namespace()
        .partition_subject(Partition(0), "channel.1");
    insert_raw(&app, &too_large, &vec![b'x'; 2 << 20]).await;
    // A subject no stream takes.
    insert_raw(&app, "elsewhere.evt.channel.1", b"{}").await;
    insert_row(&app, &joined(&app, 2)).await;
    app.start_service().await;
    drained(&app).await;
    assert_eq!(stored_joins(&app).await, [1, 2]);
    let parked = parked(&app).await;
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0].0, too_large);
    assert!(parked[0].1.contains("max payload"), "{parked:?}");
    assert_eq!(parked[1].0, "elsewhere.evt.channel.1");
    assert!(parked[1].1.contains("no stream"), "{parked:?}");
}

#[tokio::test]
async fn a_row_jetstream_refuses_for_a_while_is_stored_before_the_rows_behind_it() {
    let mut app = TestService::<Message>::spawn().await;
    app.stop_service().await;
    let ns = app.config.namespace();
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(nats);
    // A stream that takes one message per subject and refuses more: the
    // first row's subject is full, the second's is not, as when one of a
    // round's publishes is lost or refused and the next ones go through.
    let mut config = stream(&app)
        .await
        .info()
        .await
        .expect("info")
        .config
        .clone();
    config.max_messages_per_subject = 1;
    config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    config.discard_new_per_subject = true;
    js.update_stream(config).await.expect("stream updated");
    let (first, second) = (joined_in(&app, 1, 1), joined_in(&app, 2, 2));
    js.publish(first.subject().to_owned(), "{}".into())
        .await
        .expect("sent")
        .await
        .expect("the first row's subject is full");
    insert_row(&app, &first).await;
    insert_row(&app, &second).await;
    let round = outbox::relay::publish_batch(&app.pool, &js, &ns)
        .await
        .expect("round");
    assert!(round.stalled.is_some(), "the full subject took the row");
    assert_eq!(round.published, 0, "a row behind the refused one was kept");
    assert_eq!(outbox_rows(&app).await, 2);
    stream(&app)
        .await
        .purge()
        .filter(first.subject())
        .await
        .expect("the first row's subject emptied");
    for _ in 0..3 {
        outbox::relay::publish_batch(&app.pool, &js, &ns)
            .await
            .expect("round");
    }
    assert_eq!(outbox_rows(&app).await, 0);
    assert_eq!(stored_joins(&app).await, [1, 2], "stored out of order");
}

#[tokio::test]
async fn after_a_message_published_beside_it_the_relay_reads_the_stream_s_end_again() {
    let app = TestService::<Message>::spawn().await;
    insert_row(&app, &joined(&app, 1)).await;
    drained(&app).await;
    // The stream no longer ends where the relay left it: its next row,
    // expecting that end, is refused, and it reads the end again.
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let beside = Event::MemberJoined {
        channel_id: ChannelId(3),
        user_id: UserId(2),
        username: None,
    };
    async_nats::jetstream::new(nats)
        .publish(
            app.config.namespace().event_subject(&beside),
            serde_json::to_vec(&beside).expect("encoded").into(),
        )
        .await
        .expect("sent")
        .await
        .expect("stored");
    insert_row(&app, &joined(&app, 3)).await;
    drained(&app).await;
    insert_row(&app, &joined(&app, 4)).await;
    drained(&app).await;
    assert_eq!(stored_joins(&app).await, [1, 2, 3, 4]);
    assert!(parked(&app).await.is_empty());
}

#[tokio::test]
async fn a_dead_letter_redriven_twice_waits_in_the_outbox_once() {
    let mut app = TestService::<Message>::spawn().await;
    app.stop_service().await;
    let event = Event::MemberJoined {
        channel_id: ChannelId(1),
        user_id: UserId(7),
        username: None,
    };
    let subject = app.config.namespace().event_subject(&event);
    let payload = serde_json::to_vec(&event).expect("encoded");
    // The second as a redrive run again after the first committed.
    for _ in 0..2 {
        insert_row(
            &app,
            &OutboxRow::redriven(subject.clone(), payload.clone(), 7),
        )
        .await;
    }
    assert_eq!(outbox_rows(&app).await, 1);
    app.start_service().await;
    drained(&app).await;
    assert_eq!(stored_joins(&app).await, [7]);
}

#[tokio::test]
async fn while_nats_is_down_rows_wait_in_order_and_none_is_parked() {
    let mut nats = natter_testkit::private::PrivateNats::start();
    let url = nats.url();
    let app = TestService::<Message>::spawn_with(|c| c.nats_url = url).await;
    let readyz = format!("{}/readyz", app.url());
    insert_row(&app, &joined(&app, 1)).await;
    drained(&app).await;
    nats.kill();
    for n in 2..=4 {
        insert_row(&app, &joined(&app, n)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = app.http.get(&readyz).send().await.expect("readyz").status();
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed {status} without NATS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for publish attempts to time out and be retried.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(parked(&app).await.is_empty(), "an outage parked rows");
    assert_eq!(outbox_rows(&app).await, 3);
    nats.restart();
    drained(&app).await;
    assert!(parked(&app).await.is_empty());
    assert_eq!(stored_joins(&app).await, [1, 2, 3, 4]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = app.http.get(&readyz).send().await.expect("readyz").status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz stayed {status} after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Takes the relay lease away from the service, as a relay that took it
/// over would hold it.
async fn take_lease(app: &TestService<Message>, seconds: f64) {
    sqlx::query(
        "UPDATE outbox_relay_lease SET holder = 'another relay', \
         expires_at = clock_timestamp() + make_interval(secs => $1)",
    )
    .bind(seconds)
    .execute(&app.pool)
    .await
    .expect("lease taken");
}

#[tokio::test]
async fn a_relay_that_lost_its_lease_stops_publishing_until_it_holds_it_again() {
    let app = TestService::<Message>::spawn().await;
    insert_row(&app, &joined(&app, 1)).await;
    drained(&app).await;
    take_lease(&app, 3600.0).await;
    // Longer than the lease, so the relay has noticed it is gone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    insert_row(&app, &joined(&app, 2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outbox_rows(&app).await, 1, "published without the lease");
    // The other relay stops renewing: the lease expires and is taken back.
    take_lease(&app, 0.0).await;
    drained(&app).await;
    assert_eq!(stored_joins(&app).await, [1, 2]);
}
