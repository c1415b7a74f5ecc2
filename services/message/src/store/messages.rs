//! Messages: the batched write and the history reads.
//!
//! A batch is one transaction (ARCHITECTURE.md "Hot paths"): its channels are
//! locked in id order (so concurrent batches never deadlock), membership is
//! checked under those locks, each channel's `last_seq` advances once for
//! all of its messages, and messages, their idempotency keys
//! (`message_keys`, migration 0007) and outbox rows go in with one
//! `UNNEST` insert each. `sent_at` is `clock_timestamp()` per row, inserted
//! in seq order, so it follows seq within a channel.

use crate::error::DomainError;
use crate::store::channels::{membership, not_found, not_joined};
use natter_platform::outbox::{self, OutboxRow};
use natter_protocol::events::Event;
use natter_protocol::frames::results::{MessageEntry, Written};
use natter_protocol::rpc::SocketRef;
use natter_protocol::subjects::Namespace;
use natter_protocol::{ChannelId, Seq, UserId, limits};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// The request's trace context, carried by its outbox row.
    pub traceparent: Option<String>,
}

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
    pool: &PgPool,
    ns: &Namespace,
    batch: &[WriteRequest],
) -> Result<Vec<Result<Written, DomainError>>, DomainError> {
    let mut tx = pool.begin().await?;

    // The first request of each key decides the answer of its repeats.
    let mut first_of: HashMap<(i64, &str), usize> = HashMap::new();
    let primary: Vec<usize> = batch
        .iter()
        .enumerate()
        .map(|(i, r)| *first_of.entry((r.user_id.0, &r.client_msg_id)).or_insert(i))
        .collect();
    let mut outcome: Vec<Option<Outcome>> = vec![None; batch.len()];

    let (key_users, key_ids): (Vec<i64>, Vec<&str>) = first_of.keys().copied().unzip();
    // One primary-key lookup per key, whatever the tables' statistics say:
    // `OFFSET 0` keeps each lateral subquery from being flattened into a
    // join, which the planner (on a young table, or with a generic plan
    // made while it was small) turned into a hash join over a sequential
    // scan of every partition of `message_keys` — per batch, the largest
    // cost of a write on Postgres's side.
    let stored: Vec<(i64, String, i64, i64, OffsetDateTime)> = sqlx::query_as(
        "SELECT q.user_id, q.client_msg_id, k.channel_id, k.seq, m.sent_at \
         FROM UNNEST($1::bigint[], $2::text[]) AS q(user_id, client_msg_id) \
         CROSS JOIN LATERAL (SELECT channel_id, seq FROM message_keys \
           WHERE user_id = q.user_id AND client_msg_id = q.client_msg_id OFFSET 0) AS k \
         CROSS JOIN LATERAL (SELECT sent_at FROM messages \
           WHERE channel_id = k.channel_id AND seq = k.seq OFFSET 0) AS m",
    )
    .bind(&key_users)
    .bind(&key_ids)
    .fetch_all(&mut *tx)
    .await?;
    for (user, key, channel, seq, sent_at) in stored {
        if let Some(&i) = first_of.get(&(user, key.as_str())) {
            outcome[i] = Some(Outcome::Written(Written {
                channel_id: ChannelId(channel),
                seq: Seq(seq),
                sent_at,
            }));
        }
    }
    let fresh: Vec<usize> = (0..batch.len())
        .filter(|&i| primary[i] == i && outcome[i].is_none())
        .collect();

    let mut channel_ids: Vec<i64> = fresh.iter().map(|&i| batch[i].channel_id.0).collect();
    channel_ids.sort_unstable();
    channel_ids.dedup();
    let titles: HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>(
        "SELECT id, title FROM channels WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(&channel_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let (member_channels, member_users): (Vec<i64>, Vec<i64>) = fresh
        .iter()
        .map(|&i| (batch[i].channel_id.0, batch[i].user_id.0))
        .unzip();
    let members: HashSet<(i64, i64)> = sqlx::query_as::<_, (i64, i64)>(
        "SELECT channel_id, user_id FROM channel_members \
         JOIN UNNEST($1::bigint[], $2::bigint[]) AS k(channel_id, user_id) \
           USING (channel_id, user_id)",
    )
    .bind(&member_channels)
    .bind(&member_users)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();

    let mut accepted = Vec::with_capacity(fresh.len());
    let mut per_channel: BTreeMap<i64, i64> = BTreeMap::new();
    for i in fresh {
        let r = &batch[i];
        if !titles.contains_key(&r.channel_id.0) {
            outcome[i] = Some(Outcome::NotFound(r.channel_id));
        } else if !members.contains(&(r.channel_id.0, r.user_id.0)) {
            outcome[i] = Some(Outcome::NotJoined(r.channel_id));
        } else {
            *per_channel.entry(r.channel_id.0).or_default() += 1;
            accepted.push(i);
        }
    }

    if !accepted.is_empty() {
        insert_accepted(
            &mut tx,
            ns,
            batch,
            &accepted,
            &per_channel,
            &titles,
            &mut outcome,
        )
        .await?;
    }
    tx.commit().await?;
    natter_platform::metrics::get()
        .messages_stored
        .add(accepted.len() as u64, &[]);

    Ok((0..batch.len())
        .map(|i| match &outcome[primary[i]] {
            Some(o) => o.clone().into_result(),
            None => Err(DomainError::Internal(anyhow::anyhow!(
                "write {i} of a batch got no outcome"
            ))),
        })
        .collect())
}

/// Assigns seqs, inserts the accepted messages and their outbox rows, and
/// moves each writer's read pointer.
async fn insert_accepted(
    tx: &mut sqlx::PgConnection,
    ns: &Namespace,
    batch: &[WriteRequest],
    accepted: &[usize],
    per_channel: &BTreeMap<i64, i64>,
    titles: &HashMap<i64, String>,
    outcome: &mut [Option<Outcome>],
) -> Result<(), DomainError> {
    let (ids, counts): (Vec<i64>, Vec<i64>) = per_channel.iter().map(|(c, n)| (*c, *n)).unzip();
    let advanced: Vec<(i64, i64)> = sqlx::query_as(
        "UPDATE channels c SET last_seq = c.last_seq + u.n \
         FROM UNNEST($1::bigint[], $2::bigint[]) AS u(id, n) WHERE c.id = u.id \
         RETURNING c.id, c.last_seq",
    )
    .bind(&ids)
    .bind(&counts)
    .fetch_all(&mut *tx)
    .await?;
    let mut next_seq: HashMap<i64, i64> = advanced
        .into_iter()
        .map(|(id, last)| (id, last - per_channel.get(&id).copied().unwrap_or(0) + 1))
        .collect();

    let mut seqs = Vec::with_capacity(accepted.len());
    for &i in accepted {
        let next = next_seq.get_mut(&batch[i].channel_id.0).ok_or_else(|| {
            DomainError::Internal(anyhow::anyhow!("a locked channel was not advanced"))
        })?;
        seqs.push(*next);
        *next += 1;
    }
    // Arrival order keeps each channel's rows in seq order, which is the
    // order clock_timestamp() is evaluated in.
    let channels: Vec<i64> = accepted.iter().map(|&i| batch[i].channel_id.0).collect();
    let users: Vec<i64> = accepted.iter().map(|&i| batch[i].user_id.0).collect();
    let keys: Vec<&str> = accepted
        .iter()
        .map(|&i| batch[i].client_msg_id.as_str())
        .collect();
    let contents: Vec<&str> = accepted
        .iter()
        .map(|&i| batch[i].content.as_str())
        .collect();
    let sent: HashMap<(i64, i64), OffsetDateTime> = sqlx::query_as::<_, (i64, i64, OffsetDateTime)>(
        "INSERT INTO messages (channel_id, seq, user_id, client_msg_id, content, sent_at) \
         SELECT c, s, u, k, t, clock_timestamp() \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) AS x(c, s, u, k, t) \
         RETURNING channel_id, seq, sent_at",
    )
    .bind(&channels)
    .bind(&seqs)
    .bind(&users)
    .bind(&keys)
    .bind(&contents)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(c, s, t)| ((c, s), t))
    .collect();
    sqlx::query(
        "INSERT INTO message_keys (user_id, client_msg_id, channel_id, seq) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[])",
    )
    .bind(&users)
    .bind(&keys)
    .bind(&channels)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?;

    let mut read_to: HashMap<(i64, i64), i64> = HashMap::new();
    let mut events = Vec::with_capacity(accepted.len());
    for (&i, &seq) in accepted.iter().zip(&seqs) {
        let r = &batch[i];
        let sent_at = sent.get(&(r.channel_id.0, seq)).copied().ok_or_else(|| {
            DomainError::Internal(anyhow::anyhow!("message {seq} was not returned"))
        })?;
        let read = read_to.entry((r.channel_id.0, r.user_id.0)).or_default();
        *read = (*read).max(seq);
        let event = Event::MessageStored {
            channel_id: r.channel_id,
            title: titles.get(&r.channel_id.0).cloned().unwrap_or_default(),
            seq: Seq(seq),
            user_id: r.user_id,
            username: r.username.clone(),
            content: r.content.clone(),
            sent_at,
            origin: r.origin.clone(),
        };
        events.push(OutboxRow::event(ns, &event, r.traceparent.clone())?);
        outcome[i] = Some(Outcome::Written(Written {
            channel_id: r.channel_id,
            seq: Seq(seq),
            sent_at,
        }));
    }

    let (read_keys, read_seqs): (Vec<(i64, i64)>, Vec<i64>) = read_to.into_iter().unzip();
    let (read_channels, read_users): (Vec<i64>, Vec<i64>) = read_keys.into_iter().unzip();
    sqlx::query(
        "UPDATE channel_members m SET last_read_seq = GREATEST(m.last_read_seq, u.seq) \
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[]) AS u(channel_id, user_id, seq) \
         WHERE m.channel_id = u.channel_id AND m.user_id = u.user_id",
    )
    .bind(&read_channels)
    .bind(&read_users)
    .bind(&read_seqs)
    .execute(&mut *tx)
    .await?;
    outbox::insert(tx, &events).await?;
    Ok(())
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
        let alice: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, invite_code) \
             VALUES ('alice', 'x', 'code-alice') RETURNING id",
        )
        .fetch_one(&pool)
        .await
        .expect("user");
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
        let written = write_batch(
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
