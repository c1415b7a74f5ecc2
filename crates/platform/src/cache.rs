//! Redis, where presence lives: one Redis or a Redis Cluster, behind one
//! cloneable, self-reconnecting handle.
//!
//! `NATTER_REDIS_URL` naming several nodes (comma-separated), or
//! `NATTER_REDIS_CLUSTER`, selects the cluster client, which routes each
//! command to the node owning its key's slot. A command, a script and a
//! pipeline there must stay within one slot; [`Redis::each`] runs commands
//! over many keys (many users' presence) pipelined on one Redis and
//! concurrently, each to its own node, on a cluster.

use crate::Config;
use anyhow::Context;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult, Value};

/// A Redis or Redis Cluster connection; cheap to clone.
#[derive(Clone)]
pub enum Redis {
    /// One Redis (or a primary behind a stable address).
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

/// Connects to the Redis of `config`: a cluster when the URL names several
/// nodes or `NATTER_REDIS_CLUSTER` says so.
///
/// # Errors
/// When the URL is malformed or Redis does not answer.
pub async fn open(config: &Config) -> anyhow::Result<Redis> {
    if config.redis_cluster {
        connect_cluster(&config.redis_url).await
    } else {
        connect(&config.redis_url).await
    }
}

/// Connects to `url`: one Redis, or a cluster when it lists several
/// comma-separated nodes.
///
/// # Errors
/// When the URL is malformed or Redis does not answer.
pub async fn connect(url: &str) -> anyhow::Result<Redis> {
    if url.contains(',') {
        return connect_cluster(url).await;
    }
    let client = redis::Client::open(url).context("NATTER_REDIS_URL is not a Redis URL")?;
    let manager = client
        .get_connection_manager()
        .await
        .with_context(|| format!("connecting to Redis at {url}"))?;
    Ok(Redis::Single(manager))
}

/// Connects to the Redis Cluster whose nodes (some or all) `urls` lists,
/// comma-separated.
///
/// # Errors
/// When a URL is malformed or no node answers.
pub async fn connect_cluster(urls: &str) -> anyhow::Result<Redis> {
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    let client =
        ClusterClient::new(nodes).context("NATTER_REDIS_URL is not a list of Redis URLs")?;
    let connection = client
        .get_async_connection()
        .await
        .with_context(|| format!("connecting to the Redis Cluster at {urls}"))?;
    Ok(Redis::Cluster(connection))
}

impl Redis {
    /// Runs `commands` (each about keys of one slot) and returns their
    /// answers in order: one pipeline on a single Redis, and on a cluster
    /// all at once, each routed to its own node (a cluster pipeline must
    /// not cross slots).
    ///
    /// # Errors
    /// When Redis does not answer or refuses one of them.
    pub async fn each<T: FromRedisValue>(&self, commands: Vec<Cmd>) -> RedisResult<Vec<T>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Single(manager) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command);
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Self::Cluster(connection) => {
                futures::future::try_join_all(commands.into_iter().map(|command| {
                    let mut connection = connection.clone();
                    async move { command.query_async::<T>(&mut connection).await }
                }))
                .await
            }
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}
