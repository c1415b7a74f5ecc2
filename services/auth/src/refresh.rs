//! Refresh tokens (docs/protocol.md §2.7): what a client holds, and the
//! only form the server keeps.
//!
//! A token is 256 bits from the OS RNG, URL-safe base64. The server stores
//! its SHA-256 and nothing else: a password needs a slow, salted hash
//! because people choose guessable ones, but 256 random bits cannot be
//! guessed, so a fast hash loses nothing, and being deterministic it is
//! also the lookup key. A leaked table therefore holds no usable token.

use sha2::{Digest, Sha256};

/// Random bytes in a refresh token.
const TOKEN_BYTES: usize = 32;

/// A freshly issued refresh token: the text for the client, the hash for
/// the database.
pub(crate) struct RefreshToken {
    /// Handed to the client once, never stored.
    pub plain: String,
    /// What `refresh_tokens.token_hash` holds.
    pub hash: Vec<u8>,
}

impl RefreshToken {
    /// A new, unguessable token.
    pub(crate) fn generate() -> Self {
        let plain = natter_platform::random::token(TOKEN_BYTES);
        let hash = hash(&plain);
        Self { plain, hash }
    }
}

/// The stored form of a presented token. Any string hashes, so a garbled
/// token is simply one that matches no row.
pub(crate) fn hash(presented: &str) -> Vec<u8> {
    Sha256::digest(presented.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_256_random_bits_in_url_safe_text() {
        let token = RefreshToken::generate();
        assert_eq!(token.plain.len(), 43, "32 bytes of unpadded base64");
        assert!(
            token
                .plain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(token.plain, RefreshToken::generate().plain);
    }

    #[test]
    fn the_stored_hash_is_the_sha256_of_the_token_and_not_the_token() {
        let token = RefreshToken::generate();
        assert_eq!(token.hash, hash(&token.plain));
        assert_eq!(token.hash.len(), 32);
        assert_ne!(token.hash, token.plain.as_bytes());
        assert_ne!(hash("a"), hash("b"));
    }
}
