//! argon2id password hashing, always on the blocking pool: a hash costs
//! tens of milliseconds of CPU that must not stall the async workers.

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};

/// Hashes and verifies.
pub(crate) struct Hasher {
    /// A hash of a random password, verified against when the username is
    /// unknown so that both failures take the same time.
    dummy: String,
}

impl Hasher {
    /// Prepares the dummy hash.
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dummy: hash_blocking(&natter_platform::random::token(24))?,
        })
    }

    /// Hashes a new password.
    pub(crate) async fn hash(&self, password: String) -> anyhow::Result<String> {
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .context("hashing task")?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when
    /// there is no user, in which case the answer is always false.
    pub(crate) async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        known && matched
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
        let h = Hasher::new().expect("hasher");
        let stored = h.hash("correct horse".into()).await.expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(h.verify("correct horse".into(), Some(stored.clone())).await);
        assert!(!h.verify("wrong horse".into(), Some(stored)).await);
        assert!(!h.verify("anything".into(), None).await);
    }
}
