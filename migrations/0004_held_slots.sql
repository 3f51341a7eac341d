-- 0004: a timed-out install keeps its slot until its appliance is seen idle again.
-- Never edit this file once it has landed: add a new migration instead.

-- A task that ended TIMED_OUT after an install was sent may still be installing or
-- rebooting on its appliance: it keeps counting as in flight (for its rollout's limits, its
-- site's capacity, and one install per appliance) until an engine sees the appliance
-- answer with no install task running, or an operator releases it
-- (`orchestrator appliances release NAME`). `slot_checked_at`: the last look at it.
ALTER TABLE tasks ADD COLUMN holds_slot boolean NOT NULL DEFAULT false;
ALTER TABLE tasks ADD COLUMN slot_checked_at timestamptz;

-- "Busy" = in flight or holding a slot: the predicate every limit counts by.
CREATE UNIQUE INDEX tasks_one_busy_per_appliance_idx ON tasks (appliance_id)
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING') OR holds_slot;
DROP INDEX tasks_one_in_flight_per_appliance_idx;

CREATE INDEX tasks_site_busy_idx ON tasks (site)
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING') OR holds_slot;
DROP INDEX tasks_site_in_flight_idx;

-- The engines' looks at held slots, oldest look first.
CREATE INDEX tasks_held_slot_idx ON tasks (slot_checked_at NULLS FIRST) WHERE holds_slot;
