-- Friendships. A pair is stored once, lower id first, with who invited.
CREATE TABLE user_connections (
    user_low   BIGINT      NOT NULL REFERENCES users (id),
    user_high  BIGINT      NOT NULL REFERENCES users (id),
    status     TEXT        NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected', 'disconnected')),
    inviter    BIGINT      NOT NULL REFERENCES users (id),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_low, user_high),
    CHECK (user_low < user_high),
    CHECK (inviter IN (user_low, user_high))
);
CREATE INDEX user_connections_by_high ON user_connections (user_high);

CREATE TABLE channels (
    id          BIGSERIAL   PRIMARY KEY,
    title       TEXT        NOT NULL,
    invite_code TEXT        NOT NULL CONSTRAINT channels_invite_code_key UNIQUE,
    head_count  INTEGER     NOT NULL DEFAULT 0 CHECK (head_count >= 0),
    last_seq    BIGINT      NOT NULL DEFAULT 0,
    created_by  BIGINT      NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE channel_members (
    channel_id    BIGINT      NOT NULL REFERENCES channels (id),
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    last_read_seq BIGINT      NOT NULL DEFAULT 0,
    joined_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_by_user ON channel_members (user_id);

CREATE TABLE messages (
    channel_id    BIGINT      NOT NULL REFERENCES channels (id),
    seq           BIGINT      NOT NULL,
    user_id       BIGINT      NOT NULL REFERENCES users (id),
    client_msg_id TEXT        NOT NULL,
    content       TEXT        NOT NULL,
    sent_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel_id, seq),
    CONSTRAINT messages_client_msg_id_key UNIQUE (user_id, client_msg_id)
);
