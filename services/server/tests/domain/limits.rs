//! The abuse limits of docs/protocol.md §2.6 that the domain enforces:
//! replies within 512 KiB with paging that still reads everything.

use crate::support::{User, channel, user};
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
