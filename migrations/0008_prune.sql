-- 0008: retention. `orchestrator prune --older-than 90d` (and the engine's daily prune,
-- setting prune_older_than) deletes the tasks and task events of rollouts that ended
-- before the cutoff; the rollout's row, its waves, its per-state counts (task_counts,
-- 0007) and the audit log stay.
-- Never edit this file once it has landed: add a new migration instead.

-- pruned_at: when a prune took the rollout, set (in the transaction that checks that the
-- rollout is terminal and ended before the cutoff) before the first of its tasks is
-- deleted: from then on its reports say so and a retry-failed is refused.
-- prune_finished_at: when its last task was deleted. A pruned rollout without it is a
-- prune that stopped half-way (a crash, a restart): the next prune finishes it.
ALTER TABLE rollouts ADD COLUMN pruned_at timestamptz;
ALTER TABLE rollouts ADD COLUMN prune_finished_at timestamptz;
-- a pruned rollout stays ended (retry-failed clears finished_at: refused)
ALTER TABLE rollouts ADD CONSTRAINT rollouts_pruned_when_finished
    CHECK (pruned_at IS NULL OR finished_at IS NOT NULL);
ALTER TABLE rollouts ADD CONSTRAINT rollouts_prune_finished_after_start
    CHECK (prune_finished_at IS NULL OR pruned_at IS NOT NULL);

-- The prune's search: ended rollouts whose prune has not finished (not started, or
-- stopped half-way), oldest end first. The deletions themselves go by rollout through
-- indexes that exist already (tasks_rollout_state_idx, task_events_rollout_idx, and
-- task_events_task_idx for the cascade from tasks).
CREATE INDEX rollouts_prunable_idx ON rollouts (finished_at)
    WHERE finished_at IS NOT NULL AND prune_finished_at IS NULL;
