//! Typed configuration from `NATTER_*` environment variables.
//!
//! One struct for every service: the names and defaults are a contract
//! with scripts, the chart and tests (README "Configuration"). clap reads
//! them, so each is also a flag of `natter-server` and documented by
//! `--help`.

use crate::db::SessionSettings;
use crate::secret::{Secret, redact_url};
use clap::{Args, CommandFactory, Parser, ValueEnum};
use ipnet::IpNet;
use natter_protocol::limits;
use natter_protocol::subjects::Namespace;
use serde::{Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Configuration shared by every service.
///
/// Its `Debug` (and [`Config::render`]) hides secrets: [`Secret`] fields
/// print as `[redacted]`, passwords inside URLs as `***`.
#[derive(Clone, Args, Serialize)]
pub struct Config {
    /// Postgres connection URL (the database is created by `migrate`/`all`);
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` for TLS. The password
    /// is best left out and given as `PGPASSWORD`.
    #[arg(
        long,
        env = "NATTER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/natter"
    )]
    pub database_url: String,

    /// Postgres URL for history pages below a seq the caller already
    /// knows (message service): a read replica. Unset, the primary
    /// (`NATTER_DATABASE_URL`) serves them too.
    #[arg(long, env = "NATTER_DATABASE_READ_URL")]
    pub database_read_url: Option<String>,

    /// Most Postgres connections each service's pool opens.
    #[arg(long, env = "NATTER_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,

    /// NATS server URL (JetStream enabled), or a comma-separated list of
    /// a cluster's servers: the client connects to one and fails over to
    /// the others.
    #[arg(long, env = "NATTER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// NATS user (with `NATTER_NATS_PASSWORD`): each service its own, with
    /// the permissions of deploy/nats/natter-accounts.conf.
    #[arg(long, env = "NATTER_NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password of `NATTER_NATS_USER`.
    #[arg(long, env = "NATTER_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<Secret>,

    /// NATS credentials file (a user JWT and nkey seed, for servers run in
    /// operator mode); instead of a user and password.
    #[arg(long, env = "NATTER_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,

    /// PEM file of the CA that signed the NATS servers' certificates; when
    /// set, TLS is required (a `tls://` URL requires it too, with the
    /// system's roots).
    #[arg(long, env = "NATTER_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,

    /// Redis URL (presence), or a comma-separated list of a Redis
    /// Cluster's nodes (the cluster client then finds the rest);
    /// `rediss://` for TLS.
    #[arg(
        long,
        env = "NATTER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Redis password (`AUTH`), kept out of the URL so it can come from a
    /// Secret; a password in the URL wins.
    #[arg(long, env = "NATTER_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<Secret>,

    /// PEM file of the CA that signed the Redis server's certificate, for
    /// `rediss://` (default: the system's roots).
    #[arg(long, env = "NATTER_REDIS_CA")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// Talk to `NATTER_REDIS_URL` as a Redis Cluster even when it names
    /// one node (a cluster's service address).
    #[arg(long, env = "NATTER_REDIS_CLUSTER", default_value_t = false)]
    pub redis_cluster: bool,

    /// Prefix of every NATS subject, stream, consumer and Redis key:
    /// lowercase letters, digits and `_` (stream names are uppercased, so
    /// anything else could make two namespaces share a stream).
    #[arg(long, env = "NATTER_NAMESPACE", default_value = "natter", value_parser = parse_namespace)]
    pub namespace: String,

    /// HMAC key signing tokens; required by auth and connection.
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Bearer secret of the admin API (message's port, `/admin/v1`) and of
    /// `natter-server admin`; unset, the admin API refuses every request.
    #[arg(long, env = "NATTER_ADMIN_SECRET", hide_env_values = true)]
    pub admin_secret: Option<Secret>,

    /// Key signing what services send each other over NATS (callers,
    /// unregister requests, deliveries), at least 32 characters; required
    /// by auth, gateway, message and push (`all` generates one when unset).
    /// The same for every instance of every service.
    #[arg(long, env = "NATTER_BUS_KEY", hide_env_values = true)]
    pub bus_key: Option<Secret>,

    /// Token lifetime in seconds.
    #[arg(long, env = "NATTER_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

    /// Refresh token lifetime in seconds (30 days): a session lasts as
    /// long as its client refreshes within this long of the last refresh.
    #[arg(long, env = "NATTER_REFRESH_TTL_SECS", default_value_t = 2_592_000)]
    pub refresh_ttl_secs: u64,

    /// Where auth listens.
    #[arg(long, env = "NATTER_AUTH_ADDR", default_value = "0.0.0.0:8080")]
    pub auth_addr: SocketAddr,

    /// Where the WebSocket gateway listens.
    #[arg(long, env = "NATTER_GATEWAY_ADDR", default_value = "0.0.0.0:8090")]
    pub gateway_addr: SocketAddr,

    /// Where message serves its health endpoints.
    #[arg(long, env = "NATTER_MESSAGE_ADDR", default_value = "0.0.0.0:8091")]
    pub message_addr: SocketAddr,

    /// Where push serves its health endpoints.
    #[arg(long, env = "NATTER_PUSH_ADDR", default_value = "0.0.0.0:8092")]
    pub push_addr: SocketAddr,

    /// This gateway's id; defaults to hostname + random suffix.
    #[arg(long, env = "NATTER_GATEWAY_ID")]
    pub gateway_id: Option<String>,

    /// Most accepted connections (friendships) per user.
    #[arg(long, env = "NATTER_CONNECTION_LIMIT", default_value_t = 1000)]
    pub connection_limit: i32,

    /// Most members per channel, creator included.
    #[arg(long, env = "NATTER_HEAD_LIMIT", default_value_t = 100)]
    pub head_limit: i32,

    /// Most channels a user is a member of; a create or join past it gets
    /// `over_limit`.
    #[arg(long, env = "NATTER_CHANNELS_PER_USER", default_value_t = 1000)]
    pub channels_per_user: i32,

    /// Gateway: seconds between pings to each socket.
    #[arg(long, env = "NATTER_WS_PING_SECS", default_value_t = 30)]
    pub ws_ping_secs: u64,

    /// Gateway: a socket silent this long is closed (1001).
    #[arg(long, env = "NATTER_WS_IDLE_SECS", default_value_t = 90)]
    pub ws_idle_secs: u64,

    /// Gateway: frames queued per socket before it is closed as a slow
    /// consumer (1013).
    #[arg(long, env = "NATTER_WS_QUEUE", default_value_t = 256)]
    pub ws_queue: usize,

    /// Gateway: pushes to one socket are written at most once per this
    /// many milliseconds; those queued meanwhile go out together, in one
    /// write (one syscall, one TCP segment). A push after a quiet spell,
    /// and a queue half full (of `NATTER_WS_QUEUE`), are written at once.
    /// 0 (the default) writes a push as soon as the socket's task runs,
    /// with whatever else has queued by then: holding pushes back cost
    /// every delivery milliseconds at light load and did not raise what a
    /// gateway fans out (README "Benchmarks").
    #[arg(long, env = "NATTER_WS_COALESCE_MS", default_value_t = 0)]
    pub ws_coalesce_ms: u64,

    /// Gateway: requests per second per socket (token bucket rate).
    #[arg(long, env = "NATTER_WS_RATE", default_value_t = 50)]
    pub ws_rate: u32,

    /// Gateway: request burst per socket (token bucket size).
    #[arg(long, env = "NATTER_WS_BURST", default_value_t = 100)]
    pub ws_burst: u32,

    /// Gateway: most sockets held at once; more get 503.
    #[arg(long, env = "NATTER_WS_MAX_SOCKETS", default_value_t = 250_000)]
    pub ws_max_sockets: usize,

    /// Gateway: most sockets one user holds, counted over all gateways;
    /// more get 429.
    #[arg(long, env = "NATTER_SOCKETS_PER_USER", default_value_t = 16)]
    pub sockets_per_user: usize,

    /// Auth: failed logins for one username from one client address within
    /// the window before that address gets 429.
    #[arg(long, env = "NATTER_LOGIN_MAX_FAILURES", default_value_t = limits::LOGIN_MAX_FAILURES)]
    pub login_max_failures: i64,

    /// Auth: the window of the login limit, in seconds.
    #[arg(long, env = "NATTER_LOGIN_WINDOW_SECS", default_value_t = limits::LOGIN_WINDOW_SECS)]
    pub login_window_secs: i64,

    /// Auth: longest delay a username's logins are slowed by while it fails
    /// from many addresses, in milliseconds.
    #[arg(long, env = "NATTER_LOGIN_MAX_DELAY_MS", default_value_t = 5000)]
    pub login_max_delay_ms: u64,

    /// Auth: proxies whose `X-Forwarded-For` names the client, as
    /// comma-separated CIDRs or addresses (e.g. the ingress's pod
    /// network); from any other peer the header is ignored.
    #[arg(long, env = "NATTER_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,

    /// Auth: password hashes computed at once (each takes 19 MiB and a
    /// core for tens of milliseconds); default: the CPU count.
    #[arg(long, env = "NATTER_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// Auth: milliseconds a request waits for a hashing slot before it is
    /// answered 503 `unavailable` with `Retry-After`.
    #[arg(long, env = "NATTER_HASH_WAIT_MS", default_value_t = 1000)]
    pub hash_wait_ms: u64,

    /// Seconds a request's headers, and then its body, may take to arrive
    /// (also an idle keep-alive connection's next request) before the
    /// connection is closed; every HTTP listener.
    #[arg(long, env = "NATTER_HTTP_TIMEOUT_SECS", default_value_t = 10)]
    pub http_timeout_secs: u64,

    /// Most connections open at once on each HTTP listener (auth, the
    /// gateway's upgrades, each health port); more wait unaccepted.
    #[arg(long, env = "NATTER_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,

    /// Seconds between turning unready on SIGTERM and no longer taking
    /// work (the gateway: draining its sockets), so load balancers stop
    /// sending new work first.
    #[arg(long, env = "NATTER_DRAIN_DELAY_SECS", default_value_t = 0)]
    pub drain_delay_secs: u64,

    /// Seconds a stopping service gives its in-flight work (requests,
    /// sockets, events) and background tasks before it exits anyway.
    #[arg(long, env = "NATTER_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Seconds a forwarded request waits for the message service before
    /// answering `unavailable`.
    #[arg(long, env = "NATTER_REQUEST_TIMEOUT_SECS", default_value_t = 5)]
    pub request_timeout_secs: u64,

    /// Partitions of the events stream: a channel's events (and a user's
    /// own) share one, and push consumes each in order under one owner.
    /// Every message and push instance must agree; changing it is a
    /// migration (README "Changing NATTER_PARTITIONS").
    #[arg(
        long,
        env = "NATTER_PARTITIONS",
        default_value_t = natter_protocol::partition::DEFAULT_PARTITIONS,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub partitions: u16,

    /// Push: seconds a partition lease lasts without renewal (renewed five
    /// times as often); a dead push instance's partitions move after about
    /// this long. The same for every push instance.
    #[arg(
        long,
        env = "NATTER_PUSH_LEASE_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub push_lease_secs: u64,

    /// `pretty` or `json`.
    #[arg(long, env = "NATTER_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// Postgres: seconds one statement may run before the server cancels
    /// it (0: no limit). Migrations run without it.
    #[arg(
        long,
        env = "NATTER_DATABASE_STATEMENT_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub database_statement_timeout_secs: u64,

    /// Postgres: seconds a statement may wait for a lock (rows, advisory
    /// locks such as the login's) before it fails (0: no limit).
    #[arg(long, env = "NATTER_DATABASE_LOCK_TIMEOUT_SECS", default_value_t = 10)]
    pub database_lock_timeout_secs: u64,

    /// Postgres: seconds a session may sit idle inside a transaction
    /// before the server ends it and releases its locks (0: no limit): a
    /// frozen or vanished natter process cannot hold locks longer.
    #[arg(
        long,
        env = "NATTER_DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub database_idle_in_transaction_timeout_secs: u64,

    /// Postgres: seconds of silence after which the server probes a
    /// connection with TCP keepalives (three probes this far apart), so the
    /// server notices a natter node that vanished within about four times
    /// this (0: the server's defaults, about two hours on Linux).
    #[arg(long, env = "NATTER_DATABASE_KEEPALIVE_SECS", default_value_t = 10)]
    pub database_keepalive_secs: u64,

    /// JetStream: replicas of every natter stream (1 on a single server, 3
    /// on a three-node cluster). Applied to existing streams at start.
    #[arg(long, env = "NATTER_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=5))]
    pub stream_replicas: u16,

    /// JetStream: how long events are kept (for push to catch up and for
    /// `replay`), e.g. `7d`, `12h`, `90m`, `3600s` or plain seconds.
    #[arg(long, env = "NATTER_EVENTS_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    #[serde(serialize_with = "as_seconds")]
    pub events_max_age: Duration,

    /// JetStream: most bytes the events stream keeps before it drops its
    /// oldest events, e.g. `1GiB`, `500MB` or plain bytes; `0` for no
    /// bound. The default fits a default JetStream volume beside the other
    /// streams; size it to outlast the longest push outage.
    #[arg(long, env = "NATTER_EVENTS_MAX_BYTES", default_value = "1GiB", value_parser = parse_bytes)]
    pub events_max_bytes: u64,
}

#[derive(Parser)]
#[command(name = "natter")]
struct OnlyConfig {
    #[command(flatten)]
    config: Config,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Config");
        for (name, value) in self.redacted_fields() {
            out.field(&name, &format_args!("{value}"));
        }
        out.finish()
    }
}

/// A duration as the flag takes it back: whole seconds with `s`.
fn as_seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}s", d.as_secs()))
}

impl Config {
    /// Every setting as `NATTER_NAME=value`, one a line in the order of
    /// `--help`, secrets redacted; a setting with no value is a `#`
    /// comment. What `natter-server config` prints.
    #[must_use]
    pub fn render(&self) -> String {
        let values: std::collections::HashMap<String, String> =
            self.redacted_fields().into_iter().collect();
        let command = OnlyConfig::command();
        let mut out = String::new();
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy();
            match values.get(arg.get_id().as_str()) {
                Some(value) => out.push_str(&format!("{env}={value}\n")),
                None => out.push_str(&format!("# {env} is not set\n")),
            }
        }
        out
    }

    /// Each field's name and value as text, secrets redacted; fields with
    /// no value are left out.
    fn redacted_fields(&self) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        fields
            .into_iter()
            .filter_map(|(name, value)| {
                let text = match value {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(s) => redact_url(&s),
                    other => other.to_string(),
                };
                Some((name, text))
            })
            .collect()
    }

    /// Reads the environment (and defaults), as a service started without
    /// flags would.
    ///
    /// # Errors
    /// When a variable does not parse.
    pub fn from_env() -> Result<Self, clap::Error> {
        OnlyConfig::try_parse_from(["natter"]).map(|o| o.config)
    }

    /// The trusted proxies' networks; a bare address is a network of one.
    ///
    /// # Errors
    /// When an entry is neither.
    pub fn trusted_proxies(&self) -> Result<Vec<IpNet>, String> {
        self.trusted_proxies
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("NATTER_TRUSTED_PROXIES: {s:?} is not a CIDR or an address")
                    })
            })
            .collect()
    }

    /// The bus key, checked; `service` names who needs it in the error.
    ///
    /// # Errors
    /// When `NATTER_BUS_KEY` is unset or too short.
    pub fn bus_key(&self, service: &str) -> anyhow::Result<crate::bus::BusKey> {
        let secret = self
            .bus_key
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow::anyhow!("NATTER_BUS_KEY is required by {service}"))?;
        Ok(crate::bus::BusKey::new(secret)?)
    }

    /// The sanitized namespace, with the partition count.
    #[must_use]
    pub fn namespace(&self) -> Namespace {
        Namespace::new(&self.namespace).with_partitions(self.partitions)
    }

    /// The session settings every Postgres connection carries.
    #[must_use]
    pub fn database_session(&self) -> SessionSettings {
        SessionSettings {
            statement_timeout: Duration::from_secs(self.database_statement_timeout_secs),
            lock_timeout: Duration::from_secs(self.database_lock_timeout_secs),
            idle_in_transaction_timeout: Duration::from_secs(
                self.database_idle_in_transaction_timeout_secs,
            ),
            keepalive: Duration::from_secs(self.database_keepalive_secs),
        }
    }

    /// The gateway id: configured, or hostname + random suffix, always
    /// sanitized to `[A-Za-z0-9_-]` (it becomes a NATS subject token).
    #[must_use]
    pub fn gateway_id(&self) -> String {
        let raw = self.gateway_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .unwrap_or_else(|| "gateway".into());
            format!("{}-{}", host.trim(), crate::random::token(4))
        });
        let id: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if id.is_empty() { "gateway".into() } else { id }
    }
}

/// The longest namespace: stream names (`<NS>_SESSIONS`) stay well within
/// what NATS accepts.
const MAX_NAMESPACE: usize = 64;

/// Accepts a namespace only when it is already what every name is made
/// of. Stream names are uppercased and `-` is not allowed in them, so `a-b`
/// and `a_b` (or `Prod` and `prod`) would name the same streams while
/// their subjects differ: two deployments would silently share, and fight
/// over, one stream.
fn parse_namespace(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > MAX_NAMESPACE {
        return Err(format!("a namespace has 1 to {MAX_NAMESPACE} characters"));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "{bad:?} is not allowed: use lowercase letters, digits and '_' only, \
             so that no two namespaces map to the same JetStream stream names \
             (\"a-b\" and \"a_b\" would both be A_B_EVENTS)"
        ));
    }
    Ok(raw.to_owned())
}

/// A duration: a whole number with an optional unit `s`, `m`, `h` or `d`
/// (seconds when none).
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration such as 7d, 12h, 90m or 3600s"))?;
    let scale = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{raw:?} is too long"))
}

/// A size in bytes: a whole number with an optional unit `B`, `KB`, `MB`,
/// `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (of 1024).
fn parse_bytes(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a size such as 1GiB, 500MB or 1048576"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{raw:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design_table() {
        let c = OnlyConfig::try_parse_from(["x"]).expect("parse").config;
        assert_eq!(c.auth_addr.port(), 8080);
        assert_eq!(c.gateway_addr.port(), 8090);
        assert_eq!(c.message_addr.port(), 8091);
        assert_eq!(c.push_addr.port(), 8092);
        assert_eq!(c.token_ttl_secs, 3600);
        assert_eq!(c.refresh_ttl_secs, 30 * 24 * 3600);
        assert_eq!(c.connection_limit, 1000);
        assert_eq!(c.head_limit, 100);
        assert_eq!(c.channels_per_user, 1000);
        assert_eq!(c.sockets_per_user, 16);
        assert_eq!(c.http_timeout_secs, 10);
        assert_eq!(c.shutdown_grace_secs, 10);
        assert_eq!(c.partitions, 16);
        assert_eq!(c.push_lease_secs, 5);
        assert_eq!(c.namespace().partitions(), 16);
        assert_eq!(c.stream_replicas, 1);
        assert_eq!(c.events_max_age, Duration::from_secs(7 * 86_400));
        assert_eq!(c.events_max_bytes, 1 << 30);
        assert_eq!(
            c.database_session().statement_timeout,
            Duration::from_secs(30)
        );
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        OnlyConfig::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|o| o.config)
    }

    #[test]
    fn namespaces_that_could_share_a_stream_with_another_are_refused() {
        for bad in ["a-b", "A_B", "Prod", "a.b", "a b", "", "a>"] {
            let error = parse(&["--namespace", bad])
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(
                error.to_string().contains("namespace") || error.to_string().contains("'_'"),
                "{bad:?}: {error}"
            );
        }
        let error = parse(&["--namespace", "a-b"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("A_B_EVENTS"), "{error}");
        for good in ["a_b", "natter", "t0123456789abcdef"] {
            assert_eq!(
                parse(&["--namespace", good]).expect("accepted").namespace,
                good
            );
        }
        assert!(parse(&["--namespace", &"a".repeat(MAX_NAMESPACE + 1)]).is_err());
    }

    #[test]
    fn accepted_namespaces_are_their_own_sanitized_form() {
        let c = parse(&["--namespace", "a_b9"]).expect("accepted");
        assert_eq!(c.namespace().as_str(), c.namespace);
        assert_eq!(c.namespace().events_stream(), "A_B9_EVENTS");
    }

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("3600s"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        for bad in ["", "d", "7w", "-1d", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_take_decimal_or_binary_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "GiB", "1gb", "1.5GiB", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_partition_count_outside_1_to_1024_is_refused() {
        for bad in ["0", "1025"] {
            assert!(OnlyConfig::try_parse_from(["x", "--partitions", bad]).is_err());
        }
        let c = OnlyConfig::try_parse_from(["x", "--partitions", "3"])
            .expect("parse")
            .config;
        assert_eq!(c.namespace().partitions(), 3);
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let mut c = OnlyConfig::try_parse_from(["x"]).expect("parse").config;
        assert_eq!(c.trusted_proxies(), Ok(vec![]));
        c.trusted_proxies = " 10.0.0.0/8, 192.0.2.7 ,fd00::/8".into();
        let nets = c.trusted_proxies().expect("valid");
        assert_eq!(nets.len(), 3);
        assert!(nets[1].contains(&"192.0.2.7".parse::<IpAddr>().expect("ip")));
        c.trusted_proxies = "10.0.0.0/8,proxy".into();
        assert!(c.trusted_proxies().is_err());
    }

    #[test]
    fn debug_output_hides_secrets_and_passwords_in_urls() {
        let mut c = parse(&[
            "--jwt-secret",
            "jwt-hunter2",
            "--database-url",
            "postgres://natter:db-hunter2@db/natter",
            "--nats-url",
            "nats://a:nats-hunter2@n1:4222,nats://n2:4222",
            "--redis-url",
            "redis://:redis-hunter2@r:6379",
        ])
        .expect("parse");
        c.ws_rate = 7;
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("jwt_secret: [redacted]"), "{shown}");
        assert!(shown.contains("postgres://natter:***@db/natter"), "{shown}");
        assert!(shown.contains("ws_rate: 7"), "{shown}");
    }

    #[test]
    fn render_names_every_setting_by_its_variable_with_secrets_redacted() {
        let c = parse(&[
            "--jwt-secret",
            "jwt-hunter2",
            "--database-url",
            "postgres://natter:db-hunter2@db/natter",
            "--ws-rate",
            "7",
        ])
        .expect("parse");
        let text = c.render();
        assert!(!text.contains("hunter2"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        for wanted in [
            "NATTER_JWT_SECRET=[redacted]",
            "NATTER_DATABASE_URL=postgres://natter:***@db/natter",
            "NATTER_WS_RATE=7",
            "NATTER_EVENTS_MAX_AGE=604800s",
            "NATTER_LOG_FORMAT=pretty",
            "# NATTER_GATEWAY_ID is not set",
        ] {
            assert!(lines.contains(&wanted), "{wanted} missing from\n{text}");
        }
        let settings = OnlyConfig::command()
            .get_arguments()
            .filter(|a| a.get_env().is_some())
            .count();
        assert_eq!(lines.len(), settings, "{text}");
        let reparsed = parse(&["--events-max-age", "604800s"]).expect("what render prints parses");
        assert_eq!(reparsed.events_max_age, c.events_max_age);
    }

    #[test]
    fn gateway_ids_are_sanitized() {
        let mut c = OnlyConfig::try_parse_from(["x"]).expect("parse").config;
        c.gateway_id = Some("pod.name/1".into());
        assert_eq!(c.gateway_id(), "pod-name-1");
    }
}
