//! Who gets which push (docs/protocol.md §2.3): an event becomes
//! per-gateway delivery batches, decided from the channel's members, the
//! recipients' live sockets and, for `unread`, their read positions. Pure
//! logic, no I/O: the orchestration in `crate::fanout` gathers the inputs
//! and publishes the output, so every rule here is unit-tested without a
//! server.
//!
//! Every frame is serialized once per event and the text shared by every
//! gateway's batch; only `unread` differs per user, so its batch carries
//! each user's count and the gateway renders it.

use natter_platform::presence::{LiveSocket, LiveSockets};
use natter_protocol::events::{Delivery, DeliveryBatch, Event, UnreadTarget};
use natter_protocol::frames::{MessageView, ServerFrame};
use natter_protocol::rpc::SocketRef;
use natter_protocol::{ChannelId, Seq, SocketId, UserId};
use std::collections::{BTreeMap, HashMap};

/// One event's deliveries to one gateway (push merges those of a run of
/// events into one message: `merge.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayBatch {
    /// The gateway id.
    pub gateway: String,
    /// Its deliveries, in order.
    pub batch: DeliveryBatch,
}

/// The live sockets one event may reach: a batch's presence read (everyone
/// in any of its events' audiences), seen through this event's
/// [`audience`]. A view, not a copy: a batch of events to a channel of
/// thousands would otherwise copy thousands of users' sockets per event.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    sockets: &'a LiveSockets,
    /// `None`: everyone in `sockets` is in the audience.
    audience: Option<&'a [UserId]>,
}

impl<'a> Live<'a> {
    /// Everyone in `sockets`: the read was made for this event alone.
    #[must_use]
    pub fn all(sockets: &'a LiveSockets) -> Self {
        Self {
            sockets,
            audience: None,
        }
    }

    /// The sockets of `audience` (each user once) among `sockets`.
    #[must_use]
    pub fn of(sockets: &'a LiveSockets, audience: &'a [UserId]) -> Self {
        Self {
            sockets,
            audience: Some(audience),
        }
    }

    /// Every user of the audience who has live sockets, with them.
    fn iter(self) -> impl Iterator<Item = (UserId, &'a [LiveSocket])> {
        let (everyone, some) = match self.audience {
            None => (Some(self.sockets.iter()), None),
            Some(users) => (None, Some(users.iter())),
        };
        let sockets = self.sockets;
        everyone
            .into_iter()
            .flatten()
            .map(|(user, live)| (*user, live.as_slice()))
            .chain(
                some.into_iter()
                    .flatten()
                    .filter_map(move |user| sockets.get(user).map(|live| (*user, live.as_slice()))),
            )
    }

    /// The sockets of `user`, who must come from [`Live::iter`].
    fn get(self, user: UserId) -> Option<&'a [LiveSocket]> {
        self.sockets.get(&user).map(Vec::as_slice)
    }
}

/// The channel whose members decide an event's recipients, for the events
/// that go to "sockets that have entered" or to members. (A created
/// channel's members travel in its event.)
#[must_use]
pub fn channel_of(event: &Event) -> Option<ChannelId> {
    match event {
        Event::MessageStored { channel_id, .. }
        | Event::Typing { channel_id, .. }
        | Event::MemberJoined { channel_id, .. }
        | Event::MemberLeft { channel_id, .. } => Some(*channel_id),
        _ => None,
    }
}

/// The channel whose membership an event changes: its cached members must
/// be dropped everywhere.
#[must_use]
pub fn membership_change(event: &Event) -> Option<ChannelId> {
    match event {
        Event::ChannelCreated { channel_id, .. }
        | Event::MemberJoined { channel_id, .. }
        | Event::MemberLeft { channel_id, .. } => Some(*channel_id),
        _ => None,
    }
}

/// Whose presence the event needs; `members` are the channel's members
/// when [`channel_of`] names one (ignored otherwise), read after the
/// event's change: a leaver is no longer among them.
#[must_use]
pub fn audience(event: &Event, members: &[UserId]) -> Vec<UserId> {
    match event {
        Event::MessageStored { .. } | Event::Typing { .. } | Event::MemberJoined { .. } => {
            members.to_vec()
        }
        Event::InviteReceived { to, .. }
        | Event::InviteAccepted { to, .. }
        | Event::ConnectionEnded { to, .. } => vec![*to],
        Event::ChannelCreated { members, .. } => members.clone(),
        Event::MemberLeft { user_id, .. } => {
            let mut users = members.to_vec();
            if !users.contains(user_id) {
                users.push(*user_id);
            }
            users
        }
    }
}

/// The members who get an `unread` for a stored message — live, none of
/// their sockets in the channel, not the writer — so only their read
/// positions are fetched. Sorted, for a stable query.
#[must_use]
pub fn unread_users(event: &Event, live: Live<'_>) -> Vec<UserId> {
    let Event::MessageStored {
        channel_id,
        user_id: writer,
        ..
    } = event
    else {
        return Vec::new();
    };
    let mut users: Vec<UserId> = live
        .iter()
        .filter(|(user, sockets)| {
            user != writer
                && !sockets.is_empty()
                && !sockets.iter().any(|s| s.entered == Some(*channel_id))
        })
        .map(|(user, _)| user)
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// The deliveries for one event: one batch per gateway that has a
/// recipient, ordered by gateway id. `live` shows the sockets of the
/// event's [`audience`] and no one else's. `last_read` holds the read positions
/// of [`unread_users`]; a user missing from it (no longer a member) gets no
/// `unread`.
#[must_use]
pub fn deliveries(
    event: &Event,
    live: Live<'_>,
    last_read: &HashMap<UserId, Seq>,
) -> Vec<GatewayBatch> {
    let mut out = Batches::default();
    match event {
        Event::MessageStored {
            channel_id,
            title,
            seq,
            user_id: _,
            username,
            content,
            sent_at,
            origin,
            traceparent: _,
        } => {
            let frame = ServerFrame::Message(MessageView {
                channel_id: *channel_id,
                seq: *seq,
                username: Some(username.clone()),
                content: content.clone(),
                sent_at: *sent_at,
            });
            let entered = sockets_where(live, |_, s| {
                s.entered == Some(*channel_id) && !is_origin(s, origin)
            });
            out.frame(&frame, entered);
            // No read positions, no unread: a channel whose members have
            // all entered is not scanned a second time.
            let unread = if last_read.is_empty() {
                Vec::new()
            } else {
                unread_users(event, live)
            };
            for user in unread {
                let (Some(read), Some(sockets)) = (last_read.get(&user), live.get(user)) else {
                    continue;
                };
                out.unread(
                    *channel_id,
                    title,
                    *seq,
                    seq.count_after(*read),
                    by_gateway(sockets.iter()),
                );
            }
        }
        Event::Typing {
            channel_id,
            user_id,
            username,
            origin: _,
        } => {
            let frame = ServerFrame::Typing {
                channel_id: *channel_id,
                username: username.clone(),
            };
            let entered = sockets_where(live, |user, s| {
                user != *user_id && s.entered == Some(*channel_id)
            });
            out.frame(&frame, entered);
        }
        Event::InviteReceived { to, from_username } => {
            let frame = ServerFrame::InviteReceived {
                username: from_username.clone(),
            };
            out.frame(&frame, sockets_where(live, |user, _| user == *to));
        }
        Event::InviteAccepted { to, from_username } => {
            let frame = ServerFrame::InviteAccepted {
                username: from_username.clone(),
            };
            out.frame(&frame, sockets_where(live, |user, _| user == *to));
        }
        Event::ChannelCreated {
            channel_id,
            title,
            creator,
            members,
            added,
        } => {
            let frame = ServerFrame::ChannelJoined {
                channel_id: *channel_id,
                title: title.clone(),
            };
            out.frame(
                &frame,
                sockets_where(live, |user, _| user != *creator && members.contains(&user)),
            );
            // The channel is new, so a socket can only have entered it
            // since `create` answered: usually none has yet.
            for joiner in added {
                out.member_joined(live, *channel_id, joiner.user_id, &joiner.username);
            }
        }
        Event::MemberJoined {
            channel_id,
            user_id,
            username,
        } => {
            if let Some(username) = username {
                out.member_joined(live, *channel_id, *user_id, username);
            }
        }
        Event::MemberLeft {
            channel_id,
            user_id,
            username,
            reason,
        } => {
            for (gateway, sockets) in sockets_where(live, |user, _| user == *user_id) {
                out.push(
                    gateway,
                    Delivery::LeaveChannel {
                        channel_id: *channel_id,
                        sockets,
                    },
                );
            }
            if let Some(username) = username {
                let frame = ServerFrame::MemberLeft {
                    channel_id: *channel_id,
                    username: username.clone(),
                    reason: *reason,
                };
                out.frame(&frame, entered_by_others(live, *channel_id, *user_id));
            }
        }
        Event::ConnectionEnded { to, from_username } => {
            let frame = ServerFrame::ConnectionEnded {
                username: from_username.clone(),
            };
            out.frame(&frame, sockets_where(live, |user, _| user == *to));
        }
    }
    out.finish()
}

/// The sockets inside `channel` of every user in `live` but `user`: where
/// news of `user` joining or leaving goes.
fn entered_by_others(
    live: Live<'_>,
    channel: ChannelId,
    user: UserId,
) -> BTreeMap<String, Vec<SocketId>> {
    sockets_where(live, |other, s| other != user && s.entered == Some(channel))
}

fn is_origin(socket: &LiveSocket, origin: &SocketRef) -> bool {
    socket.socket == origin.socket_id && *socket.gateway == *origin.gateway_id
}

/// Socket ids by gateway of every socket that `keep` accepts, sorted.
fn sockets_where(
    live: Live<'_>,
    keep: impl Fn(UserId, &LiveSocket) -> bool,
) -> BTreeMap<String, Vec<SocketId>> {
    let keep = &keep;
    let chosen = live
        .iter()
        .flat_map(|(user, sockets)| sockets.iter().filter(move |s| keep(user, s)));
    by_gateway(chosen)
}

fn by_gateway<'a>(
    sockets: impl Iterator<Item = &'a LiveSocket>,
) -> BTreeMap<String, Vec<SocketId>> {
    let mut map: BTreeMap<String, Vec<SocketId>> = BTreeMap::new();
    for s in sockets {
        // A gateway's name is copied once, not once per socket.
        match map.get_mut(&*s.gateway) {
            Some(ids) => ids.push(s.socket),
            None => {
                map.insert(s.gateway.to_string(), vec![s.socket]);
            }
        }
    }
    for ids in map.values_mut() {
        ids.sort_unstable();
        ids.dedup();
    }
    map
}

/// Deliveries collected per gateway.
#[derive(Default)]
struct Batches(BTreeMap<String, Vec<Delivery>>);

impl Batches {
    fn push(&mut self, gateway: String, delivery: Delivery) {
        self.0.entry(gateway).or_default().push(delivery);
    }

    /// Serializes `frame` once (only when someone gets it) and shares the
    /// text with every gateway.
    fn frame(&mut self, frame: &ServerFrame, targets: BTreeMap<String, Vec<SocketId>>) {
        if targets.is_empty() {
            return;
        }
        let text = frame.to_json();
        for (gateway, sockets) in targets {
            self.push(
                gateway,
                Delivery::Frame {
                    sockets,
                    frame: text.clone(),
                },
            );
        }
    }

    /// `member_joined` for `user` to the other members inside the channel.
    fn member_joined(
        &mut self,
        live: Live<'_>,
        channel_id: ChannelId,
        user: UserId,
        username: &str,
    ) {
        let frame = ServerFrame::MemberJoined {
            channel_id,
            username: username.to_owned(),
        };
        self.frame(&frame, entered_by_others(live, channel_id, user));
    }

    /// Adds one user's `unread` to the gateways holding their sockets,
    /// merged into one `Unread` delivery per gateway.
    fn unread(
        &mut self,
        channel_id: ChannelId,
        title: &str,
        last_seq: Seq,
        unread: i64,
        sockets: BTreeMap<String, Vec<SocketId>>,
    ) {
        for (gateway, sockets) in sockets {
            let items = self.0.entry(gateway).or_default();
            let target = UnreadTarget { sockets, unread };
            if let Some(Delivery::Unread { targets, .. }) = items
                .iter_mut()
                .find(|d| matches!(d, Delivery::Unread { .. }))
            {
                targets.push(target);
            } else {
                items.push(Delivery::Unread {
                    channel_id,
                    title: title.to_owned(),
                    last_seq,
                    targets: vec![target],
                });
            }
        }
    }

    fn finish(self) -> Vec<GatewayBatch> {
        self.0
            .into_iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(gateway, items)| GatewayBatch {
                gateway,
                batch: DeliveryBatch { items },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_protocol::events::Joiner;
    use natter_protocol::frames::LeaveReason;
    use serde_json::{Value, json};
    use time::macros::datetime;

    const CHANNEL: ChannelId = ChannelId(7);
    const OTHER: ChannelId = ChannelId(8);
    const ALICE: UserId = UserId(1);
    const BOB: UserId = UserId(2);
    const CAROL: UserId = UserId(3);
    const DAVE: UserId = UserId(4);

    fn socket(gateway: &str, socket: u64, entered: Option<ChannelId>) -> LiveSocket {
        LiveSocket {
            gateway: gateway.into(),
            socket: SocketId(socket),
            entered,
        }
    }

    fn origin(gateway: &str, socket_id: u64) -> SocketRef {
        SocketRef {
            gateway_id: gateway.into(),
            socket_id: SocketId(socket_id),
        }
    }

    fn stored(seq: i64, writer: UserId, from: SocketRef) -> Event {
        Event::MessageStored {
            channel_id: CHANNEL,
            title: "general".into(),
            seq: Seq(seq),
            user_id: writer,
            username: "alice".into(),
            content: "hi".into(),
            sent_at: datetime!(2024-05-01 12:00:00.123456 UTC),
            origin: from,
            traceparent: None,
        }
    }

    /// Alice writes from a-1 (entered) and has a-2 entered too; Bob has
    /// entered on gateway b; Carol is online elsewhere on both gateways;
    /// Dave is in another channel.
    fn busy_channel() -> LiveSockets {
        LiveSockets::from_iter([
            (
                ALICE,
                vec![socket("a", 1, Some(CHANNEL)), socket("a", 2, Some(CHANNEL))],
            ),
            (BOB, vec![socket("b", 10, Some(CHANNEL))]),
            (CAROL, vec![socket("a", 3, None), socket("b", 11, None)]),
            (DAVE, vec![socket("b", 12, Some(OTHER))]),
        ])
    }

    fn frames(batch: &GatewayBatch) -> Vec<(Vec<u64>, Value)> {
        batch
            .batch
            .items
            .iter()
            .filter_map(|d| match d {
                Delivery::Frame { sockets, frame } => Some((
                    sockets.iter().map(|s| s.0).collect(),
                    serde_json::from_str(frame).expect("frame is JSON"),
                )),
                _ => None,
            })
            .collect()
    }

    fn unreads(batch: &GatewayBatch) -> Vec<UnreadTarget> {
        batch
            .batch
            .items
            .iter()
            .flat_map(|d| match d {
                Delivery::Unread { targets, .. } => targets.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_message_reaches_every_entered_socket_but_the_one_that_wrote_it() {
        let event = stored(5, ALICE, origin("a", 1));
        let live = busy_channel();
        let last_read = HashMap::from([(CAROL, Seq(2)), (DAVE, Seq(5))]);
        let batches = deliveries(&event, Live::all(&live), &last_read);

        assert_eq!(batches.len(), 2, "one batch per gateway");
        assert_eq!(batches[0].gateway, "a");
        assert_eq!(batches[1].gateway, "b");
        let expected = json!({
            "type": "message", "channel_id": 7, "seq": 5, "username": "alice",
            "content": "hi", "sent_at": "2024-05-01T12:00:00.123456Z"
        });
        assert_eq!(frames(&batches[0]), vec![(vec![2], expected.clone())]);
        assert_eq!(frames(&batches[1]), vec![(vec![10], expected)]);
    }

    #[test]
    fn members_who_have_not_entered_get_their_own_unread_count() {
        let event = stored(5, ALICE, origin("a", 1));
        let live = busy_channel();
        assert_eq!(unread_users(&event, Live::all(&live)), vec![CAROL, DAVE]);
        let last_read = HashMap::from([(CAROL, Seq(2)), (DAVE, Seq(4))]);
        let batches = deliveries(&event, Live::all(&live), &last_read);

        assert_eq!(
            unreads(&batches[0]),
            vec![UnreadTarget {
                sockets: vec![SocketId(3)],
                unread: 3
            }]
        );
        let mut on_b = unreads(&batches[1]);
        on_b.sort_by_key(|t| t.sockets.clone());
        assert_eq!(
            on_b,
            vec![
                UnreadTarget {
                    sockets: vec![SocketId(11)],
                    unread: 3
                },
                UnreadTarget {
                    sockets: vec![SocketId(12)],
                    unread: 1
                },
            ]
        );
        let Delivery::Unread {
            channel_id,
            title,
            last_seq,
            ..
        } = &batches[1].batch.items[1]
        else {
            panic!("unread follows the message on gateway b");
        };
        assert_eq!(
            (*channel_id, title.as_str(), *last_seq),
            (CHANNEL, "general", Seq(5))
        );
    }

    #[test]
    fn the_writer_never_gets_an_unread_even_from_sockets_outside_the_channel() {
        let live = LiveSockets::from_iter([
            (ALICE, vec![socket("a", 1, None), socket("a", 2, None)]),
            (BOB, vec![socket("a", 3, None)]),
        ]);
        let event = stored(3, ALICE, origin("a", 1));
        assert_eq!(unread_users(&event, Live::all(&live)), vec![BOB]);
        let batches = deliveries(&event, Live::all(&live), &HashMap::from([(BOB, Seq(0))]));
        assert_eq!(batches.len(), 1);
        assert!(frames(&batches[0]).is_empty(), "nobody has entered");
        assert_eq!(
            unreads(&batches[0]),
            vec![UnreadTarget {
                sockets: vec![SocketId(3)],
                unread: 3
            }]
        );
    }

    #[test]
    fn a_member_with_one_socket_in_the_channel_gets_no_unread() {
        let live = LiveSockets::from_iter([(
            BOB,
            vec![socket("a", 3, None), socket("b", 4, Some(CHANNEL))],
        )]);
        let event = stored(3, ALICE, origin("a", 1));
        assert!(unread_users(&event, Live::all(&live)).is_empty());
        let batches = deliveries(&event, Live::all(&live), &HashMap::new());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].gateway, "b");
        assert!(unreads(&batches[0]).is_empty());
    }

    #[test]
    fn a_user_who_left_before_the_read_positions_were_read_gets_nothing() {
        let live = LiveSockets::from_iter([(BOB, vec![socket("a", 3, None)])]);
        let batches = deliveries(
            &stored(3, ALICE, origin("a", 1)),
            Live::all(&live),
            &HashMap::new(),
        );
        assert!(batches.is_empty());
    }

    #[test]
    fn a_read_position_ahead_of_the_event_counts_zero_unread() {
        let live = LiveSockets::from_iter([(BOB, vec![socket("a", 3, None)])]);
        let batches = deliveries(
            &stored(3, ALICE, origin("a", 1)),
            Live::all(&live),
            &HashMap::from([(BOB, Seq(9))]),
        );
        assert_eq!(unreads(&batches[0])[0].unread, 0);
    }

    #[test]
    fn the_message_frame_is_serialized_once_and_shared_by_gateways() {
        let batches = deliveries(
            &stored(5, ALICE, origin("a", 1)),
            Live::all(&busy_channel()),
            &HashMap::new(),
        );
        let texts: Vec<&String> = batches
            .iter()
            .flat_map(|b| b.batch.items.iter())
            .filter_map(|d| match d {
                Delivery::Frame { frame, .. } => Some(frame),
                _ => None,
            })
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0], texts[1]);
    }

    #[test]
    fn typing_skips_every_socket_of_the_typist() {
        let event = Event::Typing {
            channel_id: CHANNEL,
            user_id: ALICE,
            username: "alice".into(),
            origin: origin("a", 1),
        };
        let batches = deliveries(&event, Live::all(&busy_channel()), &HashMap::new());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].gateway, "b");
        assert_eq!(
            frames(&batches[0]),
            vec![(
                vec![10],
                json!({"type": "typing", "channel_id": 7, "username": "alice"})
            )]
        );
        assert!(unread_users(&event, Live::all(&busy_channel())).is_empty());
    }

    #[test]
    fn invitations_reach_every_socket_of_the_invitee_only() {
        let event = Event::InviteReceived {
            to: CAROL,
            from_username: "alice".into(),
        };
        assert_eq!(audience(&event, &[]), vec![CAROL]);
        let batches = deliveries(&event, Live::all(&busy_channel()), &HashMap::new());
        let expected = json!({"type": "invite_received", "username": "alice"});
        assert_eq!(frames(&batches[0]), vec![(vec![3], expected.clone())]);
        assert_eq!(frames(&batches[1]), vec![(vec![11], expected)]);

        let accepted = Event::InviteAccepted {
            to: BOB,
            from_username: "carol".into(),
        };
        let batches = deliveries(&accepted, Live::all(&busy_channel()), &HashMap::new());
        assert_eq!(batches.len(), 1);
        assert_eq!(
            frames(&batches[0]),
            vec![(
                vec![10],
                json!({"type": "invite_accepted", "username": "carol"})
            )]
        );
    }

    fn joiner(user_id: UserId, username: &str) -> Joiner {
        Joiner {
            user_id,
            username: username.into(),
        }
    }

    #[test]
    fn a_new_channel_is_announced_to_every_member_but_its_creator() {
        let event = Event::ChannelCreated {
            channel_id: CHANNEL,
            title: "general".into(),
            creator: ALICE,
            members: vec![ALICE, BOB, CAROL],
            added: vec![joiner(BOB, "bob"), joiner(CAROL, "carol")],
        };
        assert_eq!(audience(&event, &[]), vec![ALICE, BOB, CAROL]);
        assert_eq!(membership_change(&event), Some(CHANNEL));
        let live = LiveSockets::from_iter([
            (ALICE, vec![socket("a", 1, None)]),
            (BOB, vec![socket("b", 10, None)]),
            (CAROL, vec![socket("a", 3, None), socket("b", 11, None)]),
        ]);
        let batches = deliveries(&event, Live::all(&live), &HashMap::new());
        let expected = json!({"type": "channel_joined", "channel_id": 7, "title": "general"});
        assert_eq!(frames(&batches[0]), vec![(vec![3], expected.clone())]);
        assert_eq!(frames(&batches[1]), vec![(vec![10, 11], expected)]);
    }

    #[test]
    fn members_who_entered_a_new_channel_already_hear_who_create_added_but_themselves() {
        let event = Event::ChannelCreated {
            channel_id: CHANNEL,
            title: "general".into(),
            creator: ALICE,
            members: vec![ALICE, BOB, CAROL],
            added: vec![joiner(BOB, "bob"), joiner(CAROL, "carol")],
        };
        // Alice entered right after create answered; so did Bob, from one
        // of his sockets.
        let live = LiveSockets::from_iter([
            (ALICE, vec![socket("a", 1, Some(CHANNEL))]),
            (
                BOB,
                vec![socket("b", 10, Some(CHANNEL)), socket("b", 12, None)],
            ),
            (CAROL, vec![socket("a", 3, None)]),
        ]);
        let batches = deliveries(&event, Live::all(&live), &HashMap::new());
        let joined =
            |name: &str| json!({"type": "member_joined", "channel_id": 7, "username": name});
        let channel_joined = json!({"type": "channel_joined", "channel_id": 7, "title": "general"});
        assert_eq!(
            frames(&batches[0]),
            vec![
                (vec![3], channel_joined.clone()),
                (vec![1], joined("bob")),
                (vec![1], joined("carol")),
            ]
        );
        assert_eq!(
            frames(&batches[1]),
            vec![(vec![10, 12], channel_joined), (vec![10], joined("carol"))]
        );
    }

    #[test]
    fn a_join_is_told_to_the_other_members_inside_the_channel() {
        let event = Event::MemberJoined {
            channel_id: CHANNEL,
            user_id: CAROL,
            username: Some("carol".into()),
        };
        assert_eq!(channel_of(&event), Some(CHANNEL));
        assert_eq!(membership_change(&event), Some(CHANNEL));
        assert_eq!(audience(&event, &[ALICE, CAROL]), vec![ALICE, CAROL]);
        // Carol is a member now but inside nothing; Bob is not a member
        // (not in the audience, so not in `live`).
        let live = LiveSockets::from_iter([
            (
                ALICE,
                vec![socket("a", 1, Some(CHANNEL)), socket("a", 2, None)],
            ),
            (CAROL, vec![socket("a", 3, None)]),
        ]);
        let batches = deliveries(&event, Live::all(&live), &HashMap::new());
        assert_eq!(batches.len(), 1);
        assert_eq!(
            frames(&batches[0]),
            vec![(
                vec![1],
                json!({"type": "member_joined", "channel_id": 7, "username": "carol"})
            )]
        );
    }

    #[test]
    fn a_member_who_leaves_has_every_socket_told_to_leave_and_the_others_inside_are_told_why() {
        let event = Event::MemberLeft {
            channel_id: CHANNEL,
            user_id: ALICE,
            username: Some("alice".into()),
            reason: LeaveReason::Quit,
        };
        assert_eq!(channel_of(&event), Some(CHANNEL));
        assert_eq!(membership_change(&event), Some(CHANNEL));
        assert_eq!(audience(&event, &[BOB, CAROL]), vec![BOB, CAROL, ALICE]);
        let batches = deliveries(&event, Live::all(&busy_channel()), &HashMap::new());
        assert_eq!(batches.len(), 2);
        assert_eq!(
            batches[0].batch.items,
            vec![Delivery::LeaveChannel {
                channel_id: CHANNEL,
                sockets: vec![SocketId(1), SocketId(2)]
            }]
        );
        assert_eq!(
            frames(&batches[1]),
            vec![(
                vec![10],
                json!({"type": "member_left", "channel_id": 7, "username": "alice", "reason": "quit"})
            )]
        );
    }

    #[test]
    fn an_unregistered_member_is_announced_with_that_reason() {
        let event = Event::MemberLeft {
            channel_id: CHANNEL,
            user_id: CAROL,
            username: Some("carol".into()),
            reason: LeaveReason::Unregistered,
        };
        let batches = deliveries(&event, Live::all(&busy_channel()), &HashMap::new());
        let left = json!({"type": "member_left", "channel_id": 7, "username": "carol", "reason": "unregistered"});
        assert_eq!(frames(&batches[0]), vec![(vec![1, 2], left.clone())]);
        assert_eq!(frames(&batches[1]), vec![(vec![10], left)]);
    }

    #[test]
    fn membership_events_from_before_the_member_pushes_only_change_membership() {
        let joined = Event::MemberJoined {
            channel_id: CHANNEL,
            user_id: CAROL,
            username: None,
        };
        assert!(deliveries(&joined, Live::all(&busy_channel()), &HashMap::new()).is_empty());
        let left = Event::MemberLeft {
            channel_id: CHANNEL,
            user_id: DAVE,
            username: None,
            reason: LeaveReason::Quit,
        };
        let batches = deliveries(&left, Live::all(&busy_channel()), &HashMap::new());
        assert_eq!(
            batches,
            vec![GatewayBatch {
                gateway: "b".into(),
                batch: DeliveryBatch {
                    items: vec![Delivery::LeaveChannel {
                        channel_id: CHANNEL,
                        sockets: vec![SocketId(12)]
                    }]
                }
            }]
        );
    }

    #[test]
    fn an_ended_connection_reaches_every_socket_of_the_partner_only() {
        let event = Event::ConnectionEnded {
            to: CAROL,
            from_username: "alice".into(),
        };
        assert_eq!(channel_of(&event), None);
        assert_eq!(membership_change(&event), None);
        assert_eq!(audience(&event, &[]), vec![CAROL]);
        let batches = deliveries(&event, Live::all(&busy_channel()), &HashMap::new());
        let expected = json!({"type": "connection_ended", "username": "alice"});
        assert_eq!(frames(&batches[0]), vec![(vec![3], expected.clone())]);
        assert_eq!(frames(&batches[1]), vec![(vec![11], expected)]);
    }

    #[test]
    fn channel_events_need_the_members_and_user_events_do_not() {
        let event = stored(1, ALICE, origin("a", 1));
        assert_eq!(channel_of(&event), Some(CHANNEL));
        assert_eq!(audience(&event, &[ALICE, BOB]), vec![ALICE, BOB]);
        let invite = Event::InviteReceived {
            to: BOB,
            from_username: "alice".into(),
        };
        assert_eq!(channel_of(&invite), None);
        assert_eq!(membership_change(&invite), None);
    }

    #[test]
    fn nobody_online_means_no_batch() {
        assert!(
            deliveries(
                &stored(1, ALICE, origin("a", 1)),
                Live::all(&LiveSockets::default()),
                &HashMap::new()
            )
            .is_empty()
        );
    }

    /// A batch reads presence once for every event's audience; each event
    /// still reaches only its own.
    #[test]
    fn an_event_of_a_batch_reaches_its_own_audience_only() {
        let live = busy_channel();
        let audience = [ALICE, CAROL];
        let event = stored(5, ALICE, origin("a", 1));
        let own = Live::of(&live, &audience);
        assert_eq!(unread_users(&event, Live::all(&live)), vec![CAROL, DAVE]);
        assert_eq!(unread_users(&event, own), vec![CAROL]);
        assert_eq!(
            unread_users(&event, Live::of(&live, &[CAROL, CAROL])),
            vec![CAROL],
            "a user named twice gets one unread"
        );
        let last_read = HashMap::from([(CAROL, Seq(1)), (DAVE, Seq(1))]);
        let batches = deliveries(&event, own, &last_read);
        let framed: Vec<Vec<u64>> = batches
            .iter()
            .flat_map(|b| frames(b).into_iter().map(|(ids, _)| ids))
            .collect();
        assert_eq!(framed, vec![vec![2]], "Alice's other socket, not Bob's");
        let unread: Vec<u64> = batches
            .iter()
            .flat_map(unreads)
            .flat_map(|t| t.sockets.iter().map(|s| s.0).collect::<Vec<_>>())
            .collect();
        assert_eq!(unread, vec![3, 11], "Carol's sockets, not Dave's");
    }
}
