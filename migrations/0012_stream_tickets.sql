-- 0012: stream tickets, and an appliance's newest task read from an index.
-- Never edit this file once it has landed: add a new migration instead.
--
-- A browser's EventSource cannot send an Authorization header, and a token in a URL ends up
-- in browser history and proxy logs. The console asks `POST /api/v1/stream-tickets` (with
-- its bearer token) for a ticket and opens `GET /api/v1/rollouts/{id}/events?ticket=...`
-- with it: a ticket is random (256 bits), lives 30 seconds, is used once (consumed by
-- DELETE ... RETURNING, so two replicas cannot both accept it) and is kept only as its
-- SHA-256. It carries no role of its own: the token it was made for is looked up when it is
-- used (a revoked or expired token's tickets are refused), and deleting the token deletes
-- its tickets. Expired rows are deleted whenever tickets are made.
CREATE TABLE stream_tickets (
    ticket_hash  text PRIMARY KEY,
    token_id     bigint NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX stream_tickets_expires_idx ON stream_tickets (expires_at);
CREATE INDEX stream_tickets_token_idx ON stream_tickets (token_id);

-- `GET /api/v1/appliances` shows each appliance's newest task (`last_task`): per appliance
-- of the page, the first row of (appliance_id, id) backwards. The index replaces
-- (appliance_id), whose every use it serves (same leading column).
CREATE INDEX tasks_appliance_id_idx ON tasks (appliance_id, id);
DROP INDEX tasks_appliance_idx;
