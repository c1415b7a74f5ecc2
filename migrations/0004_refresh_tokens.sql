-- Refresh tokens (docs/protocol.md §2.7), stored only as SHA-256 hashes of
-- the token: a token is 256 random bits, so a plain hash is as good as a
-- slow one and lets the token be looked up by it. Each refresh marks its
-- token rotated and inserts the next one; a rotated row is kept until it
-- would have expired, so presenting it again is recognized as a reuse
-- (the session is then revoked) rather than as an unknown token. Every
-- change to a session's rows happens under that session's row lock.
CREATE TABLE refresh_tokens (
    token_hash BYTEA       PRIMARY KEY,
    session_id UUID        NOT NULL REFERENCES sessions (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    rotated_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
-- Auth deletes expired rows once a minute; this keeps that a range scan.
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expires_at);
