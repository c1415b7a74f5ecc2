//! Following a stream with [`Tail`] against the real NATS server: order,
//! backlogs larger than a request, quiet spells longer than a request
//! lasts, and a consumer that disappears (deleted, or lost with a NATS
//! server killed under it: a private one).

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use natter_platform::tail::{EXPIRES, SILENCE, Tail, TailError, Tailed};
use natter_platform::{Config, nats};
use natter_testkit::private::PrivateNats;
use std::time::Duration;
use tokio::sync::mpsc;

/// A stream of its own on the shared server, deleted on drop.
struct Scratch {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    name: String,
}

impl Scratch {
    async fn new() -> Self {
        Self::on(Config::from_env().expect("defaults")).await
    }

    /// On the NATS server of `config`; its events survive a restart.
    async fn on(config: Config) -> Self {
        let client = nats::connect(&config, "tail-test")
            .await
            .expect("NATS answers");
        let js = nats::jetstream(&client);
        let name = format!("TAIL{}", uuid::Uuid::new_v4().simple());
        let stream = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("stream created");
        Self { js, stream, name }
    }

    fn subject(&self, part: u32) -> String {
        format!("{}.p{part}.x", self.name)
    }

    fn filter(&self, part: u32) -> String {
        format!("{}.p{part}.>", self.name)
    }

    /// Publishes `payload` on `part`; its stream sequence.
    async fn publish(&self, part: u32, payload: String) -> u64 {
        self.js
            .publish(self.subject(part), payload.into())
            .await
            .expect("published")
            .await
            .expect("stored")
            .sequence
    }

    async fn open(&self, part: u32, from: u64) -> Tail {
        Tail::open(&self.js, &self.stream, self.filter(part), from)
            .await
            .expect("tail opened")
    }

    /// The server's view of the stream's one consumer.
    async fn consumer(&self) -> jetstream::consumer::Info {
        let mut infos = self.stream.consumers();
        let info = infos
            .next()
            .await
            .expect("a consumer exists")
            .expect("consumer info");
        assert!(infos.next().await.is_none(), "one consumer only");
        info
    }

    async fn delete(self) {
        self.js.delete_stream(&self.name).await.expect("deleted");
    }
}

/// Reads `tail` on a task of its own, forwarding what it yields.
fn follow(tail: Tail) -> mpsc::UnboundedReceiver<Result<Tailed, TailError>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = std::pin::pin!(tail.messages());
        while let Some(next) = messages.next().await {
            if tx.send(next).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next_within(
    rx: &mut mpsc::UnboundedReceiver<Result<Tailed, TailError>>,
    limit: Duration,
) -> Result<Tailed, TailError> {
    tokio::time::timeout(limit, rx.recv())
        .await
        .expect("the tail yields in time")
        .expect("the tail goes on")
}

#[tokio::test]
async fn a_tail_reads_its_subjects_in_stream_order_from_the_start_sequence_through_a_backlog() {
    let scratch = Scratch::new().await;
    // Three requests' worth on partition 0, interleaved with partition 1.
    let mut wanted = Vec::new();
    for i in 0..1_600 {
        let sequence = scratch.publish(0, format!("m{i}")).await;
        scratch.publish(1, format!("other{i}")).await;
        if i >= 100 {
            wanted.push((sequence, format!("m{i}")));
        }
    }
    let mut rx = follow(scratch.open(0, wanted[0].0).await);
    for (i, (sequence, payload)) in wanted.iter().enumerate() {
        let behind = (wanted.len() - 1 - i) as u64;
        let tailed = next_within(&mut rx, Duration::from_secs(10))
            .await
            .expect("a message");
        let info = tailed.message.info().expect("JetStream metadata");
        assert_eq!(
            (tailed.stream_sequence, info.stream_sequence),
            (*sequence, *sequence)
        );
        assert_eq!(tailed.pending, behind, "the rest of the backlog");
        assert_eq!(
            std::str::from_utf8(&tailed.message.payload),
            Ok(payload.as_str())
        );
    }
    let later = scratch.publish(0, "live".into()).await;
    let tailed = next_within(&mut rx, Duration::from_secs(10))
        .await
        .expect("a live message");
    assert_eq!((tailed.stream_sequence, tailed.pending), (later, 0));
    scratch.delete().await;
}

/// The fix for nats-server 2.9 dropping an expiring request without its
/// 408: a second request waits before the first expires, and a quiet tail
/// outlives its requests without taking the silence for a lost consumer.
#[tokio::test]
async fn a_quiet_tail_keeps_a_second_request_waiting_and_outlives_its_requests() {
    let scratch = Scratch::new().await;
    let mut rx = follow(scratch.open(0, 1).await);
    tokio::time::sleep(EXPIRES / 2 + Duration::from_millis(500)).await;
    assert_eq!(
        scratch.consumer().await.num_waiting,
        2,
        "a second request waits while the first has time left"
    );
    tokio::time::sleep(EXPIRES + SILENCE).await;
    assert!(rx.try_recv().is_err(), "nothing came, no error either");
    let sequence = scratch.publish(0, "after a quiet spell".into()).await;
    let tailed = next_within(&mut rx, Duration::from_secs(5))
        .await
        .expect("the tail is alive");
    assert_eq!(tailed.stream_sequence, sequence);
    scratch.delete().await;
}

#[tokio::test]
async fn a_deleted_consumer_ends_the_tail_with_an_error() {
    let scratch = Scratch::new().await;
    scratch.publish(0, "first".into()).await;
    let mut rx = follow(scratch.open(0, 1).await);
    next_within(&mut rx, Duration::from_secs(5))
        .await
        .expect("the first message");
    let name = scratch.consumer().await.name;
    scratch
        .stream
        .delete_consumer(&name)
        .await
        .expect("consumer deleted");
    let ended = next_within(&mut rx, SILENCE + Duration::from_secs(5)).await;
    assert!(ended.is_err(), "the tail ends: {ended:?}");
    scratch.delete().await;
}

#[tokio::test]
async fn a_tail_ends_when_its_server_dies_and_a_new_one_resumes_after_the_restart() {
    let mut server = PrivateNats::start();
    let mut config = Config::from_env().expect("defaults");
    config.nats_url = server.url();
    let scratch = Scratch::on(config).await;
    let first = scratch.publish(0, "before".into()).await;
    let mut rx = follow(scratch.open(0, first).await);
    let tailed = next_within(&mut rx, Duration::from_secs(5))
        .await
        .expect("the first message");
    assert_eq!(tailed.stream_sequence, first);

    server.kill();
    let ended = next_within(&mut rx, SILENCE + Duration::from_secs(5)).await;
    assert!(
        matches!(ended, Err(TailError::Silent)),
        "the tail ends on the silence: {ended:?}"
    );

    server.restart();
    // The consumer lived in the dead server's memory; the events did not.
    let later = loop {
        match scratch.js.publish(scratch.subject(0), "after".into()).await {
            Ok(ack) => match ack.await {
                Ok(ack) => break ack.sequence,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut rx = follow(scratch.open(0, first + 1).await);
    let tailed = next_within(&mut rx, Duration::from_secs(5))
        .await
        .expect("the message after the restart");
    assert_eq!(tailed.stream_sequence, later);
    assert_eq!(&tailed.message.payload[..], b"after");
    scratch.delete().await;
}
