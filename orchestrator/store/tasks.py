"""Tasks: claiming under the concurrency limits, guarded transitions, leases, progress.

Every transition is ONE statement: an UPDATE guarded by the expected state and the lease
owner, plus its `task_events` row (and, for outcomes, the appliance's last known version).
An update that matches no row means another worker owns the task now: the caller drops it.
docs/architecture.md ("The life of a task") says who calls each of these and when.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final
from uuid import UUID

import asyncpg

from orchestrator.domain.states import TERMINAL_TASK_STATES, TaskState, check_task_transition
from orchestrator.domain.text import clean_json, clean_text
from orchestrator.domain.windows import WindowGroup
from orchestrator.store.db import DB

# The columns a transition may set besides state, each with the SQL type its value is
# cast to from the request's jsonb text ("": text, no cast). The one list: `_SETTABLE` (a
# whitelist: the names are put into SQL) and the SET list of TRANSITION_MANY come from it.
TRANSITION_FIELDS: Final[Mapping[str, str]] = MappingProxyType({
    "remote_task_id": "",
    "progress": "smallint",
    "from_version": "",
    "final_version": "",
    "error_code": "",
    "error_message": "",
    "reconfigure_required": "boolean",
    "not_before": "timestamptz",
    "accepted_at": "timestamptz",
    "attempt": "int",
})
_SETTABLE = frozenset(TRANSITION_FIELDS)


def _set_field(column: str, cast: str) -> str:
    """`column = <the request's value when it names the column, else the column's own>`."""
    value = f"u.x->>'{column}'"
    if cast:
        value = f"({value})::{cast}"
    return f"{column} = CASE WHEN u.x ? '{column}' THEN {value} ELSE tasks.{column} END"


_SET_FIELDS = "".join(f"\n        {_set_field(c, cast)}," for c, cast in TRANSITION_FIELDS.items())


@dataclass(frozen=True)
class ClaimedTask:
    """A task this worker owns, with what the runner needs to drive the appliance."""

    id: int
    rollout_id: int
    appliance_id: int
    appliance: str
    base_url: str
    credentials_ref: str | None
    tls_ca_file: str | None
    tls_thumbprint: str | None
    site: str
    wave: int
    state: str
    attempt: int
    remote_task_id: str | None
    from_version: str | None
    dispatched_at: datetime | None
    accepted_at: datetime | None
    target_version: str
    strategy: dict[str, Any]
    lease_token: UUID
    install_sent_at: datetime | None
    installs_sent: int
    window_group: list[Any]  # [site, tags, timezone] of the appliance (see WindowGroup)
    reclaimed: bool


_CLAIMED_FIELDS = """
    c.id, c.rollout_id, c.appliance_id, a.name AS appliance, a.base_url, a.credentials_ref,
    a.tls_ca_file, a.tls_thumbprint, c.site, c.wave, c.state, c.attempt, c.remote_task_id,
    c.from_version, c.dispatched_at, c.accepted_at, r.target_version, r.strategy,
    c.lease_token, c.install_sent_at, c.installs_sent,
    jsonb_build_array(a.site, a.tags, a.timezone) AS window_group
"""


def _claimed(row: asyncpg.Record, reclaimed: bool) -> ClaimedTask:
    return ClaimedTask(reclaimed=reclaimed, **dict(row))


# A PENDING task of the claim's rollout (`t`) that may start now, in the claim's
# parameters: its wave is open, it holds no slot and waits for no retry delay, its
# appliance may start in a maintenance window, and no other task of its appliance is busy.
_STARTABLE = """t.state = 'PENDING' AND t.wave <= $2 AND NOT t.holds_slot
          AND (t.not_before IS NULL OR t.not_before <= now())
          -- maintenance windows: only appliances of the groups (site, tags, time zone)
          -- allowed to start now
          AND ($9::jsonb IS NULL OR (
              SELECT jsonb_build_array(a.site, a.tags, a.timezone) FROM appliances a
              WHERE a.id = t.appliance_id) IN (SELECT jsonb_array_elements($9::jsonb)))
          -- one install per appliance fleet-wide: not while another task of it is busy (in
          -- flight, or a timed-out install still holding its slot), nor (after_overlapping)
          -- while an earlier active rollout still has it to do
          AND NOT EXISTS (
              SELECT 1 FROM tasks o
              WHERE o.appliance_id = t.appliance_id AND o.id <> t.id
                AND (o.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING') OR o.holds_slot
                     OR ($10::boolean AND o.state = 'PENDING' AND o.rollout_id < t.rollout_id
                         AND EXISTS (SELECT 1 FROM rollouts orr WHERE orr.id = o.rollout_id
                                     AND orr.state IN ('SCHEDULED', 'RUNNING', 'PAUSED',
                                                       'WAITING_WINDOW')))))"""

CLAIM = f"""
WITH inflight AS (  -- this rollout's busy tasks per site: in flight, from its counters
                   -- (migration 0007: totals plus deltas not yet folded), and the few
                   -- holding a slot after a timeout (their own index)
    SELECT site, sum(n)::int AS n FROM (
        SELECT site, n FROM task_counts
        WHERE rollout_id = $1 AND state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')
        UNION ALL
        SELECT site, n FROM task_count_deltas
        WHERE rollout_id = $1 AND state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')
        UNION ALL
        SELECT site, 1 FROM tasks WHERE holds_slot AND rollout_id = $1
    ) AS busy GROUP BY site
),
fleet AS (  -- room left under each site's fleet-wide capacity (every rollout together),
           -- from the same counters (migration 0011 indexes the non-zero in-flight ones)
    SELECT s.name AS site, s.max_in_flight - (
               SELECT coalesce(sum(n), 0) FROM (
                   SELECT n FROM task_counts c
                   WHERE c.site = s.name AND c.n <> 0
                     AND c.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')
                   UNION ALL
                   SELECT n FROM task_count_deltas d
                   WHERE d.site = s.name
                     AND d.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')
                   UNION ALL
                   SELECT 1 FROM tasks o WHERE o.holds_slot AND o.site = s.name
               ) AS busy
           )::int AS room
    FROM sites s WHERE s.max_in_flight IS NOT NULL
),
pending_sites AS (  -- the rollout's sites with PENDING tasks in the waves up to $2, from
                   -- its counters (migration 0007): totals, and deltas not yet folded
    SELECT site FROM task_counts
    WHERE rollout_id = $1 AND wave <= $2 AND state = 'PENDING' AND n > 0
    UNION
    SELECT site FROM task_count_deltas
    WHERE rollout_id = $1 AND wave <= $2 AND state = 'PENDING' AND n > 0
),
total_room AS (  -- how many tasks the rollout may start now: max_in_flight less its busy
                 -- tasks, the claim's own limit, max_starts_per_minute less the last
                 -- minute's starts (counted only with such a limit: in a CASE, since the
                 -- generic plan of a prepared statement runs a subquery beside a NULL)
    SELECT greatest(0, least(
        $4::int - (SELECT coalesce(sum(n), 0) FROM inflight),
        $5::int,
        CASE WHEN $6::int IS NULL THEN 2147483647
             ELSE $6::int - (SELECT count(*) FROM tasks WHERE rollout_id = $1
                             AND dispatched_at > now() - interval '60 seconds')::int END
    ))::int AS room
),
site_room AS (  -- how many tasks each of those sites may start now: its per-site room and
                -- fleet-wide room, and never more than the rollout's
    SELECT ps.site, greatest(0, least(
               coalesce($3::int - coalesce(f.n, 0), 2147483647),
               coalesce(fl.room, 2147483647),
               (SELECT room FROM total_room))) AS room
    FROM pending_sites ps LEFT JOIN inflight f ON f.site = ps.site
    LEFT JOIN fleet fl ON fl.site = ps.site
),
limited AS (  -- whether a per-site limit applies: the rollout's per_site_concurrency, or
              -- some site's fleet-wide capacity
    SELECT $3::int IS NOT NULL OR EXISTS (SELECT 1 FROM fleet) AS yes
),
picked AS (
    -- with a per-site limit: per site, only as many PENDING tasks as it has room for, in
    -- plan order
    SELECT p.id, p.wave, p.position
    FROM site_room sr CROSS JOIN LATERAL (
        SELECT t.id, t.wave, t.position FROM tasks t
        WHERE t.rollout_id = $1 AND t.site = sr.site AND {_STARTABLE}
        ORDER BY t.wave, t.position  -- plan order: positions are wave-major
        LIMIT sr.room
    ) AS p
    WHERE sr.room > 0 AND (SELECT yes FROM limited)
    UNION ALL
    -- without one (a condition of the statement alone: the branch not taken is never
    -- run): the first PENDING tasks in plan order, as many as the rollout may start
    (SELECT t.id, t.wave, t.position FROM tasks t
     WHERE t.rollout_id = $1 AND {_STARTABLE} AND NOT (SELECT yes FROM limited)
     ORDER BY t.wave, t.position
     LIMIT (SELECT room FROM total_room))
),
eligible AS (
    SELECT id FROM picked
    ORDER BY wave, position
    LIMIT (SELECT room FROM total_room)
),
locked AS (  -- by primary key: the planner cannot tell how few `eligible` holds (its
            -- LIMIT is computed), and with IN (SELECT ...) it hashes them against a scan
            -- of every PENDING task
    SELECT id FROM tasks WHERE id = ANY(ARRAY(SELECT id FROM eligible)) AND state = 'PENDING'
    ORDER BY id
    FOR UPDATE SKIP LOCKED
),
c AS (
    UPDATE tasks t SET state = 'DISPATCHING', attempt = t.attempt + 1, lease_owner = $7,
           lease_token = gen_random_uuid(),
           lease_expires_at = now() + make_interval(secs => $8), dispatched_at = now(),
           accepted_at = NULL, remote_task_id = NULL, progress = NULL, not_before = NULL,
           install_sent_at = NULL, updated_at = now()
    FROM locked WHERE t.id = locked.id
    RETURNING t.*
),
events AS (
    INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
    SELECT id, rollout_id, 'PENDING', 'DISPATCHING',
           jsonb_build_object('owner', $7::text, 'attempt', attempt)
    FROM c
)
SELECT {_CLAIMED_FIELDS}
FROM c JOIN appliances a ON a.id = c.appliance_id JOIN rollouts r ON r.id = c.rollout_id
ORDER BY c.position
"""


async def claim_tasks(
    conn: DB,
    *,
    rollout_id: int,
    current_wave: int,
    owner: str,
    lease_seconds: float,
    max_in_flight: int,
    per_site: int | None,
    starts_per_minute: int | None,
    limit: int,
    allowed_groups: Sequence[WindowGroup] | None = None,
    after_overlapping: bool = False,
) -> list[ClaimedTask]:
    """PENDING -> DISPATCHING for as many tasks as the limits allow (and at most `limit`),
    among the appliances of `allowed_groups` when given (groups of appliances sharing site,
    tags and time zone whose maintenance windows let them start now).

    The limits: the rollout's own (`max_in_flight`, `per_site`, `starts_per_minute`), each
    site's fleet-wide capacity (table `sites`, every rollout together), and one task in
    flight per appliance fleet-wide (also a unique index). `after_overlapping`: also wait
    while an earlier active rollout still has the appliance to do.

    Call inside a transaction: this takes the fleet-wide claim lock (`lock_claims`) first,
    so the in-flight counts it reads, of every rollout, cannot change underneath it and
    several engine processes together never exceed any limit.
    """
    await lock_claims(conn)
    rows = await conn.fetch(
        CLAIM, rollout_id, current_wave, per_site, max_in_flight, limit, starts_per_minute,
        owner, lease_seconds,
        [[site, list(tags), tz] for site, tags, tz in allowed_groups]
        if allowed_groups is not None else None,
        after_overlapping,
    )
    return [_claimed(r, reclaimed=False) for r in rows]


async def lock_rollout(conn: DB, rollout_id: int) -> None:
    """Transaction-scoped advisory lock serialising the ticks (gates) of one rollout;
    waits for whoever holds it. The engine's tick takes `try_lock_rollout` instead."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('rollout'), $1::int)", rollout_id)


async def try_lock_rollout(conn: DB, rollout_id: int) -> bool:
    """`lock_rollout` without waiting: False when another transaction holds it (another
    engine is ticking the rollout right now; the caller skips it this tick, and its next
    tick, or a NOTIFY, looks again). True: taken until the transaction ends."""
    return bool(await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtext('rollout'), $1::int)", rollout_id))


async def lock_claims(conn: DB) -> None:
    """Transaction-scoped advisory lock serialising every claim, of every rollout: the
    fleet-wide limits (a site's capacity, one install per appliance) count the tasks of
    all rollouts. Always taken after `lock_rollout`, never before: no lock cycle."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('claim'), 0)")


RECLAIM = f"""
WITH stale AS (
    SELECT id, lease_owner FROM tasks
    WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING') AND lease_expires_at < now()
      AND NOT (id = ANY($4::bigint[]))  -- tasks this worker is driving right now
    ORDER BY lease_expires_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
),
c AS (
    UPDATE tasks t SET lease_owner = $1, lease_token = gen_random_uuid(),
           lease_expires_at = now() + make_interval(secs => $2), updated_at = now()
    FROM stale WHERE t.id = stale.id
    RETURNING t.*, stale.lease_owner AS previous_owner
),
events AS (
    INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
    SELECT id, rollout_id, state, state,
           jsonb_build_object('reason', 'lease expired: reclaimed for reconciliation',
                              'previous_owner', previous_owner, 'owner', $1::text)
    FROM c
)
SELECT {_CLAIMED_FIELDS}
FROM c JOIN appliances a ON a.id = c.appliance_id JOIN rollouts r ON r.id = c.rollout_id
"""


async def reclaim_expired(
    conn: DB, *, owner: str, lease_seconds: float, limit: int, running: Sequence[int] = ()
) -> list[ClaimedTask]:
    """Take over in-flight tasks whose owner stopped renewing their lease (a dead process,
    or a runner of this one that crashed); `running`: the tasks this worker still drives,
    whose lease lapsed only because the database was away (renewed, not reclaimed)."""
    rows = await conn.fetch(RECLAIM, owner, lease_seconds, limit, list(running))
    return [_claimed(r, reclaimed=True) for r in rows]


RENEW_LEASES = """WITH mine AS (
       SELECT t.id FROM tasks t
       JOIN unnest($1::bigint[], $2::uuid[]) AS u(id, token) ON u.id = t.id
       WHERE t.lease_owner = $3 AND t.lease_token = u.token
       ORDER BY t.id FOR UPDATE OF t)
   UPDATE tasks SET lease_expires_at = now() + make_interval(secs => $4)
   FROM mine WHERE tasks.id = mine.id
   RETURNING tasks.id"""


# At most this many leases per renewal statement: a statement locks its rows until it ends,
# and the runners' own writes to those tasks (transitions, the guarded install send) wait
# for it. 5,000 leases in one statement held their rows 1.85 s on average in the
# 100,000-appliance run (docs/benchmarks.md); 500 hold them a tenth of that.
RENEW_CHUNK: Final = 500


async def renew_leases(
    conn: DB, *, owner: str, leases: dict[int, UUID], lease_seconds: float
) -> set[int]:
    """Extend the leases held (task id -> lease token), RENEW_CHUNK per statement (each its
    own transaction unless the caller is in one), rows locked in id order; return the ids
    still held (a reclaim by another worker changed the others')."""
    ids = sorted(leases)
    kept: set[int] = set()
    for start in range(0, len(ids), RENEW_CHUNK):
        chunk = ids[start:start + RENEW_CHUNK]
        rows = await conn.fetch(RENEW_LEASES, chunk, [leases[i] for i in chunk], owner,
                                lease_seconds)
        kept.update(int(r["id"]) for r in rows)
    return kept


async def release_leases(conn: DB, *, owner: str, leases: dict[int, UUID]) -> int:
    """On shutdown: make the in-flight tasks held (id -> token) reclaimable at once."""
    if not leases:
        return 0
    ids = sorted(leases)
    status = await conn.execute(
        """UPDATE tasks SET lease_expires_at = now() - interval '1 second'
           FROM unnest($1::bigint[], $2::uuid[]) AS u(id, token)
           WHERE tasks.id = u.id AND tasks.lease_owner = $3 AND tasks.lease_token = u.token""",
        ids, [leases[i] for i in ids], owner,
    )
    return int(status.split()[-1])


class SendVerdict:
    """What `guard_install_sends` decided for a task."""

    SEND = "send"  # recorded as sent: POST the install now
    HOLD = "hold"  # the rollout is paused / waiting for a window, or the lease runs out
    CANCEL = "cancel"  # the rollout was cancelled or its failure policy tripped
    LOST = "lost"  # the lease is no longer this runner's


GUARD_SEND = """
WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::float8[])
        AS u(id, tok, fv, margin)
),
g AS (
    SELECT u.id, u.tok, u.fv,
           t.state = 'DISPATCHING' AND t.lease_owner = $5 AND t.lease_token = u.tok AS mine,
           t.lease_expires_at > now() + make_interval(secs => u.margin) AS fresh,
           r.state AS rollout_state, r.abort_reason
    FROM u JOIN tasks t ON t.id = u.id JOIN rollouts r ON r.id = t.rollout_id
    ORDER BY r.id
    FOR SHARE OF r  -- a pause or cancel being written is waited for, then seen
),
v AS (
    SELECT id, tok, fv, CASE
        WHEN NOT mine THEN 'lost'
        WHEN rollout_state IN ('CANCELLED', 'FAILED') OR abort_reason IS NOT NULL
            THEN 'cancel:rollout is ' || rollout_state
        WHEN rollout_state <> 'RUNNING' THEN 'hold:rollout is ' || rollout_state
        WHEN NOT fresh THEN 'hold:the lease would expire during the install call'
        ELSE 'send' END AS verdict
    FROM g
),
lk AS (  -- rows locked in id order, as every other batch of task writes: two never wait
         -- on each other in a cycle; the lock re-reads a row changed meanwhile
    SELECT tasks.id, v.fv FROM tasks JOIN v ON v.id = tasks.id
    WHERE v.verdict = 'send' AND tasks.state = 'DISPATCHING' AND tasks.lease_owner = $5
      AND tasks.lease_token = v.tok
    ORDER BY tasks.id FOR UPDATE OF tasks
),
sent AS (
    UPDATE tasks SET install_sent_at = now(), installs_sent = installs_sent + 1,
           from_version = lk.fv, updated_at = now()
    FROM lk WHERE tasks.id = lk.id
    RETURNING tasks.id
)
SELECT u.id, CASE
    WHEN v.verdict IS NULL THEN 'lost'  -- no such task
    WHEN v.verdict = 'send' AND NOT EXISTS (SELECT 1 FROM sent WHERE sent.id = u.id)
        THEN 'lost'
    ELSE v.verdict END AS verdict
FROM u LEFT JOIN v ON v.id = u.id
"""


@dataclass(frozen=True, slots=True)
class GuardRequest:
    """One guarded send of `guard_install_sends`: the task, the lease token of its claim,
    the version the appliance reported before the send, and how many seconds the lease
    must still run (the install call must not outlive it)."""

    task_id: int
    token: UUID
    from_version: str | None
    lease_margin: float


async def guard_install_sends(
    conn: DB, *, owner: str, requests: Sequence[GuardRequest]
) -> dict[int, tuple[str, str]]:
    """The guarded write right before install POSTs, for several tasks in ONE statement
    (the engine's runners share it: `engine/batching.py`), each task guarded on its own:
    records that the install is being sent (`install_sent_at`, `installs_sent`, the version
    seen before) only if the task is still this owner's (owner and lease token, still
    DISPATCHING), its lease outlives its `lease_margin`, and its rollout is RUNNING and not
    tripped (the runner checks the maintenance window itself, on the engine's clock).
    Returns task id -> (verdict, why): a `SendVerdict` value and the reason of a hold or a
    cancel; nothing else is written."""
    if not requests:
        return {}
    rows = await conn.fetch(
        GUARD_SEND, [r.task_id for r in requests], [r.token for r in requests],
        [clean_text(r.from_version) for r in requests], [r.lease_margin for r in requests],
        owner,
    )
    verdicts: dict[int, tuple[str, str]] = {}
    for row in rows:
        kind, _, why = str(row["verdict"]).partition(":")
        verdicts[int(row["id"])] = (kind, why)
    return verdicts


async def guard_install_send(
    conn: DB, *, task_id: int, owner: str, token: UUID, from_version: str | None,
    lease_margin: float,
) -> tuple[str, str]:
    """`guard_install_sends` for one task: (verdict, why)."""
    verdicts = await guard_install_sends(conn, owner=owner, requests=[
        GuardRequest(task_id, token, from_version, lease_margin)])
    return verdicts.get(task_id, (SendVerdict.LOST, ""))


async def write_progress(conn: DB, *, owner: str, progress: dict[int, int]) -> None:
    """Batched progress percentages of installing tasks (one statement)."""
    if not progress:
        return
    ids = list(progress)
    await conn.execute(
        """UPDATE tasks SET progress = u.p
           FROM unnest($1::bigint[], $2::smallint[]) AS u(id, p)
           WHERE tasks.id = u.id AND tasks.lease_owner = $3 AND tasks.state = 'INSTALLING'
             AND tasks.progress IS DISTINCT FROM u.p""",
        ids, [max(0, min(100, progress[i])) for i in ids], owner,
    )


PENDING_WINDOW_GROUPS = """SELECT DISTINCT a.site, a.tags, a.timezone FROM tasks t
JOIN appliances a ON a.id = t.appliance_id
WHERE t.rollout_id = $1 AND t.state = 'PENDING' AND t.wave <= $2"""


async def pending_window_groups(
    conn: DB, rollout_id: int, current_wave: int
) -> list[WindowGroup]:
    """The groups of appliances (site, tags, time zone: what their maintenance windows
    depend on) that have PENDING tasks in the rollout up to `current_wave`."""
    rows = await conn.fetch(PENDING_WINDOW_GROUPS, rollout_id, current_wave)
    return [(r["site"], tuple(r["tags"]), r["timezone"]) for r in rows]


async def failed_appliances(conn: DB, rollout_id: int, *, limit: int) -> list[dict[str, Any]]:
    """The rollout's failed and timed-out tasks (the most recent `limit`, newest first): the
    appliance, its site, the task's state and error, for a notification."""
    rows = await conn.fetch(
        """SELECT a.name AS appliance, t.site, t.wave, t.state, t.error_code,
                  t.error_message AS message
           FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.rollout_id = $1 AND t.state IN ('FAILED', 'TIMED_OUT')
           ORDER BY t.finished_at DESC NULLS LAST, t.id DESC LIMIT $2""", rollout_id, limit)
    return [dict(r) for r in rows]


async def task_outcomes(conn: DB, rollout_id: int) -> list[asyncpg.Record]:
    """Every task of the rollout: the appliance's name, the task's state and
    final_version."""
    return list(await conn.fetch(
        """SELECT a.name, t.state, t.final_version FROM tasks t
           JOIN appliances a ON a.id = t.appliance_id WHERE t.rollout_id = $1""",
        rollout_id,
    ))


async def failures_by_code(conn: DB, rollout_id: int) -> dict[str | None, int]:
    """error_code -> how many FAILED or TIMED_OUT tasks of the rollout have it, the most
    frequent first."""
    rows = await conn.fetch(
        """SELECT error_code, count(*) AS n FROM tasks WHERE rollout_id = $1
           AND state IN ('FAILED', 'TIMED_OUT') GROUP BY error_code ORDER BY n DESC""",
        rollout_id,
    )
    return {r["error_code"]: int(r["n"]) for r in rows}


# ---------------------------------------------------------------------- fleet figures
# What /metrics reports (orchestrator/api/metrics.py), read on one connection.
async def task_counts_of_unfinished_rollouts(conn: DB) -> dict[str, int]:
    """Tasks per state, over the rollouts that have not finished."""
    rows = await conn.fetch(
        """SELECT t.state, count(*)::bigint AS n FROM tasks t
           JOIN rollouts r ON r.id = t.rollout_id
           WHERE r.finished_at IS NULL GROUP BY t.state""")
    return {r["state"]: int(r["n"]) for r in rows}


async def count_in_flight(conn: DB) -> int:
    """Tasks in flight, in every rollout."""
    return int(await conn.fetchval(
        """SELECT count(*) FROM tasks
           WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')"""))


async def count_held_slots(conn: DB) -> int:
    """Slots held by timed-out installs, in every rollout."""
    return int(await conn.fetchval("SELECT count(*) FROM tasks WHERE holds_slot"))


@dataclass(frozen=True)
class TaskRow:
    id: int
    appliance: str
    site: str
    wave: int
    state: str
    attempt: int
    progress: int | None
    from_version: str | None
    final_version: str | None
    error_code: str | None
    error_message: str | None
    reconfigure_required: bool | None
    dispatched_at: datetime | None
    finished_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("dispatched_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


_TASK_PAGE = """SELECT t.id, a.name AS appliance, t.site, t.wave, t.state, t.attempt,
       t.progress, t.from_version, t.final_version, t.error_code, t.error_message,
       t.reconfigure_required, t.dispatched_at, t.finished_at
FROM tasks t JOIN appliances a ON a.id = t.appliance_id
WHERE t.rollout_id = $1 AND {state}
  AND ($3::text IS NULL OR t.site = $3) AND ($4::int IS NULL OR t.wave = $4)
  AND t.id > $5
ORDER BY t.id LIMIT $6"""
TASK_PAGE = _TASK_PAGE.format(state="($2::text[] IS NULL OR t.state = ANY($2))")
TASK_PAGE_ONE_STATE = _TASK_PAGE.format(state="t.state = $2::text")


async def list_tasks(
    conn: DB,
    rollout_id: int,
    *,
    states: Sequence[str] | None = None,
    site: str | None = None,
    wave: int | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> list[TaskRow]:
    if states is not None and len(states) == 1:
        # one state (a dashboard's "what is installing now"): read in id order through
        # (rollout_id, state, id) from the cursor on, only the page; with `= ANY(...)` the
        # planner read every task in that state (5,000 in flight) and sorted them, per page
        rows = await conn.fetch(TASK_PAGE_ONE_STATE, rollout_id, states[0], site, wave,
                                after_id, limit)
    else:
        rows = await conn.fetch(TASK_PAGE, rollout_id, list(states) if states else None,
                                site, wave, after_id, limit)
    return [TaskRow(**dict(r)) for r in rows]


@dataclass(frozen=True)
class TransitionRequest:
    """One guarded transition of `transition_many` (see there for the rules).

    `event=False` with `to_state == from_state` writes the fields only (no transition, no
    event), still guarded by the state and the lease owner: e.g. `from_version` before
    an install is sent."""

    task_id: int
    from_state: str
    to_state: str
    detail: dict[str, Any] | None = None
    via: str | None = None
    via_detail: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    event: bool = True
    # the lease token of the claim this write belongs to (a write without one matches no row)
    token: UUID | None = None


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


TRANSITION_MANY = f"""
WITH u AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS u(
        id bigint, f text, s text, via text, d jsonb, vd jsonb, x jsonb, ev boolean,
        rel boolean, term boolean, tok uuid)
),
lk AS (  -- rows locked in id order: two batches never wait on each other in a cycle
    SELECT tasks.id, tasks.rollout_id FROM tasks JOIN u ON u.id = tasks.id
    WHERE tasks.state = u.f AND tasks.lease_owner = $2 AND tasks.lease_token = u.tok
    ORDER BY tasks.id FOR UPDATE OF tasks
),
rl AS (  -- the rollouts of tasks sent back to PENDING, under a share lock: a cancel or a
         -- trip being written is waited for, and then seen
    SELECT r.id, (r.state IN ('CANCELLED', 'FAILED') OR r.abort_reason IS NOT NULL) AS stop
    FROM rollouts r
    WHERE r.id IN (SELECT lk.rollout_id FROM lk JOIN u ON u.id = lk.id WHERE u.s = 'PENDING')
    ORDER BY r.id FOR SHARE OF r
),
w AS (  -- a never-sent task of a cancelled or tripped rollout is CANCELLED, not PENDING
    SELECT u.*, CASE WHEN u.s = 'PENDING' AND coalesce(rl.stop, false) THEN 'CANCELLED'
                     ELSE u.s END AS es
    FROM u JOIN lk ON lk.id = u.id LEFT JOIN rl ON rl.id = lk.rollout_id
),
t AS (
    UPDATE tasks SET state = u.es,
        updated_at = CASE WHEN u.ev THEN now() ELSE tasks.updated_at END,{_SET_FIELDS}
        lease_owner = CASE WHEN u.rel THEN NULL ELSE tasks.lease_owner END,
        lease_token = CASE WHEN u.rel THEN NULL ELSE tasks.lease_token END,
        lease_expires_at = CASE WHEN u.rel THEN NULL ELSE tasks.lease_expires_at END,
        install_sent_at = CASE WHEN u.s = 'PENDING' THEN NULL ELSE tasks.install_sent_at END,
        -- a timed-out install that was sent may still run on the appliance: its slot is
        -- held until the appliance is seen idle (`release_held_slot`)
        holds_slot = CASE WHEN u.es = 'TIMED_OUT' THEN tasks.install_sent_at IS NOT NULL
                          ELSE tasks.holds_slot END,
        finished_at = CASE WHEN u.term OR u.es <> u.s THEN now() ELSE tasks.finished_at END
    FROM w AS u
    WHERE tasks.id = u.id AND tasks.state = u.f AND tasks.lease_owner = $2
      AND tasks.lease_token = u.tok
    RETURNING tasks.id, tasks.rollout_id, tasks.appliance_id, tasks.site, tasks.wave,
              tasks.error_code, tasks.error_message, u.f, u.es AS s, u.via,
              CASE WHEN u.es <> u.s THEN u.d || jsonb_build_object(
                  'reason', 'never sent: the rollout was cancelled or its failure policy '
                            'tripped') ELSE u.d END AS d,
              u.vd, u.ev, u.term OR u.es <> u.s AS term, u.x->>'final_version' AS final_version
),
ev AS (
    INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
    SELECT t.id, t.rollout_id, e.f, e.s, e.d
    FROM t, LATERAL (VALUES
        (1, t.f, coalesce(t.via, t.s), CASE WHEN t.via IS NULL THEN t.d ELSE t.vd END),
        (2, t.via, t.s, t.d)) AS e(o, f, s, d)
    WHERE t.ev AND (e.o = 1 OR t.via IS NOT NULL)
    ORDER BY t.id, e.o
),
seen AS (
    UPDATE appliances a SET current_version = t.final_version, last_seen_at = now()
    FROM t WHERE a.id = t.appliance_id AND t.final_version IS NOT NULL
),
failed AS (  -- notifications (migration 0010): a task.failed event per failure, in this
             -- transaction, when some webhook exists (the fan-out trigger picks its
             -- receivers)
    INSERT INTO outbox_events (type, rollout_id, sites, data)
    SELECT 'task.failed', t.rollout_id, ARRAY[t.site], jsonb_build_object(
               'task_id', t.id, 'appliance', a.name, 'site', t.site, 'wave', t.wave,
               'state', t.s, 'error_code', t.error_code, 'message', t.error_message)
    FROM t JOIN appliances a ON a.id = t.appliance_id
    WHERE t.s IN ('FAILED', 'TIMED_OUT') AND t.f <> t.s
      AND EXISTS (SELECT 1 FROM webhooks)
    ORDER BY t.id
)
SELECT t.id, CASE WHEN t.term THEN pg_notify('orchestrator', 'task:' || t.rollout_id) END
FROM t
"""


async def transition_many(
    conn: DB, *, owner: str, requests: Sequence[TransitionRequest]
) -> set[int]:
    """Several guarded transitions in ONE statement, each task guarded on its own; returns
    the ids of the tasks that matched. The statement is atomic: every matched task gets its
    state, fields and events, or none does.

    The rules: a task matches only in `from_state`, leased by `owner` with the request's
    `token`; the move (through `via` first, when given) must be allowed by the task state
    machine (`check_task_transition`), and only the columns of TRANSITION_FIELDS may be
    set (ValueError otherwise). Each move writes its `task_events` row (two with `via`);
    a terminal state or PENDING releases the lease; a terminal state sets finished_at and
    notifies the engines; a final_version becomes the appliance's current version. A task
    sent back to PENDING whose rollout was cancelled or tripped meanwhile is CANCELLED
    instead (it was never sent)."""
    if not requests:
        return set()
    rows: list[dict[str, Any]] = []
    for r in sorted(requests, key=lambda request: request.task_id):
        if r.via is not None:
            check_task_transition(TaskState(r.from_state), TaskState(r.via))
            check_task_transition(TaskState(r.via), TaskState(r.to_state))
        elif r.event or r.from_state != r.to_state:
            check_task_transition(TaskState(r.from_state), TaskState(r.to_state))
        unknown = set(r.fields) - _SETTABLE
        if unknown:
            raise ValueError(f"not settable by a transition: {sorted(unknown)}")
        terminal = r.to_state in TERMINAL_TASK_STATES
        rows.append({
            "id": r.task_id, "f": r.from_state, "s": r.to_state, "via": r.via,
            "d": clean_json(r.detail or {}), "vd": clean_json(r.via_detail or {}),
            "x": clean_json({k: _json_value(v) for k, v in r.fields.items()}), "ev": r.event,
            "rel": terminal or r.to_state == "PENDING", "term": terminal,
            "tok": str(r.token) if r.token is not None else None,
        })
    matched = await conn.fetch(TRANSITION_MANY, rows, owner)  # jsonb: the pool's codec
    return {int(m["id"]) for m in matched}


# ---------------------------------------------------------------------- held slots
@dataclass(frozen=True)
class HeldSlot:
    """A task that ended TIMED_OUT after its install was sent: its appliance may still be
    installing or rebooting, so the task keeps counting as in flight (its rollout's limits,
    its site's capacity, one install per appliance) until the appliance is seen idle."""

    id: int
    rollout_id: int
    appliance_id: int
    appliance: str
    base_url: str
    credentials_ref: str | None
    tls_ca_file: str | None
    tls_thumbprint: str | None
    site: str
    target_version: str
    finished_at: datetime | None
    strategy: dict[str, Any]


DUE_HELD_SLOTS = """
WITH due AS (
    SELECT id FROM tasks
    WHERE holds_slot AND (slot_checked_at IS NULL
                          OR slot_checked_at < now() - make_interval(secs => $1))
    ORDER BY slot_checked_at NULLS FIRST, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
c AS (
    UPDATE tasks t SET slot_checked_at = now() FROM due WHERE t.id = due.id
    RETURNING t.id, t.rollout_id, t.appliance_id, t.site, t.finished_at
)
SELECT c.id, c.rollout_id, c.appliance_id, a.name AS appliance, a.base_url,
       a.credentials_ref, a.tls_ca_file, a.tls_thumbprint, c.site, r.target_version,
       c.finished_at, r.strategy
FROM c JOIN appliances a ON a.id = c.appliance_id JOIN rollouts r ON r.id = c.rollout_id
ORDER BY c.id
"""


async def due_held_slots(conn: DB, *, every_seconds: float, limit: int) -> list[HeldSlot]:
    """Up to `limit` held slots not looked at for `every_seconds`, marked as looked at now
    (so that another engine skips them until then)."""
    rows = await conn.fetch(DUE_HELD_SLOTS, every_seconds, limit)
    return [HeldSlot(**dict(r)) for r in rows]


RELEASE_HELD = """
WITH t AS (
    UPDATE tasks SET holds_slot = false, updated_at = now(),
           final_version = CASE WHEN state = 'TIMED_OUT' THEN coalesce($2::text, final_version)
                                ELSE final_version END
    WHERE holds_slot AND ($1::bigint IS NULL OR id = $1)
      AND ($3::bigint IS NULL OR appliance_id = $3)
    RETURNING id, rollout_id, appliance_id, state
),
ev AS (
    INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
    SELECT id, rollout_id, state, state, $4::jsonb FROM t
),
seen AS (
    UPDATE appliances a SET current_version = $2, last_seen_at = now()
    FROM t WHERE a.id = t.appliance_id AND $2::text IS NOT NULL
)
SELECT t.id, t.rollout_id, pg_notify('orchestrator', 'task:' || t.rollout_id) FROM t
"""


async def release_held_slot(
    conn: DB, task_id: int, *, version: str | None, reason: str
) -> bool:
    """The appliance of a held slot was seen idle (answering, no install task running) on
    `version`: the slot is free again, the version is recorded as the task's final version
    and the appliance's current one, and a task event says why. Whether it was held."""
    rows = await conn.fetch(
        RELEASE_HELD, task_id, clean_text(version), None,
        clean_json({"slot_released": True, "version": version, "reason": reason}),
    )
    return bool(rows)


async def release_appliance_slots(
    conn: DB, appliance_id: int, *, reason: str
) -> list[int]:
    """An operator frees every slot held by timed-out installs on one appliance (it is known
    to be idle, or gone); the ids of the tasks released."""
    rows = await conn.fetch(
        RELEASE_HELD, None, None, appliance_id,
        clean_json({"slot_released": True, "version": None, "reason": reason}),
    )
    return [int(r["id"]) for r in rows]


async def held_slots(conn: DB, *, rollout_id: int | None = None) -> list[asyncpg.Record]:
    """Held slots (of one rollout, or all): task id, rollout, appliance, site, since."""
    return list(await conn.fetch(
        """SELECT t.id, t.rollout_id, a.name AS appliance, t.site, t.finished_at AS since,
                  t.slot_checked_at AS last_look
           FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.holds_slot AND ($1::bigint IS NULL OR t.rollout_id = $1)
           ORDER BY t.id""",
        rollout_id,
    ))
