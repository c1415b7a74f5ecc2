//! Two (and three) people using the client end to end: every command of
//! the seed at least once, through the client.

use crate::support::{Client, PASSWORD, channel_id, plain, word_after};
use natter_client::render::Event;
use natter_server::testing::TestApp;
use std::time::Duration;

#[tokio::test]
async fn two_people_connect_create_a_channel_and_chat() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    assert_eq!(
        alice.ok("/whoami").await[0].split(' ').next(),
        Some("alice")
    );

    // bob invites alice with her code; she sees it and accepts.
    let code_line = alice.ok("/invite-code user").await.remove(0);
    let code = word_after(&code_line, "your invite code: ").to_owned();
    assert_eq!(
        bob.ok(&format!("/invite {code}")).await,
        ["invited alice; they can /accept bob"]
    );
    alice
        .push("invite", |e| *e == Event::InviteReceived("bob".into()))
        .await;
    assert_eq!(alice.ok("/pending").await, ["bob pending online"]);
    assert_eq!(
        alice.ok("/accept bob").await,
        ["you are now connected with bob"]
    );
    bob.push("accept", |e| *e == Event::InviteAccepted("alice".into()))
        .await;
    assert_eq!(bob.ok("/connections").await, ["alice accepted online"]);
    assert_eq!(alice.ok("/pending").await, ["no pending invitations"]);

    // alice creates a channel with bob; bob is told.
    let created = alice.ok("/create general bob").await.remove(0);
    let id = channel_id(&created);
    assert_eq!(
        created,
        format!("created general (channel {id}, 2 members); /enter {id}")
    );
    bob.push(
        "channel_joined",
        |e| matches!(e, Event::ChannelJoined { title, .. } if title == "general"),
    )
    .await;
    assert_eq!(
        bob.ok("/channels").await,
        [format!("{id} general (2 members, 0 unread)")]
    );

    // Both enter and talk; each sees the other's message once.
    let entered = alice.ok(&format!("/enter {id}")).await;
    assert_eq!(
        entered[0],
        format!("entered general (channel {id}, 0 unread); type to send, /leave to leave")
    );
    bob.ok(&format!("/enter {id}")).await;
    let said = alice.ok("hi bob").await;
    assert!(said[0].ends_with("] alice: hi bob"), "{said:?}");
    assert_eq!(bob.message("hi bob").await.as_deref(), Some("alice"));
    bob.ok("hi alice, how are you?").await;
    assert_eq!(
        alice.message("hi alice, how are you?").await.as_deref(),
        Some("bob")
    );
    bob.ok("/read").await;

    // alice saw bob's message inside the channel, so it is read; she
    // leaves, and bob's next message reaches her as an unread count.
    assert_eq!(alice.ok("/leave").await, ["left general"]);
    assert_eq!(
        alice.fails("anyone there?").await,
        "error: you are not in a channel; /channels lists yours, /enter <channel> enters one"
    );
    bob.ok("are you still there?").await;
    let unread = alice
        .push("unread", |e| matches!(e, Event::Unread { .. }))
        .await;
    assert!(
        matches!(
            unread,
            Event::Unread {
                unread: 1,
                first: true,
                ..
            }
        ),
        "{unread:?}"
    );
    assert_eq!(
        alice.ok("/channels").await,
        [format!("{id} general (2 members, 1 unread)")]
    );

    // Re-entering starts a little before the first unread message, marks
    // where the new ones begin, and acknowledges them.
    let page = alice.ok("/enter general").await;
    assert_eq!(page.len(), 5, "{page:?}");
    assert!(page[0].contains("1 unread"), "{page:?}");
    assert!(page[1].ends_with("alice: hi bob"));
    assert_eq!(page[3], "——— new ———");
    assert!(page[4].ends_with("bob: are you still there?"));
    assert_eq!(alice.ok("/leave").await, ["left general"]);
    assert_eq!(
        alice.ok("/channels").await,
        [format!("{id} general (2 members, 0 unread)")]
    );

    // bob quits the channel, after a yes; then alice ends the connection.
    let asked = bob.run(&format!("/quit {id}")).await;
    assert!(matches!(
        asked.action,
        natter_client::session::Action::Ask(_)
    ));
    assert_eq!(
        plain(&bob.session.answer(Some("n".into())).await.events),
        ["nothing done"]
    );
    assert_eq!(
        bob.confirmed(&format!("/part {id}")).await,
        ["you are no longer a member of general"]
    );
    assert_eq!(
        bob.fails(&format!("/enter {id}")).await,
        "error: you are not a member of that channel"
    );
    assert_eq!(alice.ok("/disconnect bob").await, ["disconnected from bob"]);
    assert_eq!(
        alice.ok("/connections").await,
        ["no connections yet; /invite-code user shows the code to share"]
    );

    assert_eq!(bob.ok("/logout").await, ["logged out bob"]);
    assert_eq!(
        bob.fails("/channels").await,
        "error: log in first: /login <username>"
    );
    assert_eq!(bob.ok("/whoami").await, ["not logged in"]);
    app.stop().await;
}

#[tokio::test]
async fn invitations_can_be_rejected_and_channels_joined_by_code() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let mut carol = Client::online(&app, "carol").await;

    let code_line = alice.ok("/invite-code user").await.remove(0);
    let code = word_after(&code_line, "your invite code: ").to_owned();
    carol.ok(&format!("/invite {code}")).await;
    alice
        .push("invite", |e| *e == Event::InviteReceived("carol".into()))
        .await;
    assert_eq!(
        alice.ok("/reject carol").await,
        [
            "rejected the invitation from carol; neither of you can invite the other until \
          you /disconnect carol, which clears it"
        ]
    );
    assert_eq!(
        carol.fails(&format!("/invite {code}")).await,
        "error: there is already an invitation between you (pending or rejected); if it was \
         rejected, the one who rejected it can /disconnect <username> to clear it"
    );
    assert_eq!(
        alice.fails(&format!("/invite {code}")).await,
        "error: that is your own invite code"
    );
    // The one who rejected clears it, as the hint says; then carol may
    // invite again.
    assert_eq!(
        alice.ok("/disconnect carol").await,
        ["disconnected from carol"]
    );
    carol.ok(&format!("/invite {code}")).await;
    assert_eq!(
        alice.fails("/create solo carol").await.split(" (").next(),
        Some("error: you can only add users you are connected with")
    );

    bob.ok(&format!("/invite {code}")).await;
    alice.ok("/accept bob").await;
    let id = channel_id(&alice.ok("/create \"team room\" bob").await[0]);
    let invite = alice
        .ok(&format!("/invite-code channel {id}"))
        .await
        .remove(0);
    let channel_code = word_after(&invite, ": ").to_owned();
    assert_eq!(
        carol.ok(&format!("/join {channel_code}")).await,
        [format!(
            "joined team room (channel {id}, 3 members); /enter {id}"
        )]
    );
    assert_eq!(
        carol.fails(&format!("/join {channel_code}")).await,
        "error: you are already a member of that channel"
    );
    assert_eq!(
        carol.fails("/join nonsense").await,
        "error: no such channel or invite code"
    );
    assert_eq!(
        carol.fails("/enter 999999").await,
        "error: no such channel or invite code"
    );
    app.stop().await;
}

#[tokio::test]
async fn history_pages_backwards_by_seq() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let code_line = alice.ok("/invite-code user").await.remove(0);
    bob.ok(&format!(
        "/invite {}",
        word_after(&code_line, "your invite code: ")
    ))
    .await;
    alice.ok("/accept bob").await;
    let id = channel_id(&alice.ok("/create general bob").await[0]);
    alice.ok(&format!("/enter {id}")).await;
    for n in 1..=25 {
        alice.ok(&format!("message {n}")).await;
    }
    // All 25 are unread: they all show, from the first.
    let page = bob.ok(&format!("/enter {id}")).await;
    assert_eq!(page.len(), 27, "{page:?}");
    assert_eq!(page[1], "——— new ———");
    assert!(page[2].ends_with("alice: message 1"), "{page:?}");
    bob.ok("/leave").await;

    // Read now: the newest page, then older ones under a header.
    let page = bob.ok(&format!("/enter {id}")).await;
    assert_eq!(page.len(), 21, "{page:?}");
    assert!(page[1].ends_with("alice: message 6"), "{page:?}");
    let older = bob.ok("/history 3").await;
    assert_eq!(older.len(), 4);
    assert_eq!(older[0], "── earlier in general: 3 messages ──");
    assert!(
        older[1].ends_with("message 3") && older[3].ends_with("message 5"),
        "{older:?}"
    );
    let rest = bob.ok("/history").await;
    assert_eq!(rest.len(), 3);
    assert!(rest[1].ends_with("message 1"));
    assert_eq!(bob.ok("/history").await, ["no older messages"]);
    app.stop().await;
}

#[tokio::test]
async fn unregistering_ends_the_users_other_sessions() {
    let app = TestApp::spawn().await;
    let mut first = Client::online(&app, "dave").await;
    let mut second = Client::on(&app, "dave");
    second.ok(&format!("/login dave {PASSWORD}")).await;
    assert_eq!(
        first.ok(&format!("/login dave {PASSWORD}")).await,
        ["already logged in as dave"]
    );
    assert_eq!(
        first.fails("/login erin").await,
        "error: already logged in as dave; /logout first"
    );

    // The password again, or nothing happens.
    let wrong = first.answering("/unregister", "not-the-password").await;
    assert_eq!(
        plain(&wrong.events),
        ["error: wrong username or password; the account is kept"]
    );
    assert!(first.ok("/channels").await.len() == 1);
    let deleted = first.answering("/unregister", PASSWORD).await;
    assert_eq!(plain(&deleted.events), ["account dave deleted"]);
    second
        .push("session_revoked", |e| *e == Event::SessionRevoked)
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        second.fails("/channels").await,
        "error: log in first: /login <username>"
    );
    assert_eq!(
        second.fails(&format!("/login dave {PASSWORD}")).await,
        "error: wrong username or password"
    );
    app.stop().await;
}
