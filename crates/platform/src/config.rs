//! Typed configuration from `NATTER_*` environment variables.
//!
//! One struct for every service: the names and defaults are a contract
//! with scripts, the chart and tests (README "Configuration"). clap reads
//! them, so each is also a flag of `natter-server` and documented by
//! `--help`.

use clap::{Args, Parser, ValueEnum};
use ipnet::IpNet;
use natter_protocol::limits;
use natter_protocol::subjects::Namespace;
use std::net::{IpAddr, SocketAddr};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Configuration shared by every service.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Postgres connection URL (the database is created by `migrate`/`all`).
    #[arg(
        long,
        env = "NATTER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/natter"
    )]
    pub database_url: String,

    /// Most Postgres connections each service's pool opens.
    #[arg(long, env = "NATTER_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,

    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "NATTER_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Redis URL (presence).
    #[arg(
        long,
        env = "NATTER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every NATS subject, stream, consumer and Redis key.
    #[arg(long, env = "NATTER_NAMESPACE", default_value = "natter")]
    pub namespace: String,

    /// HMAC key signing tokens; required by auth and connection.
    #[arg(long, env = "NATTER_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Token lifetime in seconds.
    #[arg(long, env = "NATTER_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

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

    /// `pretty` or `json`.
    #[arg(long, env = "NATTER_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

#[derive(Parser)]
struct OnlyConfig {
    #[command(flatten)]
    config: Config,
}

impl Config {
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

    /// The sanitized namespace.
    #[must_use]
    pub fn namespace(&self) -> Namespace {
        Namespace::new(&self.namespace)
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
        assert_eq!(c.connection_limit, 1000);
        assert_eq!(c.head_limit, 100);
        assert_eq!(c.channels_per_user, 1000);
        assert_eq!(c.sockets_per_user, 16);
        assert_eq!(c.http_timeout_secs, 10);
        assert_eq!(c.shutdown_grace_secs, 10);
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
    fn gateway_ids_are_sanitized() {
        let mut c = OnlyConfig::try_parse_from(["x"]).expect("parse").config;
        c.gateway_id = Some("pod.name/1".into());
        assert_eq!(c.gateway_id(), "pod-name-1");
    }
}
