//! Error codes (docs/protocol.md §2.4) and the one table mapping them to HTTP.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    RateLimited,
    Unavailable,
    Internal,
    NotFound,
    UsernameTaken,
    InvalidCredentials,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    InvalidInviteCode,
    SelfInvite,
    AlreadyConnected,
    AlreadyInvited,
    ConnectionLimitReached,
    PartnerConnectionLimitReached,
    InvalidUsername,
    NotConnected,
    UnknownUsers,
    UnconnectedUsers,
    OverLimit,
    AlreadyJoined,
    NotJoined,
}

impl ErrorCode {
    /// The HTTP status that carries this code — the one table of it.
    #[must_use]
    pub fn http_status(self) -> u16 {
        match self {
            Self::Unauthorized | Self::InvalidCredentials => 401,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
            Self::NotFound => 404,
            Self::UsernameTaken
            | Self::AlreadyConnected
            | Self::AlreadyInvited
            | Self::AlreadyJoined => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::MethodNotAllowed => 405,
            Self::InvalidRequest
            | Self::InvalidInviteCode
            | Self::SelfInvite
            | Self::ConnectionLimitReached
            | Self::PartnerConnectionLimitReached
            | Self::InvalidUsername
            | Self::NotConnected
            | Self::UnknownUsers
            | Self::UnconnectedUsers
            | Self::OverLimit
            | Self::NotJoined => 400,
        }
    }

    /// The snake_case wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code", "message"}`: the HTTP error body, and the payload of an RPC
/// failure between services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    /// Builds a body from a code and a human message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_names_itself_as_serde_does() {
        use strum::VariantArray;
        for code in ErrorCode::VARIANTS {
            let json = serde_json::to_string(code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn error_body_pins_its_shape() {
        let body = ErrorBody::new(ErrorCode::UsernameTaken, "taken");
        assert_eq!(
            serde_json::to_value(&body).expect("serialize"),
            serde_json::json!({"code": "username_taken", "message": "taken"})
        );
    }
}
