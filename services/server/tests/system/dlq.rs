//! `natter-server dlq list|redrive`, the real binary against the real
//! stack: it shows parked outbox rows and dead-lettered events, and sends
//! them again.

use async_nats::jetstream;
use natter_message::Message;
use natter_platform::Config;
use natter_protocol::events::{DLQ_REASON_HEADER, Event};
use natter_protocol::partition::Partition;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, UserId};
use natter_testkit::{Running, Sandbox};
use serde_json::Value;
use sqlx::PgPool;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn dlq(config: &Config, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_natter-server"))
        .arg("dlq")
        .args(args)
        .env("NATTER_DATABASE_URL", &config.database_url)
        .env("NATTER_NATS_URL", &config.nats_url)
        .env("NATTER_NAMESPACE", &config.namespace)
        .output()
        .expect("natter-server runs")
}

/// `dlq list --json`, parsed.
fn list(config: &Config) -> Vec<Value> {
    let output = dlq(config, &["list", "--json"]);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn joined(user: i64) -> Event {
    Event::MemberJoined {
        channel_id: ChannelId(1),
        user_id: UserId(user),
        username: None,
    }
}

fn encoded(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("encoded")
}

/// Dead-letters `payload` from `event_subject` as push does, for `reason`.
async fn dead_letter(
    js: &jetstream::Context,
    ns: &Namespace,
    event_subject: &str,
    payload: Vec<u8>,
    reason: &str,
) {
    let suffix = event_subject
        .strip_prefix(&ns.events_prefix())
        .expect("an event subject");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DLQ_REASON_HEADER, reason);
    js.publish_with_headers(ns.dlq_subject(suffix), headers, payload.into())
        .await
        .expect("published")
        .await
        .expect("stored");
}

/// The subjects the events stream holds, oldest first.
async fn event_subjects(js: &jetstream::Context, ns: &Namespace) -> Vec<String> {
    let stream = js.get_stream(ns.events_stream()).await.expect("stream");
    let mut subjects = Vec::new();
    for seq in 1..=stored_events(js, ns.events_stream()).await {
        let msg = stream.get_raw_message(seq).await.expect("stored event");
        subjects.push(msg.subject.to_string());
    }
    subjects
}

async fn stored_events(js: &jetstream::Context, stream: String) -> u64 {
    js.get_stream(stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages
}

async fn outbox_empty(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .expect("count");
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the outbox was never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dlq_lists_parked_rows_and_dead_letters_and_redrives_them() {
    let sandbox = Sandbox::new(|_| {}).await;
    let config = sandbox.config().clone();
    let pool = sandbox.pool().await;
    let message = Running::start::<Message>(&config).await;
    let ns = config.namespace();
    let js = jetstream::new(async_nats::connect(&config.nats_url).await.expect("nats"));

    // A row the relay parked while no stream took its subject.
    let subject = ns.event_subject(&joined(1));
    sqlx::query(
        "INSERT INTO outbox_parked (id, msg_id, subject, payload, headers, created_at, error) \
         VALUES (41, $1, $2, $3, '{}', now(), 'no stream found for given subject')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(&subject)
    .bind(encoded(&joined(1)))
    .execute(&pool)
    .await
    .expect("parked row");
    // An event push gave up on, from its partition's subject; and bytes
    // that are no event, from another partition's.
    dead_letter(&js, &ns, &subject, encoded(&joined(2)), "no route for it").await;
    let undecodable = ns.partition_subject(Partition(0), "channel.9");
    assert_ne!(undecodable, subject);
    dead_letter(&js, &ns, &undecodable, b"{".to_vec(), "undecodable").await;

    let letters = list(&config);
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0]["id"], "outbox:41");
    assert_eq!(letters[0]["subject"], subject.as_str());
    assert_eq!(letters[0]["reason"], "no stream found for given subject");
    assert_eq!(letters[1]["id"], "dlq:1");
    assert_eq!(letters[1]["subject"], subject.as_str());
    assert_eq!(letters[1]["reason"], "no route for it");
    assert!(letters[1]["at"].is_string());
    assert_eq!(letters[2]["id"], "dlq:2");
    assert_eq!(letters[2]["subject"], undecodable.as_str());
    let table = String::from_utf8(dlq(&config, &["list"]).stdout).expect("UTF-8");
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("outbox:41\t")),
        "{table}"
    );

    let one = dlq(&config, &["redrive", "--id", "outbox:41"]);
    assert!(one.status.success(), "{one:?}");
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        "redriven\toutbox:41\n"
    );
    outbox_empty(&pool).await;
    assert_eq!(stored_events(&js, ns.events_stream()).await, 1);

    let all = dlq(&config, &["redrive", "--all"]);
    assert!(all.status.success(), "{all:?}");
    assert_eq!(
        String::from_utf8_lossy(&all.stdout),
        "redriven\tdlq:1\nredriven\tdlq:2\n"
    );
    // Through the outbox, which the relay publishes.
    outbox_empty(&pool).await;
    assert_eq!(
        event_subjects(&js, &ns).await,
        [subject.clone(), subject, undecodable],
        "each back in the partition it came from"
    );
    assert_eq!(stored_events(&js, ns.dlq_stream()).await, 0);
    assert!(list(&config).is_empty());

    let again = dlq(&config, &["redrive", "--id", "dlq:1"]);
    assert!(
        !again.status.success(),
        "redriving what is gone is an error"
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), "missing\tdlq:1\n");
    message.stop().await;
}

#[test]
fn redrive_needs_ids_or_all_and_refuses_malformed_ids() {
    let config = Config::from_env().expect("defaults");
    for args in [
        &["redrive"][..],
        &["redrive", "--id", "12"],
        &["redrive", "--all", "--id", "dlq:1"],
    ] {
        let output = dlq(&config, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}
