//! Client⇄gateway WebSocket frames (docs/protocol.md §2).
//!
//! A client frame is `{"id": u64, "type": ..., ...fields}`; the server
//! answers each with exactly one `reply` or `error` and sends pushes, which
//! have no id. [`ClientFrame::decode`] implements the "bad frame" rules:
//! whatever is wrong, the caller gets an `invalid_request` with the id when
//! it could be read.

use crate::error::{ErrorBody, ErrorCode};
use crate::limits;
use crate::{ChannelId, Seq, time_format};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Connection status filter of `fetch_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionFilter {
    /// Friendships in force.
    Accepted,
    /// Invitations received and not yet answered.
    Pending,
}

/// The state of a pair of users (docs/protocol.md §2.2).
///
/// The names stored in Postgres are strum's, derived with the same case as
/// serde's, so the column and the wire cannot drift apart.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[cfg_attr(test, derive(strum::VariantArray))]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ConnectionStatus {
    Pending,
    Accepted,
    Rejected,
    Disconnected,
}

impl ConnectionStatus {
    /// The name stored in Postgres and sent on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses the stored name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

/// Why a member left a channel, as `member_left` says (docs/protocol.md
/// §2.7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// They quit the channel.
    #[default]
    Quit,
    /// They unregistered, which quits every channel.
    Unregistered,
}

/// A client request (docs/protocol.md §2.1), without its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantNames))]
#[serde(tag = "type", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Request {
    KeepAlive,
    FetchUserInviteCode,
    FetchChannelInviteCode {
        channel_id: ChannelId,
    },
    Invite {
        invite_code: String,
    },
    Accept {
        username: String,
    },
    Reject {
        username: String,
    },
    Disconnect {
        username: String,
    },
    FetchConnections {
        status: ConnectionFilter,
    },
    Create {
        title: String,
        usernames: Vec<String>,
    },
    Join {
        invite_code: String,
    },
    FetchChannels,
    FetchMembers {
        channel_id: ChannelId,
    },
    Enter {
        channel_id: ChannelId,
    },
    Leave,
    Quit {
        channel_id: ChannelId,
    },
    WriteMessage {
        channel_id: ChannelId,
        client_msg_id: String,
        content: String,
    },
    FetchMessages {
        channel_id: ChannelId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_seq: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_seq: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
    },
    Read {
        channel_id: ChannelId,
        seq: Seq,
    },
    Typing {
        channel_id: ChannelId,
    },
}

impl Request {
    /// The request's `type` name, for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.into()
    }

    /// Checks the limits that need no state (lengths, ranges, exclusive
    /// fields). Rules that need the database are the message service's.
    ///
    /// # Errors
    /// An `invalid_request` naming the field.
    pub fn validate(&self) -> Result<(), ErrorBody> {
        let invalid = |m: String| ErrorBody::new(ErrorCode::InvalidRequest, m);
        if let Some(field) = self.field_with_nul() {
            return Err(invalid(format!("{field} must not contain NUL characters")));
        }
        match self {
            Self::Create { title, usernames } => {
                limits::check_chars("title", title, &limits::TITLE_CHARS).map_err(invalid)?;
                limits::check_text("title", title).map_err(invalid)?;
                if title.trim().is_empty() {
                    return Err(invalid("title must not be blank".into()));
                }
                if usernames.is_empty() {
                    return Err(invalid("usernames must name at least one user".into()));
                }
                let mut seen = std::collections::HashSet::new();
                for name in usernames {
                    if !seen.insert(name.as_str()) {
                        return Err(invalid(format!("usernames lists {name} twice")));
                    }
                }
                Ok(())
            }
            Self::WriteMessage {
                client_msg_id,
                content,
                ..
            } => {
                limits::check_chars("client_msg_id", client_msg_id, &limits::CLIENT_MSG_ID_CHARS)
                    .map_err(invalid)?;
                limits::check_chars("content", content, &limits::CONTENT_CHARS).map_err(invalid)?;
                limits::check_text("content", content).map_err(invalid)?;
                if content.trim().is_empty() {
                    return Err(invalid("content must not be blank".into()));
                }
                Ok(())
            }
            Self::FetchMessages {
                after_seq,
                before_seq,
                limit,
                ..
            } => {
                if after_seq.is_some() && before_seq.is_some() {
                    return Err(invalid(
                        "after_seq and before_seq are mutually exclusive".into(),
                    ));
                }
                if let Some(limit) = limit
                    && !limits::FETCH_LIMIT.contains(limit)
                {
                    return Err(invalid("limit must be 1 to 100".into()));
                }
                if after_seq.is_some_and(|s| s < Seq::ZERO)
                    || before_seq.is_some_and(|s| s < Seq::ZERO)
                {
                    return Err(invalid("after_seq and before_seq must be >= 0".into()));
                }
                Ok(())
            }
            Self::Read { seq, .. } if *seq < Seq::ZERO => Err(invalid("seq must be >= 0".into())),
            _ => Ok(()),
        }
    }
}

impl Request {
    /// The first string field holding a NUL character. Postgres cannot
    /// store one in `text`, so such a value must never reach it: it would
    /// fail as `internal`, and in a batched write fail every other write of
    /// the batch too.
    fn field_with_nul(&self) -> Option<&'static str> {
        let has_nul = |s: &String| s.contains('\0');
        match self {
            Self::Invite { invite_code } | Self::Join { invite_code } => {
                has_nul(invite_code).then_some("invite_code")
            }
            Self::Accept { username }
            | Self::Reject { username }
            | Self::Disconnect { username } => has_nul(username).then_some("username"),
            Self::Create { title, usernames } => {
                if has_nul(title) {
                    Some("title")
                } else {
                    usernames.iter().any(has_nul).then_some("usernames")
                }
            }
            Self::WriteMessage {
                client_msg_id,
                content,
                ..
            } => {
                if has_nul(client_msg_id) {
                    Some("client_msg_id")
                } else {
                    has_nul(content).then_some("content")
                }
            }
            Self::KeepAlive
            | Self::FetchUserInviteCode
            | Self::FetchChannelInviteCode { .. }
            | Self::FetchConnections { .. }
            | Self::FetchChannels
            | Self::FetchMembers { .. }
            | Self::Enter { .. }
            | Self::Leave
            | Self::Quit { .. }
            | Self::FetchMessages { .. }
            | Self::Read { .. }
            | Self::Typing { .. } => None,
        }
    }
}

/// A decoded client frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client, echoed in the answer.
    pub id: u64,
    /// What the client asks.
    #[serde(flatten)]
    pub request: Request,
}

/// Why a client frame was refused: the `invalid_request` to send back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The frame's id when it could be read.
    pub id: Option<u64>,
    /// What was wrong.
    pub message: String,
}

impl FrameError {
    /// The error frame to answer with.
    #[must_use]
    pub fn into_frame(self) -> ServerFrame {
        ServerFrame::Error {
            id: self.id,
            code: ErrorCode::InvalidRequest,
            message: self.message,
        }
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

impl ClientFrame {
    /// Decodes and validates one text frame. On failure the id is recovered
    /// when it is a u64, so the client can match the error to its request.
    ///
    /// # Errors
    /// A [`FrameError`] describing the first problem found.
    pub fn decode(text: &str) -> Result<Self, FrameError> {
        match serde_json::from_str::<Self>(text) {
            Ok(frame) => match frame.request.validate() {
                Ok(()) => Ok(frame),
                Err(e) => Err(FrameError {
                    id: Some(frame.id),
                    message: e.message,
                }),
            },
            Err(e) => {
                let id = serde_json::from_str::<IdOnly>(text)
                    .ok()
                    .and_then(|f| f.id)
                    .and_then(|v| v.as_u64());
                let message = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                    "frame is not valid JSON".to_owned()
                } else if id.is_none() {
                    "id must be an unsigned 64-bit integer".to_owned()
                } else {
                    describe_serde_error(&e)
                };
                Err(FrameError { id, message })
            }
        }
    }
}

/// Most chars of a decoding error's message: serde quotes what it could
/// not match (an unknown `type`, a mistyped value), and the answer must
/// stay small whatever the frame held.
const MAX_ERROR_MESSAGE_CHARS: usize = 300;

/// serde's messages are fine but mention Rust types; keep them short.
fn describe_serde_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let text = text.split(" at line ").next().unwrap_or(&text);
    let mut message = format!("bad frame: {text}");
    if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// A server → client frame: a reply, an error, or a push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Reply {
        id: u64,
        result: serde_json::Value,
    },
    Error {
        id: Option<u64>,
        code: ErrorCode,
        message: String,
    },
    Message(MessageView),
    Unread {
        channel_id: ChannelId,
        title: String,
        last_seq: Seq,
        unread: i64,
    },
    InviteReceived {
        username: String,
    },
    InviteAccepted {
        username: String,
    },
    ChannelJoined {
        channel_id: ChannelId,
        title: String,
    },
    Typing {
        channel_id: ChannelId,
        username: String,
    },
    MemberJoined {
        channel_id: ChannelId,
        username: String,
    },
    MemberLeft {
        channel_id: ChannelId,
        username: String,
        reason: LeaveReason,
    },
    ConnectionEnded {
        username: String,
    },
    Reconnect {
        reason: String,
    },
    SessionRevoked,
}

impl ServerFrame {
    /// The JSON text of the frame. Serializing these types cannot fail (no
    /// maps with non-string keys), so a failure is a bug worth a loud log,
    /// not a panic: the fallback is an `internal` error frame.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","id":null,"code":"internal","message":"unserializable frame"}"#
                .to_owned()
        })
    }

    /// A reply carrying a typed result.
    #[must_use]
    pub fn reply(id: u64, result: &impl Serialize) -> Self {
        Self::Reply {
            id,
            result: serde_json::to_value(result).unwrap_or(serde_json::Value::Null),
        }
    }

    /// An error answer.
    #[must_use]
    pub fn error(id: Option<u64>, body: ErrorBody) -> Self {
        Self::Error {
            id,
            code: body.code,
            message: body.message,
        }
    }
}

/// One message as pushed and as returned by `fetch_messages` (the push also
/// carries `channel_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// The channel.
    pub channel_id: ChannelId,
    /// Its per-channel sequence number.
    pub seq: Seq,
    /// The writer; null once they have unregistered.
    pub username: Option<String>,
    /// The text.
    pub content: String,
    /// When it was stored.
    #[serde(with = "time_format::rfc3339_micros")]
    pub sent_at: OffsetDateTime,
}

/// Typed `result` bodies of replies (docs/protocol.md §2.1).
pub mod results {
    use super::{ConnectionStatus, OffsetDateTime, time_format};
    use crate::{ChannelId, Seq};
    use serde::{Deserialize, Serialize};

    /// `{}`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Empty {}

    /// `fetch_user_invite_code`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct UserInviteCode {
        /// The user's invite code.
        pub invite_code: String,
    }

    /// `fetch_channel_invite_code`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ChannelInviteCode {
        /// The channel.
        pub channel_id: ChannelId,
        /// Its invite code.
        pub invite_code: String,
    }

    /// `invite`, `accept`, `reject`, `disconnect`: the other user and the
    /// pair's new state.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ConnectionChange {
        /// The other user.
        pub username: String,
        /// The pair's state now.
        pub status: ConnectionStatus,
    }

    /// One entry of `fetch_connections`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ConnectionEntry {
        /// The other user.
        pub username: String,
        /// The pair's state.
        pub status: ConnectionStatus,
        /// Whether the other user has a live socket.
        pub online: bool,
    }

    /// `fetch_connections`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Connections {
        /// The matching pairs.
        pub connections: Vec<ConnectionEntry>,
    }

    /// `create` and `join`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ChannelCreated {
        /// The channel.
        pub channel_id: ChannelId,
        /// Its title.
        pub title: String,
        /// Its member count.
        pub head_count: i32,
    }

    /// One entry of `fetch_channels`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ChannelEntry {
        /// The channel.
        pub channel_id: ChannelId,
        /// Its title.
        pub title: String,
        /// Its member count.
        pub head_count: i32,
        /// Its newest seq (0 when empty).
        pub last_seq: Seq,
        /// The caller's read pointer.
        pub last_read_seq: Seq,
    }

    /// `fetch_channels`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Channels {
        /// The caller's channels.
        pub channels: Vec<ChannelEntry>,
    }

    /// One entry of `fetch_members`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MemberEntry {
        /// The member.
        pub username: String,
        /// Whether they have a live socket.
        pub online: bool,
    }

    /// `fetch_members`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Members {
        /// The channel's members, by username.
        pub members: Vec<MemberEntry>,
    }

    /// `enter`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Entered {
        /// The channel.
        pub channel_id: ChannelId,
        /// Its title.
        pub title: String,
        /// The caller's read pointer.
        pub last_read_seq: Seq,
        /// Its newest seq.
        pub last_seq: Seq,
    }

    /// `quit`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Quit {
        /// The channel left for good.
        pub channel_id: ChannelId,
    }

    /// `write_message`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Written {
        /// The channel.
        pub channel_id: ChannelId,
        /// The message's seq.
        pub seq: Seq,
        /// When it was stored.
        #[serde(with = "time_format::rfc3339_micros")]
        pub sent_at: OffsetDateTime,
    }

    /// One entry of `fetch_messages`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MessageEntry {
        /// Its seq.
        pub seq: Seq,
        /// The writer; null once they have unregistered.
        pub username: Option<String>,
        /// The text.
        pub content: String,
        /// When it was stored.
        #[serde(with = "time_format::rfc3339_micros")]
        pub sent_at: OffsetDateTime,
    }

    /// `fetch_messages`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Messages {
        /// The channel.
        pub channel_id: ChannelId,
        /// Ascending by seq.
        pub messages: Vec<MessageEntry>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_a_request_with_its_fields() {
        let frame = ClientFrame::decode(
            r#"{"id":7,"type":"write_message","channel_id":3,"client_msg_id":"a","content":"hi","extra":1}"#,
        )
        .expect("valid frame");
        assert_eq!(frame.id, 7);
        assert_eq!(
            frame.request,
            Request::WriteMessage {
                channel_id: ChannelId(3),
                client_msg_id: "a".into(),
                content: "hi".into()
            }
        );
    }

    #[test]
    fn fetch_members_names_a_channel_and_answers_names_with_presence() {
        let frame = ClientFrame::decode(r#"{"id":2,"type":"fetch_members","channel_id":5}"#)
            .expect("valid");
        assert_eq!(
            frame.request,
            Request::FetchMembers {
                channel_id: ChannelId(5)
            }
        );
        let reply = results::Members {
            members: vec![results::MemberEntry {
                username: "alice".into(),
                online: true,
            }],
        };
        assert_eq!(
            serde_json::to_value(&reply).expect("serialize"),
            json!({"members": [{"username": "alice", "online": true}]})
        );
        assert_eq!(
            ClientFrame::decode(r#"{"id":3,"type":"fetch_members"}"#)
                .expect_err("no channel")
                .id,
            Some(3)
        );
    }

    #[test]
    fn leave_reasons_are_snake_case_names() {
        assert_eq!(json!(LeaveReason::Quit), json!("quit"));
        assert_eq!(json!(LeaveReason::Unregistered), json!("unregistered"));
    }

    #[test]
    fn every_connection_status_names_itself_as_serde_does() {
        use strum::VariantArray;
        for status in ConnectionStatus::VARIANTS {
            let json = serde_json::to_value(status).expect("serialize");
            assert_eq!(json, json!(status.as_str()));
            assert_eq!(ConnectionStatus::parse(status.as_str()), Some(*status));
        }
        assert_eq!(ConnectionStatus::parse("Pending"), None);
    }

    #[test]
    fn every_request_kind_is_its_serde_type() {
        let samples = [
            json!({"type": "keep_alive"}),
            json!({"type": "fetch_user_invite_code"}),
            json!({"type": "fetch_channel_invite_code", "channel_id": 1}),
            json!({"type": "invite", "invite_code": "c"}),
            json!({"type": "accept", "username": "u"}),
            json!({"type": "reject", "username": "u"}),
            json!({"type": "disconnect", "username": "u"}),
            json!({"type": "fetch_connections", "status": "pending"}),
            json!({"type": "create", "title": "t", "usernames": ["u"]}),
            json!({"type": "join", "invite_code": "c"}),
            json!({"type": "fetch_channels"}),
            json!({"type": "fetch_members", "channel_id": 1}),
            json!({"type": "enter", "channel_id": 1}),
            json!({"type": "leave"}),
            json!({"type": "quit", "channel_id": 1}),
            json!({"type": "write_message", "channel_id": 1, "client_msg_id": "m", "content": "c"}),
            json!({"type": "fetch_messages", "channel_id": 1}),
            json!({"type": "read", "channel_id": 1, "seq": 1}),
            json!({"type": "typing", "channel_id": 1}),
        ];
        let mut kinds = Vec::new();
        for sample in samples {
            let request: Request = serde_json::from_value(sample.clone()).expect("decode");
            assert_eq!(json!(request.kind()), sample["type"]);
            kinds.push(request.kind());
        }
        kinds.sort_unstable();
        let mut variants = <Request as strum::VariantNames>::VARIANTS.to_vec();
        variants.sort_unstable();
        assert_eq!(kinds, variants, "one sample per request type");
    }

    #[test]
    fn unit_requests_round_trip() {
        for (text, request) in [
            (r#"{"id":1,"type":"keep_alive"}"#, Request::KeepAlive),
            (r#"{"id":1,"type":"leave"}"#, Request::Leave),
            (
                r#"{"id":1,"type":"fetch_channels"}"#,
                Request::FetchChannels,
            ),
        ] {
            let frame = ClientFrame::decode(text).expect("valid");
            assert_eq!(frame.request, request);
            let back: serde_json::Value = serde_json::to_value(&frame).expect("serialize");
            let orig: serde_json::Value = serde_json::from_str(text).expect("json");
            assert_eq!(back, orig);
        }
    }

    #[test]
    fn seqs_travel_as_bare_numbers_and_negative_ones_are_refused() {
        for (text, request) in [
            (
                r#"{"id":1,"type":"read","channel_id":2,"seq":7}"#,
                Request::Read {
                    channel_id: ChannelId(2),
                    seq: Seq(7),
                },
            ),
            (
                r#"{"id":1,"type":"fetch_messages","channel_id":2,"before_seq":3,"limit":10}"#,
                Request::FetchMessages {
                    channel_id: ChannelId(2),
                    after_seq: None,
                    before_seq: Some(Seq(3)),
                    limit: Some(10),
                },
            ),
        ] {
            let frame = ClientFrame::decode(text).expect("valid");
            assert_eq!(frame.request, request);
            let back = serde_json::to_value(&frame).expect("serialize");
            let orig: serde_json::Value = serde_json::from_str(text).expect("json");
            assert_eq!(back, orig);
        }
        for text in [
            r#"{"id":3,"type":"read","channel_id":2,"seq":-1}"#,
            r#"{"id":3,"type":"fetch_messages","channel_id":2,"after_seq":-1}"#,
        ] {
            assert_eq!(ClientFrame::decode(text).expect_err(text).id, Some(3));
        }
    }

    #[test]
    fn bad_frames_are_invalid_requests_with_the_id_when_readable() {
        let cases = [
            ("not json", None),
            (r#"{"type":"keep_alive"}"#, None),
            (r#"{"id":-1,"type":"keep_alive"}"#, None),
            (r#"{"id":"x","type":"keep_alive"}"#, None),
            (r#"{"id":4,"type":"nope"}"#, Some(4)),
            (r#"{"id":5,"type":"enter"}"#, Some(5)),
            (r#"{"id":6,"type":"enter","channel_id":"x"}"#, Some(6)),
            (
                r#"{"id":7,"type":"write_message","channel_id":1,"client_msg_id":"a","content":"   "}"#,
                Some(7),
            ),
            (
                r#"{"id":8,"type":"fetch_messages","channel_id":1,"after_seq":1,"before_seq":3}"#,
                Some(8),
            ),
            (
                r#"{"id":9,"type":"fetch_messages","channel_id":1,"limit":101}"#,
                Some(9),
            ),
            (
                r#"{"id":10,"type":"create","title":"t","usernames":["a","a"]}"#,
                Some(10),
            ),
            (
                r#"{"id":11,"type":"create","title":"t","usernames":[]}"#,
                Some(11),
            ),
        ];
        for (text, id) in cases {
            let err = ClientFrame::decode(text).expect_err(text);
            assert_eq!(err.id, id, "{text}: {}", err.message);
        }
    }

    #[test]
    fn nul_characters_are_refused_in_every_string_field() {
        let cases = [
            (
                json!({"type":"invite","invite_code":"a\u{0}b"}),
                "invite_code",
            ),
            (json!({"type":"join","invite_code":"\u{0}"}), "invite_code"),
            (json!({"type":"accept","username":"bo\u{0}b"}), "username"),
            (json!({"type":"reject","username":"bo\u{0}b"}), "username"),
            (
                json!({"type":"disconnect","username":"bo\u{0}b"}),
                "username",
            ),
            (
                json!({"type":"create","title":"t\u{0}","usernames":["bob"]}),
                "title",
            ),
            (
                json!({"type":"create","title":"t","usernames":["bob","c\u{0}"]}),
                "usernames",
            ),
            (
                json!({"type":"write_message","channel_id":1,"client_msg_id":"a\u{0}","content":"hi"}),
                "client_msg_id",
            ),
            (
                json!({"type":"write_message","channel_id":1,"client_msg_id":"a","content":"h\u{0}i"}),
                "content",
            ),
        ];
        for (request, field) in cases {
            let request: Request = serde_json::from_value(request).expect("well-formed");
            let err = request.validate().expect_err(field);
            assert_eq!(err.code, ErrorCode::InvalidRequest);
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
    }

    #[test]
    fn control_characters_are_refused_in_content_and_title() {
        let cases = [
            json!({"type":"write_message","channel_id":1,"client_msg_id":"a","content":"\u{1b}[2J"}),
            json!({"type":"write_message","channel_id":1,"client_msg_id":"a","content":"hi\u{9b}"}),
            json!({"type":"create","title":"t\u{7f}","usernames":["bob"]}),
        ];
        for request in cases {
            let request: Request = serde_json::from_value(request).expect("well-formed");
            let err = request.validate().expect_err("control character");
            assert_eq!(err.code, ErrorCode::InvalidRequest);
        }
        let fine: Request = serde_json::from_value(
            json!({"type":"write_message","channel_id":1,"client_msg_id":"a","content":"two\n\tlines"}),
        )
        .expect("well-formed");
        assert_eq!(fine.validate(), Ok(()));
    }

    #[test]
    fn decoding_errors_stay_short_whatever_the_frame_holds() {
        let text = format!(r#"{{"id":1,"type":"{}"}}"#, "x".repeat(60_000));
        let err = ClientFrame::decode(&text).expect_err("unknown type");
        assert_eq!(err.id, Some(1));
        assert!(err.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS + 1);
    }

    #[test]
    fn content_limit_is_counted_in_chars() {
        let ok = format!(
            r#"{{"id":1,"type":"write_message","channel_id":1,"client_msg_id":"a","content":"{}"}}"#,
            "é".repeat(4000)
        );
        assert!(ClientFrame::decode(&ok).is_ok());
        let long = ok.replace("\"é", "\"éé");
        assert!(ClientFrame::decode(&long).is_err());
    }

    #[test]
    fn server_frames_pin_their_wire_shape() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let cases = [
            (
                ServerFrame::reply(3, &results::Empty {}),
                json!({"type":"reply","id":3,"result":{}}),
            ),
            (
                ServerFrame::error(None, ErrorBody::new(ErrorCode::InvalidRequest, "x")),
                json!({"type":"error","id":null,"code":"invalid_request","message":"x"}),
            ),
            (
                ServerFrame::Message(MessageView {
                    channel_id: ChannelId(1),
                    seq: Seq(2),
                    username: None,
                    content: "c".into(),
                    sent_at: t,
                }),
                json!({"type":"message","channel_id":1,"seq":2,"username":null,"content":"c",
                       "sent_at":"2023-11-14T22:13:20.000000Z"}),
            ),
            (
                ServerFrame::Unread {
                    channel_id: ChannelId(1),
                    title: "t".into(),
                    last_seq: Seq(9),
                    unread: 4,
                },
                json!({"type":"unread","channel_id":1,"title":"t","last_seq":9,"unread":4}),
            ),
            (
                ServerFrame::SessionRevoked,
                json!({"type":"session_revoked"}),
            ),
            (
                ServerFrame::MemberJoined {
                    channel_id: ChannelId(1),
                    username: "bob".into(),
                },
                json!({"type":"member_joined","channel_id":1,"username":"bob"}),
            ),
            (
                ServerFrame::MemberLeft {
                    channel_id: ChannelId(1),
                    username: "bob".into(),
                    reason: LeaveReason::Unregistered,
                },
                json!({"type":"member_left","channel_id":1,"username":"bob","reason":"unregistered"}),
            ),
            (
                ServerFrame::ConnectionEnded {
                    username: "bob".into(),
                },
                json!({"type":"connection_ended","username":"bob"}),
            ),
            (
                ServerFrame::Reconnect {
                    reason: "draining".into(),
                },
                json!({"type":"reconnect","reason":"draining"}),
            ),
        ];
        for (frame, expected) in cases {
            let value: serde_json::Value = serde_json::from_str(&frame.to_json()).expect("json");
            assert_eq!(value, expected);
            let back: ServerFrame = serde_json::from_value(expected).expect("decode");
            assert_eq!(back, frame);
        }
    }
}
