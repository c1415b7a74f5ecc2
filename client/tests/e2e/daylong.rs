//! What a person who keeps natter open all day relies on: what they saw is
//! read, the login outlives the process, a lost link loses no message,
//! pastes arrive as they were, and the other side sees them typing.

use crate::reconnect::Proxy;
use crate::support::{Client, PASSWORD, PUSH_WAIT, channel_id, plain, word_after};
use natter_client::cli::Endpoints;
use natter_client::render::Event;
use natter_client::session::{Action, Question, Session};
use natter_server::testing::TestApp;
use std::path::PathBuf;
use std::time::Duration;

/// alice and bob, connected, both in a channel `general`; its id.
async fn pair(alice: &mut Client, bob: &mut Client) -> String {
    let code = alice.ok("/invite-code user").await.remove(0);
    bob.ok(&format!(
        "/invite {}",
        word_after(&code, "your invite code: ")
    ))
    .await;
    alice.ok("/accept bob").await;
    channel_id(&alice.ok("/create general bob").await[0])
}

/// Asks `/channels` until its line for the channel says `want`.
async fn wait_for_unread(c: &mut Client, id: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + PUSH_WAIT;
    loop {
        let lines = c.ok("/channels").await;
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .cloned()
            .unwrap_or_default();
        if line.contains(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: still {line:?}, want {want}",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn temp_store() -> PathBuf {
    std::env::temp_dir()
        .join(format!("natter-e2e-{}", uuid::Uuid::new_v4()))
        .join("session.json")
}

#[tokio::test]
async fn what_is_shown_inside_a_channel_is_read_and_nothing_more() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    alice.ok(&format!("/enter {id}")).await;
    bob.ok(&format!("/enter {id}")).await;

    for n in 1..=3 {
        bob.ok(&format!("live {n}")).await;
    }
    alice.message("live 3").await;
    wait_for_unread(&mut alice, &id, "0 unread").await;

    // Outside the channel nothing is shown, so nothing is read.
    alice.ok("/leave").await;
    bob.ok("while alice is away").await;
    alice
        .push("unread", |e| matches!(e, Event::Unread { .. }))
        .await;
    assert_eq!(
        alice.ok("/channels").await,
        [format!("{id} general (2 members, 1 unread)")]
    );
    app.stop().await;
}

#[tokio::test]
async fn many_unread_messages_are_shown_from_the_first_and_paged() {
    // Bob writes 120 messages back to back: more than the default burst of
    // the per-socket rate limit, which is not what this test is about.
    let app = TestApp::spawn_with(|c| c.ws_burst = 1_000).await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    bob.ok(&format!("/enter {id}")).await;
    for n in 1..=120 {
        bob.ok(&format!("m{n}")).await;
    }
    let page = alice.ok(&format!("/enter {id}")).await;
    assert!(page[0].contains("120 unread"), "{}", page[0]);
    assert_eq!(page[1], "——— new ———");
    assert!(page[2].ends_with("bob: m1"), "{}", page[2]);
    assert!(page[101].ends_with("bob: m100"), "{}", page[101]);
    assert_eq!(page[102], "… 20 more unread; /more shows the next page");
    wait_for_unread(&mut alice, &id, "20 unread").await;

    let more = alice.ok("/more").await;
    assert_eq!(more.len(), 20);
    assert!(more[19].ends_with("bob: m120"));
    assert_eq!(alice.ok("/more").await, ["no more unread messages"]);
    wait_for_unread(&mut alice, &id, "0 unread").await;
    app.stop().await;
}

#[tokio::test]
async fn a_saved_session_resumes_in_its_channel_until_logout() {
    let app = TestApp::spawn().await;
    let store = temp_store();
    let endpoints = Endpoints {
        auth_url: app.auth_url(),
        ws_url: app.ws_url(),
    };
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    bob.session.close().await;

    let (first, _events) = Session::new(&endpoints);
    let mut first = first.with_store(Some(store.clone()));
    first.run_line(&format!("/login bob {PASSWORD}")).await;
    first.run_line("/enter general").await;
    first.close().await;

    // A new process: back online, in the same channel, no password.
    let (second, _events) = Session::new(&endpoints);
    let mut second = second.with_store(Some(store.clone()));
    let resumed = plain(&second.resume().await.events);
    assert_eq!(resumed[0], "resumed the session of bob");
    assert!(
        resumed
            .iter()
            .any(|l| l.starts_with(&format!("entered general (channel {id}"))),
        "{resumed:?}"
    );
    assert_eq!(
        second.view().snapshot().channel.map(|(c, _)| c.to_string()),
        Some(id.clone())
    );
    alice.ok(&format!("/enter {id}")).await;
    assert!(second.run_line("back again").await.ok);
    assert_eq!(alice.message("back again").await.as_deref(), Some("bob"));

    assert_eq!(
        plain(&second.run_line("/logout").await.events),
        ["logged out bob"]
    );
    let (third, _events) = Session::new(&endpoints);
    let mut third = third.with_store(Some(store.clone()));
    assert_eq!(third.resume().await.events, []);
    assert!(!third.run_line("/channels").await.ok);
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
    app.stop().await;
}

/// alice behind a proxy the test can cut, registered and logged in, with
/// bob, in `general`; the proxy and the channel id.
async fn alice_behind_a_proxy(
    app: &TestApp,
    store: Option<PathBuf>,
) -> (Proxy, Client, Client, String) {
    let proxy = Proxy::start(app.addr(natter_server::Service::Gateway)).await;
    let endpoints = Endpoints {
        auth_url: app.auth_url(),
        ws_url: proxy.ws_url(),
    };
    let (session, events) = Session::new(&endpoints);
    let mut alice = Client {
        name: "alice".into(),
        session: session.with_store(store),
        events,
    };
    alice.ok(&format!("/register alice {PASSWORD}")).await;
    alice.ok(&format!("/login alice {PASSWORD}")).await;
    let mut bob = Client::online(app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    alice.ok(&format!("/enter {id}")).await;
    (proxy, alice, bob, id)
}

#[tokio::test]
async fn a_session_outlives_its_token_by_refreshing_and_saves_the_new_pair() {
    let app = TestApp::spawn_with(|c| c.token_ttl_secs = 2).await;
    let store = temp_store();
    let (proxy, mut alice, mut bob, id) = alice_behind_a_proxy(&app, Some(store.clone())).await;
    let saved_before = std::fs::read_to_string(&store).expect("saved");

    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut_all();
    alice
        .push("reconnected", |e| *e == Event::Reconnected)
        .await;
    bob.ok(&format!("/enter {id}")).await;
    assert!(alice.run("after the refresh").await.ok);
    assert_eq!(
        bob.message("after the refresh").await.as_deref(),
        Some("alice")
    );
    let saved_after = std::fs::read_to_string(&store).expect("saved");
    assert_ne!(saved_before, saved_after, "the rotated pair is saved");
    assert!(alice.ok("/whoami").await[0].starts_with("alice (user "));
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
    app.stop().await;
}

#[tokio::test]
async fn an_ended_session_says_it_expired_and_logging_in_returns_to_the_channel() {
    let app = TestApp::spawn_with(|c| {
        c.token_ttl_secs = 1;
        c.refresh_ttl_secs = 1;
    })
    .await;
    let (proxy, mut alice, _bob, id) = alice_behind_a_proxy(&app, None).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.cut_all();
    alice
        .push("session expired", |e| *e == Event::SessionExpired)
        .await;
    assert_eq!(
        alice.fails("/channels").await,
        "error: log in first: /login <username>"
    );

    let back = alice.ok(&format!("/login alice {PASSWORD}")).await;
    assert!(
        back.iter()
            .any(|l| l.starts_with(&format!("entered general (channel {id}"))),
        "{back:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn members_are_listed_and_their_comings_and_goings_shown() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let mut carol = Client::online(&app, "carol").await;
    let id = pair(&mut alice, &mut bob).await;
    alice.ok("/enter general").await;
    assert_eq!(
        alice.ok("/members").await,
        [
            "2 members of general, 2 online:",
            "alice online",
            "bob online"
        ]
    );

    let code = alice.ok("/invite-code channel general").await.remove(0);
    carol
        .ok(&format!(
            "/join {}",
            word_after(&code, "/join ").trim_end_matches(')')
        ))
        .await;
    alice
        .push(
            "join",
            |e| matches!(e, Event::MemberJoined { username, .. } if username == "carol"),
        )
        .await;
    carol.confirmed(&format!("/part {id}")).await;
    let left = alice
        .push("part", |e| matches!(e, Event::MemberLeft { .. }))
        .await;
    assert_eq!(plain(&[left]), ["* carol left the channel"]);

    bob.ok("/disconnect alice").await;
    let ended = alice
        .push("disconnect", |e| matches!(e, Event::ConnectionEnded(_)))
        .await;
    assert_eq!(plain(&[ended]), ["* bob ended your connection"]);

    let gone = bob.answering("/unregister", PASSWORD).await;
    assert!(gone.ok, "{:?}", plain(&gone.events));
    let left = alice
        .push("unregister", |e| matches!(e, Event::MemberLeft { .. }))
        .await;
    assert_eq!(
        plain(&[left]),
        ["* bob deleted their account and left the channel"]
    );
    assert_eq!(
        alice.ok(&format!("/members {id}")).await,
        ["1 member of general, 1 online:", "alice online"]
    );
    app.stop().await;
}

#[tokio::test]
async fn messages_typed_while_disconnected_are_sent_once_when_the_link_is_back() {
    let app = TestApp::spawn().await;
    let proxy = Proxy::start(app.addr(natter_server::Service::Gateway)).await;
    let mut alice = Client::new(
        "alice",
        &Endpoints {
            auth_url: app.auth_url(),
            ws_url: proxy.ws_url(),
        },
    );
    alice.ok(&format!("/register alice {PASSWORD}")).await;
    alice.ok(&format!("/login alice {PASSWORD}")).await;
    let mut bob = Client::online(&app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    alice.ok(&format!("/enter {id}")).await;
    bob.ok(&format!("/enter {id}")).await;

    proxy.down();
    alice
        .push("connection lost", |e| matches!(e, Event::LinkLost { .. }))
        .await;
    for text in ["first while away", "second while away"] {
        let out = alice.run(text).await;
        assert!(out.ok);
        assert!(
            matches!(&out.events[..], [Event::Pending { content, .. }] if content == text),
            "{:?}",
            out.events
        );
    }
    assert_eq!(alice.session.view().snapshot().queued, 2);

    proxy.up();
    assert_eq!(
        bob.message("first while away").await.as_deref(),
        Some("alice")
    );
    assert_eq!(
        bob.message("second while away").await.as_deref(),
        Some("alice")
    );
    alice.message("second while away").await;
    assert_eq!(alice.session.view().snapshot().queued, 0);
    let later = bob.pushes_within(Duration::from_secs(2)).await;
    assert!(
        !later.iter().any(|e| matches!(e, Event::Message { .. })),
        "sent twice: {later:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn long_and_multi_line_messages_ask_first_and_arrive_whole() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    alice.ok(&format!("/enter {id}")).await;
    bob.ok("/enter general").await;

    let short_paste = "one\ntwo\nthree";
    let shown = alice.ok(short_paste).await;
    assert!(shown[0].contains("] alice: one\n"), "{shown:?}");
    bob.message(short_paste).await;

    let long_paste: String = (1..=8).map(|n| format!("line {n}\n")).collect();
    let asked = alice.run(&long_paste).await;
    assert_eq!(
        asked.action,
        Action::Ask(Question::Confirm(
            "send these 8 lines as one message? [y/N] ".into()
        ))
    );
    let sent = alice.session.answer(Some("y".into())).await;
    assert_eq!(sent.events.len(), 1);
    bob.message(long_paste.trim()).await;

    let huge = "word ".repeat(1000);
    let asked = alice.run(&huge).await;
    assert!(
        matches!(&asked.action, Action::Ask(Question::Confirm(q))
            if q.starts_with("that message is 4999 characters; natter takes 4000 at most. Send it as 2 messages?")),
        "{:?}",
        asked.action
    );
    let sent = alice.session.answer(Some("yes".into())).await;
    assert_eq!(sent.events.len(), 2, "{:?}", plain(&sent.events));
    app.stop().await;
}

#[tokio::test]
async fn the_other_side_sees_typing_and_titles_name_channels() {
    let app = TestApp::spawn().await;
    let mut alice = Client::online(&app, "alice").await;
    let mut bob = Client::online(&app, "bob").await;
    let id = pair(&mut alice, &mut bob).await;
    alice.ok("/enter general").await;
    bob.ok("/enter GENERAL").await;

    alice.session.typing_slot().typing();
    let typing = bob
        .push("typing", |e| matches!(e, Event::Typing { .. }))
        .await;
    assert!(
        matches!(&typing, Event::Typing { username, .. } if username == "alice"),
        "{typing:?}"
    );
    assert_eq!(
        alice.ok("/invite-code channel general").await[0]
            .split(':')
            .next(),
        Some("invite code of general")
    );
    assert_eq!(
        alice.fails("/enter nowhere").await,
        "error: you have no channel titled nowhere; /channels lists yours"
    );
    assert!(alice.ok(&format!("/enter {id}")).await[0].starts_with("entered general"));
    app.stop().await;
}
