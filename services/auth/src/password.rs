//! argon2id password hashing, always on the blocking pool (a hash costs
//! tens of milliseconds of CPU that must not stall the async workers) and
//! at most a few at a time: each takes 19 MiB, so a burst of logins must
//! queue for a slot, briefly, or be told to come back (docs/protocol.md
//! §2.6), not all hash at once and exhaust the instance's memory.

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// No hashing slot came free in time: answer 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is busy")]
pub(crate) struct Busy;

/// Hashes and verifies, a bounded number at a time.
pub(crate) struct Hasher {
    /// A hash of a random password, verified against when the username is
    /// unknown so that both failures take the same time.
    dummy: String,
    /// One permit per hash that may run at once.
    slots: Arc<Semaphore>,
    /// How long a request waits for a slot.
    wait: Duration,
}

impl Hasher {
    /// Prepares the dummy hash; `slots` hashes may run at once, and a
    /// request waits `wait` for one.
    pub(crate) fn new(slots: usize, wait: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            dummy: hash_blocking(&natter_platform::random::token(24))?,
            slots: Arc::new(Semaphore::new(slots)),
            wait,
        })
    }

    /// A slot, or [`Busy`] after the wait.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, Busy> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Busy),
        }
    }

    /// Hashes a new password.
    pub(crate) async fn hash(&self, password: String) -> Result<anyhow::Result<String>, Busy> {
        let slot = self.slot().await?;
        // The slot goes with the work: a request that is dropped meanwhile
        // does not free it before the hash is done.
        let hashed = tokio::task::spawn_blocking(move || {
            let hashed = hash_blocking(&password);
            drop(slot);
            hashed
        })
        .await
        .context("hashing task");
        Ok(hashed.and_then(|h| h))
    }

    /// Verifies `password` against `stored`, or against the dummy hash when
    /// there is no user, in which case the answer is always false.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, Busy> {
        let slot = self.slot().await?;
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let matched = tokio::task::spawn_blocking(move || {
            let matched = PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            });
            drop(slot);
            matched
        })
        .await
        .unwrap_or(false);
        Ok(known && matched)
    }
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .context("argon2")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_the_right_password_only() {
        let h = Hasher::new(2, Duration::from_secs(1)).expect("hasher");
        let stored = h
            .hash("correct horse".into())
            .await
            .expect("slot")
            .expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(
            h.verify("correct horse".into(), Some(stored.clone()))
                .await
                .expect("slot")
        );
        assert!(
            !h.verify("wrong horse".into(), Some(stored))
                .await
                .expect("slot")
        );
        assert!(!h.verify("anything".into(), None).await.expect("slot"));
    }

    #[tokio::test]
    async fn without_a_free_slot_hashing_is_busy_after_the_wait() {
        let h = Hasher::new(1, Duration::from_millis(50)).expect("hasher");
        let held = h.slot().await.expect("the one slot");
        assert!(h.hash("correct horse".into()).await.is_err());
        assert!(h.verify("correct horse".into(), None).await.is_err());
        drop(held);
        assert!(h.verify("correct horse".into(), None).await.is_ok());
    }
}
