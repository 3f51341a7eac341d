"""Reports: the SQL behind a rollout report (`orchestrator.reports`), kept together.

Every aggregate is computed by PostgreSQL (counts, percentiles with `percentile_cont`,
capped name lists, the timeline's buckets), so a report of tens of thousands of tasks
reads a few hundred rows. The per-appliance rows are read with a server-side cursor
(`appliance_rows`) in batches, never all at once.

Definitions (docs/reports.md says the same to readers):
- a task's start is `tasks.dispatched_at` (the dispatch of the attempt that produced the
  outcome), its end `tasks.finished_at`;
- a group (wave, site) starts at its first start and ends at its last end once every task
  of the group is terminal (NULL while some task is not);
- install: from a task's transition into INSTALLING (the appliance accepted the install)
  to its next transition INSTALLING -> VERIFYING; one sample per install;
- reboot (and verification): from a transition into VERIFYING to the next transition
  VERIFYING -> a terminal state; one sample per verification;
- task: dispatch to outcome of the executed tasks (SUCCEEDED, FAILED, TIMED_OUT).
Lease take-overs write events whose from_state = to_state; they are not transitions and
are left out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from orchestrator.domain.states import TERMINAL_TASK_STATES
from orchestrator.store.db import DB

# What `orchestrator rollout retry-failed` puts back to PENDING.
RETRYABLE = ("FAILED", "TIMED_OUT", "CANCELLED")

_COUNTS = """
    count(t.id) AS targeted,
    count(*) FILTER (WHERE t.state = 'SUCCEEDED') AS succeeded,
    count(*) FILTER (WHERE t.state = 'FAILED') AS failed,
    count(*) FILTER (WHERE t.state = 'TIMED_OUT') AS timed_out,
    count(*) FILTER (WHERE t.state = 'SKIPPED') AS skipped,
    count(*) FILTER (WHERE t.state = 'CANCELLED') AS cancelled,
    count(*) FILTER (WHERE t.state = 'PENDING') AS pending,
    count(*) FILTER (WHERE t.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')) AS in_flight,
    min(t.dispatched_at) AS started_at,
    CASE WHEN count(t.id) > 0 AND bool_and(t.finished_at IS NOT NULL)
         THEN max(t.finished_at) END AS finished_at
"""

ROLLOUT = """
SELECT r.id, r.name, r.target_version, r.selector, r.strategy, r.state, r.current_wave,
       r.created_by, r.abort_reason, r.created_at, r.started_at, r.finished_at, r.pruned_at,
       now() AS now
FROM rollouts r WHERE r.id = $1
"""

SUMMARY = f"SELECT {_COUNTS} FROM tasks t WHERE t.rollout_id = $1"

WAVES = f"""
SELECT w.number, w.planned_size, w.state, w.requires_approval, w.approved_by,
       {_COUNTS}
FROM rollout_waves w LEFT JOIN tasks t ON t.rollout_id = w.rollout_id AND t.wave = w.number
WHERE w.rollout_id = $1
GROUP BY w.number, w.planned_size, w.state, w.requires_approval, w.approved_by
ORDER BY w.number
"""

SITES = f"""
SELECT t.site, {_COUNTS}
FROM tasks t WHERE t.rollout_id = $1
GROUP BY t.site ORDER BY t.site COLLATE "C"
"""

VERSIONS = """
SELECT side, version, n FROM (
    SELECT 'before' AS side, from_version AS version, count(*) AS n
    FROM tasks WHERE rollout_id = $1 GROUP BY from_version
    UNION ALL
    SELECT 'after', final_version, count(*)
    FROM tasks WHERE rollout_id = $1 GROUP BY final_version
) v
ORDER BY side, n DESC, version COLLATE "C" NULLS LAST
"""

# The windows whose sites or tags cover at least one targeted appliance (the planned site
# snapshot of the task, the appliance's tags), with how many they cover.
WINDOWS = """
SELECT mw.id, mw.name, mw.cron, mw.duration_s, mw.timezone, mw.cutoff_s, mw.sites, mw.tags,
       count(*) AS appliances
FROM maintenance_windows mw
JOIN tasks t ON t.rollout_id = $1
JOIN appliances a ON a.id = t.appliance_id
WHERE t.site = ANY(mw.sites) OR a.tags && mw.tags
GROUP BY mw.id
ORDER BY mw.name COLLATE "C"
"""

# Transitions only (a lease take-over writes from_state = to_state), each with the time of
# the task's latest earlier entry into INSTALLING and into VERIFYING.
DURATIONS = """
WITH ev AS (
    SELECT e.from_state, e.to_state, e.at,
           max(e.at) FILTER (WHERE e.to_state = 'INSTALLING') OVER w AS installing_at,
           max(e.at) FILTER (WHERE e.to_state = 'VERIFYING') OVER w AS verifying_at
    FROM task_events e
    WHERE e.rollout_id = $1 AND e.from_state IS DISTINCT FROM e.to_state
    WINDOW w AS (PARTITION BY e.task_id ORDER BY e.id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
spans AS (
    SELECT 'install' AS kind, extract(epoch FROM at - installing_at)::float8 AS s
    FROM ev WHERE from_state = 'INSTALLING' AND to_state = 'VERIFYING'
              AND installing_at IS NOT NULL
    UNION ALL
    SELECT 'reboot', extract(epoch FROM at - verifying_at)::float8
    FROM ev WHERE from_state = 'VERIFYING'
              AND to_state IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SKIPPED', 'CANCELLED')
              AND verifying_at IS NOT NULL
    UNION ALL
    SELECT 'task', extract(epoch FROM finished_at - dispatched_at)::float8
    FROM tasks WHERE rollout_id = $1 AND state IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT')
              AND dispatched_at IS NOT NULL
)
SELECT kind, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY s) AS p95,
       max(s) AS max
FROM spans GROUP BY kind
"""

# Failed and timed-out tasks grouped by error code and message, the largest $3 groups
# with the first $2 names each, and the totals of all groups. In the message, the
# appliance's own name (4 characters or more) reads APPLIANCE_PLACEHOLDER, so that the
# same failure on many appliances makes one group.
APPLIANCE_PLACEHOLDER = "{appliance}"
FAILURES = f"""
WITH f AS (
    SELECT t.error_code, t.state, a.name,
           CASE WHEN length(a.name) >= 4
                THEN replace(t.error_message, a.name, '{APPLIANCE_PLACEHOLDER}')
                ELSE t.error_message END AS message
    FROM tasks t JOIN appliances a ON a.id = t.appliance_id
    WHERE t.rollout_id = $1 AND t.state IN ('FAILED', 'TIMED_OUT')
),
g AS (
    SELECT error_code, message, count(*) AS n,
           array_agg(DISTINCT state ORDER BY state) AS outcomes,
           (array_agg(name ORDER BY name COLLATE "C"))[1:$2] AS appliances
    FROM f GROUP BY error_code, message
)
SELECT error_code, message, n, outcomes, appliances,
       count(*) OVER () AS groups_total, sum(n) OVER () AS tasks_total
FROM g
ORDER BY n DESC, error_code COLLATE "C" NULLS LAST, message COLLATE "C" NULLS LAST
LIMIT $3
"""

# What retry-failed would put back to PENDING, per outcome, with the first $2 names.
REMAINING = """
SELECT t.state, count(*) AS n,
       (array_agg(a.name ORDER BY a.name COLLATE "C"))[1:$2] AS appliances
FROM tasks t JOIN appliances a ON a.id = t.appliance_id
WHERE t.rollout_id = $1 AND t.state IN ('FAILED', 'TIMED_OUT', 'CANCELLED')
GROUP BY t.state ORDER BY t.state
"""

# The span of the timeline: from the rollout's start (or its first transition) to its last
# transition.
TIMELINE_SPAN = """
SELECT least(r.started_at, min(e.at) FILTER (WHERE e.from_state IS NOT NULL)) AS first_at,
       max(e.at) FILTER (WHERE e.from_state IS NOT NULL
                          AND e.from_state IS DISTINCT FROM e.to_state) AS last_at
FROM rollouts r LEFT JOIN task_events e ON e.rollout_id = r.id
WHERE r.id = $1
GROUP BY r.started_at
"""

# Changes of the number of finished tasks per wave and bucket: +1 when a task enters a
# terminal state, -1 when it leaves one (retry-failed puts it back to PENDING).
TIMELINE = """
WITH d AS (
    SELECT t.wave, e.at,
           CASE WHEN e.to_state = ANY($4::text[])
                     AND NOT coalesce(e.from_state = ANY($4::text[]), false) THEN 1
                WHEN e.from_state = ANY($4::text[]) AND NOT e.to_state = ANY($4::text[])
                     THEN -1
                ELSE 0 END AS delta
    FROM task_events e JOIN tasks t ON t.id = e.task_id
    WHERE e.rollout_id = $1
)
SELECT wave,
       least(greatest(floor(extract(epoch FROM at - $2::timestamptz)::float8 / $3)::int, 0),
             $5::int - 1) AS bucket,
       sum(delta)::int AS delta
FROM d WHERE delta <> 0
GROUP BY 1, 2 ORDER BY 1, 2
"""

# A pruned rollout (rollouts.pruned_at, `orchestrator prune`) has no tasks and no events any
# more: its counts come from its summary rows instead, task_counts plus the deltas not folded
# into them yet (migration 0007). Per (wave, site, state): n, and the last finished_at.
_PRUNED_COUNTED = """
WITH c AS (
    SELECT wave, site, state, sum(n)::bigint AS n, max(last_finished_at) AS last
    FROM (SELECT wave, site, state, n, last_finished_at FROM task_counts
          WHERE rollout_id = $1
          UNION ALL
          SELECT wave, site, state, n, last_finished_at FROM task_count_deltas
          WHERE rollout_id = $1) AS counted
    GROUP BY wave, site, state HAVING sum(n) <> 0)
"""
_PRUNED_COUNTS = """
    coalesce(sum(c.n), 0) AS targeted,
    coalesce(sum(c.n) FILTER (WHERE c.state = 'SUCCEEDED'), 0) AS succeeded,
    coalesce(sum(c.n) FILTER (WHERE c.state = 'FAILED'), 0) AS failed,
    coalesce(sum(c.n) FILTER (WHERE c.state = 'TIMED_OUT'), 0) AS timed_out,
    coalesce(sum(c.n) FILTER (WHERE c.state = 'SKIPPED'), 0) AS skipped,
    coalesce(sum(c.n) FILTER (WHERE c.state = 'CANCELLED'), 0) AS cancelled,
    coalesce(sum(c.n) FILTER (WHERE c.state = 'PENDING'), 0) AS pending,
    coalesce(sum(c.n) FILTER (WHERE c.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')),
             0) AS in_flight,
    {start} AS started_at,
    CASE WHEN coalesce(sum(c.n), 0) > 0
              AND coalesce(sum(c.n) FILTER (WHERE c.state NOT IN
                  ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SKIPPED', 'CANCELLED')), 0) = 0
         THEN max(c.last) END AS finished_at
"""

# the first dispatch is gone with the tasks: a wave's start is its row's started_at
_NO_START = "NULL::timestamptz"
PRUNED_SUMMARY = f"{_PRUNED_COUNTED} SELECT {_PRUNED_COUNTS.format(start=_NO_START)} FROM c"

PRUNED_WAVES = f"""{_PRUNED_COUNTED}
SELECT w.number, w.planned_size, w.state, w.requires_approval, w.approved_by,
       {_PRUNED_COUNTS.format(start="w.started_at")}
FROM rollout_waves w LEFT JOIN c ON c.wave = w.number
WHERE w.rollout_id = $1
GROUP BY w.number, w.planned_size, w.state, w.requires_approval, w.approved_by,
         w.started_at
ORDER BY w.number
"""

PRUNED_SITES = f"""{_PRUNED_COUNTED}
SELECT c.site, {_PRUNED_COUNTS.format(start=_NO_START)}
FROM c GROUP BY c.site ORDER BY c.site COLLATE "C"
"""

APPLIANCE_ROWS = """
SELECT a.name, t.site, t.wave, t.from_version, t.final_version, t.state AS outcome,
       t.error_code, t.error_message, t.dispatched_at AS started_at, t.finished_at,
       extract(epoch FROM t.finished_at - t.dispatched_at)::float8 AS duration_s
FROM tasks t JOIN appliances a ON a.id = t.appliance_id
WHERE t.rollout_id = $1
ORDER BY t.position
"""


async def rollout_row(conn: DB, rollout_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow(ROLLOUT, rollout_id)


async def summary_counts(conn: DB, rollout_id: int, *, pruned: bool = False) -> asyncpg.Record:
    """The rollout's outcome counts; `pruned`: from its summary rows (its tasks are gone)."""
    row = await conn.fetchrow(PRUNED_SUMMARY if pruned else SUMMARY, rollout_id)
    assert row is not None  # an aggregate without GROUP BY returns one row
    return row


async def wave_rows(conn: DB, rollout_id: int, *, pruned: bool = False) -> list[asyncpg.Record]:
    return await conn.fetch(PRUNED_WAVES if pruned else WAVES, rollout_id)


async def site_rows(conn: DB, rollout_id: int, *, pruned: bool = False) -> list[asyncpg.Record]:
    return await conn.fetch(PRUNED_SITES if pruned else SITES, rollout_id)


async def version_rows(conn: DB, rollout_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(VERSIONS, rollout_id)


async def window_rows(conn: DB, rollout_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(WINDOWS, rollout_id)


async def duration_rows(conn: DB, rollout_id: int) -> list[asyncpg.Record]:
    return await conn.fetch(DURATIONS, rollout_id)


async def failure_rows(
    conn: DB, rollout_id: int, names_cap: int, groups_cap: int
) -> list[asyncpg.Record]:
    return await conn.fetch(FAILURES, rollout_id, names_cap, groups_cap)


async def remaining_rows(conn: DB, rollout_id: int, names_cap: int) -> list[asyncpg.Record]:
    return await conn.fetch(REMAINING, rollout_id, names_cap)


async def timeline_span(
    conn: DB, rollout_id: int
) -> tuple[datetime | None, datetime | None]:
    row = await conn.fetchrow(TIMELINE_SPAN, rollout_id)
    if row is None:
        return None, None
    return row["first_at"], row["last_at"]


async def timeline_rows(
    conn: DB, rollout_id: int, start: datetime, bucket_seconds: float, buckets: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        TIMELINE, rollout_id, start, bucket_seconds, sorted(TERMINAL_TASK_STATES), buckets
    )


async def appliance_rows(
    conn: asyncpg.Connection | PoolConnectionProxy,
    rollout_id: int,
    *,
    batch_size: int = 1000,
) -> AsyncIterator[Sequence[asyncpg.Record]]:
    """The per-appliance rows in plan order, `batch_size` at a time, from a server-side
    cursor. Runs its own read-only REPEATABLE READ transaction on `conn` (so every batch
    sees the same snapshot): `conn` must not be inside a transaction already."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = await conn.cursor(APPLIANCE_ROWS, rollout_id)
        while True:
            batch = await cursor.fetch(batch_size)
            if not batch:
                return
            yield batch
            if len(batch) < batch_size:
                return
