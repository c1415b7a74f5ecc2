//! Postgres: the pool, creating the database, and the embedded migrations.
//!
//! Every connection carries [`SessionSettings`]: a statement, a lock wait
//! and an open-but-idle transaction are each bounded, and the server
//! probes a silent connection with TCP keepalives. Without them a natter
//! node that freezes or vanishes mid-transaction holds its locks (the
//! login's advisory lock, row locks) until Linux gives up on the socket,
//! about two hours later.

use crate::Config;
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// A pooled connection idle at least this long is pinged before it is
/// handed out. One used more recently is not: sqlx already pings every
/// connection when it comes back to the pool (and closes it if that
/// fails), so a second ping on the way out measured only its round trip:
/// one per query, ~3 % of natter-server's CPU in the fan-out benchmark.
/// The price: a connection broken within a second of its release ping (a
/// Postgres restart, a failover, a terminated backend) fails the one
/// query that gets it, instead of being replaced unseen; its release
/// ping then fails and it is closed. Such a query is answered
/// `unavailable` ([`is_unavailable`]), which the client retries.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The migrations of `migrations/`, compiled into every binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Limits every session of a pool runs under (`NATTER_DATABASE_*`); a
/// zero duration leaves the server's default, so `default()` is the
/// server's own settings (what tests' assertion pools use).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionSettings {
    /// `statement_timeout`.
    pub statement_timeout: Duration,
    /// `lock_timeout`.
    pub lock_timeout: Duration,
    /// `idle_in_transaction_session_timeout`.
    pub idle_in_transaction_timeout: Duration,
    /// `tcp_keepalives_idle` and `_interval` (three probes).
    pub keepalive: Duration,
}

impl SessionSettings {
    /// The same, for migrations: a migration may rewrite a large table or
    /// wait for the locks it needs, so neither a statement nor a lock wait
    /// is bounded.
    #[must_use]
    pub fn for_migrations(self) -> Self {
        Self {
            statement_timeout: Duration::ZERO,
            lock_timeout: Duration::ZERO,
            ..self
        }
    }

    /// The startup parameters that apply them.
    fn parameters(&self) -> Vec<(&'static str, String)> {
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let mut parameters = Vec::new();
        if !self.statement_timeout.is_zero() {
            parameters.push(("statement_timeout", millis(self.statement_timeout)));
        }
        if !self.lock_timeout.is_zero() {
            parameters.push(("lock_timeout", millis(self.lock_timeout)));
        }
        if !self.idle_in_transaction_timeout.is_zero() {
            parameters.push((
                "idle_in_transaction_session_timeout",
                millis(self.idle_in_transaction_timeout),
            ));
        }
        let keepalive = self.keepalive.as_secs();
        if keepalive > 0 {
            parameters.push(("tcp_keepalives_idle", keepalive.to_string()));
            parameters.push(("tcp_keepalives_interval", keepalive.to_string()));
            parameters.push(("tcp_keepalives_count", "3".to_owned()));
        }
        parameters
    }
}

/// A service's pool: `NATTER_DATABASE_URL`, `NATTER_DATABASE_POOL`
/// connections, the configured session settings.
///
/// # Errors
/// When the URL is malformed or Postgres does not answer.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    connect_with(
        &config.database_url,
        config.database_pool,
        &config.database_session(),
    )
    .await
}

/// A pool on `url` whose sessions run under `settings`. Connections are
/// made lazily-but-checked: one is opened now so a wrong URL fails at
/// start, not at the first request.
///
/// # Errors
/// When the URL is malformed or Postgres does not answer.
pub async fn connect_with(
    url: &str,
    max_connections: u32,
    settings: &SessionSettings,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .context("NATTER_DATABASE_URL is not a Postgres URL")?
        .options(settings.parameters())
        .log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres at {}",
                crate::secret::redact_url(url)
            )
        })
}

/// Creates the database named in `url` if it does not exist, connecting to
/// the server's `postgres` database to do so. Safe to race: a concurrent
/// creation is not an error.
///
/// # Errors
/// When Postgres does not answer or refuses.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let options =
        PgConnectOptions::from_str(url).context("NATTER_DATABASE_URL is not a Postgres URL")?;
    let name = options
        .get_database()
        .context("NATTER_DATABASE_URL names no database")?
        .to_owned();
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres at {}",
                crate::secret::redact_url(url)
            )
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        if let Err(e) = sqlx::query(&sql).execute(&mut admin).await {
            let raced = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04" || c == "23505");
            if !raced {
                return Err(e).context("creating the database");
            }
        } else {
            tracing::info!(database = %name, "created database");
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Applies pending migrations (sqlx serializes concurrent runs with an
/// advisory lock).
///
/// # Errors
/// When a migration fails.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// Quotes a Postgres identifier.
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `e` means Postgres did not answer in time or is out of reach
/// (a statement or lock wait cancelled by the session settings, no
/// connection to be had): worth a 503 and a retry, not a 500.
#[must_use]
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    is_connection_lost(e)
        || match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            // query_canceled (statement_timeout), lock_not_available
            // (lock_timeout).
            sqlx::Error::Database(d) => d.code().is_some_and(|c| matches!(&*c, "57014" | "55P03")),
            _ => false,
        }
}

/// Whether `e` means the connection it came from is gone: its socket
/// failed, or Postgres ended the session (admin and crash shutdown,
/// cannot-connect-now, `idle_session_timeout`,
/// `idle_in_transaction_session_timeout`, the connection exceptions of
/// class 08 — not 08P01, a protocol violation: a bug, not an outage). A
/// statement on another connection may well succeed.
#[must_use]
pub fn is_connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            matches!(
                &*c,
                "57P01"
                    | "57P02"
                    | "57P03"
                    | "57P05"
                    | "25P03"
                    | "08000"
                    | "08001"
                    | "08003"
                    | "08004"
                    | "08006"
            )
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_become_startup_parameters() {
        let settings = SessionSettings {
            statement_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_millis(1500),
            idle_in_transaction_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
        };
        let parameters = settings.parameters();
        let get = |name: &str| {
            parameters
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("statement_timeout"), Some("30000ms"));
        assert_eq!(get("lock_timeout"), Some("1500ms"));
        assert_eq!(get("idle_in_transaction_session_timeout"), Some("60000ms"));
        assert_eq!(get("tcp_keepalives_idle"), Some("10"));
        let migrations = settings.for_migrations().parameters();
        assert!(
            migrations
                .iter()
                .all(|(n, _)| *n != "statement_timeout" && *n != "lock_timeout")
        );
        assert!(
            migrations
                .iter()
                .any(|(n, _)| *n == "idle_in_transaction_session_timeout")
        );
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
