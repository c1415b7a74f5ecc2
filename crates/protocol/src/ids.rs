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
id_type!(
    /// One socket on one gateway: unique within that gateway (across its
    /// restarts too), so it is only meaningful beside a gateway id.
    SocketId,
    u64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bare_json_numbers_on_the_wire() {
        assert_eq!(serde_json::to_string(&UserId(7)).ok().as_deref(), Some("7"));
        assert_eq!(
            serde_json::from_str::<ChannelId>("12").ok(),
            Some(ChannelId(12))
        );
        let big = SocketId(u64::MAX);
        let text = serde_json::to_string(&big).unwrap_or_default();
        assert_eq!(text, u64::MAX.to_string());
        assert_eq!(serde_json::from_str::<SocketId>(&text).ok(), Some(big));
        assert!(serde_json::from_str::<SocketId>("-1").is_err());
    }
}
