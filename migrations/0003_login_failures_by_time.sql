-- Auth prunes failed logins older than the rate-limit window for every
-- name once a minute; this index keeps that a range scan.
CREATE INDEX login_failures_by_failed_at ON login_failures (failed_at);
