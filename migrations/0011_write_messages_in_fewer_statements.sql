-- `write_messages` again (0009, 0010), in three or four statements instead
-- of ten or more, because at the rates a user sees most — a few messages per
-- call — Postgres spent its time starting statements, not storing rows.
-- Measured on the 2-core machine with pgbench, CPU per call: 0009's
-- function took ~375 µs for one message and ~480 µs for five, ~110 µs of
-- which any one-insert transaction pays (commit, WAL flush, protocol); the
-- statement that assigned seqs (a window, two aggregates, a join on the
-- UPDATE's CTE) alone took ~85 µs, and every statement set up aggregates
-- and a 16-partition scan whether or not it had work.
--
-- What changed:
-- - the caller passes what Rust knows for free: each request's rank among
--   the batch's requests for its channel (`p_ranks`, 1-based, in arrival
--   order) and each channel's count (`p_batch_channels`,
--   `p_batch_counts`). They are recomputed here only when a request is
--   answered otherwise (stored before, no such channel, not a member);
-- - the seqs, messages, keys, read pointers and outbox rows go in with one
--   statement of data-modifying CTEs (planned once, like every statement
--   here: `plan_cache_mode`);
-- - keys stored before are looked up only when the caller asks
--   (`p_check_keys`). A repeated `client_msg_id` is rare (a client's
--   retry), so the caller first writes without the lookup — a repeat then
--   fails the whole call on `message_keys`' primary key, and the caller
--   runs it again with the lookup. A refused request (no such channel,
--   not a member) is looked up in any case before it is answered: a
--   retry of a write stored while its writer was still a member gets
--   the first answer, not the refusal. The lookup reads `message_keys` only;
--   the stored message's `sent_at` is read when a key was found. Skipping
--   it saved ~15 % of a call's CPU at 5 and at 20 messages (pgbench);
-- - statements that answer the rare outcomes run only when there are some;
-- - `sent_at` is one `clock_timestamp()` per call, taken while the batch's
--   channels are locked, so it still follows seq within a channel (a later
--   batch of the channel waits for the lock and takes a later time);
--   messages stored together share it.
--
-- What the batch does is otherwise 0009's: keys stored before answer with
-- their first message; channels are locked in id order, membership is
-- checked under those locks; each channel's `last_seq` advances once;
-- outbox rows go in in arrival order, so the relay publishes a channel's
-- events in seq order; the outbox payload is the caller's head followed by
-- title, seq and sent_at (natter_protocol::events::MessageStoredHead).
--
-- 0009's function stays, under its own argument list, for the message
-- instances of the release before, which keep writing with it until they
-- are replaced; a later migration drops it.
CREATE FUNCTION write_messages(
    p_users          BIGINT[],
    p_keys           TEXT[],
    p_channels       BIGINT[],
    p_ranks          INT[],
    p_batch_channels BIGINT[],
    p_batch_counts   INT[],
    p_contents       TEXT[],
    p_msg_ids        UUID[],
    p_subjects       TEXT[],
    p_heads          TEXT[],
    p_headers        TEXT[],
    p_check_keys     BOOLEAN
) RETURNS TABLE (n INT, outcome TEXT, channel_id BIGINT, seq BIGINT, sent_at TIMESTAMPTZ)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_stored   INT[] := '{}';
    v_fresh    INT[];
    v_accepted INT[] := '{}';
    v_ranks    INT[] := p_ranks;
    v_channels BIGINT[] := p_batch_channels;
    v_counts   INT[] := p_batch_counts;
    v_sent     TIMESTAMPTZ;
BEGIN
    -- Keys stored before: one primary-key lookup per key (`OFFSET 0`
    -- keeps the lateral subquery from becoming a join over every
    -- partition).
    IF p_check_keys THEN
        v_stored := ARRAY(SELECT q.n::INT
            FROM UNNEST(p_users, p_keys) WITH ORDINALITY AS q(user_id, client_msg_id, n)
            CROSS JOIN LATERAL (SELECT 1 FROM message_keys mk
                WHERE mk.user_id = q.user_id AND mk.client_msg_id = q.client_msg_id OFFSET 0) AS k);
    END IF;
    IF cardinality(v_stored) = 0 THEN
        v_fresh := ARRAY(SELECT generate_subscripts(p_users, 1));
    ELSE
        v_fresh := ARRAY(SELECT i FROM generate_subscripts(p_users, 1) AS i
            WHERE i <> ALL (v_stored) ORDER BY i);
    END IF;

    IF cardinality(v_fresh) > 0 THEN
        PERFORM 1 FROM channels c
            WHERE c.id = ANY (ARRAY(SELECT p_channels[i] FROM UNNEST(v_fresh) AS i))
            ORDER BY c.id
            FOR NO KEY UPDATE;
        v_accepted := ARRAY(SELECT i FROM UNNEST(v_fresh) AS i
            WHERE EXISTS (SELECT 1 FROM channel_members cm
                WHERE cm.channel_id = p_channels[i] AND cm.user_id = p_users[i])
            ORDER BY i);
        -- Unchecked, a refused request may still repeat a key stored
        -- before (written while its writer was a member, say): it gets
        -- that first answer, not the refusal. (An accepted one that
        -- repeats a key fails the call on the keys' primary key.)
        IF NOT p_check_keys AND cardinality(v_accepted) < cardinality(v_fresh) THEN
            v_stored := ARRAY(SELECT q.i FROM UNNEST(v_fresh) AS q(i)
                CROSS JOIN LATERAL (SELECT 1 FROM message_keys mk
                    WHERE mk.user_id = p_users[q.i] AND mk.client_msg_id = p_keys[q.i] OFFSET 0) AS k
                WHERE q.i <> ALL (v_accepted));
        END IF;
    END IF;

    IF cardinality(v_stored) > 0 THEN
        RETURN QUERY
            SELECT s.i, 'stored'::TEXT, k.channel_id, k.seq, m.sent_at
            FROM UNNEST(v_stored) AS s(i)
            CROSS JOIN LATERAL (SELECT mk.channel_id, mk.seq FROM message_keys mk
                WHERE mk.user_id = p_users[s.i] AND mk.client_msg_id = p_keys[s.i] OFFSET 0) AS k
            CROSS JOIN LATERAL (SELECT ms.sent_at FROM messages ms
                WHERE ms.channel_id = k.channel_id AND ms.seq = k.seq OFFSET 0) AS m;
    END IF;
    IF cardinality(v_accepted) < cardinality(p_users) THEN
        IF cardinality(v_accepted) + cardinality(v_stored) < cardinality(p_users) THEN
            RETURN QUERY
                SELECT i, CASE WHEN c.id IS NULL THEN 'not_found' ELSE 'not_joined' END,
                    p_channels[i], NULL::BIGINT, NULL::TIMESTAMPTZ
                FROM UNNEST(v_fresh) AS i
                LEFT JOIN channels c ON c.id = p_channels[i]
                WHERE i <> ALL (v_accepted) AND i <> ALL (v_stored);
        END IF;
        IF cardinality(v_accepted) = 0 THEN
            RETURN;
        END IF;
        -- The caller's ranks and counts include requests answered above.
        SELECT array_agg(COALESCE(x.r, 0) ORDER BY g.i)
            INTO v_ranks
            FROM generate_subscripts(p_users, 1) AS g(i)
            LEFT JOIN (SELECT i, row_number() OVER (PARTITION BY p_channels[i] ORDER BY i)::INT AS r
                       FROM UNNEST(v_accepted) AS i) AS x ON x.i = g.i;
        SELECT array_agg(x.id), array_agg(x.k)
            INTO v_channels, v_counts
            FROM (SELECT p_channels[i] AS id, count(*)::INT AS k
                  FROM UNNEST(v_accepted) AS i GROUP BY 1) AS x;
    END IF;
    v_sent := clock_timestamp();

    RETURN QUERY
    WITH advanced AS (
        UPDATE channels c SET last_seq = c.last_seq + b.k
        FROM UNNEST(v_channels, v_counts) AS b(id, k)
        WHERE c.id = b.id
        RETURNING c.id, c.last_seq - b.k AS base, c.title
    ), w AS MATERIALIZED (
        SELECT a.i, a.o, ad.base + v_ranks[a.i] AS s, ad.title
        FROM UNNEST(v_accepted) WITH ORDINALITY AS a(i, o)
        JOIN advanced ad ON ad.id = p_channels[a.i]
    ), stored_messages AS (
        INSERT INTO messages (channel_id, seq, user_id, client_msg_id, content, sent_at)
        SELECT p_channels[w.i], w.s, p_users[w.i], p_keys[w.i], p_contents[w.i], v_sent FROM w
    ), stored_keys AS (
        INSERT INTO message_keys (user_id, client_msg_id, channel_id, seq)
        SELECT p_users[w.i], p_keys[w.i], p_channels[w.i], w.s FROM w
    ), read_pointers AS (
        -- A writer has read what it wrote.
        UPDATE channel_members cm SET last_read_seq = GREATEST(cm.last_read_seq, r.s)
        FROM (SELECT p_channels[w.i] AS c, p_users[w.i] AS u, max(w.s) AS s
              FROM w GROUP BY 1, 2) AS r
        WHERE cm.channel_id = r.c AND cm.user_id = r.u
    ), events AS (
        -- In arrival order, so the relay publishes each channel's events
        -- in seq order.
        INSERT INTO outbox (msg_id, subject, payload, headers)
        SELECT p_msg_ids[w.i], p_subjects[w.i],
            convert_to(p_heads[w.i]
                || ',"title":' || to_json(w.title)::TEXT
                || ',"seq":' || w.s
                || ',"sent_at":"' || to_char(v_sent AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                || '"}', 'UTF8'),
            p_headers[w.i]::JSONB
        FROM w ORDER BY w.o
    )
    SELECT w.i::INT, 'written'::TEXT, p_channels[w.i], w.s, v_sent FROM w;
END;
$$;
