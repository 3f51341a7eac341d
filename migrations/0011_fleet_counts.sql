-- 0011: the claim reads the tasks in flight at a site with a fleet-wide capacity (every
-- rollout together) from the task counters of migration 0007 instead of counting the tasks.
-- Never edit this file once it has landed: add a new migration instead.
--
-- task_counts keeps a row per (rollout, wave, site, state) forever (prune keeps them as the
-- rollout's summary), so after months of rollouts a site's rows are many; only the in-flight
-- ones with a non-zero count matter to the claim, a few per running rollout. A counter that
-- drops to zero leaves this index when its row is updated.
CREATE INDEX task_counts_site_busy_idx ON task_counts (site)
    WHERE n <> 0 AND state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING');
