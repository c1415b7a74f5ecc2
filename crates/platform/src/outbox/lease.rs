//! The relay's leadership: a row of `outbox_relay_lease` (migrations/0004)
//! naming its holder and when it expires, renewed every [`RENEW_EVERY`].
//!
//! A session advisory lock lives as long as its TCP connection, and a
//! node that dies without closing it (power loss, a network partition, a
//! frozen process) keeps it until the kernel gives up on the socket, about
//! two hours on Linux, while no event is published. A lease ends on its
//! own: the holder must renew it, and the database's clock decides when a
//! standby may take it over.
//!
//! The holder also stops by its own clock: it counts the lease from the
//! moment it *sent* the renewal, which is never later than the database
//! stamped it, so it stops publishing before a standby can start. A
//! holder frozen between that check and a publish (SIGSTOP) can still
//! publish once after a standby took over; JetStream drops such a repeat
//! by its `Nats-Msg-Id` within the duplicate window.

use anyhow::Context;
use sqlx::PgPool;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long a lease lasts unless renewed: a dead holder is replaced
/// within this.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the holder renews it: a few renewals may fail (a slow
/// database) before it is lost.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// The one lease row.
const NAME: &str = "outbox";

/// One relay's claim on the lease.
pub(crate) struct Lease {
    pool: PgPool,
    holder: String,
    /// Until when this relay may publish, by its own clock; in the past
    /// while it does not hold the lease.
    valid_until: Mutex<Instant>,
}

/// Why a held lease ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Lost {
    /// Another relay holds it (this one was too slow to renew).
    #[error("another relay took the lease")]
    Taken,
    /// It could not be renewed before it expired.
    #[error("the lease expired before it could be renewed: {0:#}")]
    Expired(anyhow::Error),
}

impl Lease {
    /// A claim for a relay on this host, not yet holding the lease.
    pub(crate) fn new(pool: PgPool) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .unwrap_or_else(|| "relay".into());
        Self {
            pool,
            holder: format!("{}-{}", host.trim(), crate::random::token(6)),
            valid_until: Mutex::new(Instant::now()),
        }
    }

    /// Who this relay is in the lease row.
    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease if it is free or expired, or renews it if this relay
    /// holds it: whether it holds it now.
    ///
    /// # Errors
    /// When Postgres does not answer.
    pub(crate) async fn acquire(&self) -> anyhow::Result<bool> {
        let sent = Instant::now();
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO outbox_relay_lease AS l (name, holder, expires_at) \
             VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) \
             ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at \
             WHERE l.holder = EXCLUDED.holder OR l.expires_at < clock_timestamp() \
             RETURNING holder",
        )
        .bind(NAME)
        .bind(&self.holder)
        .bind(LEASE.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
        .context("claiming the outbox relay lease")?;
        let holds = held.is_some();
        if holds {
            *self
                .valid_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = sent + LEASE;
        }
        Ok(holds)
    }

    /// Whether this relay may publish now.
    pub(crate) fn is_held(&self) -> bool {
        Instant::now() < self.valid_until()
    }

    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Renews the lease every [`RENEW_EVERY`] while it is held; returns
    /// when it is lost. A renewal that does not answer before the lease
    /// runs out loses it.
    pub(crate) async fn keep(&self) -> Lost {
        let mut last_error = None;
        loop {
            let next = Instant::now() + RENEW_EVERY;
            let deadline = self.valid_until();
            match tokio::time::timeout_at(deadline, self.acquire()).await {
                Ok(Ok(true)) => last_error = None,
                Ok(Ok(false)) => return Lost::Taken,
                Ok(Err(e)) => last_error = Some(e),
                Err(_) => {
                    return Lost::Expired(
                        last_error.unwrap_or_else(|| anyhow::anyhow!("Postgres did not answer")),
                    );
                }
            }
            if !self.is_held() {
                return Lost::Expired(
                    last_error.unwrap_or_else(|| anyhow::anyhow!("Postgres did not answer")),
                );
            }
            tokio::time::sleep_until(next.min(self.valid_until())).await;
        }
    }

    /// Gives the lease up (at shutdown), so a standby takes over at once
    /// rather than when it expires. Best effort: if it fails, it expires.
    pub(crate) async fn release(&self) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let released =
            sqlx::query("DELETE FROM outbox_relay_lease WHERE name = $1 AND holder = $2")
                .bind(NAME)
                .bind(&self.holder)
                .execute(&self.pool)
                .await;
        if let Err(e) = released {
            tracing::debug!(error = %e, "releasing the outbox relay lease failed; it will expire");
        }
    }
}
