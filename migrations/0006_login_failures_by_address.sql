-- Failed logins are counted per username *and* client address
-- (docs/protocol.md §1, §2.6): an attacker's failures lock out the
-- attacker's address, not the name's owner. Rows from before have no
-- address; they age out with the window.
ALTER TABLE login_failures ADD COLUMN client_addr TEXT NOT NULL DEFAULT '';
ALTER TABLE login_failures ALTER COLUMN client_addr DROP DEFAULT;
DROP INDEX login_failures_by_username;
CREATE INDEX login_failures_by_username ON login_failures (username, client_addr, failed_at);
