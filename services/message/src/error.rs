//! Domain failures and their error codes.

use natter_protocol::{ErrorBody, ErrorCode};

/// A request that cannot be done: a rule said no, or something broke.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// A rule of docs/protocol.md §2.2 refused; the code says which.
    #[error("{0}")]
    Rule(ErrorBody),
    /// A configured limit refused (`over_limit`); `limit` names which, for
    /// the `natter.limit.rejections` metric.
    #[error("{body}")]
    Limit {
        /// `head` or `memberships`.
        limit: &'static str,
        /// The `over_limit` answer.
        body: ErrorBody,
    },
    /// Postgres or NATS failed: logged, answered as `internal`, or as
    /// `unavailable` when Postgres was out of reach or too slow.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
    /// Postgres was out of reach or too slow for work this request shared
    /// with others (a write batch): answered as `unavailable`, like an
    /// [`DomainError::Internal`] that says so.
    #[error("the database did not answer: {0}")]
    Unavailable(String),
}

impl DomainError {
    /// A refusal with a code and message.
    pub fn rule(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Rule(ErrorBody::new(code, message))
    }

    /// An `over_limit` refusal by the limit named `limit`.
    pub fn limit(limit: &'static str, message: impl Into<String>) -> Self {
        Self::Limit {
            limit,
            body: ErrorBody::new(ErrorCode::OverLimit, message),
        }
    }

    /// The wire form; internals are logged and hidden. Postgres out of
    /// reach or too slow is `unavailable` (the client may retry), logged
    /// only at debug level: `/readyz` and its log say so once, not once per
    /// request.
    #[must_use]
    pub fn into_body(self) -> ErrorBody {
        let unavailable = self.is_unavailable();
        match self {
            Self::Rule(body) | Self::Limit { body, .. } => body,
            Self::Internal(e) if !unavailable => {
                tracing::error!(error = ?e, "internal error");
                ErrorBody::new(ErrorCode::Internal, "internal error")
            }
            e => {
                tracing::debug!(error = ?e, "Postgres did not answer in time");
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the database did not answer in time; the request may or may not have taken effect",
                )
            }
        }
    }

    /// Whether Postgres was out of reach or too slow
    /// ([`natter_platform::db::is_unavailable`]): worth a retry by the
    /// client, not an `internal`.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
            || self.sqlx_causes().any(natter_platform::db::is_unavailable)
    }

    /// Whether the connection the statement ran on is gone
    /// ([`natter_platform::db::is_connection_lost`]): another connection
    /// may succeed.
    #[must_use]
    pub fn is_connection_lost(&self) -> bool {
        self.sqlx_causes()
            .any(natter_platform::db::is_connection_lost)
    }

    /// The sqlx errors in an `internal` error's chain of causes.
    fn sqlx_causes(&self) -> impl Iterator<Item = &sqlx::Error> {
        let chain = match self {
            Self::Internal(e) => Some(e.chain()),
            _ => None,
        };
        chain
            .into_iter()
            .flatten()
            .filter_map(|c| c.downcast_ref::<sqlx::Error>())
    }

    /// Whether Postgres reported a deadlock or serialization failure, which
    /// is retried.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        self.database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "40P01" || c == "40001")
    }

    /// The unique constraint Postgres found violated, if that is how it
    /// refused.
    #[must_use]
    pub fn violated_unique_constraint(&self) -> Option<&str> {
        self.database_error()
            .filter(|d| d.is_unique_violation())
            .and_then(|d| d.constraint())
    }

    /// Whether Postgres refused a duplicate key: for a write batch, a
    /// concurrent batch of another instance stored the same
    /// `client_msg_id` first, and a re-run finds it.
    #[must_use]
    pub fn is_unique_violation(&self) -> bool {
        self.database_error()
            .is_some_and(|d| d.is_unique_violation())
    }

    /// What Postgres answered, when this is an error it reported.
    fn database_error(&self) -> Option<&dyn sqlx::error::DatabaseError> {
        let Self::Internal(e) = self else {
            return None;
        };
        e.downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
    }
}

impl From<sqlx::Error> for DomainError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}
