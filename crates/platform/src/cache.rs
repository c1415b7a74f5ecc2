//! Redis, where presence lives: one Redis or a Redis Cluster, behind one
//! cloneable, self-reconnecting handle; over TLS for `rediss://` URLs
//! (verified against `NATTER_REDIS_CA`, or the system's roots),
//! authenticated with `NATTER_REDIS_PASSWORD` when a URL carries none.
//!
//! `NATTER_REDIS_URL` naming several nodes (comma-separated), or
//! `NATTER_REDIS_CLUSTER`, selects the cluster client, which routes each
//! command to the node owning its key's slot. A command, a script and a
//! pipeline there must stay within one slot; [`Redis::each`] runs commands
//! over many keys (many users' presence) pipelined on one Redis and
//! concurrently, each to its own node, on a cluster.

use crate::Config;
use anyhow::Context;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult,
    TlsCertificates, Value,
};
use std::time::Duration;

/// The longest pause between reconnection attempts. The client's default
/// backoff grows to seconds, which would keep presence (and so live
/// delivery) down that long after Redis is back.
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

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
/// When the URL is malformed, the CA file cannot be read or Redis does not
/// answer.
pub async fn connect(config: &Config) -> anyhow::Result<Redis> {
    let redacted = || crate::secret::redact_url(&config.redis_url);
    if config.redis_cluster || config.redis_url.contains(',') {
        let nodes = config
            .redis_url
            .split(',')
            .map(|url| connection_info(config, url.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut builder = ClusterClient::builder(nodes);
        if let Some(certificates) = certificates(config)? {
            builder = builder.certs(certificates);
        }
        let connection = builder
            .build()
            .context("NATTER_REDIS_URL is not a list of Redis URLs")?
            .get_async_connection()
            .await
            .with_context(|| format!("connecting to the Redis Cluster at {}", redacted()))?;
        return Ok(Redis::Cluster(connection));
    }
    let manager = client(config)?
        .get_connection_manager_with_config(
            ConnectionManagerConfig::new().set_max_delay(RECONNECT_MAX_DELAY),
        )
        .await
        .with_context(|| format!("connecting to Redis at {}", redacted()))?;
    Ok(Redis::Single(manager))
}

/// A client of one Redis (not yet connected) as `config` says.
///
/// # Errors
/// When the URL is malformed or the CA file cannot be read.
pub fn client(config: &Config) -> anyhow::Result<redis::Client> {
    let info = connection_info(config, &config.redis_url)?;
    match certificates(config)? {
        Some(certificates) => redis::Client::build_with_tls(info, certificates)
            .context("NATTER_REDIS_CA is not a PEM certificate"),
        None => redis::Client::open(info).context("NATTER_REDIS_URL is not a Redis URL"),
    }
}

/// `url` with `NATTER_REDIS_PASSWORD` when it carries no password.
fn connection_info(config: &Config, url: &str) -> anyhow::Result<ConnectionInfo> {
    crate::tls::install_crypto_provider();
    let mut info = url
        .into_connection_info()
        .context("NATTER_REDIS_URL is not a Redis URL")?;
    if let Some(password) = config.redis_password.as_deref().filter(|p| !p.is_empty())
        && info.redis_settings().password().is_none()
    {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

/// The CA of `NATTER_REDIS_CA`, if set.
fn certificates(config: &Config) -> anyhow::Result<Option<TlsCertificates>> {
    let Some(ca) = &config.redis_ca else {
        return Ok(None);
    };
    let root_cert =
        std::fs::read(ca).with_context(|| format!("reading NATTER_REDIS_CA {}", ca.display()))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }))
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

    /// Runs `commands` so that each is applied before the next is: one
    /// pipeline on a single Redis, which applies a connection's commands
    /// in the order sent, and one after another on a cluster, where each
    /// may go to another node. For a write followed by its presence epoch
    /// bump (`presence::epochs`).
    ///
    /// # Errors
    /// When Redis does not answer or refuses one of them; on a cluster
    /// the commands after the refused one are not sent.
    pub async fn in_order(&self, commands: Vec<Cmd>) -> RedisResult<()> {
        match self {
            Self::Single(manager) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command).ignore();
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Self::Cluster(connection) => {
                for command in commands {
                    command.query_async::<()>(&mut connection.clone()).await?;
                }
                Ok(())
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
