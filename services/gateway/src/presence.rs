//! Presence in Redis: which sockets each user has, on which gateway, in
//! which channel (hash `<ns>:presence:<user>`, field `<gateway>:<socket>`,
//! value the entered channel id or ""), plus this gateway's liveness key.
//!
//! Redis 7.0 has no per-field TTL, so entries are not expired one by one:
//! readers ignore entries whose gateway's liveness key is gone. Nothing here
//! is the only copy of anything: if Redis loses it (flush, failover), the
//! heartbeat notices its liveness key was missing and re-registers every
//! local socket. A write that fails in a Redis blip is repaired by the next
//! heartbeat: it marks presence dirty (or remembers the removal) and the
//! heartbeat registers everything again (or retries the removal).

use crate::registry::Registry;
use natter_protocol::subjects::{Namespace, presence_field};
use natter_protocol::{ChannelId, SocketId, UserId};
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the liveness key is refreshed.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// Liveness key TTL: a few missed heartbeats and the gateway counts as gone.
const ALIVE_TTL_SECS: u64 = 20;

/// Writes this gateway's presence entries.
#[derive(Clone)]
pub(crate) struct Presence {
    redis: ConnectionManager,
    ns: Namespace,
    gateway_id: String,
    /// A write failed: re-register every socket on the next heartbeat.
    dirty: Arc<AtomicBool>,
    /// Removals that failed, retried on the next heartbeat.
    stale: Arc<Mutex<Vec<(UserId, SocketId)>>>,
}

impl Presence {
    pub(crate) fn new(redis: ConnectionManager, ns: Namespace, gateway_id: String) -> Self {
        Self {
            redis,
            ns,
            gateway_id,
            dirty: Arc::default(),
            stale: Arc::default(),
        }
    }

    /// Records a socket and what it has entered.
    pub(crate) async fn set(&self, user: UserId, socket: SocketId, entered: Option<ChannelId>) {
        let mut conn = self.redis.clone();
        let value = entered.map(|c| c.to_string()).unwrap_or_default();
        let result: redis::RedisResult<()> = redis::cmd("HSET")
            .arg(self.ns.presence_key(user))
            .arg(presence_field(&self.gateway_id, socket))
            .arg(value)
            .query_async(&mut conn)
            .await;
        if let Err(e) = result {
            self.dirty.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, "presence update failed; the heartbeat will repair it");
        }
    }

    /// Forgets a socket.
    pub(crate) async fn remove(&self, user: UserId, socket: SocketId) {
        if let Err(e) = self.remove_all(&[(user, socket)]).await {
            self.stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((user, socket));
            tracing::warn!(error = %e, "presence removal failed; the heartbeat will retry it");
        }
    }

    async fn remove_all(&self, sockets: &[(UserId, SocketId)]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for (user, socket) in sockets {
            pipe.cmd("HDEL")
                .arg(self.ns.presence_key(*user))
                .arg(presence_field(&self.gateway_id, *socket))
                .ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async(&mut conn).await
    }

    /// Refreshes the liveness key; returns whether it had expired or been
    /// lost (then every local socket must be registered again).
    async fn beat(&self) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        let previous: Option<String> = redis::cmd("SET")
            .arg(self.ns.gateway_alive_key(&self.gateway_id))
            .arg("1")
            .arg("EX")
            .arg(ALIVE_TTL_SECS)
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        Ok(previous.is_none())
    }

    /// Registers every local socket again, pipelined; a socket that closed
    /// meanwhile is removed again, so no stale entry is written back.
    async fn register_all(&self, registry: &Registry) -> redis::RedisResult<()> {
        let sockets = registry.all();
        let mut pipe = redis::pipe();
        for (id, control) in &sockets {
            pipe.cmd("HSET")
                .arg(self.ns.presence_key(control.user_id))
                .arg(presence_field(&self.gateway_id, *id))
                .arg(control.entered().map(|c| c.to_string()).unwrap_or_default())
                .ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async::<()>(&mut conn).await?;
        let gone: Vec<(UserId, SocketId)> = sockets
            .iter()
            .filter(|(id, _)| !registry.contains(*id))
            .map(|(id, control)| (control.user_id, *id))
            .collect();
        if gone.is_empty() {
            Ok(())
        } else {
            self.remove_all(&gone).await
        }
    }

    /// Repairs what failed since the last heartbeat.
    async fn repair(&self, registry: &Registry, lost: bool) {
        if lost || self.dirty.swap(false, Ordering::Relaxed) {
            if lost {
                tracing::warn!("gateway liveness key was lost; re-registering sockets");
            }
            if let Err(e) = self.register_all(registry).await {
                self.dirty.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e, "re-registering presence failed");
            }
        }
        let stale = std::mem::take(&mut *self.stale.lock().unwrap_or_else(PoisonError::into_inner));
        if !stale.is_empty() && self.remove_all(&stale).await.is_err() {
            self.stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(stale);
        }
    }

    /// Marks the gateway alive now (before serving), then keeps it alive
    /// until `shutdown`.
    pub(crate) async fn start_heartbeat(
        self,
        registry: std::sync::Arc<Registry>,
        shutdown: CancellationToken,
    ) -> redis::RedisResult<tokio::task::JoinHandle<()>> {
        self.beat().await?;
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                match self.beat().await {
                    Ok(lost) => self.repair(&registry, lost).await,
                    Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
                }
            }
        }))
    }

    /// Deletes the liveness key: readers drop this gateway's entries at
    /// once.
    pub(crate) async fn retire(&self) {
        let mut conn = self.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.ns.gateway_alive_key(&self.gateway_id))
            .query_async(&mut conn)
            .await;
    }
}
