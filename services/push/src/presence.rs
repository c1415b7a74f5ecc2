//! Who is online where: the gateways' presence hashes in Redis.
//!
//! Each gateway keeps, per user, a hash `presence_key(user)` with one field
//! `<gateway_id>:<socket_id>` per live socket, valued by the entered channel
//! id (decimal) or `""`. All recipients' hashes are read in one pipelined
//! round trip. Redis 7.0 has no per-field TTL, so a crashed gateway's
//! fields stay behind: an entry counts only while its gateway's liveness
//! key exists. Those answers are cached for [`LIVENESS_TTL`] so the check
//! costs a round trip per second, not per event; stale fields found on the
//! way are deleted.

use crate::router::{Presence, Socket};
use anyhow::Context;
use natter_protocol::subjects::{Namespace, parse_presence_field};
use natter_protocol::{ChannelId, UserId};
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a gateway's liveness answer is trusted.
pub const LIVENESS_TTL: Duration = Duration::from_millis(1500);

/// Presence lookups; cheap to clone.
#[derive(Clone)]
pub struct PresenceStore {
    redis: ConnectionManager,
    ns: Namespace,
    /// Gateway id → (alive, when asked).
    liveness: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

/// One field of a presence hash, parsed.
struct Field {
    user: UserId,
    name: String,
    socket: Socket,
}

impl PresenceStore {
    /// Lookups on `redis` in namespace `ns`.
    #[must_use]
    pub fn new(redis: ConnectionManager, ns: Namespace) -> Self {
        Self {
            redis,
            ns,
            liveness: Arc::default(),
        }
    }

    /// The live sockets of `users`.
    ///
    /// # Errors
    /// When Redis does not answer.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn lookup(&self, users: &[UserId]) -> anyhow::Result<Presence> {
        if users.is_empty() {
            return Ok(Presence::new());
        }
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HGETALL").arg(self.ns.presence_key(*user));
        }
        let mut conn = self.redis.clone();
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .context("reading presence")?;
        let fields: Vec<Field> = users
            .iter()
            .zip(hashes)
            .flat_map(|(user, hash)| {
                hash.into_iter()
                    .filter_map(move |(name, value)| parse(*user, name, &value))
            })
            .collect();
        let alive = self
            .alive(fields.iter().map(|f| f.socket.gateway.as_str()))
            .await?;
        let (live, dead): (Vec<Field>, Vec<Field>) = fields
            .into_iter()
            .partition(|f| alive.get(&f.socket.gateway).copied().unwrap_or(false));
        if !dead.is_empty() {
            self.clean(&dead).await;
        }
        let mut presence = Presence::new();
        for f in live {
            presence.entry(f.user).or_default().push(f.socket);
        }
        Ok(presence)
    }

    /// Whether each gateway is alive: cached answers, and one pipelined
    /// `EXISTS` round trip for the gateways not asked about lately.
    async fn alive<'a>(
        &self,
        gateways: impl Iterator<Item = &'a str>,
    ) -> anyhow::Result<HashMap<String, bool>> {
        let mut known = HashMap::new();
        let mut unknown = Vec::new();
        {
            let cache = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
            for gw in gateways {
                if known.contains_key(gw) || unknown.iter().any(|u| u == gw) {
                    continue;
                }
                match cache.get(gw) {
                    Some((alive, at)) if at.elapsed() < LIVENESS_TTL => {
                        known.insert(gw.to_owned(), *alive);
                    }
                    _ => unknown.push(gw.to_owned()),
                }
            }
        }
        if unknown.is_empty() {
            return Ok(known);
        }
        let mut pipe = redis::pipe();
        for gw in &unknown {
            pipe.cmd("EXISTS").arg(self.ns.gateway_alive_key(gw));
        }
        let mut conn = self.redis.clone();
        let answers: Vec<bool> = pipe
            .query_async(&mut conn)
            .await
            .context("checking gateway liveness")?;
        let now = Instant::now();
        let mut cache = self.liveness.lock().unwrap_or_else(PoisonError::into_inner);
        for (gw, alive) in unknown.into_iter().zip(answers) {
            cache.insert(gw.clone(), (alive, now));
            known.insert(gw, alive);
        }
        Ok(known)
    }

    /// Deletes fields of dead gateways. Best effort: a failure only means
    /// they are skipped again next time.
    async fn clean(&self, dead: &[Field]) {
        let mut pipe = redis::pipe();
        for f in dead {
            pipe.cmd("HDEL")
                .arg(self.ns.presence_key(f.user))
                .arg(&f.name)
                .ignore();
        }
        let mut conn = self.redis.clone();
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            tracing::debug!(error = %e, "cleaning stale presence failed");
        } else {
            tracing::debug!(fields = dead.len(), "cleaned presence of dead gateways");
        }
    }
}

/// A field and its value; `None` when the field is malformed or names a
/// gateway that cannot be a subject token. An unreadable channel counts as
/// "not entered".
fn parse(user: UserId, name: String, value: &str) -> Option<Field> {
    let (gateway, socket) = parse_presence_field(&name)?;
    let valid = !gateway.is_empty()
        && gateway
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return None;
    }
    let socket = Socket {
        gateway: gateway.to_owned(),
        socket,
        entered: value.parse().ok().map(ChannelId),
    };
    Some(Field { user, name, socket })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_name_a_gateway_and_socket_and_values_the_entered_channel() {
        let f = parse(UserId(1), "gw-a:42".into(), "7").expect("valid");
        assert_eq!(
            f.socket,
            Socket {
                gateway: "gw-a".into(),
                socket: natter_protocol::SocketId(42),
                entered: Some(ChannelId(7))
            }
        );
        let lobby = parse(UserId(1), "gw-a:43".into(), "").expect("valid");
        assert_eq!(lobby.socket.entered, None);
    }

    #[test]
    fn malformed_fields_and_unsafe_gateway_ids_are_skipped() {
        assert!(parse(UserId(1), "no-socket".into(), "").is_none());
        assert!(parse(UserId(1), "gw:x".into(), "").is_none());
        assert!(parse(UserId(1), "gw.evil.>:1".into(), "").is_none());
        assert!(parse(UserId(1), ":1".into(), "").is_none());
    }
}
