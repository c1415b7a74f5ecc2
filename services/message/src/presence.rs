//! The `online` flag of `fetch_connections`, from the gateways' presence
//! in Redis.
//!
//! A user is online when their presence hash `<ns>:presence:<user>` has a
//! socket field `<gateway>:<socket>` whose gateway still has its liveness
//! key: entries of a gateway that died are ignored (Redis 7.0 has no
//! per-field TTL to expire them). Two pipelined round trips whatever the
//! number of users: every hash's fields, then every named gateway's key.

use anyhow::Context;
use natter_protocol::UserId;
use natter_protocol::subjects::{Namespace, parse_presence_field};
use redis::aio::ConnectionManager;
use std::collections::{BTreeSet, HashMap, HashSet};

/// The subset of `users` with at least one live socket.
#[tracing::instrument(level = "debug", skip(redis, ns), fields(users = users.len()))]
pub(crate) async fn online(
    redis: &ConnectionManager,
    ns: &Namespace,
    users: &[UserId],
) -> anyhow::Result<HashSet<UserId>> {
    if users.is_empty() {
        return Ok(HashSet::new());
    }
    let mut conn = redis.clone();
    let mut fields_of = redis::pipe();
    for user in users {
        fields_of.cmd("HKEYS").arg(ns.presence_key(*user));
    }
    let fields: Vec<Vec<String>> = fields_of
        .query_async(&mut conn)
        .await
        .context("reading presence")?;
    let sockets: Vec<(UserId, Vec<String>)> = users
        .iter()
        .zip(fields)
        .map(|(user, fields)| {
            let gateways = fields
                .iter()
                .filter_map(|f| parse_presence_field(f).map(|(gw, _)| gw.to_owned()))
                .collect();
            (*user, gateways)
        })
        .collect();
    let gateways: Vec<&str> = sockets
        .iter()
        .flat_map(|(_, gws)| gws.iter().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if gateways.is_empty() {
        return Ok(HashSet::new());
    }
    let mut alive_of = redis::pipe();
    for gw in &gateways {
        alive_of.cmd("EXISTS").arg(ns.gateway_alive_key(gw));
    }
    let alive: Vec<bool> = alive_of
        .query_async(&mut conn)
        .await
        .context("reading gateway liveness")?;
    let alive: HashMap<&str, bool> = gateways.into_iter().zip(alive).collect();
    Ok(sockets
        .iter()
        .filter(|(_, gws)| {
            gws.iter()
                .any(|gw| alive.get(gw.as_str()).copied().unwrap_or(false))
        })
        .map(|(user, _)| *user)
        .collect())
}
