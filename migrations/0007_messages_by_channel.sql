-- `messages` hash-partitioned by channel (ARCHITECTURE.md "Beyond one
-- Postgres"): every read and write of a message names its channel, so
-- each touches one partition, and a partition's indexes stay a sixteenth
-- of the whole. Sixteen is fixed here: a different count is a new
-- migration that copies the rows again.
--
-- A partitioned table's unique keys must contain the partition key, so
-- the idempotency key (user, client_msg_id), unique per user across
-- channels (docs/protocol.md §2.6), moves to `message_keys`, partitioned
-- by user and written in the same transaction as its message. It names
-- the message it stored; the foreign key keeps the two in step.
--
-- Works on a database that already holds messages: the new tables are
-- made beside the old one, filled from it, and swapped in by name, all
-- in this migration's transaction (which holds `messages` exclusively
-- meanwhile: writes wait for the copy). Nothing references `messages`:
-- read pointers (`channel_members.last_read_seq`), `channels.last_seq`
-- and outbox rows hold seqs, not keys.
CREATE TABLE messages_by_channel (
    channel_id    BIGINT      NOT NULL REFERENCES channels (id),
    seq           BIGINT      NOT NULL,
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    client_msg_id TEXT        NOT NULL,
    content       TEXT        NOT NULL,
    sent_at       TIMESTAMPTZ NOT NULL,
    CONSTRAINT messages_by_channel_pkey PRIMARY KEY (channel_id, seq)
) PARTITION BY HASH (channel_id);

CREATE TABLE message_keys (
    user_id       BIGINT NOT NULL,
    client_msg_id TEXT   NOT NULL,
    channel_id    BIGINT NOT NULL,
    seq           BIGINT NOT NULL,
    CONSTRAINT message_keys_pkey PRIMARY KEY (user_id, client_msg_id)
) PARTITION BY HASH (user_id);

DO $$
BEGIN
    FOR r IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE messages_p%s PARTITION OF messages_by_channel FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            lpad(r::text, 2, '0'), r);
        EXECUTE format(
            'CREATE TABLE message_keys_p%s PARTITION OF message_keys FOR VALUES WITH (MODULUS 16, REMAINDER %s)',
            lpad(r::text, 2, '0'), r);
    END LOOP;
END;
$$;

LOCK TABLE messages IN ACCESS EXCLUSIVE MODE;
INSERT INTO messages_by_channel (channel_id, seq, user_id, client_msg_id, content, sent_at)
    SELECT channel_id, seq, user_id, client_msg_id, content, sent_at FROM messages;
INSERT INTO message_keys (user_id, client_msg_id, channel_id, seq)
    SELECT user_id, client_msg_id, channel_id, seq FROM messages;
DROP TABLE messages;

ALTER TABLE messages_by_channel RENAME TO messages;
ALTER TABLE messages RENAME CONSTRAINT messages_by_channel_pkey TO messages_pkey;
ALTER TABLE messages RENAME CONSTRAINT messages_by_channel_channel_id_fkey TO messages_channel_id_fkey;
ALTER TABLE messages RENAME CONSTRAINT messages_by_channel_user_id_fkey TO messages_user_id_fkey;
ALTER TABLE message_keys ADD CONSTRAINT message_keys_message_fkey
    FOREIGN KEY (channel_id, seq) REFERENCES messages (channel_id, seq);
