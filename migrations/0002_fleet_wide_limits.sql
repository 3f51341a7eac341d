-- 0002: promises that hold across rollouts and processes.
-- Never edit this file once it has landed: add a new migration instead.

-- One install per appliance, fleet-wide: at most one task per appliance is in flight,
-- whichever rollout it belongs to. The claim skips appliances that already have one; this
-- index makes a second one impossible even for code that forgets to.
CREATE UNIQUE INDEX tasks_one_in_flight_per_appliance_idx ON tasks (appliance_id)
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING');

-- Installs in flight per site across every rollout (the shared site capacity).
CREATE INDEX tasks_site_in_flight_idx ON tasks (site)
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING');

-- Lease fencing: a new token at every claim and reclaim; every write of the runner that
-- holds the lease is guarded by it (an owner id alone survives a reclaim by itself).
ALTER TABLE tasks ADD COLUMN lease_token uuid;
ALTER TABLE tasks ADD CONSTRAINT tasks_lease_token_with_owner
    CHECK ((lease_owner IS NULL) = (lease_token IS NULL)) NOT VALID;

-- When the guarded write right before the install POST passed for the current attempt
-- (NULL: no install left this orchestrator for it), and how many installs this task has
-- ever sent (kept across retry-failed: "we installed it" versus "it was there already").
ALTER TABLE tasks ADD COLUMN install_sent_at timestamptz;
ALTER TABLE tasks ADD COLUMN installs_sent integer NOT NULL DEFAULT 0
    CHECK (installs_sent >= 0);

-- A fleet-wide capacity per site: installs in flight there, all rollouts together.
CREATE TABLE sites (
    name           text PRIMARY KEY CHECK (name <> '' AND length(name) <= 253),
    max_in_flight  integer CHECK (max_in_flight IS NULL OR max_in_flight > 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

