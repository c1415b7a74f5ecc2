//! natter's push service: fans events out to the gateways.
//!
//! It consumes the events stream through a durable pull consumer shared by
//! every push instance (and typing notices through a core NATS queue
//! group, since they are not worth storing), works out who must hear of
//! each event (channel members from Postgres, cached; live sockets from
//! Redis presence) and publishes one delivery batch per gateway on that
//! gateway's core NATS subject, then acknowledges the event. `/healthz` and `/readyz` are
//! served on `NATTER_PUSH_ADDR`.
//!
//! Reading order: [`Push`] wires it; [`consumer`] pulls, shards and
//! settles events; `fanout` handles one event; [`recipients`] is the
//! pure decision of who gets what; `membership` and
//! `natter_platform::presence` are the lookups it needs.

pub mod consumer;
mod fanout;
mod membership;
pub mod recipients;
mod replay;

use anyhow::Context;
use async_nats::jetstream::consumer::PullConsumer;
use fanout::Fanout;
use membership::Membership;
use natter_platform::health::Dependencies;
use natter_platform::lifecycle::{Lifecycle, Runnable};
use natter_platform::presence::{LIVENESS_CACHE, PresenceReader};
use natter_platform::{Config, cache, db, nats};
pub use replay::{ReplayFrom, replay};
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A bound, ready-to-run push service.
pub struct Push {
    fanout: Fanout,
    js: async_nats::jetstream::Context,
    consumer: PullConsumer,
    /// Typing notices (core NATS, queue group), subscribed while building
    /// so that none published after `build` returns is missed.
    typing: async_nats::Subscriber,
    listener: TcpListener,
    deps: Dependencies,
    lifecycle: Lifecycle,
}

impl Runnable for Push {
    /// Connects to Postgres, NATS and Redis, declares the streams and the
    /// durable consumer, subscribes to typing notices, and binds the health
    /// port.
    ///
    /// # Errors
    /// When a dependency does not answer or the port cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let ns = config.namespace();
        let pool = db::connect(config).await?;
        let client = nats::connect(&config.nats_url, "natter-push").await?;
        let redis = cache::connect(&config.redis_url).await?;
        let js = nats::jetstream(&client);
        nats::ensure_streams(&js, config).await?;
        let consumer = consumer::ensure(&js, &ns).await?;
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
        Ok(Self {
            fanout: Fanout {
                nats: client.clone(),
                membership: Membership::new(pool.clone()),
                presence: PresenceReader::new(redis.clone(), ns.clone())
                    .caching_liveness(LIVENESS_CACHE),
                ns,
            },
            js,
            consumer,
            typing,
            listener,
            deps: Dependencies {
                postgres: Some(pool),
                nats: Some(client),
                redis: Some(redis),
            },
            lifecycle: Lifecycle::new("push", config),
        })
    }

    /// Where `/healthz` and `/readyz` answer.
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Fans events out until `shutdown`; then turns unready, stops pulling
    /// and finishes in-flight events within the grace period (past it they
    /// are left unacknowledged and JetStream redelivers them).
    ///
    /// # Errors
    /// When subscribing to membership invalidations fails.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "push serving health");
        let invalidations = self
            .fanout
            .nats
            .subscribe(self.fanout.ns.membership_subject())
            .await
            .context("subscribing to membership invalidations")?;
        let lifecycle = self.lifecycle;
        lifecycle.serve_health(self.listener, self.deps);
        lifecycle.spawn(
            "invalidation follower",
            fanout::follow_invalidations(
                invalidations,
                self.fanout.membership.clone(),
                lifecycle.background(),
            ),
        );
        lifecycle.spawn(
            "typing follower",
            fanout::follow_typing(self.typing, self.fanout.clone(), lifecycle.intake()),
        );
        let supervisor = lifecycle.supervisor();
        let intake = lifecycle.intake();
        let consuming = async move {
            consumer::run(self.consumer, self.js, self.fanout, &supervisor, intake).await;
            Ok(())
        };
        lifecycle.run(shutdown, consuming).await
    }
}
