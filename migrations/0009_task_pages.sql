-- 0009: a page of a rollout's tasks in one state, in id order, reads only that page.
-- Never edit this file once it has landed: add a new migration instead.
--
-- `GET /api/v1/rollouts/{id}/tasks?state=INSTALLING` (a dashboard's "what is installing
-- now") during a rollout with 5,000 installs in flight read and sorted all 5,000 for each
-- page of 100 (bench/api_latency.py: the statement that took most of the database's time).
-- With the id in the key, the page is read in id order from the cursor on. The index
-- replaces (rollout_id, state), whose every use it serves (same leading columns): no more
-- index writes than before.
CREATE INDEX tasks_rollout_state_id_idx ON tasks (rollout_id, state, id);
DROP INDEX tasks_rollout_state_idx;
