-- The outbox relay's leadership: a lease, not a session advisory lock. The
-- holder renews it every second; a holder that freezes or vanishes (its
-- TCP connection still open) loses it when it expires, within seconds,
-- and a standby takes over.
CREATE TABLE outbox_relay_lease (
    name       TEXT        PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Outbox rows NATS refused for good (too large, a subject no stream
-- takes), moved aside with the reason so that the rows behind them are
-- published. `natter-server dlq list` shows them; `dlq redrive` puts them
-- back into the outbox. `id` is the outbox id the row had.
CREATE TABLE outbox_parked (
    id         BIGINT      PRIMARY KEY,
    msg_id     UUID        NOT NULL,
    subject    TEXT        NOT NULL,
    payload    BYTEA       NOT NULL,
    headers    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    error      TEXT        NOT NULL,
    parked_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
