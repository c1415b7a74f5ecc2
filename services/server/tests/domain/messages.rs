//! Messages: gap-free seqs, idempotent writes, fetching (gap filling and
//! paging), the read pointer, typing.

use crate::support::{User, channel, second_socket, user};
use natter_server::Service;
use natter_server::testing::TestApp;
use serde_json::{Value, json};

async fn write(u: &mut User, channel: i64, key: &str, content: &str) -> Value {
    u.ok(
        "write_message",
        json!({"channel_id": channel, "client_msg_id": key, "content": content}),
    )
    .await
}

fn seqs(page: &Value) -> Vec<i64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

#[tokio::test]
async fn writes_get_consecutive_seqs_and_times_that_follow_them() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let mut last_time = String::new();
    for n in 1..=3 {
        let w = write(&mut alice, id, &format!("k{n}"), "hi").await;
        assert_eq!(w["channel_id"], id);
        assert_eq!(w["seq"], n);
        let t = w["sent_at"].as_str().expect("sent_at").to_owned();
        assert!(t.ends_with('Z') && t.len() == 27, "{t}");
        assert!(t >= last_time);
        last_time = t;
    }
    let page = bob.ok("fetch_messages", json!({"channel_id": id})).await;
    assert_eq!(seqs(&page), vec![1, 2, 3]);
    assert_eq!(page["messages"][2]["username"], "alice");
    assert_eq!(page["messages"][2]["sent_at"], last_time);
}

#[tokio::test]
async fn concurrent_writers_share_one_gap_free_sequence() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(second_socket(&app, &alice).await);
        writers.push(second_socket(&app, &bob).await);
    }
    let written =
        futures::future::join_all(writers.iter_mut().enumerate().map(|(w, u)| async move {
            let mut seqs = Vec::new();
            for n in 0..10 {
                let r = write(u, id, &format!("w{w}-{n}"), "x").await;
                seqs.push(r["seq"].as_i64().expect("seq"));
            }
            seqs
        }))
        .await;
    let mut all: Vec<i64> = written.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (1..=80).collect::<Vec<_>>());
    let times: Vec<(i64, String)> = sqlx::query_as(
        "SELECT seq, to_char(sent_at, 'YYYY-MM-DD HH24:MI:SS.US') FROM messages \
         WHERE channel_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .expect("rows");
    assert!(
        times.windows(2).all(|w| w[0].1 <= w[1].1),
        "sent_at follows seq"
    );
}

#[tokio::test]
async fn a_repeated_client_msg_id_returns_the_first_reply_and_stores_once() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let other = alice
        .ok("create", json!({"title": "other", "usernames": ["bob"]}))
        .await["channel_id"]
        .as_i64()
        .expect("id");
    let first = write(&mut alice, id, "same", "one").await;
    assert_eq!(write(&mut alice, id, "same", "two").await, first);
    // Same key in another channel: still the first reply.
    assert_eq!(write(&mut alice, other, "same", "three").await, first);
    // Concurrent repeats on several sockets land in one batch or several.
    let mut sockets = [
        second_socket(&app, &alice).await,
        second_socket(&app, &alice).await,
        second_socket(&app, &alice).await,
    ];
    let racing = futures::future::join_all(
        sockets
            .iter_mut()
            .map(|s| async move { write(s, id, "race", "r").await }),
    )
    .await;
    assert!(racing.windows(2).all(|w| w[0] == w[1]));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
        .bind(alice.id)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(rows, 2);
    // bob's own "same" is a different key.
    assert_eq!(write(&mut bob, id, "same", "b").await["seq"], 3);
}

#[tokio::test]
async fn write_refuses_unknown_channels_non_members_and_blank_content() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let msg =
        |c: i64, content: &str| json!({"channel_id": c, "client_msg_id": "k", "content": content});
    assert_eq!(
        eve.err("write_message", msg(999_999, "hi")).await,
        "not_found"
    );
    assert_eq!(eve.err("write_message", msg(id, "hi")).await, "not_joined");
    assert_eq!(
        alice.err("write_message", msg(id, " \n ")).await,
        "invalid_request"
    );
    assert_eq!(
        alice
            .err(
                "write_message",
                json!({"channel_id": id, "client_msg_id": "", "content": "x"})
            )
            .await,
        "invalid_request"
    );
    // A refused write does not spend its key.
    assert_eq!(write(&mut alice, id, "k", "x").await["seq"], 1);
}

#[tokio::test]
async fn fetch_after_seq_fills_gaps_and_before_seq_pages_backwards() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    for n in 1..=10 {
        write(&mut alice, id, &format!("k{n}"), &format!("m{n}")).await;
    }
    let gap = bob
        .ok(
            "fetch_messages",
            json!({"channel_id": id, "after_seq": 4, "limit": 3}),
        )
        .await;
    assert_eq!(seqs(&gap), vec![5, 6, 7]);
    assert_eq!(gap["messages"][0]["content"], "m5");
    let rest = bob
        .ok("fetch_messages", json!({"channel_id": id, "after_seq": 7}))
        .await;
    assert_eq!(seqs(&rest), vec![8, 9, 10]);
    let newest = bob
        .ok("fetch_messages", json!({"channel_id": id, "limit": 4}))
        .await;
    assert_eq!(seqs(&newest), vec![7, 8, 9, 10]);
    let older = bob
        .ok(
            "fetch_messages",
            json!({"channel_id": id, "before_seq": 7, "limit": 4}),
        )
        .await;
    assert_eq!(seqs(&older), vec![3, 4, 5, 6]);
    let oldest = bob
        .ok(
            "fetch_messages",
            json!({"channel_id": id, "before_seq": 3, "limit": 4}),
        )
        .await;
    assert_eq!(seqs(&oldest), vec![1, 2]);
    let none = bob
        .ok("fetch_messages", json!({"channel_id": id, "after_seq": 10}))
        .await;
    assert_eq!(none, json!({"channel_id": id, "messages": []}));
}

#[tokio::test]
async fn fetch_refuses_unknown_channels_non_members_and_bad_paging() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    assert_eq!(
        eve.err("fetch_messages", json!({"channel_id": 999_999}))
            .await,
        "not_found"
    );
    assert_eq!(
        eve.err("fetch_messages", json!({"channel_id": id})).await,
        "not_joined"
    );
    for bad in [
        json!({"channel_id": id, "after_seq": 1, "before_seq": 5}),
        json!({"channel_id": id, "limit": 0}),
        json!({"channel_id": id, "limit": 101}),
    ] {
        assert_eq!(alice.err("fetch_messages", bad).await, "invalid_request");
    }
}

#[tokio::test]
async fn the_read_pointer_only_moves_forward_and_writing_moves_it() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    for n in 1..=5 {
        write(&mut alice, id, &format!("k{n}"), "x").await;
    }
    let last_read = |v: Value| v["channels"][0]["last_read_seq"].clone();
    assert_eq!(last_read(alice.ok("fetch_channels", json!({})).await), 5);
    assert_eq!(last_read(bob.ok("fetch_channels", json!({})).await), 0);
    assert_eq!(
        bob.ok("read", json!({"channel_id": id, "seq": 4})).await,
        json!({})
    );
    assert_eq!(
        bob.ok("read", json!({"channel_id": id, "seq": 2})).await,
        json!({})
    );
    assert_eq!(
        bob.ok("enter", json!({"channel_id": id})).await["last_read_seq"],
        4
    );
    assert_eq!(
        bob.err("read", json!({"channel_id": id, "seq": 6})).await,
        "invalid_request"
    );
    assert_eq!(
        bob.err("read", json!({"channel_id": id, "seq": -1})).await,
        "invalid_request"
    );
    assert_eq!(
        eve.err("read", json!({"channel_id": 999_999, "seq": 1}))
            .await,
        "not_found"
    );
    assert_eq!(
        eve.err("read", json!({"channel_id": id, "seq": 1})).await,
        "not_joined"
    );
    bob.ok("read", json!({"channel_id": id, "seq": 5})).await;
    assert_eq!(last_read(bob.ok("fetch_channels", json!({})).await), 5);
}

#[tokio::test]
async fn typing_is_published_for_members_only() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let ns = app.config.namespace();
    let mut events = nats
        .subscribe(ns.typing_subject(natter_protocol::ChannelId(id)))
        .await
        .expect("subscribe");
    nats.flush().await.expect("flush");
    assert_eq!(
        eve.err("typing", json!({"channel_id": 999_999})).await,
        "not_found"
    );
    assert_eq!(
        eve.err("typing", json!({"channel_id": id})).await,
        "not_joined"
    );
    assert_eq!(
        alice.ok("typing", json!({"channel_id": id})).await,
        json!({})
    );
    let event = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        use futures::StreamExt;
        loop {
            let m = events.next().await.expect("event");
            let v: Value = serde_json::from_slice(&m.payload).expect("json");
            if v["kind"] == "typing" {
                return v;
            }
        }
    })
    .await
    .expect("a typing event");
    assert_eq!(event["username"], "alice");
    assert_eq!(event["channel_id"], id);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE convert_from(payload, 'UTF8') LIKE '%\"kind\":\"typing\"%'")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn refused_writes_in_a_batch_do_not_fail_the_others() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let eve = user(&app, "eve").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let mut sockets = Vec::new();
    for _ in 0..6 {
        sockets.push(second_socket(&app, &alice).await);
        sockets.push(second_socket(&app, &eve).await);
    }
    let outcomes = futures::future::join_all(sockets.iter_mut().enumerate().map(|(n, s)| {
        // Every third, alice's or eve's, targets a channel that does not exist.
        let channel = if n % 3 == 2 { 999_999 } else { id };
        async move {
            s.call(
                "write_message",
                json!({"channel_id": channel, "client_msg_id": format!("k{n}"), "content": "x"}),
            )
            .await
        }
    }))
    .await;
    let mut stored = Vec::new();
    for (n, outcome) in outcomes.into_iter().enumerate() {
        match (n % 3 == 2, n % 2 == 0, outcome) {
            (true, _, Err(e)) => assert_eq!(e.code, "not_found"),
            (false, true, Ok(w)) => stored.push(w["seq"].as_i64().expect("seq")),
            (false, false, Err(e)) => assert_eq!(e.code, "not_joined"),
            (_, _, other) => panic!("write {n}: {other:?}"),
        }
    }
    stored.sort_unstable();
    assert_eq!(stored, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn two_message_instances_racing_on_one_client_msg_id_store_it_once() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (_, second) =
        natter_server::testing::start_part(Service::Message, &app.config, stop.clone()).await;
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(second_socket(&app, &alice).await);
    }
    for round in 0..5 {
        let key = format!("race-{round}");
        let replies =
            futures::future::join_all(sockets.iter_mut().map(|s| write(s, id, &key, "x"))).await;
        assert!(replies.windows(2).all(|w| w[0] == w[1]), "{replies:?}");
        assert_eq!(replies[0]["seq"], round + 1);
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE channel_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(rows, 5);
    stop.cancel();
    second.await.expect("task").expect("stopped cleanly");
}

#[tokio::test]
async fn typing_is_not_stored_in_the_events_stream() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    let nats = async_nats::connect(&app.config.nats_url)
        .await
        .expect("nats");
    let mut stream = async_nats::jetstream::new(nats)
        .get_stream(app.config.namespace().events_stream())
        .await
        .expect("events stream");
    // Let the relay publish the setup's events first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&app.pool)
            .await
            .expect("count");
        if rows == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "outbox never drained");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let before = stream.info().await.expect("info").state.messages;
    for _ in 0..3 {
        alice.ok("typing", json!({"channel_id": id})).await;
    }
    bob.ok("enter", json!({"channel_id": id})).await;
    alice.ok("typing", json!({"channel_id": id})).await;
    assert_eq!(bob.ws().push("typing").await["username"], "alice");
    assert_eq!(stream.info().await.expect("info").state.messages, before);
}

#[tokio::test]
async fn nul_characters_are_invalid_requests_not_internal_errors() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    for fields in [
        json!({"channel_id": id, "client_msg_id": "k\u{0}", "content": "hi"}),
        json!({"channel_id": id, "client_msg_id": "k", "content": "h\u{0}i"}),
    ] {
        assert_eq!(alice.err("write_message", fields).await, "invalid_request");
    }
    assert_eq!(
        alice.err("accept", json!({"username": "b\u{0}ob"})).await,
        "invalid_request"
    );
    assert_eq!(
        alice
            .err("create", json!({"title": "t\u{0}", "usernames": ["bob"]}))
            .await,
        "invalid_request"
    );
    write(&mut alice, id, "k", "still fine").await;
}

fn contents(page: &Value) -> Vec<&str> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect()
}

/// `NATTER_DATABASE_READ_URL` serves the history pages below a seq the
/// caller knows, when it has them all; what it lacks (it lags), the
/// newest page and gap filling come from the primary. The "replica" here
/// is a second database whose rows say where they were read.
#[tokio::test]
async fn history_pages_below_a_known_seq_come_from_the_read_database() {
    let replica = natter_server::testing::TestDatabase::create().await;
    let app = TestApp::spawn_with(|c| c.database_read_url = Some(replica.url.clone())).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    for n in 1..=5 {
        write(&mut alice, id, &format!("k{n}"), &format!("primary {n}")).await;
    }
    // The replica has replayed up to seq 3 only; its rows need no users
    // or channels of their own (messages have no foreign keys: 0008).
    let pool = replica.pool().await;
    sqlx::query(
        "INSERT INTO messages (channel_id, seq, user_id, client_msg_id, content, sent_at) \
         SELECT $1, n, $2, 'k' || n, 'replica ' || n, now() FROM generate_series(1, 3) AS n",
    )
    .bind(id)
    .bind(alice.id)
    .execute(&pool)
    .await
    .expect("replica rows");

    let page = |before: Option<i64>, after: Option<i64>| {
        let mut fields = json!({"channel_id": id, "limit": 3});
        if let Some(before) = before {
            fields["before_seq"] = json!(before);
        }
        if let Some(after) = after {
            fields["after_seq"] = json!(after);
        }
        fields
    };
    let from_replica = bob.ok("fetch_messages", page(Some(4), None)).await;
    assert_eq!(
        contents(&from_replica),
        ["replica 1", "replica 2", "replica 3"]
    );
    let replica_lags = bob.ok("fetch_messages", page(Some(6), None)).await;
    assert_eq!(
        contents(&replica_lags),
        ["primary 3", "primary 4", "primary 5"]
    );
    let newest = bob.ok("fetch_messages", page(None, None)).await;
    assert_eq!(contents(&newest), ["primary 3", "primary 4", "primary 5"]);
    let gap_fill = bob.ok("fetch_messages", page(None, Some(0))).await;
    assert_eq!(contents(&gap_fill), ["primary 1", "primary 2", "primary 3"]);
}
