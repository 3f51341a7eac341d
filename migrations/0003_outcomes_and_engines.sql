-- 0003: a rollout can end with failures without reading as a success, and engines say
-- that they are alive.
-- Never edit this file once it has landed: add a new migration instead.

-- COMPLETED_WITH_FAILURES: every wave ran and the failure policy held, but some tasks
-- failed or timed out (SUCCEEDED stays for rollouts whose tasks all succeeded or skipped).
ALTER TABLE rollouts DROP CONSTRAINT rollouts_state_check;
ALTER TABLE rollouts ADD CONSTRAINT rollouts_state_check CHECK (state IN (
    'DRAFT', 'SCHEDULED', 'RUNNING', 'PAUSED', 'WAITING_WINDOW',
    'SUCCEEDED', 'COMPLETED_WITH_FAILURES', 'FAILED', 'CANCELLED'));
ALTER TABLE rollouts DROP CONSTRAINT rollouts_check1;
ALTER TABLE rollouts ADD CONSTRAINT rollouts_finished_state_check CHECK (
    finished_at IS NULL OR state IN ('SUCCEEDED', 'COMPLETED_WITH_FAILURES', 'FAILED',
                                     'CANCELLED'));

-- Engines register and heartbeat: "is any engine alive, and since when is none?" has an
-- answer for the CLI, the API, /readyz and the forecast.
CREATE TABLE engines (
    owner         text PRIMARY KEY CHECK (owner <> ''),
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);
CREATE INDEX engines_heartbeat_idx ON engines (heartbeat_at);
