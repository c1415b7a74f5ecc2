//! Handling events: gather what [`crate::recipients`] needs (members,
//! presence, read positions) for a batch of events at once, work out each
//! event's deliveries, publish them in order — one part per gateway for
//! each run of events (`merge.rs`), joined with other partitions' into one
//! message per gateway (`publisher.rs`), one message per event when it
//! must go alone —
//! and keep the membership caches of every instance honest. Typing notices
//! arrive here too, from core NATS rather than the events stream.

use crate::leases::Lease;
use crate::membership::Membership;
use crate::merge::{self, Merged};
use crate::publisher::{Publisher, publish_to};
use crate::recipients::{self, GatewayBatch, Live};
use anyhow::Context;
use futures::StreamExt;
use natter_platform::bus::BusKey;
use natter_platform::presence::PresenceReader;
use natter_platform::telemetry::propagation;
use natter_protocol::events::{Delivery, DeliveryBatch, Event};
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, Seq, UserId};
use std::collections::HashMap;
use std::ops::Range;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Typing notices one instance fans out at once.
const TYPING_CONCURRENCY: usize = 16;

/// What handling an event needs; cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    /// Gateway batches and invalidation broadcasts go out here.
    pub nats: async_nats::Client,
    /// Signs gateway batches: a gateway delivers nothing unsigned.
    pub bus: BusKey,
    /// Subject names.
    pub ns: Namespace,
    /// Channel members (cached).
    pub membership: Membership,
    /// Live sockets.
    pub presence: PresenceReader,
    /// Publishes runs of events, joined across partitions.
    pub publisher: Publisher,
}

impl Fanout {
    /// Delivers one event (a typing notice, a replayed message).
    ///
    /// # Errors
    /// When Postgres, Redis or NATS fails.
    pub async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let deliveries = self.prepare(std::slice::from_ref(event)).await?;
        for batches in deliveries {
            self.publish(event, &batches).await?;
        }
        Ok(())
    }

    /// Works out the deliveries of `events`, in order, with one presence
    /// round trip and at most one query of read positions for all of them;
    /// nothing is delivered yet.
    ///
    /// A change of membership is applied where it stands: the cache is
    /// invalidated (here and, by broadcast, on every instance) before the
    /// members of any later event are looked up, so the events after it
    /// see it and those before it do not. Each event reaches only its own
    /// audience, though the presence read covers everyone's.
    ///
    /// # Errors
    /// When Postgres, Redis or NATS fails; nothing of the batch was
    /// delivered and it may be prepared again.
    #[tracing::instrument(level = "debug", skip_all, fields(events = events.len()))]
    pub async fn prepare(&self, events: &[Event]) -> anyhow::Result<Vec<Vec<GatewayBatch>>> {
        let mut audiences = Vec::with_capacity(events.len());
        for event in events {
            if let Some(channel) = recipients::membership_change(event) {
                self.membership.invalidate(channel);
                self.broadcast_invalidation(channel).await?;
            }
            let members = match recipients::channel_of(event) {
                Some(channel) => Some(self.membership.members(channel).await?),
                None => None,
            };
            audiences.push(recipients::audience(
                event,
                members.as_ref().map_or(&[], |m| &m.users),
            ));
        }
        let mut everyone: Vec<UserId> = audiences.iter().flatten().copied().collect();
        everyone.sort_unstable();
        everyone.dedup();
        let live = self.presence.live_sockets(&everyone).await?;
        // One event's audience is everyone read.
        let lives: Vec<Live> = if audiences.len() == 1 {
            vec![Live::all(&live)]
        } else {
            audiences.iter().map(|a| Live::of(&live, a)).collect()
        };
        let unread: Vec<Vec<UserId>> = events
            .iter()
            .zip(&lives)
            .map(|(event, live)| recipients::unread_users(event, *live))
            .collect();
        let wanted: Vec<(ChannelId, UserId)> = events
            .iter()
            .zip(&unread)
            .filter_map(|(event, users)| match event {
                Event::MessageStored { channel_id, .. } => Some((*channel_id, users)),
                _ => None,
            })
            .flat_map(|(channel, users)| users.iter().map(move |u| (channel, *u)))
            .collect();
        let read = self.membership.last_read(&wanted).await?;
        Ok(events
            .iter()
            .zip(&lives)
            .zip(&unread)
            .map(|((event, live), users)| {
                let last_read: HashMap<UserId, Seq> = match event {
                    Event::MessageStored { channel_id, .. } => users
                        .iter()
                        .filter_map(|u| read.get(&(*channel_id, *u)).map(|seq| (*u, *seq)))
                        .collect(),
                    _ => HashMap::new(),
                };
                recipients::deliveries(event, *live, &last_read)
            })
            .collect())
    }

    /// Publishes one event's gateway batches (prepared by
    /// [`Fanout::prepare`]), in gateway order.
    ///
    /// # Errors
    /// When NATS refuses a publish; with [`Unroutable`] in the chain when
    /// it always will (a batch larger than NATS accepts).
    pub async fn publish(&self, event: &Event, batches: &[GatewayBatch]) -> anyhow::Result<()> {
        // The trace continues at the gateways.
        let trace = propagation::headers();
        for out in batches {
            let payload = serde_json::to_vec(&out.batch).context("encoding a delivery batch")?;
            publish_to(
                &self.nats,
                &self.bus,
                &self.ns,
                &out.gateway,
                &trace,
                payload,
            )
            .await?;
        }
        record(event, batches);
        Ok(())
    }

    /// Splits prepared deliveries (one entry per event, in order) into
    /// the runs [`merge::runs`] merges, within [`merge::limit`]. One event
    /// is one run, without reading the server's limit (which copies its
    /// info).
    #[must_use]
    pub fn runs(&self, prepared: &[Vec<GatewayBatch>]) -> Vec<Range<usize>> {
        if prepared.len() < 2 {
            // A lone event is a run of its own whatever the limit.
            return merge::runs(prepared, 0);
        }
        merge::runs(prepared, merge::limit(&self.nats))
    }

    /// Publishes a run of events [`merge::merge`] made, with whatever
    /// other partitions publish meanwhile ([`Publisher`]), while `lease`
    /// is held; the caller [`record`]s the events.
    ///
    /// # Errors
    /// When NATS refuses a publish; with [`Unroutable`] in the chain when
    /// it always will. When the lease is lost first.
    pub async fn publish_merged(&self, run: Merged, lease: Lease) -> anyhow::Result<()> {
        self.publisher
            .publish(run, propagation::headers(), lease)
            .await
    }

    async fn broadcast_invalidation(&self, channel: ChannelId) -> anyhow::Result<()> {
        self.nats
            .publish(self.ns.membership_subject(), channel.0.to_string().into())
            .await
            .context("broadcasting a membership change")
    }
}

/// In an error's chain: the event's deliveries can never be published,
/// however often they are tried, so it is dead-lettered instead of holding
/// its partition back forever.
#[derive(Debug)]
pub struct Unroutable;

impl std::fmt::Display for Unroutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the event cannot be delivered")
    }
}

/// Counts an event's published deliveries and, for a message, how long
/// after it was stored they went out.
pub fn record(event: &Event, batches: &[GatewayBatch]) {
    let metrics = natter_platform::metrics::get();
    let kind = natter_platform::metrics::attr("type", event.kind());
    for out in batches {
        metrics.deliveries.add(sockets_in(&out.batch), &kind);
    }
    if let Event::MessageStored { sent_at, .. } = event {
        let latency = (time::OffsetDateTime::now_utc() - *sent_at).as_seconds_f64();
        metrics.delivery_latency.record(latency.max(0.0), &[]);
    }
}

/// How many socket deliveries a batch makes (leave notices are not
/// deliveries).
pub(crate) fn sockets_in(batch: &DeliveryBatch) -> u64 {
    batch
        .items
        .iter()
        .map(|item| match item {
            Delivery::Frame { sockets, .. } => sockets.len(),
            Delivery::Unread { targets, .. } => targets.iter().map(|t| t.sockets.len()).sum(),
            Delivery::LeaveChannel { .. } => 0,
        } as u64)
        .sum()
}

/// Drops cached members whenever any instance announces a change, until
/// `stop`.
pub async fn follow_invalidations(
    mut sub: async_nats::Subscriber,
    membership: Membership,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            msg = sub.next() => msg,
            () = stop.cancelled() => break,
        };
        let Some(msg) = msg else { break };
        match std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(id) => membership.invalidate(ChannelId(id)),
            None => tracing::warn!("malformed membership invalidation ignored"),
        }
    }
    if let Err(e) = sub.unsubscribe().await {
        tracing::debug!(error = %e, "unsubscribing from invalidations");
    }
}

/// Fans out the typing notices of the queue-group subscription `sub` until
/// `stop`, then finishes those in hand. They are ephemeral: nothing is
/// acknowledged or retried, and a notice that cannot be decoded or
/// delivered is logged and dropped.
pub async fn follow_typing(
    mut sub: async_nats::Subscriber,
    fanout: Fanout,
    stop: CancellationToken,
) {
    (&mut sub)
        .take_until(stop.cancelled())
        .for_each_concurrent(TYPING_CONCURRENCY, |msg| fanout.typing(msg))
        .await;
    if let Err(e) = sub.unsubscribe().await {
        tracing::debug!(error = %e, "unsubscribing from typing notices");
    }
}

impl Fanout {
    async fn typing(&self, msg: async_nats::Message) {
        let span = tracing::debug_span!("push.typing", subject = %msg.subject);
        propagation::adopt(&span, msg.headers.as_ref());
        async {
            match serde_json::from_slice::<Event>(&msg.payload) {
                Ok(event @ Event::Typing { .. }) => {
                    if let Err(e) = self.handle(&event).await {
                        tracing::warn!(error = ?e, "a typing notice was not delivered");
                    }
                }
                Ok(other) => {
                    tracing::warn!(kind = other.kind(), "not a typing notice; dropped");
                }
                Err(e) => tracing::warn!(error = %e, "undecodable typing notice dropped"),
            }
        }
        .instrument(span)
        .await;
    }
}
