-- `write_messages` again (0012, with 0013's setting), storing what one
-- call writes to one event partition as one outbox row instead of one row
-- per channel. Every outbox row is a relay publish, a JetStream
-- acknowledgement, a stored stream message and a delivery to push; push
-- consumes a partition in order whatever channels its messages carry, so
-- nothing downstream needs a row to hold one channel. A call touches at
-- most `NATTER_PARTITIONS` rows now, however many channels it holds: the
-- more channels are active, the more it saves (bench/run's throughput, 20
-- channels in 12 of 16 partitions: a third fewer, 0.125 stream messages
-- per stored message against 0.186, counted as nats-server's file writes).
--
-- What changed from 0012: the caller passes `p_partitions`, per request
-- the partition of its channel (the one its subject names), and numbers
-- `p_groups` per partition instead of per channel. A row takes the
-- accepted requests of one partition and group, in arrival order, so each
-- channel's events in it are in seq order; rows go in in order of their
-- first request, and the caller's group numbers never decrease within a
-- partition in arrival order, so the relay still publishes each channel's
-- events in seq order. A row's subject is its first event's, as are its
-- `msg_id` and headers (0012 took the least of its one channel's equal
-- subjects); push reads each event's channel from the event.
--
-- A push that reads 0012's arrays reads these too: it decodes an array and
-- handles each event on its own, whatever its channel (a push older than
-- 0012 must be replaced first, as 0012 says). 0012's function stays, under
-- its own argument list, for the message instances of the release before;
-- a later migration drops it.
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
    p_check_keys     BOOLEAN,
    p_groups         INT[],
    p_partitions     INT[]
) RETURNS TABLE (n INT, outcome TEXT, channel_id BIGINT, seq BIGINT, sent_at TIMESTAMPTZ)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
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
        -- One row per partition and group, in arrival order, so the relay
        -- publishes each channel's events in seq order.
        INSERT INTO outbox (msg_id, subject, payload, headers)
        SELECT (array_agg(p_msg_ids[w.i] ORDER BY w.o))[1],
            (array_agg(p_subjects[w.i] ORDER BY w.o))[1],
            convert_to(CASE WHEN count(*) = 1 THEN string_agg(e.json, ',' ORDER BY w.o)
                ELSE '[' || string_agg(e.json, ',' ORDER BY w.o) || ']' END, 'UTF8'),
            ((array_agg(p_headers[w.i] ORDER BY w.o))[1])::JSONB
        FROM w
        CROSS JOIN LATERAL (SELECT p_heads[w.i]
            || ',"title":' || to_json(w.title)::TEXT
            || ',"seq":' || w.s
            || ',"sent_at":"' || to_char(v_sent AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
            || '"}' AS json) AS e
        GROUP BY p_partitions[w.i], p_groups[w.i]
        ORDER BY min(w.o)
    )
    SELECT w.i::INT, 'written'::TEXT, p_channels[w.i], w.s, v_sent FROM w;
END;
$$;
