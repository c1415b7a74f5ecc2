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
id_type!(
    /// A message's place in its channel (`messages.seq`): 1, 2, 3, … with
    /// no gaps, assigned at commit. As a channel's `last_seq` or a member's
    /// read pointer, [`Seq::ZERO`] means "no message yet".
    Seq,
    i64
);

impl Seq {
    /// Before the first message of a channel.
    pub const ZERO: Self = Self(0);

    /// The seq after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// How many seqs follow `earlier`, up to and including this one (the
    /// unread count of a read pointer); 0 when `earlier` is not earlier.
    #[must_use]
    pub fn count_after(self, earlier: Self) -> i64 {
        (self.0 - earlier.0).max(0)
    }
}

impl Default for Seq {
    fn default() -> Self {
        Self::ZERO
    }
}

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
        assert_eq!(serde_json::to_string(&Seq(5)).ok().as_deref(), Some("5"));
        assert_eq!(serde_json::from_str::<Seq>("0").ok(), Some(Seq::ZERO));
    }

    #[test]
    fn seqs_count_the_messages_after_a_read_pointer() {
        assert_eq!(Seq(9).count_after(Seq(4)), 5);
        assert_eq!(Seq(4).count_after(Seq(4)), 0);
        assert_eq!(Seq(4).count_after(Seq(9)), 0, "a pointer ahead counts none");
        assert_eq!(Seq::default().next(), Seq(1));
        assert!(Seq(2) < Seq(10));
    }
}
