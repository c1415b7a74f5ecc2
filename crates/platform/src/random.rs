//! Unguessable strings from the OS RNG, for invite codes and ids.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `bytes` random bytes from the OS, URL-safe base64 without padding.
/// Invite codes use 16 bytes (128 bits).
///
/// # Panics
/// Only if the OS has no randomness to give, where nothing safe can go on.
#[must_use]
pub fn token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    URL_SAFE_NO_PAD.encode(buf)
}

/// A random u64 below 2^62 (room to count up from it).
#[must_use]
pub fn seed() -> u64 {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    u64::from_le_bytes(buf) >> 2
}

/// An invite code: 128 random bits.
#[must_use]
pub fn invite_code() -> String {
    token(16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn invite_codes_carry_128_bits_and_differ() {
        let a = super::invite_code();
        assert_eq!(a.len(), 22);
        assert_ne!(a, super::invite_code());
    }
}
