-- 0014: the adaptive pace (strategy `pace`: "adaptive", docs/pace.md). The engine keeps a
-- rollout's current pace in its row, so that every replica claims under the same limit and
-- a restart goes on where the pace was.
-- Never edit this file once it has landed: add a new migration instead.
--
-- pace_concurrency: the installs in flight the claim allows now, in place of
--   max_concurrency (NULL: the pace is off, or has not started yet);
-- pace_evaluated_at: when the pace was last decided (the next decision looks at the tasks
--   that finished after it);
-- pace_changed_at, pace_reason: when and why it last changed (or started).
-- Each change also writes a task event (on the last task that finished in the interval)
-- and an audit_log row (action rollout.pace).
ALTER TABLE rollouts
    ADD COLUMN pace_concurrency integer CHECK (pace_concurrency IS NULL OR pace_concurrency >= 1),
    ADD COLUMN pace_evaluated_at timestamptz,
    ADD COLUMN pace_changed_at timestamptz,
    ADD COLUMN pace_reason text;
