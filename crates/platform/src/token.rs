//! Access tokens: HS256 JWTs carrying user id, username, session id and
//! expiry. Issued by auth, verified by auth and the gateway with the shared
//! key; revocation is checked separately (a token is only as good as its
//! session).

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use natter_protocol::{SessionId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id, as a string: JWT's `sub` is a StringOrURI.
    pub sub: String,
    /// The username at login.
    pub name: String,
    /// The session id.
    pub sid: uuid::Uuid,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expiry (unix seconds).
    pub exp: i64,
}

impl Claims {
    /// The user.
    ///
    /// # Errors
    /// When `sub` is not a number (a token not issued by natter).
    pub fn user_id(&self) -> Result<UserId, InvalidToken> {
        self.sub
            .parse()
            .map(UserId)
            .map_err(|_| InvalidToken::Subject)
    }

    /// The session.
    #[must_use]
    pub fn session_id(&self) -> SessionId {
        SessionId(self.sid)
    }
}

/// Signing and verifying keys.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum InvalidToken {
    /// Malformed, forged or expired.
    #[error("invalid token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    /// The subject is not a user id.
    #[error("invalid token: subject is not a user id")]
    Subject,
}

impl TokenKeys {
    /// Keys from the shared secret.
    #[must_use]
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // jsonwebtoken allows 60 s past expiry by default; an expired token
        // is expired.
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// Token lifetime.
    #[must_use]
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Issues a token for a session.
    ///
    /// # Errors
    /// Only if signing fails.
    pub fn issue(
        &self,
        user: UserId,
        username: &str,
        session: SessionId,
    ) -> Result<String, InvalidToken> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            sub: user.0.to_string(),
            name: username.to_owned(),
            sid: session.0,
            iat: now,
            exp: now + i64::try_from(self.ttl_secs).unwrap_or(i64::MAX / 2),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies signature and expiry.
    ///
    /// # Errors
    /// When the token is malformed, forged or expired.
    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        let claims =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims;
        claims.user_id()?;
        Ok(claims)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
#[must_use]
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_carry_the_session() {
        let keys = TokenKeys::new(b"secret", 60);
        let sid = SessionId(uuid::Uuid::new_v4());
        let token = keys.issue(UserId(7), "alice", sid).expect("issue");
        let claims = keys.verify(&token).expect("verify");
        assert_eq!(claims.user_id().expect("user"), UserId(7));
        assert_eq!(claims.session_id(), sid);
        assert_eq!(claims.name, "alice");
    }

    #[test]
    fn expired_and_forged_tokens_are_refused() {
        let keys = TokenKeys::new(b"secret", 0);
        let token = keys
            .issue(UserId(1), "a", SessionId(uuid::Uuid::new_v4()))
            .expect("issue");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(keys.verify(&token).is_err());
        let other = TokenKeys::new(b"other", 60);
        let forged = other
            .issue(UserId(1), "a", SessionId(uuid::Uuid::new_v4()))
            .expect("issue");
        assert!(TokenKeys::new(b"secret", 60).verify(&forged).is_err());
    }

    #[test]
    fn bearer_header_is_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer abc".parse().expect("header"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }
}
