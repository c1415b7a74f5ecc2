//! Messages: the batched write and the history reads.
//!
//! A batch is one call of the `write_messages` function (migrations 0009,
//! 0011, 0012, 0014), one statement and so one transaction and one round trip
//! (ARCHITECTURE.md "Hot paths"): its channels are locked in id order (so
//! concurrent batches never deadlock), membership is checked under those
//! locks, each channel's `last_seq` advances once for all of its messages
//! (by the ranks worked out here: [`Ranks`]), and messages, their
//! idempotency keys (`message_keys`, migration 0007), the writers' read
//! pointers and outbox rows (one per event partition, cut into runs of at
//! most 64 KiB: 0014) go in with one statement. `sent_at` is one
//! `clock_timestamp()` per call, taken while its channels are locked, so it
//! follows seq within a channel.

use crate::error::DomainError;
use crate::store::channels::{membership, not_found, not_joined};
use natter_platform::outbox;
use natter_protocol::events::MessageStoredHead;
use natter_protocol::frames::results::{MessageEntry, Written};
use natter_protocol::partition::PartitionKey;
use natter_protocol::rpc::SocketRef;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, Seq, UserId, limits};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use time::OffsetDateTime;

/// One `write_message`, with who wrote it.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    /// The writer.
    pub user_id: UserId,
    /// Their name, for the event.
    pub username: String,
    /// Their socket, which gets no echo.
    pub origin: SocketRef,
    /// Where to.
    pub channel_id: ChannelId,
    /// The writer's idempotency key.
    pub client_msg_id: String,
    /// The text.
    pub content: String,
    /// The request's trace context, carried by its event (and, for the
    /// first event of an outbox row, by the row's headers).
    pub traceparent: Option<String>,
}

/// One row of `write_messages`: a request's 1-based position, how it
/// ended, its channel, and its message when there is one.
type OutcomeRow = (i32, String, i64, Option<i64>, Option<OffsetDateTime>);

/// How one request of a batch ended; cheap to copy to its repeats.
#[derive(Debug, Clone)]
enum Outcome {
    Written(Written),
    NotFound(ChannelId),
    NotJoined(ChannelId),
}

impl Outcome {
    fn into_result(self) -> Result<Written, DomainError> {
        match self {
            Self::Written(w) => Ok(w),
            Self::NotFound(c) => Err(not_found(c)),
            Self::NotJoined(c) => Err(not_joined(c)),
        }
    }
}

/// Stores a batch of writes in one transaction and answers each, in order.
/// A request whose `(user, client_msg_id)` was stored before, or appears
/// earlier in the batch, gets the first one's answer and stores nothing.
/// The whole batch fails only when Postgres does (a unique violation means
/// a concurrent batch stored one of these keys: the caller re-runs).
#[tracing::instrument(level = "debug", skip_all, fields(batch = batch.len()))]
pub(crate) async fn write_batch(
    conn: &mut PgConnection,
    ns: &Namespace,
    batch: &[WriteRequest],
) -> Result<Vec<Result<Written, DomainError>>, DomainError> {
    // Each key goes to Postgres once; its repeats get its answer.
    let mut first_of: HashMap<(i64, &str), usize> = HashMap::new();
    let mut keys: Vec<usize> = Vec::new();
    let position: Vec<usize> = batch
        .iter()
        .enumerate()
        .map(|(i, r)| {
            *first_of
                .entry((r.user_id.0, &r.client_msg_id))
                .or_insert_with(|| {
                    keys.push(i);
                    keys.len() - 1
                })
        })
        .collect();

    let call = Call::new(ns, keys.iter().map(|&i| &batch[i]));
    // Repeats are rare (a client's retry): the first try skips the lookup
    // of keys stored before, and a repeat then fails it on the keys'
    // primary key (migration 0011).
    let rows = match call.run(conn, false).await {
        Err(e) if is_repeated_key(&e) => call.run(conn, true).await?,
        other => other?,
    };

    let mut outcomes: Vec<Option<Outcome>> = vec![None; keys.len()];
    let mut written = 0;
    for (n, outcome, channel, seq, sent_at) in rows {
        let channel_id = ChannelId(channel);
        let outcome = match (outcome.as_str(), seq, sent_at) {
            ("written" | "stored", Some(seq), Some(sent_at)) => {
                written += u64::from(outcome == "written");
                Outcome::Written(Written {
                    channel_id,
                    seq: Seq(seq),
                    sent_at,
                })
            }
            ("not_found", ..) => Outcome::NotFound(channel_id),
            ("not_joined", ..) => Outcome::NotJoined(channel_id),
            _ => {
                return Err(DomainError::Internal(anyhow::anyhow!(
                    "write_messages answered {outcome} without a message"
                )));
            }
        };
        let slot = usize::try_from(n - 1)
            .ok()
            .and_then(|k| outcomes.get_mut(k))
            .ok_or_else(|| {
                DomainError::Internal(anyhow::anyhow!("write_messages answered request {n}"))
            })?;
        *slot = Some(outcome);
    }
    natter_platform::metrics::get()
        .messages_stored
        .add(written, &[]);

    Ok(position
        .into_iter()
        .map(|k| match &outcomes[k] {
            Some(o) => o.clone().into_result(),
            None => Err(DomainError::Internal(anyhow::anyhow!(
                "write_messages did not answer a request"
            ))),
        })
        .collect())
}

/// Whether a write failed on `message_keys`' primary key (one of its
/// partitions'): a repeated `client_msg_id`, not some other constraint,
/// which a re-run with the lookup could not cure.
fn is_repeated_key(error: &DomainError) -> bool {
    error
        .violated_unique_constraint()
        .is_some_and(|c| c.starts_with("message_keys"))
}

/// The arguments of one `write_messages` call, one element per request.
struct Call<'a> {
    users: Vec<i64>,
    client_msg_ids: Vec<&'a str>,
    channels: Vec<i64>,
    ranks: Ranks,
    contents: Vec<&'a str>,
    msg_ids: Vec<uuid::Uuid>,
    subjects: Vec<String>,
    heads: Vec<String>,
    headers: Vec<String>,
    groups: Vec<i32>,
    partitions: Vec<i32>,
}

impl<'a> Call<'a> {
    fn new(ns: &Namespace, requests: impl Iterator<Item = &'a WriteRequest> + Clone) -> Self {
        let channels: Vec<i64> = requests.clone().map(|r| r.channel_id.0).collect();
        let partitions: Vec<i32> = requests
            .clone()
            .map(|r| {
                i32::from(
                    PartitionKey::Channel(r.channel_id)
                        .partition(ns.partitions())
                        .0,
                )
            })
            .collect();
        let heads: Vec<String> = requests
            .clone()
            .map(|r| {
                MessageStoredHead::new(
                    r.channel_id,
                    r.user_id,
                    &r.username,
                    &r.content,
                    &r.origin,
                    r.traceparent.as_deref(),
                )
                .json()
            })
            .collect();
        Self {
            groups: groups(&partitions, heads.iter().map(String::len), ROW_BYTES),
            partitions,
            heads,
            users: requests.clone().map(|r| r.user_id.0).collect(),
            client_msg_ids: requests.clone().map(|r| r.client_msg_id.as_str()).collect(),
            ranks: Ranks::of(&channels),
            channels,
            contents: requests.clone().map(|r| r.content.as_str()).collect(),
            msg_ids: requests.clone().map(|_| outbox::new_msg_id()).collect(),
            subjects: requests
                .clone()
                .map(|r| ns.channel_event_subject(r.channel_id))
                .collect(),
            headers: requests
                .map(|r| outbox::headers_json(r.traceparent.clone()))
                .collect(),
        }
    }

    /// Calls `write_messages`; with `check_keys`, keys stored before are
    /// answered with their message, else one fails the call.
    async fn run(
        &self,
        conn: &mut PgConnection,
        check_keys: bool,
    ) -> Result<Vec<OutcomeRow>, DomainError> {
        Ok(sqlx::query_as(
            "SELECT n, outcome, channel_id, seq, sent_at \
             FROM write_messages($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&self.users)
        .bind(&self.client_msg_ids)
        .bind(&self.channels)
        .bind(&self.ranks.ranks)
        .bind(&self.ranks.channels)
        .bind(&self.ranks.counts)
        .bind(&self.contents)
        .bind(&self.msg_ids)
        .bind(&self.subjects)
        .bind(&self.heads)
        .bind(&self.headers)
        .bind(check_keys)
        .bind(&self.groups)
        .bind(&self.partitions)
        .fetch_all(conn)
        .await?)
    }
}

/// Where each request of a batch falls among its channel's: what
/// `write_messages` adds to a channel's old `last_seq` to make each seq,
/// worked out here rather than by a window and two aggregates in
/// Postgres, which cost it more than storing the rows of a small batch
/// (migration 0011).
#[derive(Debug, PartialEq, Eq)]
struct Ranks {
    /// Per request: 1 for a channel's first request of the batch, 2 for
    /// its second, and so on, in arrival order.
    ranks: Vec<i32>,
    /// The batch's channels, each once, in order of first appearance.
    channels: Vec<i64>,
    /// Per channel of `channels`: its requests in the batch.
    counts: Vec<i32>,
}

impl Ranks {
    fn of(channels_of_requests: &[i64]) -> Self {
        let mut index: HashMap<i64, usize> = HashMap::new();
        let mut ranks = Vec::with_capacity(channels_of_requests.len());
        let mut channels = Vec::new();
        let mut counts: Vec<i32> = Vec::new();
        for &channel in channels_of_requests {
            let k = *index.entry(channel).or_insert_with(|| {
                channels.push(channel);
                counts.push(0);
                channels.len() - 1
            });
            counts[k] += 1;
            ranks.push(counts[k]);
        }
        Self {
            ranks,
            channels,
            counts,
        }
    }
}

/// Most bytes of the events one outbox row carries: what one call stores
/// in one partition goes out as one row, one bus message (migration 0014),
/// unless it would outgrow this, well under NATS's 1 MiB default payload
/// limit. One message alone always fits: 4,000 characters escape to at
/// most 24,000 bytes.
const ROW_BYTES: usize = 64 * 1024;
/// What Postgres appends to a head at most: the title (each character at
/// most six bytes escaped), the seq and the time, with their names.
const TAIL_BYTES: usize = *limits::TITLE_CHARS.end() * 6 + 128;

/// Per request, its group among its partition's requests (`partitions`,
/// the partition of each request's channel): a partition's requests, in
/// arrival order, go in runs whose events (heads of `head_sizes` bytes,
/// plus what Postgres appends and a separator) stay within `limit` bytes,
/// numbered from 0 and never decreasing in arrival order (migration 0014
/// orders a call's rows by their first request, so a channel's rows keep
/// seq order only so); a request over the limit alone is a run of its own.
fn groups(partitions: &[i32], head_sizes: impl Iterator<Item = usize>, limit: usize) -> Vec<i32> {
    let mut runs: HashMap<i32, (i32, usize)> = HashMap::new();
    partitions
        .iter()
        .zip(head_sizes)
        .map(|(partition, head)| {
            let size = head + TAIL_BYTES + 1;
            let (group, bytes) = runs.entry(*partition).or_default();
            if *bytes > 0 && *bytes + size > limit {
                *group += 1;
                *bytes = 0;
            }
            *bytes += size;
            *group
        })
        .collect()
}

/// Which page of `fetch_messages`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Page {
    /// The oldest `limit` after this seq (gap filling).
    After(Seq),
    /// The newest `limit` before this seq, or the newest of all.
    Before(Option<Seq>),
}

/// The oldest page after a seq.
const AFTER: &str = "SELECT m.seq, u.username, m.content, m.sent_at FROM messages m \
     LEFT JOIN users u ON u.id = m.user_id AND u.deleted_at IS NULL \
     WHERE m.channel_id = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3";
/// The newest page before a seq (reversed after reading).
const BEFORE: &str = "SELECT m.seq, u.username, m.content, m.sent_at FROM messages m \
     LEFT JOIN users u ON u.id = m.user_id AND u.deleted_at IS NULL \
     WHERE m.channel_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3";

/// `fetch_messages` for a member: ascending by seq, `username` null for a
/// writer who has unregistered.
///
/// A page of rows before a seq the caller names is read from `history`
/// (`NATTER_DATABASE_READ_URL`, a replica; the primary when unset): those
/// rows were committed before the caller could know that seq, and seqs
/// have no gaps, so a complete answer is recognizable — the `limit` seqs
/// just below it, or all of them down to 1. A replica that lags (or fails)
/// gives an incomplete one, and the page is read from `pool` instead.
/// Membership, the newest page and gap filling (`after_seq`) are always
/// read from the primary: a replica may not have them yet.
///
/// The page is byte-bounded too (docs/protocol.md §2.6): rows are taken
/// in the order read — nearest to `after_seq` / `before_seq` first — while
/// they fit in a reply, at least one. A shorter page is then still the
/// start of what was asked, so a client paging on from its last (or first)
/// seq reads every message. (100 messages of 4,000 CJK chars are 1.2 MB:
/// unbounded, such a page outgrew the bus and was never answered.)
#[tracing::instrument(level = "debug", skip(pool, history))]
pub(crate) async fn fetch(
    pool: &PgPool,
    history: &PgPool,
    channel: ChannelId,
    user: UserId,
    page: Page,
    limit: i64,
) -> Result<Vec<MessageEntry>, DomainError> {
    membership(pool, channel, user).await?;
    let rows = match page {
        Page::After(after) => read_page(pool, AFTER, channel, after.0, limit).await?,
        Page::Before(None) => read_page(pool, BEFORE, channel, i64::MAX, limit).await?,
        Page::Before(Some(before)) => {
            let wanted = limit.min(before.0 - 1).max(0);
            match read_page(history, BEFORE, channel, before.0, limit).await {
                Ok(rows) if is_complete(&rows, before, wanted) => rows,
                Ok(_) => {
                    tracing::debug!("the history replica lags; reading the page from the primary");
                    read_page(pool, BEFORE, channel, before.0, limit).await?
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the history replica failed; reading the page from the primary");
                    read_page(pool, BEFORE, channel, before.0, limit).await?
                }
            }
        }
    };
    let mut entries: Vec<MessageEntry> = rows
        .into_iter()
        .map(|(seq, username, content, sent_at)| MessageEntry {
            seq: Seq(seq),
            username,
            content,
            sent_at,
        })
        .collect();
    entries.truncate(limits::fitting(&entries, limits::MAX_LIST_BYTES).max(1));
    if matches!(page, Page::Before(_)) {
        entries.reverse();
    }
    Ok(entries)
}

/// One row of a page: seq, username, content, sent_at.
type Row = (i64, Option<String>, String, OffsetDateTime);

async fn read_page(
    pool: &PgPool,
    sql: &str,
    channel: ChannelId,
    bound: i64,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(channel.0)
        .bind(bound)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Whether `rows` (newest first) are the `wanted` seqs just below
/// `before`, as a caught-up database answers.
fn is_complete(rows: &[Row], before: Seq, wanted: i64) -> bool {
    usize::try_from(wanted).is_ok_and(|n| rows.len() == n)
        && rows
            .iter()
            .zip(1..)
            .all(|((seq, ..), below)| *seq == before.0 - below)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_platform::db;
    use natter_protocol::events::{Event, decode_events};
    use natter_protocol::partition::Partition;
    use sqlx::migrate::Migrator;
    use std::borrow::Cow;

    /// The migration that partitions `messages` (0007).
    const PARTITIONING: i64 = 7;

    fn request(user: i64, channel: i64, key: &str) -> WriteRequest {
        WriteRequest {
            user_id: UserId(user),
            username: "alice".into(),
            origin: SocketRef {
                gateway_id: "gw".into(),
                socket_id: natter_protocol::SocketId(1),
            },
            channel_id: ChannelId(channel),
            client_msg_id: key.into(),
            content: format!("new {key}"),
            traceparent: None,
        }
    }

    /// [`write_batch`] on a connection of `pool`.
    async fn write_on(
        pool: &PgPool,
        ns: &Namespace,
        batch: &[WriteRequest],
    ) -> Result<Vec<Result<Written, DomainError>>, DomainError> {
        let mut conn = pool.acquire().await.expect("a connection");
        write_batch(&mut conn, ns, batch).await
    }

    /// The user `alice`: her id.
    async fn insert_alice(pool: &PgPool) -> i64 {
        insert_user(pool, "alice").await
    }

    /// A user of that name: their id.
    async fn insert_user(pool: &PgPool, name: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, invite_code) \
             VALUES ($1, 'x', 'code-' || $1) RETURNING id",
        )
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("user")
    }

    /// Channels with these titles, `user` their one member: their ids.
    async fn channels_of(pool: &PgPool, user: i64, titles: &[&str]) -> Vec<i64> {
        let channels: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO channels (title, invite_code, head_count, created_by) \
             SELECT t, t, 1, $1 FROM UNNEST($2::text[]) AS t RETURNING id",
        )
        .bind(user)
        .bind(titles)
        .fetch_all(pool)
        .await
        .expect("channels");
        sqlx::query(
            "INSERT INTO channel_members (channel_id, user_id) SELECT c, $1 FROM UNNEST($2::bigint[]) AS c",
        )
        .bind(user)
        .bind(&channels)
        .execute(pool)
        .await
        .expect("members");
        channels
    }

    /// A database that already held messages before 0007 keeps them:
    /// they read back in order, and their `client_msg_id`s still make a
    /// repeat write return the first seq, while a new write takes the
    /// next seq.
    #[tokio::test]
    async fn messages_stored_before_partitioning_read_back_and_stay_idempotent() {
        let database = natter_testkit::TestDatabase::empty().await;
        let pool = database.pool().await;
        let before = Migrator {
            migrations: Cow::Owned(
                db::MIGRATOR
                    .iter()
                    .filter(|m| m.version < PARTITIONING)
                    .cloned()
                    .collect(),
            ),
            ..Migrator::DEFAULT
        };
        before.run(&pool).await.expect("migrations before 0007");
        let alice = insert_alice(&pool).await;
        let mut channels = Vec::new();
        for title in ["one", "two", "three"] {
            let channel: i64 = sqlx::query_scalar(
                "INSERT INTO channels (title, invite_code, head_count, last_seq, created_by) \
                 VALUES ($1, $1, 1, 3, $2) RETURNING id",
            )
            .bind(title)
            .bind(alice)
            .fetch_one(&pool)
            .await
            .expect("channel");
            sqlx::query(
                "INSERT INTO channel_members (channel_id, user_id, last_read_seq) VALUES ($1, $2, 3)",
            )
            .bind(channel)
            .bind(alice)
            .execute(&pool)
            .await
            .expect("member");
            sqlx::query(
                "INSERT INTO messages (channel_id, seq, user_id, client_msg_id, content, sent_at) \
                 SELECT $1, n, $2, $3 || '-' || n, 'old ' || n, now() FROM generate_series(1, 3) AS n",
            )
            .bind(channel)
            .bind(alice)
            .bind(title)
            .execute(&pool)
            .await
            .expect("messages");
            channels.push(channel);
        }

        db::migrate(&pool)
            .await
            .expect("0007 on a database with messages");

        let kind: String =
            sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'messages'")
                .fetch_one(&pool)
                .await
                .expect("relkind");
        assert_eq!(kind, "p", "messages is partitioned");
        for &channel in &channels {
            let page = fetch(
                &pool,
                &pool,
                ChannelId(channel),
                UserId(alice),
                Page::Before(None),
                10,
            )
            .await
            .expect("page");
            let read: Vec<(i64, &str)> =
                page.iter().map(|m| (m.seq.0, m.content.as_str())).collect();
            assert_eq!(read, [(1, "old 1"), (2, "old 2"), (3, "old 3")]);
        }
        let ns = Namespace::new("migration-test");
        let written = write_on(
            &pool,
            &ns,
            &[
                request(alice, channels[0], "two-2"),
                request(alice, channels[0], "fresh"),
            ],
        )
        .await
        .expect("batch");
        let seqs: Vec<(i64, i64)> = written
            .iter()
            .map(|w| {
                let w = w.as_ref().expect("written");
                (w.channel_id.0, w.seq.0)
            })
            .collect();
        assert_eq!(seqs, [(channels[1], 2), (channels[0], 4)]);
    }

    /// Requests answered otherwise (a key stored before, a writer who is
    /// not a member) take no seq: the written ones around them, in the
    /// same channel, still get consecutive seqs in arrival order, and each
    /// channel's `last_seq` ends at its last.
    #[tokio::test]
    async fn requests_answered_otherwise_leave_no_gap_in_their_channel_s_seqs() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let alice = insert_alice(&pool).await;
        let bob = insert_user(&pool, "bob").await;
        let channels = channels_of(&pool, alice, &["one", "two"]).await;
        let ns = Namespace::new("ranks-test");
        let (one, two) = (channels[0], channels[1]);
        write_on(&pool, &ns, &[request(alice, one, "before")])
            .await
            .expect("first batch");

        let answers = write_on(
            &pool,
            &ns,
            &[
                request(alice, one, "before"),
                request(alice, one, "a"),
                request(bob, one, "bob's"),
                request(alice, two, "b"),
                request(alice, one, "c"),
            ],
        )
        .await
        .expect("batch");
        let seqs: Vec<Option<(i64, i64)>> = answers
            .iter()
            .map(|a| a.as_ref().ok().map(|w| (w.channel_id.0, w.seq.0)))
            .collect();
        assert_eq!(
            seqs,
            [
                Some((one, 1)),
                Some((one, 2)),
                None,
                Some((two, 1)),
                Some((one, 3))
            ]
        );
        let last: Vec<i64> = sqlx::query_scalar("SELECT last_seq FROM channels ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("last seqs");
        assert_eq!(last, [3, 1]);
        let stored: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT channel_id, seq, content FROM messages ORDER BY channel_id, seq",
        )
        .fetch_all(&pool)
        .await
        .expect("messages");
        assert_eq!(
            stored,
            [
                (one, 1, "new before".to_string()),
                (one, 2, "new a".to_string()),
                (one, 3, "new c".to_string()),
                (two, 1, "new b".to_string()),
            ]
        );
    }

    /// A write stored while its writer was a member, repeated after they
    /// left the channel (a client retrying after `unavailable`), gets its
    /// first answer, not `not_joined`, alone or beside new writes.
    #[tokio::test]
    async fn a_repeat_after_leaving_the_channel_gets_the_first_answer() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let alice = insert_alice(&pool).await;
        let channels = channels_of(&pool, alice, &["left", "stayed"]).await;
        let (left, stayed) = (channels[0], channels[1]);
        let ns = Namespace::new("left-test");
        let first = write_on(&pool, &ns, &[request(alice, left, "k")])
            .await
            .expect("first write")
            .pop()
            .expect("an answer")
            .expect("written");
        sqlx::query("DELETE FROM channel_members WHERE channel_id = $1")
            .bind(left)
            .execute(&pool)
            .await
            .expect("left");

        let answers = write_on(
            &pool,
            &ns,
            &[request(alice, left, "k"), request(alice, stayed, "new")],
        )
        .await
        .expect("retry");
        let again = answers[0].as_ref().expect("the first answer");
        assert_eq!(
            (again.channel_id, again.seq, again.sent_at),
            (first.channel_id, first.seq, first.sent_at)
        );
        assert_eq!(answers[1].as_ref().expect("written").seq, Seq(1));
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(stored, 2);
    }

    /// A write reads and updates its writer's membership row by primary
    /// key. Left to the generic plans, the membership check and the read
    /// pointer's update each scanned all of a small `channel_members` at
    /// every call, here a channel's 2,000 rows (migration 0013).
    #[tokio::test]
    async fn a_write_finds_its_writer_s_membership_by_index_not_by_scanning_every_member() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let alice = insert_alice(&pool).await;
        let channel = channels_of(&pool, alice, &["crowd"]).await[0];
        sqlx::query(
            "WITH u AS (INSERT INTO users (username, password_hash, invite_code) \
             SELECT 'm' || n, 'x', 'code-m' || n FROM generate_series(1, 1999) AS n RETURNING id) \
             INSERT INTO channel_members (channel_id, user_id) SELECT $1, id FROM u",
        )
        .bind(channel)
        .execute(&pool)
        .await
        .expect("members");
        // With statistics of this table alone (autovacuum analyzes a table
        // when it has grown), both statements' generic plans scanned it.
        sqlx::query("ANALYZE channel_members")
            .execute(&pool)
            .await
            .expect("statistics");

        // This backend's counts, which may hold earlier transactions'
        // until they are flushed: the write's are the difference.
        const READS: &str = "SELECT seq_scan, \
             pg_stat_get_xact_tuples_returned('channel_members_pkey'::regclass) \
             FROM pg_stat_xact_user_tables WHERE relname = 'channel_members'";
        let mut tx = pool.begin().await.expect("a transaction");
        let before: (i64, i64) = sqlx::query_as(READS)
            .fetch_one(&mut *tx)
            .await
            .expect("reads before");
        let answers = write_batch(
            &mut tx,
            &Namespace::new("probe-test"),
            &[request(alice, channel, "k")],
        )
        .await
        .expect("batch");
        assert_eq!(answers[0].as_ref().expect("written").seq, Seq(1));
        let after: (i64, i64) = sqlx::query_as(READS)
            .fetch_one(&mut *tx)
            .await
            .expect("reads after");
        assert_eq!(after.0 - before.0, 0, "channel_members was scanned");
        assert!(
            after.1 - before.1 <= 2,
            "{} index entries read for one writer",
            after.1 - before.1
        );
    }

    /// Planning its statements again at every call was most of the cost of
    /// a small batch (migrations 0010, 0011); the plans it keeps must not
    /// scan a table (0013).
    #[tokio::test]
    async fn write_messages_runs_with_the_plans_it_made_once() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let settings: Vec<String> = sqlx::query_scalar(
            "SELECT unnest(proconfig) FROM pg_proc WHERE oid = 'write_messages(bigint[], text[], \
             bigint[], int[], bigint[], int[], text[], uuid[], text[], text[], text[], boolean, int[], \
             int[])'::regprocedure",
        )
        .fetch_all(&pool)
        .await
        .expect("function settings");
        assert_eq!(
            settings,
            ["plan_cache_mode=force_generic_plan", "enable_seqscan=off"]
        );
    }

    /// The outbox row of a written message is its `message_stored` event
    /// as Rust encodes it, completed by Postgres with the channel's title,
    /// the seq and the time the writer was answered with, on the channel's
    /// subject. Each event carries its own request's trace context; the
    /// row's headers carry the first's.
    #[tokio::test]
    async fn a_written_message_s_outbox_row_is_its_event_with_the_answered_seq_and_time() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let alice = insert_alice(&pool).await;
        let title = "a \"quoted\" \\ room";
        let channel: i64 = sqlx::query_scalar(
            "INSERT INTO channels (title, invite_code, head_count, created_by) \
             VALUES ($1, 'room', 1, $2) RETURNING id",
        )
        .bind(title)
        .bind(alice)
        .fetch_one(&pool)
        .await
        .expect("channel");
        sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
            .bind(channel)
            .bind(alice)
            .execute(&pool)
            .await
            .expect("member");
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut first = request(alice, channel, "k1");
        first.content = "line one\nand \"two\" \u{1F600}".into();
        first.traceparent = Some(traceparent.into());
        let mut second = request(alice, channel, "k2");
        second.traceparent = Some(other.into());
        let ns = Namespace::new("outbox-test");
        let answers = write_on(&pool, &ns, &[first, second]).await.expect("batch");
        let written: Vec<Written> = answers.into_iter().map(|a| a.expect("written")).collect();

        let rows: Vec<(String, Vec<u8>, serde_json::Value)> =
            sqlx::query_as("SELECT subject, payload, headers FROM outbox ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("outbox");
        assert_eq!(
            rows.len(),
            1,
            "one row for the call's messages to the channel"
        );
        let events = decode_events(&rows[0].1).expect("events");
        let expected = |w: &Written, content: &str, traceparent: &str| Event::MessageStored {
            channel_id: ChannelId(channel),
            title: title.into(),
            seq: w.seq,
            user_id: UserId(alice),
            username: "alice".into(),
            content: content.into(),
            sent_at: w.sent_at,
            origin: SocketRef {
                gateway_id: "gw".into(),
                socket_id: natter_protocol::SocketId(1),
            },
            traceparent: Some(traceparent.into()),
        };
        assert_eq!(
            events,
            [
                expected(&written[0], "line one\nand \"two\" \u{1F600}", traceparent),
                expected(&written[1], "new k2", other),
            ]
        );
        assert_eq!(written.iter().map(|w| w.seq.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(rows[0].0, ns.event_subject(&events[0]));
        assert_eq!(rows[0].2, serde_json::json!({ "traceparent": traceparent }));
    }

    /// The outbox rows, each as its subject and its events' (channel, seq),
    /// in the order the relay publishes them.
    async fn outbox_rows(pool: &PgPool) -> Vec<(String, Vec<(i64, i64)>)> {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT subject, payload FROM outbox ORDER BY id")
                .fetch_all(pool)
                .await
                .expect("outbox");
        rows.into_iter()
            .map(|(subject, payload)| {
                let events = decode_events(&payload)
                    .expect("events")
                    .into_iter()
                    .map(|e| match e {
                        Event::MessageStored {
                            channel_id, seq, ..
                        } => (channel_id.0, seq.0),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                (subject, events)
            })
            .collect()
    }

    /// With one partition, a call's messages go out as one outbox row
    /// whatever their channels, in arrival order, so each channel's are in
    /// seq order; a lone message is its event, not an array of one.
    #[tokio::test]
    async fn a_call_s_messages_to_one_partition_make_one_outbox_row_in_arrival_order() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let alice = insert_alice(&pool).await;
        let [a, b, c] = channels_of(&pool, alice, &["a", "b", "c"]).await[..] else {
            panic!("three channels");
        };
        let ns = Namespace::new("outbox-test").with_partitions(1);
        let batch = [
            request(alice, b, "1"),
            request(alice, a, "2"),
            request(alice, b, "3"),
            request(alice, c, "4"),
            request(alice, b, "5"),
            request(alice, a, "6"),
        ];
        for answer in write_on(&pool, &ns, &batch).await.expect("batch") {
            answer.expect("written");
        }
        assert_eq!(
            outbox_rows(&pool).await,
            [(
                ns.channel_event_subject(ChannelId(b)),
                vec![(b, 1), (a, 1), (b, 2), (c, 1), (b, 3), (a, 2)]
            )]
        );

        write_on(&pool, &ns, &[request(alice, c, "7")])
            .await
            .expect("batch")[0]
            .as_ref()
            .expect("written");
        let payload: Vec<u8> =
            sqlx::query_scalar("SELECT payload FROM outbox ORDER BY id DESC LIMIT 1")
                .fetch_one(&pool)
                .await
                .expect("outbox");
        assert_eq!(payload.first(), Some(&b'{'), "a lone event is no array");
    }

    /// A call's messages go out as one outbox row per partition of their
    /// channels, in the order of each partition's first message, on a
    /// subject of that partition, each row holding only its partition's
    /// channels.
    #[tokio::test]
    async fn a_call_s_messages_make_one_outbox_row_per_partition() {
        let database = natter_testkit::TestDatabase::create().await;
        let pool = database.pool().await;
        let alice = insert_alice(&pool).await;
        let titles: Vec<String> = (0..12).map(|n| format!("room {n}")).collect();
        let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
        let channels = channels_of(&pool, alice, &titles).await;
        let ns = Namespace::new("outbox-test").with_partitions(4);
        let partition = |channel: i64| PartitionKey::Channel(ChannelId(channel)).partition(4);
        let batch: Vec<WriteRequest> = channels
            .iter()
            .chain(channels.iter().rev())
            .enumerate()
            .map(|(n, &channel)| request(alice, channel, &n.to_string()))
            .collect();
        for answer in write_on(&pool, &ns, &batch).await.expect("batch") {
            answer.expect("written");
        }

        // What each partition should get: its requests, in arrival order.
        let mut expected: Vec<(Partition, Vec<(i64, i64)>)> = Vec::new();
        let mut seqs: HashMap<i64, i64> = HashMap::new();
        for r in &batch {
            let channel = r.channel_id.0;
            let seq = seqs.entry(channel).or_default();
            *seq += 1;
            let p = partition(channel);
            match expected.iter_mut().find(|(q, _)| *q == p) {
                Some((_, events)) => events.push((channel, *seq)),
                None => expected.push((p, vec![(channel, *seq)])),
            }
        }
        assert!(expected.len() > 1, "the channels span several partitions");
        let rows = outbox_rows(&pool).await;
        assert_eq!(
            rows.iter()
                .map(|(_, events)| events.clone())
                .collect::<Vec<_>>(),
            expected
                .iter()
                .map(|(_, events)| events.clone())
                .collect::<Vec<_>>()
        );
        for ((subject, _), (p, _)) in rows.iter().zip(&expected) {
            assert!(
                subject.starts_with(&ns.partition_subject(*p, "")),
                "{subject} is not in partition {p}"
            );
        }
    }

    #[test]
    fn a_request_s_rank_counts_the_earlier_requests_of_its_channel_only() {
        assert_eq!(
            Ranks::of(&[7, 3, 7, 7, 3, 9]),
            Ranks {
                ranks: vec![1, 1, 2, 3, 2, 1],
                channels: vec![7, 3, 9],
                counts: vec![3, 2, 1],
            }
        );
        assert_eq!(
            Ranks::of(&[]),
            Ranks {
                ranks: vec![],
                channels: vec![],
                counts: vec![],
            }
        );
    }

    #[test]
    fn a_partition_s_requests_share_a_group_until_their_events_would_pass_the_limit() {
        let event = |head: usize| head + TAIL_BYTES + 1;
        let limit = event(100) * 3;
        assert_eq!(
            groups(&[7, 3, 7, 7, 3, 7], [100; 6].into_iter(), limit),
            [0, 0, 0, 0, 0, 1],
            "partition 7's fourth event would pass the limit"
        );
        assert_eq!(
            groups(&[7, 7, 7], [100, limit, 100].into_iter(), limit),
            [0, 1, 2],
            "an event over the limit goes alone"
        );
        assert!(groups(&[], std::iter::empty(), limit).is_empty());
    }

    #[test]
    fn a_page_is_complete_when_it_holds_every_seq_just_below_the_bound() {
        let row = |seq: i64| (seq, None, String::new(), OffsetDateTime::UNIX_EPOCH);
        let rows: Vec<Row> = vec![row(9), row(8), row(7)];
        assert!(is_complete(&rows, Seq(10), 3));
        assert!(!is_complete(&rows, Seq(11), 3), "seq 10 is missing");
        assert!(!is_complete(&rows[..2], Seq(10), 3), "seq 7 is missing");
        assert!(is_complete(&[], Seq(1), 0));
    }
}
