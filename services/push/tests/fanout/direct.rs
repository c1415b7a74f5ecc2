//! Events published straight to JetStream; the test plays the gateways.

use crate::support::{Harness, Tap, WAIT, frames, message, origin, unreads};
use natter_protocol::events::{Delivery, Event, Joiner, UnreadTarget};
use natter_protocol::frames::LeaveReason;
use natter_protocol::partition::PartitionKey;
use natter_protocol::{ChannelId, Seq, SocketId, UserId};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_message_goes_to_entered_sockets_on_every_gateway_and_unread_to_the_others() {
    let h = Harness::spawn().await;
    let (alice, bob, carol) = (
        h.user("alice").await,
        h.user("bob").await,
        h.user("carol").await,
    );
    let dave = h.user("dave").await;
    let channel = h.channel("general", &[alice, bob, carol, dave]).await;
    h.set_last_read(channel, carol, 1).await;
    for gw in ["gw-a", "gw-b"] {
        h.gateway_alive(gw).await;
    }
    h.online(alice, "gw-a", 1, Some(channel)).await;
    h.online(alice, "gw-a", 2, Some(channel)).await;
    h.online(alice, "gw-b", 3, None).await;
    h.online(bob, "gw-b", 10, Some(channel)).await;
    h.online(carol, "gw-a", 20, None).await;
    h.online(carol, "gw-b", 21, None).await;
    let (mut a, mut b) = (h.tap("gw-a").await, h.tap("gw-b").await);

    h.publish(&message(channel, 4, alice, origin("gw-a", 1)))
        .await;

    let on_a = a.next().await;
    let on_b = b.next().await;
    let expected = |sockets: Vec<u64>| {
        (
            sockets,
            json!({"type": "message", "channel_id": channel.0, "seq": 4}),
        )
    };
    let strip = |fs: Vec<(Vec<u64>, serde_json::Value)>| -> Vec<(Vec<u64>, serde_json::Value)> {
        fs.into_iter()
            .map(|(s, f)| {
                assert_eq!(f["username"], "alice");
                assert_eq!(f["content"], "message 4");
                (
                    s,
                    json!({"type": f["type"], "channel_id": f["channel_id"], "seq": f["seq"]}),
                )
            })
            .collect()
    };
    assert_eq!(
        strip(frames(&on_a)),
        vec![expected(vec![2])],
        "origin socket skipped"
    );
    assert_eq!(strip(frames(&on_b)), vec![expected(vec![10])]);
    assert_eq!(
        unreads(&on_a),
        vec![UnreadTarget {
            sockets: vec![SocketId(20)],
            unread: 3
        }]
    );
    assert_eq!(
        unreads(&on_b),
        vec![UnreadTarget {
            sockets: vec![SocketId(21)],
            unread: 3
        }]
    );
    let Some(Delivery::Unread {
        title, last_seq, ..
    }) = on_b.items.last()
    else {
        panic!("an unread delivery on gw-b");
    };
    assert_eq!((title.as_str(), *last_seq), ("general", Seq(4)));
    a.expect_nothing().await;
    b.expect_nothing().await;
    h.app.stop().await;
}

#[tokio::test]
async fn a_channel_s_messages_arrive_once_in_seq_order() {
    let h = Harness::spawn().await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 7, Some(channel)).await;
    let mut a = h.tap("gw-a").await;

    for seq in 1..=100 {
        h.publish(&message(channel, seq, alice, origin("gw-x", 1)))
            .await;
    }
    for seq in 1..=100 {
        let (sockets, frame) = a.next_frame().await;
        assert_eq!(sockets, vec![7]);
        assert_eq!(frame["seq"], seq);
    }
    a.expect_nothing().await;
    h.app.stop().await;
}

#[tokio::test]
async fn sockets_of_a_dead_gateway_are_skipped_and_cleaned_up() {
    let h = Harness::spawn().await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-live").await;
    h.online(bob, "gw-dead", 1, Some(channel)).await;
    h.online(bob, "gw-live", 2, Some(channel)).await;
    let (mut dead, mut live) = (h.tap("gw-dead").await, h.tap("gw-live").await);

    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;

    assert_eq!(frames(&live.next().await)[0].0, vec![2]);
    dead.expect_nothing().await;
    assert_eq!(h.presence_fields(bob).await, vec!["gw-live:2".to_owned()]);
    h.app.stop().await;
}

#[tokio::test]
async fn typing_reaches_entered_sockets_except_the_typist_s() {
    let h = Harness::spawn().await;
    let (alice, bob, carol) = (
        h.user("alice").await,
        h.user("bob").await,
        h.user("carol").await,
    );
    let channel = h.channel("general", &[alice, bob, carol]).await;
    h.gateway_alive("gw-a").await;
    h.online(alice, "gw-a", 1, Some(channel)).await;
    h.online(alice, "gw-a", 2, Some(channel)).await;
    h.online(bob, "gw-a", 3, Some(channel)).await;
    h.online(carol, "gw-a", 4, None).await;
    let mut a = h.tap("gw-a").await;

    h.publish_typing(&Event::Typing {
        channel_id: channel,
        user_id: alice,
        username: "alice".into(),
        origin: origin("gw-a", 1),
    })
    .await;

    assert_eq!(
        frames(&a.next().await),
        vec![(
            vec![3],
            json!({"type": "typing", "channel_id": channel.0, "username": "alice"})
        )]
    );
    a.expect_nothing().await;
    h.app.stop().await;
}

#[tokio::test]
async fn invitations_and_new_channels_reach_every_socket_of_their_users() {
    let h = Harness::spawn().await;
    let (alice, bob, carol) = (
        h.user("alice").await,
        h.user("bob").await,
        h.user("carol").await,
    );
    for gw in ["gw-a", "gw-b"] {
        h.gateway_alive(gw).await;
    }
    h.online(alice, "gw-a", 1, None).await;
    h.online(bob, "gw-a", 2, None).await;
    h.online(bob, "gw-b", 3, None).await;
    h.online(carol, "gw-b", 4, None).await;
    let (mut a, mut b) = (h.tap("gw-a").await, h.tap("gw-b").await);

    h.publish(&Event::InviteReceived {
        to: bob,
        from_username: "alice".into(),
    })
    .await;
    let invite = json!({"type": "invite_received", "username": "alice"});
    assert_eq!(frames(&a.next().await), vec![(vec![2], invite.clone())]);
    assert_eq!(frames(&b.next().await), vec![(vec![3], invite)]);

    h.publish(&Event::InviteAccepted {
        to: alice,
        from_username: "bob".into(),
    })
    .await;
    assert_eq!(
        frames(&a.next().await),
        vec![(
            vec![1],
            json!({"type": "invite_accepted", "username": "bob"})
        )]
    );

    let channel = h.channel("plans", &[alice, bob, carol]).await;
    h.publish(&Event::ChannelCreated {
        channel_id: channel,
        title: "plans".into(),
        creator: alice,
        members: vec![alice, bob, carol],
        added: vec![
            Joiner {
                user_id: bob,
                username: "bob".into(),
            },
            Joiner {
                user_id: carol,
                username: "carol".into(),
            },
        ],
    })
    .await;
    let joined = json!({"type": "channel_joined", "channel_id": channel.0, "title": "plans"});
    assert_eq!(
        frames(&a.next().await),
        vec![(vec![2], joined.clone())],
        "not the creator"
    );
    assert_eq!(frames(&b.next().await), vec![(vec![3, 4], joined)]);
    a.expect_nothing().await;
    b.expect_nothing().await;
    h.app.stop().await;
}

#[tokio::test]
async fn joins_and_leaves_change_who_the_next_message_reaches() {
    let h = Harness::spawn().await;
    let (alice, bob, carol) = (
        h.user("alice").await,
        h.user("bob").await,
        h.user("carol").await,
    );
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    h.online(carol, "gw-a", 3, None).await;
    let mut a = h.tap("gw-a").await;
    let mut invalidations = h
        .nats
        .subscribe(h.ns.membership_subject())
        .await
        .expect("sub");

    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;
    let first = a.next().await;
    assert_eq!(frames(&first)[0].0, vec![2]);
    assert!(unreads(&first).is_empty(), "carol is not a member yet");

    h.add_member(channel, carol).await;
    h.publish(&Event::MemberJoined {
        channel_id: channel,
        user_id: carol,
        username: Some("carol".into()),
    })
    .await;
    assert_eq!(
        frames(&a.next().await),
        vec![(
            vec![2],
            json!({"type": "member_joined", "channel_id": channel.0, "username": "carol"})
        )],
        "bob is inside, carol is not"
    );
    h.publish(&message(channel, 2, alice, origin("gw-x", 1)))
        .await;
    let second = a.next().await;
    assert_eq!(
        unreads(&second),
        vec![UnreadTarget {
            sockets: vec![SocketId(3)],
            unread: 2
        }]
    );

    h.remove_member(channel, bob).await;
    h.publish(&Event::MemberLeft {
        channel_id: channel,
        user_id: bob,
        username: Some("bob".into()),
        reason: LeaveReason::Quit,
    })
    .await;
    assert_eq!(
        a.next().await.items,
        vec![Delivery::LeaveChannel {
            channel_id: channel,
            sockets: vec![SocketId(2)]
        }]
    );
    h.publish(&message(channel, 3, alice, origin("gw-x", 1)))
        .await;
    let third = a.next().await;
    assert!(
        frames(&third).is_empty(),
        "bob left, though his socket still says entered"
    );
    assert_eq!(
        unreads(&third),
        vec![UnreadTarget {
            sockets: vec![SocketId(3)],
            unread: 3
        }]
    );

    for _ in 0..2 {
        let note = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut invalidations))
            .await
            .expect("an invalidation is broadcast")
            .expect("subscription open");
        assert_eq!(note.payload, channel.0.to_string().as_bytes());
    }
    h.app.stop().await;
}

/// Push reuses the presence it read for earlier messages: a socket that
/// enters, opens or leaves between two messages must still change who
/// gets the second.
#[tokio::test]
async fn entering_and_leaving_between_messages_changes_who_gets_the_next() {
    let h = Harness::spawn().await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, None).await;
    let mut a = h.tap("gw-a").await;

    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;
    let first = a.next().await;
    assert!(frames(&first).is_empty(), "bob is not inside");
    assert_eq!(
        unreads(&first),
        vec![UnreadTarget {
            sockets: vec![SocketId(2)],
            unread: 1
        }]
    );

    h.online(bob, "gw-a", 2, Some(channel)).await;
    h.publish(&message(channel, 2, alice, origin("gw-x", 1)))
        .await;
    let second = a.next().await;
    assert_eq!(frames(&second)[0].0, vec![2]);
    assert!(unreads(&second).is_empty());

    h.online(bob, "gw-a", 4, Some(channel)).await;
    h.publish(&message(channel, 3, alice, origin("gw-x", 1)))
        .await;
    let mut third = frames(&a.next().await)[0].0.clone();
    third.sort_unstable();
    assert_eq!(third, vec![2, 4]);

    h.online(bob, "gw-a", 2, None).await;
    h.publish(&message(channel, 4, alice, origin("gw-x", 1)))
        .await;
    let fourth = a.next().await;
    assert_eq!(frames(&fourth)[0].0, vec![4], "socket 2 has left");
    assert!(unreads(&fourth).is_empty(), "bob is inside on socket 4");
    h.app.stop().await;
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_and_later_events_still_flow() {
    let h = Harness::spawn().await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    let mut a = h.tap("gw-a").await;

    let partition = PartitionKey::Channel(channel).partition(h.ns.partitions());
    let suffix = format!("p{partition}.channel.{}", channel.0);
    h.publish_to(
        h.ns.partition_subject(partition, &format!("channel.{}", channel.0)),
        b"{not an event".to_vec(),
    )
    .await;
    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;

    assert_eq!(frames(&a.next().await)[0].1["seq"], 1);
    let dlq =
        h.js.get_stream(h.ns.dlq_stream())
            .await
            .expect("dlq stream");
    let mut dead = None;
    for _ in 0..50 {
        if let Ok(m) = dlq.get_raw_message(1).await {
            dead = Some(m);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead.expect("the poison event is in the DLQ");
    assert_eq!(dead.subject.as_str(), h.ns.dlq_subject(&suffix));
    assert_eq!(dead.payload.as_ref(), b"{not an event");
    assert!(
        dead.headers
            .get(natter_protocol::events::DLQ_REASON_HEADER)
            .is_some_and(|r| r.as_str().contains("undecodable")),
        "the reason travels with it"
    );
    assert_eq!(dlq.get_info().await.expect("info").state.messages, 1);
    h.app.stop().await;
}

/// A delivery batch larger than NATS accepts can never be published: the
/// event is dead-lettered rather than holding its partition forever.
#[tokio::test]
async fn an_event_too_large_to_deliver_is_dead_lettered_and_later_events_flow() {
    let h = Harness::spawn().await;
    let (alice, channel, mut a) = bob_inside(&h).await;

    h.publish(&too_large(message(channel, 1, alice, origin("gw-x", 1))))
        .await;
    h.publish(&message(channel, 2, alice, origin("gw-x", 1)))
        .await;

    assert_eq!(frames(&a.next().await)[0].1["seq"], 2);
    assert_eq!(h.dead_letters().await, 1);
    h.app.stop().await;
}

/// Handled together with others, an event too large to deliver is
/// published alone and dead-lettered; those around it are delivered.
#[tokio::test]
async fn an_event_too_large_among_others_handled_together_is_dead_lettered_alone() {
    let mut h = Harness::spawn().await;
    let (alice, channel, mut a) = bob_inside(&h).await;

    h.app.stop_service().await;
    for seq in [1, 2] {
        h.publish(&message(channel, seq, alice, origin("gw-x", 1)))
            .await;
    }
    h.publish(&too_large(message(channel, 3, alice, origin("gw-x", 1))))
        .await;
    for seq in [4, 5] {
        h.publish(&message(channel, seq, alice, origin("gw-x", 1)))
            .await;
    }
    h.app.start_service().await;

    for seq in [1, 2, 4, 5] {
        assert_eq!(a.next_frame().await.1["seq"], seq);
    }
    a.expect_nothing().await;
    assert_eq!(h.dead_letters().await, 1);
    h.app.stop().await;
}

/// What one call stored in one partition comes as one bus message: each of
/// its events is delivered, in order, and once, also across a restart.
#[tokio::test]
async fn events_carried_in_one_bus_message_are_each_delivered_once_in_order() {
    let mut h = Harness::spawn().await;
    let (alice, channel, mut a) = bob_inside(&h).await;

    let stored = |seq| message(channel, seq, alice, origin("gw-x", 1));
    h.publish_together(&[stored(1), stored(2), stored(3)]).await;
    h.publish(&stored(4)).await;
    for seq in 1..=4 {
        assert_eq!(a.next_frame().await.1["seq"], seq);
    }
    a.expect_nothing().await;

    h.app.stop_service().await;
    h.app.start_service().await;
    h.publish_together(&[stored(5), stored(6)]).await;
    for seq in [5, 6] {
        assert_eq!(a.next_frame().await.1["seq"], seq, "nothing before 5 again");
    }
    a.expect_nothing().await;
    h.app.stop().await;
}

/// An event of a bus message that can never be delivered goes to the
/// dead-letter stream alone, not with its siblings (a redrive would
/// deliver those again); the others are delivered.
#[tokio::test]
async fn an_event_too_large_inside_a_bus_message_is_dead_lettered_alone() {
    let h = Harness::spawn().await;
    let (alice, channel, mut a) = bob_inside(&h).await;

    let stored = |seq| message(channel, seq, alice, origin("gw-x", 1));
    h.publish_together(&[stored(1), too_large(stored(2)), stored(3)])
        .await;
    h.publish(&stored(4)).await;
    for seq in [1, 3, 4] {
        assert_eq!(a.next_frame().await.1["seq"], seq);
    }
    a.expect_nothing().await;
    assert_eq!(h.dead_letters().await, 1);
    let dead = h.first_dead_letter().await;
    match serde_json::from_slice::<Event>(&dead.payload).expect("one event, no array") {
        Event::MessageStored { seq, content, .. } => {
            assert_eq!((seq.0, content.len()), (2, 300_000));
        }
        other => panic!("{}", other.kind()),
    }
    h.app.stop().await;
}

/// A bus message carries a partition's events, of several channels
/// (migration 0014): each is delivered to its own channel's sockets, and
/// one that can never be delivered is dead-lettered alone under its own
/// channel's subject, whichever channel the message's subject names.
#[tokio::test]
async fn a_bus_message_s_events_of_several_channels_each_reach_their_own_channel() {
    let h = Harness::spawn_with(|c| c.partitions = 1).await;
    let (alice, bob, carol) = (
        h.user("alice").await,
        h.user("bob").await,
        h.user("carol").await,
    );
    let one = h.channel("one", &[alice, bob]).await;
    let two = h.channel("two", &[alice, carol]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(one)).await;
    h.online(carol, "gw-a", 3, Some(two)).await;
    let mut a = h.tap("gw-a").await;

    let stored = |channel, seq| message(channel, seq, alice, origin("gw-x", 1));
    h.publish_together(&[stored(one, 1), too_large(stored(two, 1)), stored(two, 2)])
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let (sockets, frame) = a.next_frame().await;
        got.push((sockets, frame["channel_id"].clone(), frame["seq"].clone()));
    }
    assert_eq!(
        got,
        [
            (vec![2], json!(one.0), json!(1)),
            (vec![3], json!(two.0), json!(2))
        ]
    );
    a.expect_nothing().await;
    assert_eq!(h.dead_letters().await, 1);
    let dead = h.first_dead_letter().await;
    let suffix =
        h.ns.event_subject(&stored(two, 1))
            .strip_prefix(&h.ns.events_prefix())
            .expect("an events subject")
            .to_string();
    assert_eq!(dead.subject.as_str(), h.ns.dlq_subject(&suffix));
    h.app.stop().await;
}

#[tokio::test]
async fn events_published_while_push_is_down_are_all_delivered_once_in_order_in_few_messages() {
    let mut h = Harness::spawn().await;
    let (alice, channel, mut a) = bob_inside(&h).await;

    h.publish(&message(channel, 1, alice, origin("gw-x", 1)))
        .await;
    assert_eq!(frames(&a.next().await)[0].1["seq"], 1);
    h.app.stop_service().await;
    for seq in 2..=200 {
        h.publish(&message(channel, seq, alice, origin("gw-x", 1)))
            .await;
    }
    a.expect_nothing().await;
    h.app.start_service().await;

    let before = a.batches;
    for seq in 2..=200 {
        assert_eq!(a.next_frame().await.1["seq"], seq);
    }
    a.expect_nothing().await;
    // Events handled together went to the gateway in one message.
    let batches = a.batches - before;
    assert!(batches < 199 / 2, "199 events came in {batches} messages");
    h.app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer_while_running() {
    let h = Harness::spawn().await;
    let base = h.app.url();
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(format!("{base}{path}"))
            .await
            .expect("answers");
        assert_eq!(r.status(), 200, "{path}");
    }
    h.app.stop().await;
}

#[tokio::test]
async fn undecodable_typing_notices_are_dropped_without_a_trace() {
    let h = Harness::spawn().await;
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 3, Some(channel)).await;
    let mut a = h.tap("gw-a").await;

    h.nats
        .publish(h.ns.typing_subject(channel), "not json".into())
        .await
        .expect("publish");
    h.publish_typing(&Event::Typing {
        channel_id: channel,
        user_id: alice,
        username: "alice".into(),
        origin: origin("gw-a", 1),
    })
    .await;

    assert_eq!(
        frames(&a.next().await),
        vec![(
            vec![3],
            json!({"type": "typing", "channel_id": channel.0, "username": "alice"})
        )]
    );
    a.expect_nothing().await;
    for stream in [h.ns.events_stream(), h.ns.dlq_stream()] {
        let mut stream = h.js.get_stream(&stream).await.expect("stream");
        assert_eq!(stream.info().await.expect("info").state.messages, 0);
    }
    h.app.stop().await;
}

/// A channel of a thousand makes its partition wait a moment for more
/// events, so that one presence read serves several: every message still
/// arrives once, in order, to every entered socket but the writer's.
#[tokio::test]
async fn a_channel_of_a_thousand_gets_every_message_once_in_order() {
    const MEMBERS: usize = 1_001;
    const MESSAGES: i64 = 40;
    let h = Harness::spawn().await;
    let members = futures::future::join_all((0..MEMBERS).map(|i| {
        let h = &h;
        async move { h.user(&format!("member{i}")).await }
    }))
    .await;
    let channel = h.channel("crowd", &members).await;
    h.gateway_alive("gw-a").await;
    for (socket, member) in (1..).zip(&members) {
        h.online(*member, "gw-a", socket, Some(channel)).await;
    }
    let mut a = h.tap("gw-a").await;

    // The first makes the partition heavy; the rest come while it waits.
    h.publish(&message(channel, 1, members[0], origin("gw-a", 1)))
        .await;
    let mut seqs = Vec::new();
    for (_, frame) in frames(&a.next().await) {
        seqs.push(frame["seq"].as_i64().expect("a seq"));
    }
    for seq in 2..=MESSAGES {
        h.publish(&message(channel, seq, members[0], origin("gw-a", 1)))
            .await;
    }

    while seqs.len() < usize::try_from(MESSAGES).expect("small") {
        for (sockets, frame) in frames(&a.next().await) {
            assert_eq!(sockets.len(), MEMBERS - 1, "all but the writer's");
            assert!(!sockets.contains(&1), "the writer's socket is skipped");
            seqs.push(frame["seq"].as_i64().expect("a seq"));
        }
    }
    assert_eq!(seqs, (1..=MESSAGES).collect::<Vec<_>>());
    a.expect_nothing().await;
    h.app.stop().await;
}

/// `event`, a message, with content whose delivery batch is larger than
/// NATS accepts: backslashes double in the event's JSON and double again
/// in the batch, which carries the frame as a JSON string.
fn too_large(mut event: Event) -> Event {
    let Event::MessageStored { content, .. } = &mut event else {
        unreachable!("a message")
    };
    *content = "\\".repeat(300_000);
    event
}

/// Alice and Bob in "general", Bob's socket 2 on gateway gw-a inside it,
/// and a tap on gw-a: (Alice, the channel, the tap).
async fn bob_inside(h: &Harness) -> (UserId, ChannelId, Tap) {
    let (alice, bob) = (h.user("alice").await, h.user("bob").await);
    let channel = h.channel("general", &[alice, bob]).await;
    h.gateway_alive("gw-a").await;
    h.online(bob, "gw-a", 2, Some(channel)).await;
    (alice, channel, h.tap("gw-a").await)
}
