-- Users and their logins. A user who unregisters keeps their row (messages
-- still point at it, shown with a null username) but frees the name: the
-- username is unique only among live users.
CREATE TABLE users (
    id               BIGSERIAL PRIMARY KEY,
    username         TEXT        NOT NULL,
    password_hash    TEXT        NOT NULL,
    invite_code      TEXT        NOT NULL CONSTRAINT users_invite_code_key UNIQUE,
    connection_count INTEGER     NOT NULL DEFAULT 0 CONSTRAINT users_connection_count_check CHECK (connection_count >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at       TIMESTAMPTZ
);
CREATE UNIQUE INDEX users_username_live_key ON users (username) WHERE deleted_at IS NULL;

-- One row per login; a token is good only while its session is not revoked.
CREATE TABLE sessions (
    id         UUID        PRIMARY KEY,
    user_id    BIGINT      NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX sessions_live_by_user ON sessions (user_id) WHERE revoked_at IS NULL;

-- Failed logins per username (known or not), for the rate limit. Kept in
-- Postgres so every auth replica sees the same count.
CREATE TABLE login_failures (
    username  TEXT        NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX login_failures_by_username ON login_failures (username, failed_at);

-- Events for other services, written in the same transaction as the change
-- they announce and published to NATS by the outbox relay (message
-- service), which JetStream de-duplicates by msg_id.
CREATE TABLE outbox (
    id         BIGSERIAL   PRIMARY KEY,
    msg_id     UUID        NOT NULL UNIQUE,
    subject    TEXT        NOT NULL,
    payload    BYTEA       NOT NULL,
    headers    JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wakes the relay instead of polling.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('natter_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
