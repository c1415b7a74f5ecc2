//! natter's push service: fans events out to the gateways.
//!
//! The events stream is split into partitions (`NATTER_PARTITIONS`; a
//! channel's events share one). Each partition is consumed by exactly one
//! push instance at a time, in stream order, under a lease; the instances
//! share the partitions fairly and take over a dead one's within seconds.
//! For each event push works out who must hear of it (channel members from
//! Postgres, cached; live sockets from Redis presence) and publishes one
//! delivery batch per gateway on that gateway's core NATS subject. Typing
//! notices come through a core NATS queue group instead, since they are not
//! worth storing. `/healthz` and `/readyz` are served on
//! `NATTER_PUSH_ADDR`.
//!
//! Reading order: [`Push`] wires it; [`leases`] decides which partitions
//! this instance owns; [`consumer`] consumes one of them, with its
//! position in `offsets` and its stalls reported through `progress`;
//! `fanout` handles a batch of events, and `publisher` publishes the runs
//! of every partition together; [`recipients`] is the pure decision
//! of who gets what; `membership` and `natter_platform::presence` are the
//! lookups it needs.

pub mod consumer;
mod fanout;
pub mod leases;
mod membership;
mod merge;
mod offsets;
mod progress;
mod publisher;
pub mod recipients;
mod replay;

use anyhow::Context;
use consumer::Consumers;
use fanout::Fanout;
use leases::Coordinator;
use membership::Membership;
use natter_platform::health::Dependencies;
use natter_platform::lifecycle::{Lifecycle, Runnable};
use natter_platform::presence::{LIVENESS_CACHE, PresenceReader, REPAIR_WAIT};
use natter_platform::{Config, cache, db, nats};
use offsets::Offsets;
pub use progress::HELD_BACK;
use progress::{Outage, Progress};
use publisher::Publisher;
pub use replay::{ReplayFrom, replay};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound, ready-to-run push service.
pub struct Push {
    coordinator: Coordinator,
    fanout: Fanout,
    /// The task of the fanout's [`Publisher`].
    publishing: tokio::task::JoinHandle<()>,
    /// Typing notices (core NATS, queue group), subscribed while building
    /// so that none published after `build` returns is missed.
    typing: async_nats::Subscriber,
    listener: TcpListener,
    deps: Dependencies,
    lifecycle: Lifecycle,
}

impl Runnable for Push {
    /// Connects to Postgres, NATS and Redis, declares the streams and the
    /// leases and offsets buckets, subscribes to typing notices, and binds
    /// the health port.
    ///
    /// # Errors
    /// When `NATTER_BUS_KEY` is missing, a dependency does not answer or
    /// the port cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let bus = config.bus_key("push")?;
        let ns = config.namespace();
        let pool = db::connect(config).await?;
        let client = nats::connect(config, "natter-push").await?;
        let redis = cache::connect(config).await?;
        let js = nats::jetstream(&client);
        nats::ensure_streams(&js, config).await?;
        let ttl = Duration::from_secs(config.push_lease_secs);
        // Lease requests must fail well within a renewal period, not after
        // JetStream's default five seconds.
        let mut lease_js = js.clone();
        lease_js.set_timeout((ttl / 5).min(Duration::from_secs(1)));
        let leases = leases::ensure_bucket(&lease_js, &ns, ttl, config.stream_replicas).await?;
        let offsets = offsets::ensure_bucket(&js, &ns, config.stream_replicas).await?;
        let stream = js
            .get_stream(ns.events_stream())
            .await
            .with_context(|| format!("opening stream {}", ns.events_stream()))?;
        let typing = client
            .queue_subscribe(ns.typing_wildcard(), ns.push_typing_queue_group())
            .await
            .context("subscribing to typing notices")?;
        client
            .flush()
            .await
            .context("flushing the typing subscription")?;
        let listener = TcpListener::bind(config.push_addr)
            .await
            .with_context(|| format!("binding push health to {}", config.push_addr))?;
        let lifecycle = Lifecycle::new("push", config);
        let (publisher, publishing) = Publisher::start(client.clone(), bus.clone(), ns.clone());
        let fanout = Fanout {
            nats: client.clone(),
            bus,
            membership: Membership::new(pool.clone()),
            presence: PresenceReader::new(redis.clone(), ns.clone())
                .caching_hashes()
                .caching_liveness(LIVENESS_CACHE)
                .waiting_for_repair(REPAIR_WAIT),
            ns: ns.clone(),
            publisher,
        };
        let consumers = Consumers {
            stream,
            js,
            offsets: Offsets::new(offsets),
            fanout: fanout.clone(),
            progress: Progress::new(&lifecycle.readiness()),
            commits: Arc::new(Mutex::new(Outage::new("offset commits"))),
        };
        Ok(Self {
            coordinator: Coordinator::new(
                leases,
                leases::instance_id(),
                ns.partitions(),
                ttl,
                consumers,
            ),
            fanout,
            publishing,
            typing,
            listener,
            deps: Dependencies {
                postgres: Some(pool),
                nats: Some(client),
                redis: Some(redis),
            },
            lifecycle,
        })
    }

    /// Where `/healthz` and `/readyz` answer.
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Fans events out until `shutdown`; then turns unready, stops every
    /// partition's consumer after the batch in hand, commits and releases
    /// the partitions within the grace period (past it, their leases
    /// expire and the next owners repeat what was not committed).
    ///
    /// # Errors
    /// When subscribing to membership invalidations fails, or a partition's
    /// consumer or the delivery publisher panicked.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "push serving health");
        let Self {
            coordinator,
            fanout,
            publishing,
            typing,
            listener,
            deps,
            lifecycle,
        } = self;
        let invalidations = fanout
            .nats
            .subscribe(fanout.ns.membership_subject())
            .await
            .context("subscribing to membership invalidations")?;
        lifecycle.serve_health(listener, deps);
        lifecycle.spawn(
            "invalidation follower",
            fanout::follow_invalidations(
                invalidations,
                fanout.membership.clone(),
                lifecycle.background(),
            ),
        );
        // The publisher's task ends once the last fanout is dropped: the
        // consumers' with the coordinator, this one with the typing
        // follower, both once intake stops.
        lifecycle.spawn(
            "typing follower",
            fanout::follow_typing(typing, fanout, lifecycle.intake()),
        );
        let intake = lifecycle.intake();
        // A publisher that ends while push consumes (a panic) stops push,
        // as a consumer's panic does: its partitions could not move.
        let consuming = async move {
            tokio::select! {
                consumed = coordinator.run(intake) => consumed,
                ended = publishing => Err(anyhow::anyhow!(
                    "the delivery publisher ended while push ran: {ended:?}"
                )),
            }
        };
        lifecycle.run(shutdown, consuming).await
    }
}
