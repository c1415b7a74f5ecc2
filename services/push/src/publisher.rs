//! Publishing the deliveries of every partition this instance consumes
//! together.
//!
//! Each partition's consumer hands in a run of its events' deliveries (one
//! encoded part per gateway, `merge.rs`) and waits for it to be published.
//! One task takes everything handed in meanwhile and publishes one message
//! per gateway for all of it: busy partitions then cost one signature, one
//! bus message and, at the gateway, one verification and one decode per
//! turn, instead of one per partition. With 16 partitions, push's
//! publishing and the NATS client's connection task had cost ~5 % more of
//! natter-server's CPU than with 1; joined, nats-server's CPU per stored
//! message fell by about a sixth (README "Benchmarks").
//!
//! Order holds: a partition hands in its next run only once the last is
//! published, and a gateway's parts are joined, and its messages
//! published, in the order they were handed in. A message stays within
//! what NATS takes and within [`MAX_EVENTS`] events (a socket's queue
//! takes a message's frames in one go): a hand-in that would take one
//! gateway's message past either waits for the next message, and one too
//! large even alone goes alone, so that NATS refusing it fails only its
//! partition. A run whose partition's lease was lost meanwhile is not
//! published.
//!
//! Were the task to end while push consumes (a panic), push stops with an
//! error (`Push::run`), as when a partition's consumer panics: no
//! partition could move meanwhile, and the others' instances take them
//! over.

use crate::fanout::Unroutable;
use crate::leases::Lease;
use crate::merge::{self, MAX_EVENTS, Merged};
use async_nats::HeaderMap;
use async_nats::client::PublishErrorKind;
use natter_platform::bus::BusKey;
use natter_protocol::events::EncodedItems;
use natter_protocol::subjects::Namespace;
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Hand-ins waiting for the publishing task: a partition's consumer has at
/// most one, and there are at most 1,024 partitions, so handing in waits
/// only in the moment a partition's old and new consumer overlap.
const QUEUE: usize = 1024;

/// Where partitions hand in their deliveries; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    queue: mpsc::Sender<HandIn>,
}

/// What the publishing task needs.
struct Out {
    nats: async_nats::Client,
    bus: BusKey,
    ns: Namespace,
}

/// One run's deliveries and who waits for them.
struct HandIn {
    run: Merged,
    /// The run's trace context, for the gateways.
    trace: HeaderMap,
    /// Its partition's: a run is published only while it is held.
    lease: Lease,
    done: oneshot::Sender<Result<(), Failure>>,
}

/// Why a message was not published, for each hand-in in it.
#[derive(Clone, Debug)]
enum Failure {
    /// NATS will never take it (too large, a bad subject).
    Unroutable(String),
    /// It may go through when tried again.
    Failed(String),
    /// Not published: the partition's lease was lost.
    Lost,
}

impl Publisher {
    /// A publisher, and its task (for the caller to supervise), which ends
    /// once every clone is dropped.
    pub fn start(nats: async_nats::Client, bus: BusKey, ns: Namespace) -> (Self, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(Out { nats, bus, ns }, rx));
        (Self { queue }, task)
    }

    /// Publishes `run` (one part per gateway) with the trace context
    /// `trace`, joined with whatever other partitions handed in meanwhile,
    /// unless `lease` is lost first.
    ///
    /// # Errors
    /// When NATS refuses a message; with [`Unroutable`] in the chain when
    /// it always will. When the lease was lost, with nothing published.
    /// A gateway may have had its message before another failed: the
    /// caller publishes again, and it gets them twice (at least once, as
    /// after a crash).
    pub async fn publish(&self, run: Merged, trace: HeaderMap, lease: Lease) -> anyhow::Result<()> {
        let (done, answer) = oneshot::channel();
        let stopped = || anyhow::anyhow!("the delivery publisher stopped");
        let hand_in = HandIn {
            run,
            trace,
            lease,
            done,
        };
        self.queue.send(hand_in).await.map_err(|_| stopped())?;
        match answer.await.map_err(|_| stopped())? {
            Ok(()) => Ok(()),
            Err(Failure::Failed(e)) => Err(anyhow::anyhow!(e)),
            Err(Failure::Unroutable(e)) => Err(anyhow::anyhow!(e).context(Unroutable)),
            Err(Failure::Lost) => Err(anyhow::anyhow!("the partition's lease was lost")),
        }
    }
}

/// Publishes what is handed in, one message per gateway for everything
/// that queued while the last went out, until every [`Publisher`] is
/// dropped.
async fn run(out: Out, mut rx: mpsc::Receiver<HandIn>) {
    let mut next: Option<HandIn> = None;
    loop {
        let first = match next.take() {
            Some(hand_in) => hand_in,
            None => match rx.recv().await {
                Some(hand_in) => hand_in,
                None => break,
            },
        };
        // Partitions woken with this one (one read of the events) hand
        // theirs in when they run: one turn of the scheduler lets them in.
        tokio::task::yield_now().await;
        let limit = merge::limit(&out.nats);
        let mut round = Round::default();
        round.add(first);
        while let Ok(hand_in) = rx.try_recv() {
            if !round.fits(&hand_in, limit) {
                next = Some(hand_in);
                break;
            }
            round.add(hand_in);
        }
        round.publish(&out).await;
    }
}

impl Out {
    /// Publishes one message to `gateway`.
    async fn publish(
        &self,
        gateway: &str,
        trace: &HeaderMap,
        payload: Vec<u8>,
    ) -> Result<(), Failure> {
        publish_to(&self.nats, &self.bus, &self.ns, gateway, trace, payload)
            .await
            .map_err(|e| {
                if e.downcast_ref::<Unroutable>().is_some() {
                    // The hand-in's error says so again.
                    let why: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
                    Failure::Unroutable(why.join(": "))
                } else {
                    Failure::Failed(format!("{e:#}"))
                }
            })
    }
}

/// Signs and publishes one message to `gateway`.
///
/// # Errors
/// When NATS refuses it; with [`Unroutable`] in the chain when it always
/// will.
pub(crate) async fn publish_to(
    nats: &async_nats::Client,
    bus: &BusKey,
    ns: &Namespace,
    gateway: &str,
    trace: &HeaderMap,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let subject = ns.gateway_subject(gateway);
    let mut headers = trace.clone();
    bus.sign(&subject, &payload, &mut headers);
    let published = nats
        .publish_with_headers(subject, headers, payload.into())
        .await;
    if let Err(e) = published {
        let permanent = matches!(
            e.kind(),
            PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::InvalidSubject
        );
        let e = anyhow::Error::new(e).context(format!("publishing to gateway {gateway}"));
        return Err(if permanent { e.context(Unroutable) } else { e });
    }
    Ok(())
}

/// The hand-ins that go out together, and each gateway's message so far.
#[derive(Default)]
struct Round {
    hand_ins: Vec<HandIn>,
    /// Per gateway, its message's bytes and events.
    load: BTreeMap<String, (usize, usize)>,
}

impl Round {
    /// Whether `hand_in` joins this round without taking any gateway's
    /// message past `limit` bytes or [`MAX_EVENTS`] events.
    fn fits(&self, hand_in: &HandIn, limit: usize) -> bool {
        hand_in.run.parts.iter().all(|(gateway, part)| {
            let (bytes, events) = self.load.get(gateway).copied().unwrap_or((0, 0));
            EncodedItems::FRAMING + bytes + joined(part) <= limit
                && events + hand_in.run.events <= MAX_EVENTS
        })
    }

    fn add(&mut self, hand_in: HandIn) {
        for (gateway, part) in &hand_in.run.parts {
            let (bytes, events) = self.load.entry(gateway.clone()).or_default();
            *bytes += joined(part);
            *events += hand_in.run.events;
        }
        self.hand_ins.push(hand_in);
    }

    /// Publishes one message per gateway, in gateway order, and tells
    /// each hand-in how its gateways' went: only those that had a part in
    /// a message NATS refused fail. Runs whose lease is lost by now are
    /// left out, and told so.
    async fn publish(self, out: &Out) {
        let (held, lost): (Vec<HandIn>, Vec<HandIn>) =
            self.hand_ins.into_iter().partition(|h| h.lease.is_held());
        for hand_in in lost {
            let _ = hand_in.done.send(Err(Failure::Lost));
        }
        let Some(first) = held.first() else {
            return;
        };
        // The first run's trace goes on to the gateways.
        let trace = first.trace.clone();
        let mut messages: BTreeMap<&str, Vec<&EncodedItems>> = BTreeMap::new();
        for hand_in in &held {
            for (gateway, part) in &hand_in.run.parts {
                messages.entry(gateway).or_default().push(part);
            }
        }
        let mut failed: BTreeMap<String, Failure> = BTreeMap::new();
        for (gateway, parts) in messages {
            if let Err(e) = out
                .publish(gateway, &trace, EncodedItems::join(parts))
                .await
            {
                failed.insert(gateway.to_owned(), e);
            }
        }
        for hand_in in held {
            let result = hand_in
                .run
                .parts
                .iter()
                .find_map(|(gateway, _)| failed.get(gateway.as_str()))
                .map_or(Ok(()), |e| Err(e.clone()));
            // Its consumer waits for the answer; were it gone, none is
            // needed.
            let _ = hand_in.done.send(result);
        }
    }
}

/// What a part adds to a joined message: itself and a separator.
fn joined(part: &EncodedItems) -> usize {
    part.len() + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use natter_protocol::SocketId;
    use natter_protocol::events::{Delivery, DeliveryBatch};

    fn frame(size: usize) -> Delivery {
        Delivery::Frame {
            sockets: vec![SocketId(1)],
            frame: "x".repeat(size),
        }
    }

    /// A hand-in of a run of `events` events, one frame of `size` bytes
    /// per gateway, under a lease held for a minute; and where its answer
    /// arrives.
    fn run_of(
        events: usize,
        parts: &[(&str, usize)],
    ) -> (HandIn, oneshot::Receiver<Result<(), Failure>>) {
        let parts = parts
            .iter()
            .map(|(gateway, size)| {
                let part = EncodedItems::encode(&[&frame(*size)]).expect("encode");
                ((*gateway).to_owned(), part)
            })
            .collect();
        let (done, answer) = oneshot::channel();
        let hand_in = HandIn {
            run: Merged { parts, events },
            trace: HeaderMap::new(),
            lease: Lease::new(tokio::time::Instant::now() + std::time::Duration::from_secs(60)),
            done,
        };
        (hand_in, answer)
    }

    /// A hand-in of one event.
    fn hand_in(parts: &[(&str, usize)]) -> (HandIn, oneshot::Receiver<Result<(), Failure>>) {
        run_of(1, parts)
    }

    #[tokio::test]
    async fn a_round_takes_hand_ins_while_each_gateway_s_message_stays_within_the_limit() {
        let one = joined(&hand_in(&[("a", 100)]).0.run.parts[0].1);
        let limit = EncodedItems::FRAMING + 2 * one;
        let mut round = Round::default();
        round.add(hand_in(&[("a", 100)]).0);
        assert!(round.fits(&hand_in(&[("a", 100), ("b", 100)]).0, limit));
        round.add(hand_in(&[("a", 100)]).0);
        assert!(!round.fits(&hand_in(&[("a", 100)]).0, limit));
        // Other gateways' bytes do not count against this one's.
        assert!(round.fits(&hand_in(&[("b", 100)]).0, limit));
        assert!(!round.fits(&hand_in(&[("b", 100), ("a", 1)]).0, limit));
    }

    #[tokio::test]
    async fn a_round_takes_at_most_max_events_for_one_gateway() {
        let mut round = Round::default();
        round.add(run_of(MAX_EVENTS - 1, &[("a", 1)]).0);
        assert!(round.fits(&hand_in(&[("a", 1)]).0, usize::MAX));
        assert!(!round.fits(&run_of(2, &[("a", 1)]).0, usize::MAX));
        assert!(round.fits(&run_of(MAX_EVENTS, &[("b", 1)]).0, usize::MAX));
    }

    /// What publishes to a fresh namespace on the machine's NATS, and a
    /// subscription to gateway `gateway`'s subject there.
    async fn out_watching(gateway: &str) -> (Out, async_nats::Subscriber) {
        let config = natter_platform::Config::from_env().expect("config defaults");
        let nats = async_nats::connect(&config.nats_url)
            .await
            .expect("NATS answers");
        let ns = Namespace::new(&format!("t{}", uuid::Uuid::new_v4().simple()));
        let sub = nats
            .subscribe(ns.gateway_subject(gateway))
            .await
            .expect("subscribed");
        nats.flush().await.expect("flushed");
        let bus = BusKey::new(natter_testkit::BUS_KEY).expect("a long enough key");
        (Out { nats, bus, ns }, sub)
    }

    async fn next_batch(sub: &mut async_nats::Subscriber) -> DeliveryBatch {
        let message = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
            .await
            .expect("a message arrives")
            .expect("subscribed");
        serde_json::from_slice(&message.payload).expect("a batch")
    }

    #[tokio::test]
    async fn hand_ins_queued_together_reach_a_gateway_as_one_message_in_order() {
        let (out, mut at_a) = out_watching("a").await;
        let (queue, rx) = mpsc::channel(QUEUE);
        let publisher = Publisher { queue };
        let (first, first_answer) = hand_in(&[("a", 1)]);
        let (second, second_answer) = hand_in(&[("b", 5), ("a", 2)]);
        for hand_in in [first, second] {
            publisher.queue.send(hand_in).await.expect("queued");
        }
        let task = tokio::spawn(run(out, rx));
        assert!(matches!(first_answer.await, Ok(Ok(()))));
        assert!(matches!(second_answer.await, Ok(Ok(()))));
        let (later, _) = hand_in(&[("a", 3)]);
        publisher.queue.send(later).await.expect("queued");

        assert_eq!(next_batch(&mut at_a).await.items, vec![frame(1), frame(2)]);
        assert_eq!(next_batch(&mut at_a).await.items, vec![frame(3)]);
        drop(publisher);
        task.await
            .expect("the task ends once the publisher is dropped");
    }

    #[tokio::test]
    async fn a_run_whose_lease_was_lost_is_not_published() {
        let (out, mut at_a) = out_watching("a").await;
        let (lost, lost_answer) = hand_in(&[("a", 1)]);
        lost.lease.lose();
        let (held, held_answer) = hand_in(&[("a", 2)]);
        let mut round = Round::default();
        round.add(lost);
        round.add(held);
        round.publish(&out).await;

        assert!(matches!(lost_answer.await, Ok(Err(Failure::Lost))));
        assert!(matches!(held_answer.await, Ok(Ok(()))));
        assert_eq!(next_batch(&mut at_a).await.items, vec![frame(2)]);
    }

    #[tokio::test]
    async fn a_message_nats_refuses_fails_only_the_hand_ins_with_a_part_in_it() {
        let (out, mut at_b) = out_watching("b").await;
        let too_large = out.nats.server_info().max_payload;
        let (refused, refused_answer) = hand_in(&[("a", too_large)]);
        let (alone, alone_answer) = hand_in(&[("b", 10)]);
        let (beside, beside_answer) = hand_in(&[("b", 20), ("a", 30)]);
        let mut round = Round::default();
        for hand_in in [refused, alone, beside] {
            round.add(hand_in);
        }
        round.publish(&out).await;

        assert!(matches!(
            refused_answer.await,
            Ok(Err(Failure::Unroutable(_)))
        ));
        assert!(matches!(
            beside_answer.await,
            Ok(Err(Failure::Unroutable(_)))
        ));
        assert!(matches!(alone_answer.await, Ok(Ok(()))));
        assert_eq!(
            next_batch(&mut at_b).await.items,
            vec![frame(10), frame(20)]
        );
    }
}
