-- 0013: pre-flight checks of a rollout's appliances (docs/preflight.md).
-- Never edit this file once it has landed: add a new migration instead.
--
-- A run checks the rollout's appliances without installing anything. `trigger`: `start`
-- (the engine, before the first install), `window` (the engine, `preflight_lead_seconds`
-- before a maintenance window opens), `operator` (the CLI or the API). A run is done by
-- its `owner` while its lease lasts (renewed as it goes); a run without an owner (asked
-- for through the API) or whose lease ran out (its process died) is taken by any engine.
-- At most one run of a rollout is unfinished at a time, and at most one `start` run per
-- rollout ever: two engines cannot both run the same automatic pre-flight.
CREATE TABLE preflight_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id    bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    trigger       text NOT NULL CHECK (trigger IN ('start', 'window', 'operator')),
    requested_by  text NOT NULL,
    owner         text,
    lease_until   timestamptz,
    total         integer NOT NULL DEFAULT 0 CHECK (total >= 0),
    done          integer NOT NULL DEFAULT 0 CHECK (done >= 0),
    counts        jsonb NOT NULL DEFAULT '{}',
    -- tasks a `required` run left out (SKIPPED)
    left_out      integer NOT NULL DEFAULT 0 CHECK (left_out >= 0),
    error         text,
    -- when the run was asked for, on the clock of the process that asked (an engine's
    -- `window` run is due `preflight_lead_seconds` before the opening on its clock)
    as_of         timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    CHECK ((owner IS NULL) = (lease_until IS NULL)),
    CHECK (finished_at IS NULL OR owner IS NULL)
);
CREATE UNIQUE INDEX preflight_runs_one_unfinished_idx ON preflight_runs (rollout_id)
    WHERE finished_at IS NULL;
CREATE UNIQUE INDEX preflight_runs_one_start_idx ON preflight_runs (rollout_id)
    WHERE trigger = 'start';
CREATE INDEX preflight_runs_rollout_idx ON preflight_runs (rollout_id, id DESC);
-- the runs an engine may take: asked for, or abandoned
CREATE INDEX preflight_runs_unfinished_idx ON preflight_runs (lease_until NULLS FIRST)
    WHERE finished_at IS NULL;

-- The latest result per rollout and appliance (a later run replaces it).
CREATE TABLE preflight_results (
    rollout_id       bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    appliance_id     bigint NOT NULL REFERENCES appliances (id) ON DELETE CASCADE,
    run_id           bigint REFERENCES preflight_runs (id) ON DELETE SET NULL,
    result           text NOT NULL CHECK (result IN ('ok', 'warn', 'fail', 'skip')),
    code             text,
    message          text NOT NULL DEFAULT '',
    current_version  text,
    -- the retrieve-updates tasks the latest checks (at most 10) started on the appliance:
    -- never installs (a task runner reconciling a lost install answer leaves them out of
    -- its evidence)
    retrieve_task_ids text[] NOT NULL DEFAULT '{}',
    checked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, appliance_id),
    CHECK ((result = 'ok') = (code IS NULL))
);
CREATE INDEX preflight_results_result_idx ON preflight_results (rollout_id, result);
CREATE INDEX preflight_results_appliance_idx ON preflight_results (appliance_id, checked_at)
    WHERE retrieve_task_ids <> '{}';
