-- 0006: indexes for fleets of 100,000 appliances and several rollouts at once.
-- Never edit this file once it has landed: add a new migration instead.
-- tests/integration/test_query_plans.py EXPLAINs the hot statements on such a fleet and
-- refuses any sequential scan of tasks.

-- The claim of a rollout with `max_starts_per_minute` counts its starts of the last minute
-- (`rollout_id = $1 AND dispatched_at > now() - 60 s`); without this index that count read
-- the whole table on every claim. Partial: a task never dispatched (most of a large
-- rollout) has no entry. `dispatched_at` only changes together with `state` (the claim),
-- whose change already rules out a HOT update: the index costs no HOT update.
CREATE INDEX tasks_rollout_dispatched_idx ON tasks (rollout_id, dispatched_at)
    WHERE dispatched_at IS NOT NULL;

-- The reclaim looks for in-flight tasks whose lease has run out. It no longer needs an index
-- on the lease expiry: the in-flight tasks (a few thousand at most, bounded by the limits,
-- not by the fleet) are found through the busy-task partial indexes (state in flight
-- implies busy), and the expired ones among them filtered and sorted. With the expiry
-- indexed, each lease renewal (every in-flight task, every third of the lease) was a
-- non-HOT update writing an entry into every index of tasks; without it, a renewal
-- changes no indexed column and can be a HOT update.
DROP INDEX tasks_lease_idx;
