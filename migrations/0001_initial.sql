-- 0001: the data model of DESIGN.md section 3.
-- Never edit this file once it has landed: add a new migration instead.

CREATE TABLE appliances (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL UNIQUE CHECK (name <> '' AND length(name) <= 253),
    base_url         text NOT NULL CHECK (base_url ~* '^https?://[^/]+'),
    site             text NOT NULL CHECK (site <> ''),
    tags             text[] NOT NULL DEFAULT '{}',
    timezone         text,
    credentials_ref  text CHECK (credentials_ref IS NULL OR credentials_ref ~ '^(env|file):.+'),
    tls_ca_file      text,
    tls_thumbprint   text CHECK (tls_thumbprint IS NULL OR tls_thumbprint ~ '^[0-9a-f]{64}$'),
    current_version  text,
    last_seen_at     timestamptz,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX appliances_site_idx ON appliances (site);
CREATE INDEX appliances_tags_idx ON appliances USING gin (tags);

CREATE TABLE maintenance_windows (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> ''),
    cron        text NOT NULL,
    duration_s  integer NOT NULL CHECK (duration_s > 0),
    timezone    text NOT NULL,
    cutoff_s    integer NOT NULL DEFAULT 0 CHECK (cutoff_s >= 0),
    sites       text[] NOT NULL DEFAULT '{}',
    tags        text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (cutoff_s < duration_s),
    CHECK (cardinality(sites) > 0 OR cardinality(tags) > 0)
);

CREATE TABLE rollouts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL CHECK (name <> ''),
    target_version   text NOT NULL CHECK (target_version <> ''),
    selector         jsonb NOT NULL DEFAULT '{}',
    strategy         jsonb NOT NULL DEFAULT '{}',
    state            text NOT NULL DEFAULT 'DRAFT' CHECK (state IN (
                        'DRAFT', 'SCHEDULED', 'RUNNING', 'PAUSED', 'WAITING_WINDOW',
                        'SUCCEEDED', 'FAILED', 'CANCELLED')),
    current_wave     integer,
    schedule_at      timestamptz,
    created_by       text NOT NULL,
    idempotency_key  text UNIQUE,
    request_hash     text,
    abort_reason     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((idempotency_key IS NULL) = (request_hash IS NULL)),
    CHECK (finished_at IS NULL OR state IN ('SUCCEEDED', 'FAILED', 'CANCELLED'))
);
-- the engine scans the active rollouts on every tick
CREATE INDEX rollouts_active_idx ON rollouts (id)
    WHERE state IN ('SCHEDULED', 'RUNNING', 'WAITING_WINDOW');

CREATE TABLE rollout_waves (
    rollout_id         bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    number             integer NOT NULL CHECK (number >= 0),
    planned_size       integer NOT NULL CHECK (planned_size > 0),
    state              text NOT NULL DEFAULT 'PENDING' CHECK (state IN (
                          'PENDING', 'RUNNING', 'SOAKING', 'AWAITING_APPROVAL',
                          'SUCCEEDED', 'FAILED', 'CANCELLED')),
    requires_approval  boolean NOT NULL DEFAULT false,
    approved_by        text,
    approved_at        timestamptz,
    started_at         timestamptz,
    finished_at        timestamptz,
    PRIMARY KEY (rollout_id, number),
    CHECK ((approved_by IS NULL) = (approved_at IS NULL))
);

CREATE TABLE tasks (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id            bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    appliance_id          bigint NOT NULL REFERENCES appliances (id) ON DELETE RESTRICT,
    wave                  integer NOT NULL,
    position              integer NOT NULL CHECK (position >= 0),
    -- snapshot of the appliance's site when planned: per-site limits are enforced on it
    site                  text NOT NULL,
    state                 text NOT NULL DEFAULT 'PENDING' CHECK (state IN (
                             'PENDING', 'DISPATCHING', 'INSTALLING', 'VERIFYING',
                             'SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SKIPPED', 'CANCELLED')),
    attempt               integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    remote_task_id        text,
    progress              smallint CHECK (progress BETWEEN 0 AND 100),
    from_version          text,
    final_version         text,
    error_code            text,
    error_message         text,
    reconfigure_required  boolean,
    lease_owner           text,
    lease_expires_at      timestamptz,
    not_before            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    dispatched_at         timestamptz,
    accepted_at           timestamptz,
    finished_at           timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rollout_id, appliance_id),
    UNIQUE (rollout_id, position),
    FOREIGN KEY (rollout_id, wave) REFERENCES rollout_waves (rollout_id, number),
    CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL)),
    -- terminal tasks hold no lease
    CHECK (lease_owner IS NULL OR state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')),
    CHECK ((finished_at IS NOT NULL) =
           (state IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SKIPPED', 'CANCELLED')))
);
-- claiming: the next pending tasks of a rollout's wave, in plan order
CREATE INDEX tasks_pending_idx ON tasks (rollout_id, wave, position) WHERE state = 'PENDING';
-- concurrency accounting and lease expiry: the in-flight tasks
CREATE INDEX tasks_in_flight_idx ON tasks (rollout_id, site)
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING');
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at)
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING');
CREATE INDEX tasks_appliance_idx ON tasks (appliance_id);
CREATE INDEX tasks_rollout_state_idx ON tasks (rollout_id, state);

CREATE TABLE task_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id     bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    rollout_id  bigint NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    from_state  text,
    to_state    text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX task_events_rollout_idx ON task_events (rollout_id, id);
CREATE INDEX task_events_task_idx ON task_events (task_id, id);

-- task_events is append-only: history is never rewritten
CREATE FUNCTION task_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'task_events is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER task_events_no_update BEFORE UPDATE ON task_events
    FOR EACH ROW EXECUTE FUNCTION task_events_append_only();

CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    via          text NOT NULL CHECK (via IN ('cli', 'api', 'engine', 'schedule')),
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text,
    detail       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at_idx ON audit_log (at);

CREATE TABLE api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name <> ''),
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash    text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
