//! The abuse limits of docs/protocol.md §2.6 that the domain enforces:
//! replies within 512 KiB with paging that still reads everything, the
//! membership limit under concurrency, and a `create` that does not tell
//! who exists.

use crate::support::{User, channel, channel_code, connect, second_socket, user, users};
use natter_protocol::limits::MAX_RESULT_BYTES;
use natter_server::testing::TestApp;
use serde_json::{Value, json};

/// A natter whose sockets may send as fast as the test does.
async fn unthrottled() -> TestApp {
    TestApp::spawn_with(|c| {
        c.ws_rate = 10_000;
        c.ws_burst = 10_000;
    })
    .await
}

/// The seqs of a `fetch_messages` page, after checking its size.
fn page_seqs(page: &Value) -> Vec<i64> {
    let bytes = page.to_string().len();
    assert!(bytes <= MAX_RESULT_BYTES, "a page of {bytes} bytes");
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

/// Reads a whole channel by paging forward with `after_seq` and backward
/// with `before_seq`, 100 at a time: the seqs each way, and whether any
/// page came back shorter than asked while more remained.
async fn read_both_ways(reader: &mut User, channel: i64) -> (Vec<i64>, Vec<i64>, bool) {
    let mut forward = Vec::new();
    let mut cut = false;
    loop {
        let after = forward.last().copied().unwrap_or(0);
        let page = reader
            .ok(
                "fetch_messages",
                json!({"channel_id": channel, "after_seq": after, "limit": 100}),
            )
            .await;
        let seqs = page_seqs(&page);
        if seqs.is_empty() {
            break;
        }
        cut |= seqs.len() < 100;
        forward.extend(seqs);
    }
    let mut backward: Vec<i64> = Vec::new();
    loop {
        let mut fields = json!({"channel_id": channel, "limit": 100});
        if let Some(first) = backward.first() {
            fields["before_seq"] = json!(first);
        }
        let page = reader.ok("fetch_messages", fields).await;
        let seqs = page_seqs(&page);
        if seqs.is_empty() {
            break;
        }
        backward.splice(0..0, seqs);
    }
    (forward, backward, cut)
}

/// Writes `count` messages of `content` and reads them all back both ways.
async fn paging_reads_everything(content: &str, count: i64) {
    let app = unthrottled().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let id = channel(&mut alice, &mut [&mut bob]).await;
    for n in 1..=count {
        let written = alice
            .ok(
                "write_message",
                json!({"channel_id": id, "client_msg_id": format!("k{n}"), "content": content}),
            )
            .await;
        assert_eq!(written["seq"], n);
    }
    let (forward, backward, cut) = read_both_ways(&mut bob, id).await;
    let all: Vec<i64> = (1..=count).collect();
    assert_eq!(forward, all, "paging forward");
    assert_eq!(backward, all, "paging backward");
    assert!(cut, "the pages were bounded by size, not by limit");
    let newest = bob
        .ok("fetch_messages", json!({"channel_id": id, "limit": 1}))
        .await;
    assert_eq!(newest["messages"][0]["content"], content);
}

#[tokio::test]
async fn a_hundred_messages_of_4000_cjk_chars_are_all_readable_by_paging() {
    paging_reads_everything(&"漢".repeat(4000), 100).await;
}

/// Control characters (six JSON bytes each) are refused now; the most
/// bytes a legal char can take in a reply is four (a UTF-8 char outside
/// the BMP; `"` and `\` escape to two).
#[tokio::test]
async fn sixty_messages_of_the_largest_legal_chars_are_all_readable_by_paging() {
    paging_reads_everything(&"😀".repeat(4000), 60).await;
}

/// Gives `user` `count` channels with 100-char titles of four-byte chars
/// (the largest a title can serialize to), 100 members each by their
/// count, and ids and seqs of `digits` digits.
async fn seed_channels(app: &TestApp, user: i64, count: i64, digits: u32) {
    let base = 10_i64.pow(digits - 1);
    sqlx::query(
        "INSERT INTO channels (id, title, invite_code, head_count, last_seq, created_by) \
         SELECT $2 + i, repeat('😀', 100), 'seed-' || i, 100, $2 + i, $1 \
         FROM generate_series(1, $3) AS i",
    )
    .bind(user)
    .bind(base)
    .bind(count)
    .execute(&app.pool)
    .await
    .expect("channels");
    sqlx::query(
        "INSERT INTO channel_members (channel_id, user_id, last_read_seq) \
         SELECT $2 + i, $1, $2 + i FROM generate_series(1, $3) AS i",
    )
    .bind(user)
    .bind(base)
    .bind(count)
    .execute(&app.pool)
    .await
    .expect("memberships");
}

#[tokio::test]
async fn a_thousand_channels_with_the_largest_titles_fit_in_one_reply() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    // 17-digit ids and seqs: 10^16 messages in one channel, more than any
    // deployment reaches; up to here every entry fits (README "Security").
    seed_channels(&app, alice.id, 1000, 17).await;
    let listed = alice.ok("fetch_channels", json!({})).await;
    let bytes = listed.to_string().len();
    assert!(bytes <= MAX_RESULT_BYTES, "{bytes} bytes");
    assert_eq!(listed["channels"].as_array().expect("channels").len(), 1000);
    assert!(bytes > 500_000, "the worst case was built: {bytes} bytes");
}

#[tokio::test]
async fn a_channel_list_past_the_limit_is_cut_to_what_fits_in_id_order() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    // 19-digit ids and seqs are where 1,000 entries stop fitting.
    seed_channels(&app, alice.id, 1000, 19).await;
    let listed = alice.ok("fetch_channels", json!({})).await;
    let bytes = listed.to_string().len();
    assert!(bytes <= MAX_RESULT_BYTES, "{bytes} bytes");
    let ids: Vec<i64> = listed["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|c| c["channel_id"].as_i64().expect("id"))
        .collect();
    assert!((900..1000).contains(&ids.len()), "{} listed", ids.len());
    let base = 10_i64.pow(18);
    assert_eq!(
        ids,
        (1..=ids.len() as i64).map(|i| base + i).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_flood_of_invitations_lists_what_fits_and_answering_brings_up_the_rest() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    // 7,000 users with 32-char names, each inviting alice: 580 KB listed.
    sqlx::query(
        "WITH inviters AS ( \
           INSERT INTO users (username, password_hash, invite_code) \
           SELECT 'inviter-' || lpad(i::text, 24, '0'), 'x', 'seed-' || i \
           FROM generate_series(1, 7000) AS i RETURNING id) \
         INSERT INTO user_connections (user_low, user_high, status, inviter) \
         SELECT $1, id, 'pending', id FROM inviters",
    )
    .bind(alice.id)
    .execute(&app.pool)
    .await
    .expect("invitations");
    let names = |listed: &Value| -> Vec<String> {
        let bytes = listed.to_string().len();
        assert!(bytes <= MAX_RESULT_BYTES, "{bytes} bytes");
        listed["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| c["username"].as_str().expect("name").to_owned())
            .collect()
    };
    let first = names(
        &alice
            .ok("fetch_connections", json!({"status": "pending"}))
            .await,
    );
    assert!(
        (5000..7000).contains(&first.len()),
        "{} listed",
        first.len()
    );
    let expected: Vec<String> = (1..=first.len())
        .map(|i| format!("inviter-{i:024}"))
        .collect();
    assert_eq!(first, expected, "the first by name");
    alice.ok("reject", json!({"username": first[0]})).await;
    let next = names(
        &alice
            .ok("fetch_connections", json!({"status": "pending"}))
            .await,
    );
    assert_eq!(next.first(), first.get(1));
    assert_eq!(next.len(), first.len());
    assert_eq!(
        next.last().expect("some"),
        &format!("inviter-{:024}", first.len() + 1)
    );
}

/// How many channels a user is a member of.
async fn memberships(app: &TestApp, user: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM channel_members WHERE user_id = $1")
        .bind(user)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn create_and_join_refuse_a_member_past_the_membership_limit() {
    let app = TestApp::spawn_with(|c| c.channels_per_user = 2).await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let mut carol = user(&app, "carol").await;
    connect(&mut alice, &mut bob).await;
    connect(&mut alice, &mut carol).await;
    let create = |names: &[&str]| json!({"title": "t", "usernames": names});
    let first = alice.ok("create", create(&["bob"])).await["channel_id"].clone();
    alice.ok("create", create(&["bob"])).await;
    // bob is in two channels: a third that would add him is refused,
    // naming him; alice too is in two.
    let err = alice
        .call("create", create(&["carol", "bob"]))
        .await
        .expect_err("over the limit");
    assert_eq!(err.code, "over_limit");
    assert!(
        err.message.contains("bob") && err.message.contains("you"),
        "{}",
        err.message
    );
    assert!(!err.message.contains("carol"), "{}", err.message);
    let code = channel_code(&mut alice, first.as_i64().expect("id")).await;
    carol.ok("join", json!({"invite_code": code})).await;
    let mut dave = user(&app, "dave").await;
    connect(&mut carol, &mut dave).await;
    let second = carol.ok("create", create(&["dave"])).await["channel_id"].clone();
    let code = channel_code(&mut carol, second.as_i64().expect("id")).await;
    assert_eq!(
        bob.err("join", json!({"invite_code": code})).await,
        "over_limit"
    );
    bob.ok("quit", json!({"channel_id": first})).await;
    bob.ok("join", json!({"invite_code": code})).await;
    assert_eq!(memberships(&app, bob.id).await, 2);
}

#[tokio::test]
async fn concurrent_creates_and_joins_never_pass_the_membership_limit() {
    let app = TestApp::spawn_with(|c| c.channels_per_user = 3).await;
    let mut bob = user(&app, "bob").await;
    // Six channels bob may join, each of an owner and a friend.
    let mut owners = users(&app, "o", 6).await;
    let mut friends = users(&app, "f", 6).await;
    let mut codes = Vec::new();
    for (owner, friend) in owners.iter_mut().zip(friends.iter_mut()) {
        let id = channel(owner, &mut [friend]).await;
        codes.push(channel_code(owner, id).await);
    }
    // Six creators, each about to make a channel with bob.
    let mut creators = users(&app, "c", 6).await;
    for creator in &mut creators {
        connect(creator, &mut bob).await;
    }
    let mut sockets = Vec::new();
    for _ in 0..6 {
        sockets.push(second_socket(&app, &bob).await);
    }
    let joins = sockets
        .iter_mut()
        .zip(&codes)
        .map(|(s, code)| async move { s.call("join", json!({"invite_code": code})).await });
    let creates = creators.iter_mut().map(|c| async move {
        c.call("create", json!({"title": "t", "usernames": ["bob"]}))
            .await
    });
    let (joined, created) = futures::future::join(
        futures::future::join_all(joins),
        futures::future::join_all(creates),
    )
    .await;
    let outcomes: Vec<_> = joined.into_iter().chain(created).collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        3,
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().err())
            .all(|e| e.code == "over_limit"),
        "{outcomes:?}"
    );
    assert_eq!(memberships(&app, bob.id).await, 3);
}

#[tokio::test]
async fn create_answers_strangers_and_unknown_names_alike() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let mut bob = user(&app, "bob").await;
    let _dave = user(&app, "dave").await;
    connect(&mut alice, &mut bob).await;
    let answer = |u: &'static str| json!({"title": "t", "usernames": ["bob", u]});
    let stranger = alice
        .call("create", answer("dave"))
        .await
        .expect_err("dave");
    let nobody = alice
        .call("create", answer("ghost"))
        .await
        .expect_err("ghost");
    assert_eq!(stranger.code, "unconnected_users");
    assert_eq!(nobody.code, "unconnected_users");
    assert_eq!(
        stranger.message.replace("dave", "NAME"),
        nobody.message.replace("ghost", "NAME")
    );
    // Only a name no user can have is unknown: that tells nothing.
    let impossible = alice
        .call("create", answer("Ghost"))
        .await
        .expect_err("Ghost");
    assert_eq!(impossible.code, "unknown_users");
    assert!(
        impossible.message.contains("Ghost"),
        "{}",
        impossible.message
    );
}

#[tokio::test]
async fn a_long_list_of_refused_names_gets_a_short_message() {
    let app = TestApp::spawn().await;
    let mut alice = user(&app, "alice").await;
    let names: Vec<String> = (0..1000).map(|i| format!("stranger-{i}")).collect();
    let err = alice
        .call("create", json!({"title": "t", "usernames": names}))
        .await
        .expect_err("strangers");
    assert_eq!(err.code, "unconnected_users");
    assert!(err.message.ends_with("and 980 more"), "{}", err.message);
    assert!(err.message.len() < 500, "{}", err.message.len());
}
