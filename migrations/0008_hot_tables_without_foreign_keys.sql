-- The write path's tables lose their foreign keys (ARCHITECTURE.md "Hot
-- paths"). Each one checked, per stored message, what the write's own
-- transaction already guarantees, and paid for it on every row: a
-- referential-integrity query and a KEY SHARE lock on the referenced row
-- (a write to that row's heap page, WAL, and a multixact when batches
-- share a writer or a channel).
--
-- - `messages.channel_id`: the batch locks its channels (FOR NO KEY
--   UPDATE) and checks membership under that lock before it inserts;
--   channels are never deleted.
-- - `messages.user_id`: membership of a live user is checked under the
--   same lock; users are never deleted (unregistering sets `deleted_at`).
-- - `message_keys (channel_id, seq)`: inserted in the same statement
--   sequence, from the same arrays, as the message it names; messages are
--   never deleted.
ALTER TABLE messages DROP CONSTRAINT messages_channel_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_user_id_fkey;
ALTER TABLE message_keys DROP CONSTRAINT message_keys_message_fkey;
