//! Merging the deliveries of several events into one part per gateway,
//! which goes out as one message (alone, or joined with other partitions'
//! parts by `publisher.rs`).
//!
//! A partition's events handled together would otherwise go out as one
//! NATS message per event per gateway, each paying a signature, a bus
//! transit and, at the gateway, a verify, a decode and a span. Merged,
//! natter-server's CPU per stored message fell by ~10 % under load.
//!
//! Events are merged in runs: consecutive events, in order, at most
//! [`MAX_EVENTS`] of them, whose parts stay under a size limit by
//! [`encoded_bound`]. An event too large for the limit is a run of its
//! own, never joined with another's part to the same gateway, so one NATS
//! can never take is found and dead-lettered alone.

use crate::recipients::GatewayBatch;
use anyhow::Context;
use natter_protocol::events::{Delivery, EncodedItems, socket_ids_bound};
use std::collections::BTreeMap;
use std::ops::Range;

/// Most events one run merges, and one joined message carries. A gateway
/// queues a message's frames on their sockets in one go, and a socket's queue holds 256 by default
/// (`NATTER_WS_QUEUE`): a backlog read 256 events at a time, merged whole,
/// could fill a reader's queue in one message and close its socket.
pub const MAX_EVENTS: usize = 64;
/// Most bytes of one merged message (gateway RPC batches keep to the same
/// bound): well under NATS's default 1 MiB payload limit.
pub const MAX_BYTES: usize = 512 * 1024;
/// Room left beside a payload for its headers (the signature, the trace
/// context): NATS counts them against its payload limit too.
pub const HEADER_ROOM: usize = 4 * 1024;

/// One run's deliveries, encoded: per gateway (id, items), in gateway
/// order, and how many events the run holds; each gateway's items go out
/// in one message, alone or joined with other partitions' runs
/// (`publisher.rs`, which keeps to [`MAX_EVENTS`] per message too).
#[derive(Debug)]
pub struct Merged {
    /// Per gateway, its items.
    pub parts: Vec<(String, EncodedItems)>,
    /// The events of the run.
    pub events: usize,
}

/// Most bytes of one message to a gateway: [`MAX_BYTES`], or less when
/// the server `nats` is connected to takes less (headers included).
#[must_use]
pub fn limit(nats: &async_nats::Client) -> usize {
    let takes = nats.server_info().max_payload;
    MAX_BYTES.min(takes.saturating_sub(HEADER_ROOM))
}

/// Splits `prepared` (each event's gateway batches, in event order) into
/// runs to merge: none longer than [`MAX_EVENTS`], and none whose message
/// to any gateway could pass `limit` bytes unless it is one event alone.
#[must_use]
pub fn runs(prepared: &[Vec<GatewayBatch>], limit: usize) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, batches) in prepared.iter().enumerate() {
        let sizes: Vec<(&str, usize)> = batches
            .iter()
            .map(|out| (out.gateway.as_str(), batch_bound(out)))
            .collect();
        let fits = i - start < MAX_EVENTS
            && sizes
                .iter()
                .all(|(gateway, size)| bytes.get(gateway).map_or(0, |b| *b) + size <= limit);
        if !fits && i > start {
            runs.push(start..i);
            start = i;
            bytes.clear();
        }
        for (gateway, size) in sizes {
            *bytes.entry(gateway).or_default() += size;
        }
    }
    if start < prepared.len() {
        runs.push(start..prepared.len());
    }
    runs
}

/// Encodes a run's deliveries (prepared event by event) as one part per
/// gateway, each gateway's items in event order.
///
/// # Errors
/// When a part cannot be encoded.
pub fn merge(prepared: &[Vec<GatewayBatch>]) -> anyhow::Result<Merged> {
    let mut items: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for out in prepared.iter().flatten() {
        items
            .entry(out.gateway.as_str())
            .or_default()
            .extend(&out.batch.items);
    }
    let messages = items
        .into_iter()
        .map(|(gateway, items)| {
            let encoded = EncodedItems::encode(&items).context("encoding a delivery batch")?;
            Ok((gateway.to_owned(), encoded))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Merged {
        parts: messages,
        events: prepared.len(),
    })
}

/// An upper bound of a batch's items' encoded size, separators included.
fn batch_bound(out: &GatewayBatch) -> usize {
    out.batch.items.iter().map(encoded_bound).sum()
}

/// An upper bound of one delivery's encoded size: socket ids as
/// [`socket_ids_bound`] says; a frame, JSON text itself, at most doubles
/// as a JSON string (only `"` and `\` are escaped); a title, user text, at
/// most grows sixfold (`\u001f`); what is not text or ids fits in 128
/// bytes.
fn encoded_bound(delivery: &Delivery) -> usize {
    const FIXED: usize = 128;
    match delivery {
        Delivery::Frame { sockets, frame } => FIXED + socket_ids_bound(sockets) + frame.len() * 2,
        Delivery::Unread { title, targets, .. } => {
            FIXED
                + title.len() * 6
                + targets
                    .iter()
                    .map(|t| FIXED + socket_ids_bound(&t.sockets))
                    .sum::<usize>()
        }
        Delivery::LeaveChannel { sockets, .. } => FIXED + socket_ids_bound(sockets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::events::{DeliveryBatch, UnreadTarget};
    use natter_protocol::{ChannelId, Seq, SocketId};

    fn frame(gateway: &str, text: &str, sockets: &[u64]) -> GatewayBatch {
        GatewayBatch {
            gateway: gateway.into(),
            batch: DeliveryBatch {
                items: vec![Delivery::Frame {
                    sockets: sockets.iter().copied().map(SocketId).collect(),
                    frame: text.into(),
                }],
            },
        }
    }

    #[test]
    fn each_gateway_gets_one_message_with_every_event_s_items_in_order() {
        let prepared = vec![
            vec![
                frame("a", r#"{"seq":1}"#, &[1]),
                frame("b", r#"{"seq":1}"#, &[2]),
            ],
            vec![frame("b", r#"{"seq":2}"#, &[2])],
            vec![frame("a", r#"{"seq":3}"#, &[1, 3])],
        ];
        let Merged {
            parts: messages,
            events,
        } = merge(&prepared).expect("merged");
        assert_eq!(events, 3);
        let decoded: Vec<(String, DeliveryBatch)> = messages
            .into_iter()
            .map(|(g, p)| {
                (
                    g,
                    serde_json::from_slice(&EncodedItems::join([&p])).expect("a batch"),
                )
            })
            .collect();
        let item = |event: usize, batch: usize| prepared[event][batch].batch.items[0].clone();
        let batch = |items| DeliveryBatch { items };
        assert_eq!(
            decoded,
            vec![
                ("a".into(), batch(vec![item(0, 0), item(2, 0)])),
                ("b".into(), batch(vec![item(0, 1), item(1, 0)])),
            ]
        );
    }

    #[test]
    fn a_merged_message_is_never_larger_than_its_bound_says() {
        let delivery = Delivery::Unread {
            channel_id: ChannelId(i64::MAX),
            title: "\u{1f}\"\\".repeat(50),
            last_seq: Seq(i64::MAX),
            targets: vec![UnreadTarget {
                sockets: vec![SocketId(0), SocketId(u64::MAX / 2), SocketId(u64::MAX)],
                unread: i64::MIN,
            }],
        };
        let spread = [1, 10, 1_000, u64::MAX - 1, u64::MAX];
        let quoted = frame("a", &r#"{"t":"\"\\"}"#.repeat(40), &spread);
        let batch = GatewayBatch {
            gateway: "a".into(),
            batch: DeliveryBatch {
                items: vec![delivery, quoted.batch.items[0].clone()],
            },
        };
        let messages = merge(&[vec![batch.clone()], vec![batch.clone()]])
            .expect("merged")
            .parts;
        assert!(EncodedItems::join([&messages[0].1]).len() <= 2 * batch_bound(&batch));
    }

    #[test]
    fn a_large_channel_s_close_ids_are_bounded_by_their_gaps_not_their_digits() {
        let start = 4_000_000_000_000_000_000_u64;
        let ids: Vec<u64> = (0..2000).map(|n| start + 3 * n).collect();
        let batch = frame("a", "{}", &ids);
        let messages = merge(&[vec![batch.clone()]]).expect("merged").parts;
        let bound = batch_bound(&batch);
        assert!(EncodedItems::join([&messages[0].1]).len() <= bound);
        assert!(bound < 20 * ids.len() / 2, "{bound}");
    }

    #[test]
    fn runs_stop_at_the_size_limit_and_a_large_event_stands_alone() {
        let small = || vec![frame("a", "{}", &[1])];
        let one = batch_bound(&small()[0]);
        let large = vec![frame("a", &"x".repeat(10 * one), &[1])];
        let prepared = vec![small(), small(), large, small(), small(), small()];
        assert_eq!(runs(&prepared, 2 * one), vec![0..2, 2..3, 3..5, 5..6]);
        // Other gateways' bytes do not count against this one's.
        let apart = vec![small(), vec![frame("b", "{}", &[1])], small()];
        assert_eq!(runs(&apart, 2 * one), vec![0..3]);
    }

    #[test]
    fn runs_hold_at_most_max_events() {
        let prepared: Vec<_> = (0..MAX_EVENTS * 2 + 1)
            .map(|_| vec![frame("a", "{}", &[1])])
            .collect();
        assert_eq!(
            runs(&prepared, usize::MAX / 2),
            vec![
                0..MAX_EVENTS,
                MAX_EVENTS..2 * MAX_EVENTS,
                2 * MAX_EVENTS..2 * MAX_EVENTS + 1
            ]
        );
    }
}
