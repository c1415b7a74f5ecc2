//! The signed bus: what natter services send each other over core NATS
//! carries an HMAC-SHA256 signature under `NATTER_BUS_KEY`, so a process
//! that can reach NATS but does not hold the key cannot act as a gateway
//! (forge a caller), as auth (unregister a user) or as push (write frames
//! to sockets).
//!
//! The signature covers [`natter_protocol::rpc::signed_head`] (subject,
//! time, nonce) and then the payload exactly as sent. A receiver
//! ([`BusVerifier`]) refuses a message that is unsigned, signed more than
//! [`BUS_MAX_SKEW_MS`] away from its own clock, signed with another key,
//! or whose nonce it has already seen — so a recorded message cannot be
//! sent again, to the same or another subject, nor its caller moved onto
//! another request.
//!
//! The nonces are remembered per receiving process: a replay within the
//! skew window to *another* message instance of the queue group is not
//! caught here. Publishing to `rpc.message` at all needs the gateway's NATS
//! user (deploy/nats/natter-accounts.conf), which is the second fence.

use async_nats::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use natter_protocol::rpc::{
    BUS_MAX_SKEW_MS, BUS_NONCE_HEADER, BUS_SIGNATURE_HEADER, BUS_TIME_HEADER, signed_head,
};
use sha2::Sha256;
use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted: 32 characters, about what
/// `openssl rand -base64 24` prints.
pub const MIN_KEY_LEN: usize = 32;

/// Why a bus message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// It carries no signature headers.
    #[error("unsigned bus message")]
    Unsigned,
    /// A header is present but not what a signer writes.
    #[error("malformed bus signature header {0}")]
    Malformed(&'static str),
    /// Its time is too far from the receiver's clock (a replay, or clocks
    /// that disagree by more than the window).
    #[error("bus message signed {age_ms} ms from now, outside the accepted window")]
    Stale {
        /// Receiver's clock minus the signed time.
        age_ms: i64,
    },
    /// The signature does not match: another key, or a changed subject,
    /// payload, time or nonce.
    #[error("forged bus message: the signature does not match")]
    Forged,
    /// Its nonce was already seen within the window.
    #[error("replayed bus message")]
    Replayed,
}

/// Why `NATTER_BUS_KEY` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NATTER_BUS_KEY must have at least {MIN_KEY_LEN} characters")]
pub struct WeakKey;

/// The shared key of natter's services; signs outgoing bus messages.
#[derive(Clone)]
pub struct BusKey {
    mac: HmacSha256,
    nonces: Arc<NonceSource>,
}

/// Where a signer's nonces come from: a random prefix drawn once and a
/// counter, 12 bytes in all. A nonce needs to be unique, not secret (the
/// signature covers it; only a holder of the key can choose one), so
/// there is no call into the OS per message; 48 random bits tell the
/// signing processes apart, 48 counted ones never wrap.
struct NonceSource {
    prefix: [u8; 6],
    next: AtomicU64,
}

impl NonceSource {
    fn new() -> Self {
        let mut prefix = [0u8; 6];
        getrandom::fill(&mut prefix).expect("the OS random number generator failed");
        Self {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let count = self.next.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        let mut nonce = [0u8; 12];
        nonce[..6].copy_from_slice(&self.prefix);
        nonce[6..].copy_from_slice(&count[..6]);
        URL_SAFE_NO_PAD.encode(nonce)
    }
}

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

impl BusKey {
    /// A key from `NATTER_BUS_KEY`.
    ///
    /// # Errors
    /// When it is shorter than [`MIN_KEY_LEN`].
    pub fn new(secret: &str) -> Result<Self, WeakKey> {
        if secret.len() < MIN_KEY_LEN {
            return Err(WeakKey);
        }
        let mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| WeakKey)?;
        Ok(Self {
            mac,
            nonces: Arc::new(NonceSource::new()),
        })
    }

    /// Adds the signature headers for `payload` published to `subject`.
    pub fn sign(&self, subject: &str, payload: &[u8], headers: &mut HeaderMap) {
        self.sign_at(subject, payload, headers, now_ms());
    }

    /// Signature headers alone (for a message with no other headers).
    #[must_use]
    pub fn signed(&self, subject: &str, payload: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.sign(subject, payload, &mut headers);
        headers
    }

    fn sign_at(&self, subject: &str, payload: &[u8], headers: &mut HeaderMap, time_ms: u64) {
        let nonce = self.nonces.next();
        let signature = self.mac_of(&signed_head(subject, time_ms, &nonce), payload);
        headers.insert(BUS_TIME_HEADER, time_ms.to_string().as_str());
        headers.insert(BUS_NONCE_HEADER, nonce.as_str());
        headers.insert(
            BUS_SIGNATURE_HEADER,
            hex::encode(signature.finalize().into_bytes()).as_str(),
        );
    }

    fn mac_of(&self, head: &str, payload: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(head.as_bytes());
        mac.update(payload);
        mac
    }
}

/// Checks incoming bus messages: the signature, the time window and the
/// nonces seen within it. One per subscribing service, shared by its tasks.
#[derive(Debug)]
pub struct BusVerifier {
    key: BusKey,
    seen: Mutex<Nonces>,
}

/// The nonces of two consecutive windows: a nonce older than both is
/// refused by its time anyway, so memory stays bounded by the traffic of
/// twice the window. Each is kept as a 64-bit hash under a per-process key
/// (8 bytes, not a string): only a holder of the bus key chooses nonces,
/// and a collision merely refuses one message.
#[derive(Debug)]
struct Nonces {
    current: HashSet<u64>,
    previous: HashSet<u64>,
    rotated: Instant,
    hasher: RandomState,
}

impl BusVerifier {
    /// A verifier with `key`.
    #[must_use]
    pub fn new(key: BusKey) -> Self {
        Self {
            key,
            seen: Mutex::new(Nonces {
                current: HashSet::new(),
                previous: HashSet::new(),
                rotated: Instant::now(),
                hasher: RandomState::new(),
            }),
        }
    }

    /// Accepts a message published to `subject` only if it is signed with
    /// this key, within the window, and not seen before.
    ///
    /// # Errors
    /// Why it is refused.
    pub fn verify(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<(), BusError> {
        self.verify_at(subject, headers, payload, now_ms())
    }

    fn verify_at(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), BusError> {
        let headers = headers.ok_or(BusError::Unsigned)?;
        let header = |name: &'static str| headers.get(name).map(async_nats::HeaderValue::as_str);
        let (Some(time), Some(nonce), Some(signature)) = (
            header(BUS_TIME_HEADER),
            header(BUS_NONCE_HEADER),
            header(BUS_SIGNATURE_HEADER),
        ) else {
            return Err(BusError::Unsigned);
        };
        let time_ms: u64 = time
            .parse()
            .map_err(|_| BusError::Malformed(BUS_TIME_HEADER))?;
        let signature =
            hex::decode(signature).map_err(|_| BusError::Malformed(BUS_SIGNATURE_HEADER))?;
        self.key
            .mac_of(&signed_head(subject, time_ms, nonce), payload)
            .verify_slice(&signature)
            .map_err(|_| BusError::Forged)?;
        let age_ms = i128::from(now_ms) - i128::from(time_ms);
        if age_ms.unsigned_abs() > u128::from(BUS_MAX_SKEW_MS) {
            return Err(BusError::Stale {
                age_ms: i64::try_from(age_ms).unwrap_or(i64::MAX),
            });
        }
        self.remember(nonce)
    }

    fn remember(&self, nonce: &str) -> Result<(), BusError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.rotated.elapsed() > Duration::from_millis(BUS_MAX_SKEW_MS) {
            seen.previous = std::mem::take(&mut seen.current);
            seen.rotated = Instant::now();
        }
        let nonce = seen.hasher.hash_one(nonce);
        if seen.previous.contains(&nonce) || !seen.current.insert(nonce) {
            return Err(BusError::Replayed);
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-bus-key-that-is-long-enough-for-tests";

    fn key() -> BusKey {
        BusKey::new(SECRET).expect("long enough")
    }

    #[test]
    fn a_short_key_is_refused() {
        assert_eq!(BusKey::new("short").err(), Some(WeakKey));
    }

    #[test]
    fn a_signed_message_is_accepted_once() {
        let verifier = BusVerifier::new(key());
        let headers = key().signed("n.rpc.message", b"{}");
        assert_eq!(
            verifier.verify("n.rpc.message", Some(&headers), b"{}"),
            Ok(())
        );
        assert_eq!(
            verifier.verify("n.rpc.message", Some(&headers), b"{}"),
            Err(BusError::Replayed)
        );
    }

    #[test]
    fn every_signature_carries_a_nonce_of_its_own() {
        let (a, c) = (key(), key());
        let b = a.clone();
        let nonce = |k: &BusKey| {
            let headers = k.signed("s", b"{}");
            headers.get(BUS_NONCE_HEADER).map(|v| v.as_str().to_owned())
        };
        let nonces = [nonce(&a), nonce(&a), nonce(&b), nonce(&c)];
        assert!(
            nonces
                .iter()
                .all(|n| n.as_ref().is_some_and(|n| n.len() == 16))
        );
        let distinct: HashSet<_> = nonces.into_iter().collect();
        assert_eq!(distinct.len(), 4, "a key, its clone and another key");
    }

    #[test]
    fn an_unsigned_message_is_refused() {
        let verifier = BusVerifier::new(key());
        assert_eq!(verifier.verify("s", None, b"{}"), Err(BusError::Unsigned));
        let only_trace = HeaderMap::new();
        assert_eq!(
            verifier.verify("s", Some(&only_trace), b"{}"),
            Err(BusError::Unsigned)
        );
    }

    #[test]
    fn another_key_subject_or_payload_is_forged() {
        let verifier = BusVerifier::new(key());
        let other = BusKey::new("another-key-of-at-least-thirty-two-chars").expect("long");
        let forged = other.signed("s", b"{}");
        assert_eq!(
            verifier.verify("s", Some(&forged), b"{}"),
            Err(BusError::Forged)
        );
        let headers = key().signed("n.rpc.message", br#"{"user_id":1}"#);
        assert_eq!(
            verifier.verify("n.rpc.unregister", Some(&headers), br#"{"user_id":1}"#),
            Err(BusError::Forged)
        );
        assert_eq!(
            verifier.verify("n.rpc.message", Some(&headers), br#"{"user_id":2}"#),
            Err(BusError::Forged)
        );
    }

    #[test]
    fn a_message_signed_outside_the_window_is_stale() {
        let verifier = BusVerifier::new(key());
        let mut headers = HeaderMap::new();
        let then = now_ms() - BUS_MAX_SKEW_MS - 1_000;
        key().sign_at("s", b"{}", &mut headers, then);
        assert!(matches!(
            verifier.verify("s", Some(&headers), b"{}"),
            Err(BusError::Stale { .. })
        ));
    }

    #[test]
    fn a_changed_header_is_malformed_or_forged() {
        let verifier = BusVerifier::new(key());
        let mut headers = key().signed("s", b"{}");
        headers.insert(BUS_TIME_HEADER, "yesterday");
        assert_eq!(
            verifier.verify("s", Some(&headers), b"{}"),
            Err(BusError::Malformed(BUS_TIME_HEADER))
        );
        let mut headers = key().signed("s", b"{}");
        headers.insert(BUS_NONCE_HEADER, "another");
        assert_eq!(
            verifier.verify("s", Some(&headers), b"{}"),
            Err(BusError::Forged)
        );
    }
}
