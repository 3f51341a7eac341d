-- 0010: notifications. Webhooks (admin-managed receivers), an outbox of events written in
-- the same transaction as the state change that causes them, and one delivery row per
-- (webhook, event) that any engine replica may claim and send, at least once.
-- Never edit this file once it has landed: add a new migration instead.

CREATE TABLE webhooks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    url         text NOT NULL CHECK (url ~* '^https?://' AND length(url) <= 2048),
    events      text[],            -- NULL: every event
    rollout_id  bigint REFERENCES rollouts (id) ON DELETE CASCADE,  -- NULL: every rollout
    site        text,              -- NULL: every site
    secret_ref  text,              -- env:NAME or file:PATH, never the secret itself
    format      text NOT NULL DEFAULT 'json' CHECK (format IN ('json', 'slack')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- when its last batch of task.failed was sent (at most one every N seconds)
    last_batch_at timestamptz
);

-- One row per event. `sites`: the sites the event concerns (a rollout's event: every site
-- the rollout targets; a task's: its appliance's site), matched by a webhook's `site`.
-- `webhook_id`: an event for one webhook only (ping). `data`: the event's own fields, as
-- documented per type in docs/notifications.md.
CREATE TABLE outbox_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type        text NOT NULL,
    rollout_id  bigint,
    sites       text[] NOT NULL DEFAULT '{}',
    webhook_id  bigint REFERENCES webhooks (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    data        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX outbox_events_rollout_idx ON outbox_events (rollout_id);

-- state: pending (to send, or being sent under a lease), delivered, failed (gave up;
-- `webhooks redeliver` makes it pending again). batch_id: task.failed deliveries sent
-- together in one request carry the id of the batch's first delivery.
CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id       bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id         bigint NOT NULL REFERENCES outbox_events (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    batch_id         bigint,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    failed_at        timestamptz,
    UNIQUE (webhook_id, event_id)
);
-- the notifier's search: per webhook, its oldest pending delivery
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (webhook_id, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_state_idx ON webhook_deliveries (state, id);

-- Fan-out, in the transaction that writes the events: one delivery per matching webhook.
CREATE FUNCTION outbox_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (webhook_id, event_id, event_type)
    SELECT w.id, e.id, e.type
    FROM new_events e JOIN webhooks w
      ON (e.webhook_id IS NOT NULL AND w.id = e.webhook_id)
      OR (e.webhook_id IS NULL
          AND (w.events IS NULL OR e.type = ANY (w.events))
          AND (w.rollout_id IS NULL OR w.rollout_id = e.rollout_id)
          AND (w.site IS NULL OR w.site = ANY (e.sites)))
    ORDER BY e.id, w.id;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_fan_out AFTER INSERT ON outbox_events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION outbox_fan_out();
