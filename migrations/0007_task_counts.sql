-- 0007: a rollout's task counts kept by the statements that change task states, so that a
-- tick reads a few rows per wave and site instead of counting every task of the rollout.
-- Never edit this file once it has landed: add a new migration instead.
--
-- Two tables:
-- - task_count_deltas: appended to, in the same transaction, by every statement that
--   inserts tasks or changes a task's rollout, wave, site, state or finished_at (a trigger
--   per statement, one row per changed (rollout, wave, site, state) with the signed
--   difference). Appends never wait on each other: concurrent transitions of the same
--   site and state take no common row lock, and so cannot queue or deadlock on a counter.
-- - task_counts: the totals. Only the rollout's tick folds the deltas into them (DELETE ...
--   RETURNING the deltas and adding them up in one statement, under the rollout's tick
--   lock): a delta is folded exactly once, because two DELETEs of the same row cannot both
--   return it.
-- The count of a (rollout, wave, site, state) is its total plus its deltas not yet folded,
-- as of one snapshot: exact under any concurrency, as counting the tasks was.
--
-- Deleting tasks (only `orchestrator prune` does, rollouts being never deleted) changes no
-- count on purpose: the counts are the summary a pruned rollout keeps.
--
-- No foreign keys: a key check would take a KEY SHARE lock on the rollout's row, which the
-- tick holds FOR UPDATE, and every transition would wait for the tick.

CREATE TABLE task_counts (
    rollout_id        bigint  NOT NULL,
    wave              integer NOT NULL,
    site              text    NOT NULL,
    state             text    NOT NULL,
    n                 integer NOT NULL,
    last_finished_at  timestamptz,        -- the latest finished_at seen in this state
    PRIMARY KEY (rollout_id, wave, site, state)
);

CREATE TABLE task_count_deltas (
    rollout_id        bigint  NOT NULL,
    wave              integer NOT NULL,
    site              text    NOT NULL,
    state             text    NOT NULL,
    n                 integer NOT NULL,
    last_finished_at  timestamptz
);
CREATE INDEX task_count_deltas_rollout_idx ON task_count_deltas (rollout_id);

CREATE FUNCTION tasks_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_count_deltas (rollout_id, wave, site, state, n, last_finished_at)
    SELECT rollout_id, wave, site, state, count(*), max(finished_at)
    FROM inserted GROUP BY rollout_id, wave, site, state;
    RETURN NULL;
END $$;

CREATE FUNCTION tasks_count_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- each changed task leaves its old key (-1) and enters its new one (+1); a statement
    -- that changes no counted column (a lease renewal, a progress write) writes nothing
    INSERT INTO task_count_deltas (rollout_id, wave, site, state, n, last_finished_at)
    SELECT k.rollout_id, k.wave, k.site, k.state, sum(k.n), max(k.finished_at)
    FROM before_rows o JOIN after_rows w ON w.id = o.id
    CROSS JOIN LATERAL (VALUES
        (o.rollout_id, o.wave, o.site, o.state, -1, NULL::timestamptz),
        (w.rollout_id, w.wave, w.site, w.state, 1, w.finished_at)
    ) AS k (rollout_id, wave, site, state, n, finished_at)
    WHERE (o.rollout_id, o.wave, o.site, o.state, o.finished_at)
          IS DISTINCT FROM (w.rollout_id, w.wave, w.site, w.state, w.finished_at)
    GROUP BY k.rollout_id, k.wave, k.site, k.state
    HAVING sum(k.n) <> 0 OR max(k.finished_at) IS NOT NULL;
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_count_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_inserted();

CREATE TRIGGER tasks_count_updated AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_count_updated();

-- the tasks that exist now (CREATE TRIGGER above locks tasks against writes until this
-- migration commits, so nothing is counted twice or missed)
INSERT INTO task_counts (rollout_id, wave, site, state, n, last_finished_at)
SELECT rollout_id, wave, site, state, count(*), max(finished_at)
FROM tasks GROUP BY rollout_id, wave, site, state;

-- The claim reads, per site with PENDING tasks, only as many of them as the site may start
-- (`LIMIT`), in plan order: (wave, position) is plan order, positions being wave-major.
CREATE INDEX tasks_pending_site_idx ON tasks (rollout_id, site, wave, position)
    WHERE state = 'PENDING';
