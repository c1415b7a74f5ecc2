//! The limits under concurrency, against the real database: one socket
//! per concurrent request (a socket's requests run one at a time).

use crate::support::{
    User, accepted_pairs, channel, channel_code, connect, connection_count, heads, second_socket,
    user, users,
};
use natter_server::testing::TestApp;
use serde_json::json;
use std::collections::HashMap;

#[tokio::test]
async fn twenty_concurrent_accepts_at_nine_of_ten_let_exactly_one_through() {
    // The target accepts on 21 sockets at once: more than a user may hold
    // by default.
    let app = TestApp::spawn_with(|c| {
        c.connection_limit = 10;
        c.sockets_per_user = 32;
    })
    .await;
    let mut target = user(&app, "target").await;
    let mut friends = users(&app, "f", 9).await;
    for f in &mut friends {
        connect(f, &mut target).await;
    }
    let mut inviters = users(&app, "i", 20).await;
    let code = target.ok("fetch_user_invite_code", json!({})).await["invite_code"].clone();
    for i in &mut inviters {
        i.ok("invite", json!({"invite_code": code})).await;
    }
    let mut sockets: Vec<User> = Vec::new();
    for _ in 0..20 {
        sockets.push(second_socket(&app, &target).await);
    }
    let outcomes = futures::future::join_all(sockets.iter_mut().zip(&inviters).map(
        |(s, inviter)| async move { s.call("accept", json!({"username": inviter.name})).await },
    ))
    .await;
    let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(accepted, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| e.code == "connection_limit_reached")
    );
    assert_eq!(connection_count(&app, target.id).await, 10);
    assert_eq!(accepted_pairs(&app, target.id).await, 10);
}

#[tokio::test]
async fn ten_concurrent_disconnects_of_five_connections_succeed_five_times() {
    let app = TestApp::spawn().await;
    let mut hub = user(&app, "hub").await;
    let mut partners = users(&app, "p", 5).await;
    for p in &mut partners {
        connect(&mut hub, p).await;
    }
    // Each pair is disconnected twice at once: by the hub and by the partner.
    let mut hub_sockets = Vec::new();
    for _ in 0..5 {
        hub_sockets.push(second_socket(&app, &hub).await);
    }
    let names: Vec<String> = partners.iter().map(|p| p.name.clone()).collect();
    let from_hub = hub_sockets
        .iter_mut()
        .zip(&names)
        .map(|(s, n)| async move { s.call("disconnect", json!({"username": n})).await });
    let from_partners = partners
        .iter_mut()
        .map(|p| async move { p.call("disconnect", json!({"username": "hub"})).await });
    let (a, b) = futures::future::join(
        futures::future::join_all(from_hub),
        futures::future::join_all(from_partners),
    )
    .await;
    let outcomes: Vec<_> = a.into_iter().chain(b).collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        5,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| e.code == "not_connected")
    );
    assert_eq!(connection_count(&app, hub.id).await, 0);
    for p in &partners {
        assert_eq!(connection_count(&app, p.id).await, 0);
    }
}

#[tokio::test]
async fn fifty_concurrent_joins_fill_the_ten_free_seats_exactly() {
    let app = TestApp::spawn_with(|c| c.head_limit = 12).await;
    let mut owner = user(&app, "owner").await;
    let mut friend = user(&app, "friend").await;
    let id = channel(&mut owner, &mut [&mut friend]).await;
    let code = channel_code(&mut owner, id).await;
    let mut joiners = users(&app, "j", 50).await;
    let outcomes = futures::future::join_all(
        joiners
            .iter_mut()
            .map(|j| j.call("join", json!({"invite_code": code}))),
    )
    .await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 10);
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| e.code == "over_limit")
    );
    assert_eq!(heads(&app, id).await, (12, 12));
}

#[tokio::test]
async fn concurrent_joins_and_quits_keep_head_count_equal_to_members() {
    let app = TestApp::spawn_with(|c| c.head_limit = 15).await;
    let mut owner = user(&app, "owner").await;
    let mut friend = user(&app, "friend").await;
    let id = channel(&mut owner, &mut [&mut friend]).await;
    let code = channel_code(&mut owner, id).await;
    let mut quitters = users(&app, "q", 10).await;
    for q in &mut quitters {
        q.ok("join", json!({"invite_code": code})).await;
    }
    let mut joiners = users(&app, "j", 20).await;
    let code = &code;
    let joins = joiners
        .iter_mut()
        .map(|j| async move { j.call("join", json!({"invite_code": code})).await.is_ok() });
    let quits = quitters
        .iter_mut()
        .map(|q| async move { q.call("quit", json!({"channel_id": id})).await.is_ok() });
    let (joined, quit) = futures::future::join(
        futures::future::join_all(joins),
        futures::future::join_all(quits),
    )
    .await;
    assert!(quit.iter().all(|q| *q), "every member can quit");
    let joined = joined.iter().filter(|j| **j).count();
    let (head_count, members) = heads(&app, id).await;
    assert_eq!(i64::from(head_count), members);
    assert_eq!(members, 2 + i64::try_from(joined).expect("small"));
    assert!(head_count <= 15);
}

/// Writes sent at once from many sockets travel to the message service
/// in shared batches; each writer still gets the answer to its own write:
/// the seq its text is stored under, or its own error.
#[tokio::test]
async fn concurrent_writes_from_many_sockets_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    let mut owner = user(&app, "owner").await;
    let mut writers = users(&app, "w", 30).await;
    let mut outsider = user(&app, "outsider").await;
    let id = {
        let mut members: Vec<&mut User> = writers.iter_mut().collect();
        channel(&mut owner, &mut members).await
    };
    let write =
        |content: String| json!({"channel_id": id, "client_msg_id": "k", "content": content});
    let writes = writers.iter_mut().map(|w| {
        let text = format!("from {}", w.name);
        async move { (text.clone(), w.call("write_message", write(text)).await) }
    });
    let (written, refused) = tokio::join!(
        futures::future::join_all(writes),
        outsider.call("write_message", write("from outsider".into()))
    );
    assert_eq!(refused.expect_err("not a member").code, "not_joined");

    let page = owner
        .ok(
            "fetch_messages",
            json!({"channel_id": id, "after_seq": 0, "limit": 100}),
        )
        .await;
    let stored: HashMap<i64, String> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            let seq = m["seq"].as_i64().expect("seq");
            (seq, m["content"].as_str().expect("content").to_owned())
        })
        .collect();
    let mut seqs = Vec::new();
    for (text, answer) in written {
        let seq = answer.expect("written")["seq"].as_i64().expect("seq");
        assert_eq!(stored.get(&seq), Some(&text), "seq {seq}");
        seqs.push(seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=30).collect::<Vec<i64>>());
}
