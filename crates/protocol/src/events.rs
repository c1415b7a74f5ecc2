//! What flows after a state change: JetStream events (message → push),
//! gateway deliveries (push → gateway) and session revocations
//! (auth → gateways).

use crate::frames::LeaveReason;
use crate::partition::PartitionKey;
use crate::rpc::SocketRef;
use crate::{ChannelId, Seq, SessionId, SocketId, UserId, time_format};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// NATS header of an event in the dead-letter stream: why push gave up on
/// it (one line, at most 512 characters).
pub const DLQ_REASON_HEADER: &str = "Natter-Dlq-Reason";

/// A durable domain event on the events stream, written through the outbox.
///
/// Fields added after the first release are `#[serde(default)]`: an event
/// already in the stream when a new release starts still decodes, and
/// causes none of the pushes that were added with those fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[cfg_attr(test, derive(strum::VariantNames))]
#[serde(tag = "kind", rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Event {
    /// A message was stored.
    MessageStored {
        channel_id: ChannelId,
        title: String,
        seq: Seq,
        user_id: UserId,
        username: String,
        content: String,
        #[serde(with = "time_format::rfc3339_micros")]
        sent_at: OffsetDateTime,
        /// The writing socket, which gets no echo.
        origin: SocketRef,
        /// The W3C trace context of the write that stored it, when tracing
        /// was on. It rides in the event, not only in the bus message's
        /// headers, because one bus message carries every message a
        /// `write_messages` call stored in a partition, each from its own
        /// request and trace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        traceparent: Option<String>,
    },
    /// `to` was invited by `from_username`.
    InviteReceived { to: UserId, from_username: String },
    /// `to`'s invitation was accepted by `from_username`.
    InviteAccepted { to: UserId, from_username: String },
    /// A channel was created with these members (creator included).
    ChannelCreated {
        channel_id: ChannelId,
        title: String,
        creator: UserId,
        members: Vec<UserId>,
        /// The members `create` added (all but the creator), named for
        /// their `member_joined`.
        #[serde(default)]
        added: Vec<Joiner>,
    },
    /// A user joined a channel by its code.
    MemberJoined {
        channel_id: ChannelId,
        user_id: UserId,
        /// The joiner's name, for `member_joined`.
        #[serde(default)]
        username: Option<String>,
    },
    /// A user quit a channel (or unregistered).
    MemberLeft {
        channel_id: ChannelId,
        user_id: UserId,
        /// The leaver's name, for `member_left`.
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        reason: LeaveReason,
    },
    /// `from_username` ended an accepted connection with `to` (a
    /// `disconnect`, or their unregistering).
    ConnectionEnded { to: UserId, from_username: String },
    /// Someone is typing (not durable in Postgres; published directly).
    Typing {
        channel_id: ChannelId,
        user_id: UserId,
        username: String,
        origin: SocketRef,
    },
}

impl Event {
    /// The event's `kind` name, for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        self.into()
    }

    /// What decides the event's partition: its channel, or for what is
    /// addressed to one user outside a channel, that user.
    #[must_use]
    pub fn partition_key(&self) -> PartitionKey {
        match self {
            Self::MessageStored { channel_id, .. }
            | Self::ChannelCreated { channel_id, .. }
            | Self::MemberJoined { channel_id, .. }
            | Self::MemberLeft { channel_id, .. }
            | Self::Typing { channel_id, .. } => PartitionKey::Channel(*channel_id),
            Self::InviteReceived { to, .. }
            | Self::InviteAccepted { to, .. }
            | Self::ConnectionEnded { to, .. } => PartitionKey::User(*to),
        }
    }

    /// The trace context the event carries itself (a stored message's,
    /// [`Event::MessageStored`]'s `traceparent`); `None` for every other
    /// kind, whose context is its bus message's headers.
    #[must_use]
    pub fn traceparent(&self) -> Option<&str> {
        match self {
            Self::MessageStored { traceparent, .. } => traceparent.as_deref(),
            _ => None,
        }
    }

    /// The subject suffix under `<ns>.evt.p<k>.`: that of its
    /// [`Event::partition_key`].
    #[must_use]
    pub fn subject_suffix(&self) -> String {
        self.partition_key().subject_suffix()
    }
}

/// Decodes one events-stream message: a single [`Event`] object, or a
/// JSON array of them in order (what one `write_messages` call stored in
/// one partition goes out as one message: one outbox row, one publish, one
/// acknowledgement and one delivery to push instead of one each; its
/// events may be of several channels, each channel's in seq order).
///
/// # Errors
/// When the payload is neither, or an array is empty.
pub fn decode_events(payload: &[u8]) -> Result<Vec<Event>, serde_json::Error> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let events: Vec<Event> = serde_json::from_slice(payload)?;
        if events.is_empty() {
            return Err(serde::de::Error::invalid_length(0, &"at least one event"));
        }
        Ok(events)
    } else {
        serde_json::from_slice(payload).map(|event| vec![event])
    }
}

/// A member `create` added, with the name their `member_joined` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joiner {
    /// The member.
    pub user_id: UserId,
    /// Their name.
    pub username: String,
}

/// One user's `unread` push inside an [`Delivery::Unread`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadTarget {
    /// Their sockets on this gateway.
    #[serde(with = "socket_ids")]
    pub sockets: Vec<SocketId>,
    /// `last_seq − last_read_seq` for them.
    pub unread: i64,
}

/// One thing for a gateway to do. Decoded by hand (`delivery_de`):
/// serde's derive buffers an internally tagged object whole before it
/// looks at the tag, thousands of socket ids included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Delivery {
    /// Send this already-serialized frame to these sockets: serialized once
    /// by push, shared by every recipient.
    Frame {
        /// Local socket ids.
        #[serde(serialize_with = "socket_ids::serialize")]
        sockets: Vec<SocketId>,
        /// The JSON text of a server frame.
        frame: String,
    },
    /// `unread` pushes: one frame per user, since the count differs.
    Unread {
        /// The channel.
        channel_id: ChannelId,
        /// Its title.
        title: String,
        /// Its newest seq.
        last_seq: Seq,
        /// Who gets what.
        targets: Vec<UnreadTarget>,
    },
    /// The user is no longer a member: these sockets, if they are in the
    /// channel, leave it.
    LeaveChannel {
        /// The channel.
        channel_id: ChannelId,
        /// Local socket ids of the former member.
        #[serde(serialize_with = "socket_ids::serialize")]
        sockets: Vec<SocketId>,
    },
}

/// [`Delivery`]'s decoding: when `op` comes first, as push writes it, the
/// rest of the object is read straight into the variant's fields; when it
/// does not, the object is read whole and then decoded, as the derive
/// would.
mod delivery_de {
    use super::{Delivery, UnreadTarget};
    use crate::{ChannelId, Seq, SocketId};
    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Error, MapAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        Frame,
        Unread,
        LeaveChannel,
    }

    #[derive(Deserialize)]
    struct Frame {
        #[serde(deserialize_with = "super::socket_ids::deserialize")]
        sockets: Vec<SocketId>,
        frame: String,
    }

    #[derive(Deserialize)]
    struct Unread {
        channel_id: ChannelId,
        title: String,
        last_seq: Seq,
        targets: Vec<UnreadTarget>,
    }

    #[derive(Deserialize)]
    struct LeaveChannel {
        channel_id: ChannelId,
        #[serde(deserialize_with = "super::socket_ids::deserialize")]
        sockets: Vec<SocketId>,
    }

    /// The variant `op` names, from the rest of its object.
    fn variant<'de, D: Deserializer<'de>>(op: Op, rest: D) -> Result<Delivery, D::Error> {
        Ok(match op {
            Op::Frame => {
                let Frame { sockets, frame } = Frame::deserialize(rest)?;
                Delivery::Frame { sockets, frame }
            }
            Op::Unread => {
                let Unread {
                    channel_id,
                    title,
                    last_seq,
                    targets,
                } = Unread::deserialize(rest)?;
                Delivery::Unread {
                    channel_id,
                    title,
                    last_seq,
                    targets,
                }
            }
            Op::LeaveChannel => {
                let LeaveChannel {
                    channel_id,
                    sockets,
                } = LeaveChannel::deserialize(rest)?;
                Delivery::LeaveChannel {
                    channel_id,
                    sockets,
                }
            }
        })
    }

    struct DeliveryVisitor;

    impl<'de> Visitor<'de> for DeliveryVisitor {
        type Value = Delivery;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a delivery object with an \"op\"")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Delivery, A::Error> {
            let Some(first) = map.next_key::<String>()? else {
                return Err(A::Error::missing_field("op"));
            };
            if first == "op" {
                let op = map.next_value()?;
                return variant(op, MapAccessDeserializer::new(map));
            }
            let mut object = serde_json::Map::new();
            object.insert(first, map.next_value()?);
            while let Some((key, value)) = map.next_entry()? {
                object.insert(key, value);
            }
            let op = object
                .remove("op")
                .ok_or_else(|| A::Error::missing_field("op"))?;
            let op = Op::deserialize(op).map_err(A::Error::custom)?;
            variant(op, serde_json::Value::Object(object)).map_err(A::Error::custom)
        }
    }

    impl<'de> Deserialize<'de> for Delivery {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(DeliveryVisitor)
        }
    }
}

/// How a delivery names its sockets. A gateway's socket ids count up from
/// a random 62-bit start, so each takes ~19 digits, while the ids one
/// gateway holds lie no further apart than the number of sockets it has
/// opened. Push writes them sorted, as the first and each one's distance
/// from the one before: `{"from":9,"gaps":[1,1,7]}` names 9, 10, 11 and
/// 18, and an empty list is `[]`. A channel of 2,000 members on one
/// gateway is then some 4–16 KB to sign, send, check and parse instead of
/// 40 KB. A plain array of ids (what push wrote before) still decodes.
mod socket_ids {
    use crate::SocketId;
    use serde::de::value::MapAccessDeserializer;
    use serde::de::{Error, MapAccess, SeqAccess, Visitor};
    use serde::ser::SerializeStruct;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::borrow::Cow;

    /// Writes `ids` as a set: sorted, each once.
    pub(super) fn serialize<S: Serializer>(ids: &[SocketId], s: S) -> Result<S::Ok, S::Error> {
        let ids: Cow<'_, [SocketId]> = if ids.windows(2).all(|w| w[0] < w[1]) {
            Cow::Borrowed(ids)
        } else {
            let mut sorted = ids.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            Cow::Owned(sorted)
        };
        let Some(first) = ids.first() else {
            return s.collect_seq(std::iter::empty::<u64>());
        };
        let mut object = s.serialize_struct("SocketIds", 2)?;
        object.serialize_field("from", &first.0)?;
        object.serialize_field("gaps", &Gaps(&ids))?;
        object.end()
    }

    /// The distances between sorted ids.
    struct Gaps<'a>(&'a [SocketId]);

    impl Serialize for Gaps<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.windows(2).map(|w| w[1].0 - w[0].0))
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketId>, D::Error> {
        d.deserialize_any(IdsVisitor)
    }

    /// The gap form as it reads; serde refuses a missing, repeated or
    /// unknown field.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Gapped {
        from: u64,
        gaps: Vec<u64>,
    }

    struct IdsVisitor;

    impl<'de> Visitor<'de> for IdsVisitor {
        type Value = Vec<SocketId>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("socket ids: an array, or {\"from\":…,\"gaps\":[…]}")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(id) = seq.next_element()? {
                ids.push(id);
            }
            Ok(ids)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let Gapped { from, gaps } = Gapped::deserialize(MapAccessDeserializer::new(map))?;
            let mut ids = Vec::with_capacity(gaps.len() + 1);
            let mut id = from;
            ids.push(SocketId(id));
            for gap in gaps {
                id = (gap > 0)
                    .then(|| id.checked_add(gap))
                    .flatten()
                    .ok_or_else(|| {
                        A::Error::custom("socket id gaps must be positive and stay within u64")
                    })?;
                ids.push(SocketId(id));
            }
            Ok(ids)
        }
    }
}

/// An upper bound of the bytes socket ids take in a delivery as
/// `socket_ids` writes them, without the 19 bytes of
/// `{"from":,"gaps":[]}`: the first id in its digits, then each gap, which
/// is at most the distance from the smallest id to the largest, in its
/// digits; a comma after each. Push cuts its merged batches by it;
/// counting every id in full would make a large channel's deliveries look
/// ten times their size.
#[must_use]
pub fn socket_ids_bound(ids: &[SocketId]) -> usize {
    let (Some(min), Some(max)) = (ids.iter().min(), ids.iter().max()) else {
        return 0;
    };
    let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    digits(max.0) + 1 + (ids.len() - 1) * (digits(max.0 - min.0) + 1)
}

/// The first part of a [`Event::MessageStored`]'s JSON, written by the
/// message writer before it knows the message's seq, time and channel
/// title: the object up to, not including, its closing brace, without
/// those three. The writer's one Postgres call (migrations/0012) appends
/// `,"title":…,"seq":…,"sent_at":"…"}` once they are known, so the
/// event is encoded in one place of Rust and completed in one place of SQL.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageStoredHead<'a> {
    kind: &'static str,
    /// The channel.
    pub channel_id: ChannelId,
    /// The writer.
    pub user_id: UserId,
    /// Their name.
    pub username: &'a str,
    /// The text.
    pub content: &'a str,
    /// The writing socket, which gets no echo.
    pub origin: &'a SocketRef,
    /// The write's trace context, when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
}

impl<'a> MessageStoredHead<'a> {
    /// The head of the event for these fields.
    #[must_use]
    pub fn new(
        channel_id: ChannelId,
        user_id: UserId,
        username: &'a str,
        content: &'a str,
        origin: &'a SocketRef,
        traceparent: Option<&'a str>,
    ) -> Self {
        Self {
            kind: "message_stored",
            channel_id,
            user_id,
            username,
            content,
            origin,
            traceparent,
        }
    }

    /// The JSON text, open at the end.
    #[must_use]
    pub fn json(&self) -> String {
        let mut json = serde_json::to_string(self).unwrap_or_default();
        json.pop();
        json
    }
}

/// What push publishes to one gateway: one event's deliveries, or several
/// events', each partition's in event order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryBatch {
    /// In order.
    pub items: Vec<Delivery>,
}

/// Deliveries encoded for a [`DeliveryBatch`], not yet in one: push
/// encodes each event's (or run of events') deliveries to a gateway once,
/// and joins the parts of several partitions that go out together into
/// one message with [`EncodedItems::join`], without decoding or encoding
/// the deliveries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedItems(Vec<u8>);

impl EncodedItems {
    /// Encodes `items`, in order.
    ///
    /// # Errors
    /// When an item cannot be encoded.
    pub fn encode(items: &[&Delivery]) -> serde_json::Result<Self> {
        let mut array = serde_json::to_vec(items)?;
        // `[a,b]` → `a,b`: what sits between a batch's brackets.
        array.pop();
        array.remove(0);
        Ok(Self(array))
    }

    /// Its encoded length: a joined batch is at most the parts' lengths
    /// plus one byte each and [`EncodedItems::FRAMING`].
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no delivery.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes of a batch beyond its parts and their separators.
    pub const FRAMING: usize = r#"{"items":[]}"#.len();

    /// One [`DeliveryBatch`] of `parts`' deliveries, in order.
    #[must_use]
    pub fn join<'a>(parts: impl IntoIterator<Item = &'a Self>) -> Vec<u8> {
        let mut batch = br#"{"items":["#.to_vec();
        let mut first = true;
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            if !first {
                batch.push(b',');
            }
            first = false;
            batch.extend_from_slice(&part.0);
        }
        batch.extend_from_slice(b"]}");
        batch
    }
}

/// Auth → gateways: this login is over; close its sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevoked {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn typing(user: i64) -> Event {
        Event::Typing {
            channel_id: ChannelId(1),
            user_id: UserId(user),
            username: format!("user{user}"),
            origin: SocketRef {
                gateway_id: "gw".into(),
                socket_id: SocketId(1),
            },
        }
    }

    #[test]
    fn a_bus_message_decodes_as_one_event_or_an_array_of_them_in_order() {
        let one = serde_json::to_vec(&typing(1)).expect("encode");
        assert_eq!(decode_events(&one).expect("one"), [typing(1)]);
        let many = serde_json::to_vec(&[typing(1), typing(2), typing(3)]).expect("encode");
        assert_eq!(
            decode_events(&many).expect("many"),
            [typing(1), typing(2), typing(3)]
        );
        let spaced = [b" \n".as_slice(), &many].concat();
        assert_eq!(decode_events(&spaced).expect("spaced").len(), 3);
    }

    #[test]
    fn an_empty_array_or_an_array_of_anything_else_is_no_bus_message() {
        for bad in [&b"[]"[..], b"[{\"kind\":\"nope\"}]", b"[1]", b"{", b""] {
            assert!(
                decode_events(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The head with the tail migrations/0012 appends (built here the way
    /// the SQL builds it: `to_json` of the title, the seq, the time with
    /// six fraction digits) decodes to the event Rust would have encoded.
    #[test]
    fn a_message_stored_head_completed_as_postgres_completes_it_is_the_event() {
        let origin = SocketRef {
            gateway_id: "gw-1".into(),
            socket_id: SocketId(7),
        };
        let sent_at =
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000).expect("time");
        let title = "the \"quoted\" room\n";
        let head = MessageStoredHead::new(
            ChannelId(3),
            UserId(5),
            "bob",
            "hi \u{1F600} \"x\"",
            &origin,
            Some(TRACEPARENT),
        );
        let json = format!(
            "{},\"title\":{},\"seq\":{},\"sent_at\":\"{}\"}}",
            head.json(),
            serde_json::to_string(title).expect("title"),
            42,
            time_format::format(sent_at)
        );
        let event: Event = serde_json::from_str(&json).expect("decodes");
        assert_eq!(
            event,
            Event::MessageStored {
                channel_id: ChannelId(3),
                title: title.into(),
                seq: Seq(42),
                user_id: UserId(5),
                username: "bob".into(),
                content: "hi \u{1F600} \"x\"".into(),
                sent_at,
                origin: origin.clone(),
                traceparent: Some(TRACEPARENT.into()),
            }
        );
        assert_eq!(event.traceparent(), Some(TRACEPARENT));
        // Untraced, the head is what it was before events carried a trace.
        let untraced = MessageStoredHead::new(ChannelId(3), UserId(5), "bob", "hi", &origin, None);
        assert!(!untraced.json().contains("traceparent"));
    }

    #[test]
    fn events_are_tagged_by_kind() {
        let e = Event::MemberJoined {
            channel_id: ChannelId(4),
            user_id: UserId(2),
            username: Some("bob".into()),
        };
        let v = serde_json::to_value(&e).expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({"kind":"member_joined","channel_id":4,"user_id":2,"username":"bob"})
        );
        assert_eq!(e.subject_suffix(), "channel.4");
        let ended = Event::ConnectionEnded {
            to: UserId(3),
            from_username: "bob".into(),
        };
        assert_eq!(ended.subject_suffix(), "user.3");
    }

    #[test]
    fn membership_events_written_before_the_member_pushes_still_decode() {
        let joined: Event = serde_json::from_value(
            serde_json::json!({"kind":"member_joined","channel_id":4,"user_id":2}),
        )
        .expect("decode");
        assert_eq!(
            joined,
            Event::MemberJoined {
                channel_id: ChannelId(4),
                user_id: UserId(2),
                username: None
            }
        );
        let left: Event = serde_json::from_value(
            serde_json::json!({"kind":"member_left","channel_id":4,"user_id":2}),
        )
        .expect("decode");
        assert_eq!(
            left,
            Event::MemberLeft {
                channel_id: ChannelId(4),
                user_id: UserId(2),
                username: None,
                reason: LeaveReason::Quit
            }
        );
        let created: Event = serde_json::from_value(serde_json::json!({
            "kind":"channel_created","channel_id":4,"title":"t","creator":1,"members":[1,2]
        }))
        .expect("decode");
        let Event::ChannelCreated { added, .. } = created else {
            panic!("a channel_created event");
        };
        assert!(added.is_empty());
    }

    #[test]
    fn every_event_kind_is_its_serde_kind() {
        let origin = SocketRef {
            gateway_id: "g".into(),
            socket_id: SocketId(1),
        };
        let (channel_id, user_id) = (ChannelId(1), UserId(2));
        let samples = [
            Event::MessageStored {
                channel_id,
                title: "t".into(),
                seq: Seq(1),
                user_id,
                username: "u".into(),
                content: "c".into(),
                sent_at: OffsetDateTime::UNIX_EPOCH,
                origin: origin.clone(),
                traceparent: None,
            },
            Event::InviteReceived {
                to: user_id,
                from_username: "u".into(),
            },
            Event::InviteAccepted {
                to: user_id,
                from_username: "u".into(),
            },
            Event::ChannelCreated {
                channel_id,
                title: "t".into(),
                creator: user_id,
                members: vec![user_id],
                added: Vec::new(),
            },
            Event::MemberJoined {
                channel_id,
                user_id,
                username: Some("u".into()),
            },
            Event::MemberLeft {
                channel_id,
                user_id,
                username: Some("u".into()),
                reason: LeaveReason::Unregistered,
            },
            Event::ConnectionEnded {
                to: user_id,
                from_username: "u".into(),
            },
            Event::Typing {
                channel_id,
                user_id,
                username: "u".into(),
                origin,
            },
        ];
        let mut kinds = Vec::new();
        for event in &samples {
            let json = serde_json::to_value(event).expect("serialize");
            assert_eq!(json["kind"], serde_json::json!(event.kind()));
            kinds.push(event.kind());
        }
        kinds.sort_unstable();
        let mut variants = <Event as strum::VariantNames>::VARIANTS.to_vec();
        variants.sort_unstable();
        assert_eq!(kinds, variants, "one sample per event kind");
    }

    #[test]
    fn deliveries_name_sockets_as_the_first_and_the_gaps_after_it() {
        let d = Delivery::LeaveChannel {
            channel_id: ChannelId(3),
            sockets: vec![SocketId(9), SocketId(10), SocketId(18)],
        };
        let v = serde_json::to_value(&d).expect("serialize");
        assert_eq!(
            v,
            serde_json::json!({"op":"leave_channel","channel_id":3,"sockets":{"from":9,"gaps":[1,8]}})
        );
        assert_eq!(serde_json::from_value::<Delivery>(v).expect("decode"), d);
        let none = Delivery::LeaveChannel {
            channel_id: ChannelId(3),
            sockets: vec![],
        };
        let text = serde_json::to_string(&none).expect("serialize");
        assert!(text.contains(r#""sockets":[]"#), "{text}");
        assert_eq!(
            serde_json::from_str::<Delivery>(&text).expect("decode"),
            none
        );
    }

    #[test]
    fn sockets_go_out_sorted_and_each_once_whatever_order_push_found_them_in() {
        let d = Delivery::Frame {
            sockets: vec![SocketId(30), SocketId(7), SocketId(30), SocketId(8)],
            frame: "{}".into(),
        };
        let text = serde_json::to_string(&d).expect("serialize");
        assert!(
            text.contains(r#""sockets":{"from":7,"gaps":[1,22]}"#),
            "{text}"
        );
        let Delivery::Frame { sockets, .. } = serde_json::from_str(&text).expect("decode") else {
            panic!("not a frame: {text}");
        };
        assert_eq!(sockets, [SocketId(7), SocketId(8), SocketId(30)]);
    }

    #[test]
    fn a_gateway_s_sockets_in_a_large_channel_take_under_an_eighth_of_the_bytes_of_their_ids() {
        let start = 4_000_000_000_000_000_000_u64;
        let ids: Vec<SocketId> = (0..2000).map(|n| SocketId(start + 3 * n)).collect();
        let plain = serde_json::to_string(&ids).expect("plain");
        let delivery = Delivery::Frame {
            sockets: ids,
            frame: String::new(),
        };
        let text = serde_json::to_string(&delivery).expect("serialize");
        assert!(
            text.len() * 8 < plain.len(),
            "{} vs {}",
            text.len(),
            plain.len()
        );
        assert_eq!(
            serde_json::from_str::<Delivery>(&text).expect("decode"),
            delivery
        );
    }

    #[test]
    fn socket_ids_as_push_wrote_them_before_still_decode() {
        let text = r#"{"op":"unread","channel_id":1,"title":"t","last_seq":3,
            "targets":[{"sockets":[12,5],"unread":2}]}"#;
        let Delivery::Unread { targets, .. } = serde_json::from_str(text).expect("decode") else {
            panic!("not unread");
        };
        assert_eq!(targets[0].sockets, [SocketId(12), SocketId(5)]);
    }

    #[test]
    fn socket_gaps_that_repeat_overflow_or_lack_a_part_are_refused() {
        let max = u64::MAX;
        let ok = format!(
            r#"{{"op":"frame","frame":"","sockets":{{"from":{},"gaps":[1]}}}}"#,
            max - 1
        );
        assert!(serde_json::from_str::<Delivery>(&ok).is_ok(), "{ok}");
        for sockets in [
            format!(r#"{{"from":{},"gaps":[2]}}"#, max - 1),
            r#"{"from":5,"gaps":[1,0]}"#.to_owned(),
            r#"{"from":5}"#.to_owned(),
            r#"{"gaps":[1]}"#.to_owned(),
            r#"{"from":5,"gaps":[1],"extra":1}"#.to_owned(),
            r#"{"from":5,"from":6,"gaps":[]}"#.to_owned(),
            r#"{"from":-5,"gaps":[]}"#.to_owned(),
            r#""5""#.to_owned(),
        ] {
            let text = format!(r#"{{"op":"frame","frame":"","sockets":{sockets}}}"#);
            assert!(serde_json::from_str::<Delivery>(&text).is_err(), "{text}");
        }
    }

    #[test]
    fn delivery_batches_round_trip() {
        let b = DeliveryBatch {
            items: vec![
                Delivery::Frame {
                    sockets: vec![SocketId(1), SocketId(2)],
                    frame: "{}".into(),
                },
                Delivery::Unread {
                    channel_id: ChannelId(1),
                    title: "t".into(),
                    last_seq: Seq(3),
                    targets: vec![UnreadTarget {
                        sockets: vec![SocketId(5)],
                        unread: 2,
                    }],
                },
            ],
        };
        let text = serde_json::to_string(&b).expect("serialize");
        assert!(text.contains(r#"{"op":"frame","#), "op first: {text}");
        assert_eq!(
            serde_json::from_str::<DeliveryBatch>(&text).expect("decode"),
            b
        );
    }

    #[test]
    fn joined_parts_decode_as_one_batch_of_their_deliveries_in_order() {
        let first = Delivery::Frame {
            sockets: vec![SocketId(1)],
            frame: r#"{"type":"message"}"#.into(),
        };
        let second = Delivery::LeaveChannel {
            channel_id: ChannelId(2),
            sockets: vec![SocketId(3)],
        };
        let third = Delivery::Frame {
            sockets: vec![SocketId(4), SocketId(5)],
            frame: "{}".into(),
        };
        let parts = [
            EncodedItems::encode(&[&first, &second]).expect("encode"),
            EncodedItems::encode(&[]).expect("encode"),
            EncodedItems::encode(&[&third]).expect("encode"),
        ];
        let joined = EncodedItems::join(&parts);
        assert_eq!(
            serde_json::from_slice::<DeliveryBatch>(&joined).expect("decode"),
            DeliveryBatch {
                items: vec![first, second, third.clone()]
            }
        );
        let whole = DeliveryBatch { items: vec![third] };
        assert_eq!(
            EncodedItems::join([&parts[2]]),
            serde_json::to_vec(&whole).expect("serialize"),
            "one part joined is the batch serde writes"
        );
        let bound: usize = parts.iter().map(|p| p.len() + 1).sum();
        assert!(joined.len() <= bound + EncodedItems::FRAMING);
        assert_eq!(
            serde_json::from_slice::<DeliveryBatch>(&EncodedItems::join([])).expect("decode"),
            DeliveryBatch { items: vec![] }
        );
    }

    #[test]
    fn a_delivery_decodes_wherever_its_op_stands_and_not_without_one() {
        let frame = Delivery::Frame {
            sockets: vec![SocketId(4)],
            frame: "{}".into(),
        };
        for text in [
            r#"{"op":"frame","sockets":[4],"frame":"{}"}"#,
            r#"{"sockets":[4],"op":"frame","frame":"{}"}"#,
            r#"{"frame":"{}","sockets":[4],"op":"frame"}"#,
        ] {
            assert_eq!(serde_json::from_str::<Delivery>(text).expect(text), frame);
        }
        for text in [
            r#"{"sockets":[4],"frame":"{}"}"#,
            r#"{"op":"shout","sockets":[4]}"#,
            r#"{"op":"frame","sockets":[4]}"#,
            r#"{"sockets":"x","op":"frame","frame":"{}"}"#,
            "{}",
            "[]",
        ] {
            assert!(serde_json::from_str::<Delivery>(text).is_err(), "{text}");
        }
    }
}
