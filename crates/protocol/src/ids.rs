//! Newtype ids, so a channel id can never be passed where a user id belongs.
//! On the wire each is a bare JSON number (sessions: a UUID string).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// A user's id (`users.id`).
    UserId,
    i64
);
id_type!(
    /// A channel's id (`channels.id`).
    ChannelId,
    i64
);
id_type!(
    /// One login: the `sid` claim of a token, `sessions.id`.
    SessionId,
    uuid::Uuid
);
