"""Rollouts: creation (plan snapshot), plan preview, and the operator controls.

These functions are the one implementation behind the CLI and the REST API. Each control
locks the rollout row, checks the state machine (`check_operation`), changes what it must,
writes `audit_log`, and notifies the engines (`NOTIFY orchestrator`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.planning import PlanItem, plan_waves
from orchestrator.domain.policy import wave_requires_approval
from orchestrator.domain.selector import Selector, parse_selector
from orchestrator.domain.states import (
    TERMINAL_ROLLOUT_STATES,
    TERMINAL_WAVE_STATES,
    RolloutState,
    TaskState,
    WaveState,
    check_operation,
)
from orchestrator.domain.strategy import Strategy, parse_strategy
from orchestrator.store import webhooks
from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB
from orchestrator.store.overlap import (
    UNFINISHED_TASK_STATES,
    OverlappingRollout,
    find_overlaps,
    lock_overlap_check,
    overlap_message,
)

NOTIFY_CHANNEL = "orchestrator"
RETRYABLE_STATES: Final = ("FAILED", "TIMED_OUT", "CANCELLED")


class RolloutError(OrchestratorError):
    """A rollout request is refused; the message says why in terms of the request."""


class RolloutNotFound(RolloutError):
    pass


class EmptySelection(RolloutError):
    """The selector matches no enabled appliance of the inventory as it is now: a refusal
    by the state of the inventory, not by the request's form (the API answers 409)."""


class IdempotencyConflict(RolloutError):
    """The idempotency key was used before with another request body."""


class OverlapError(RolloutError):
    """Some appliances of the rollout have an unfinished task in another active rollout,
    and the rollout's strategy does not say `after_overlapping: true`.

    `rollouts`: the other rollouts (by id); `appliances`: the overlapping appliances' names
    (sorted, all of them); the message lists at most OVERLAP_NAMES_SHOWN names
    (`store/overlap.py`).
    """

    def __init__(self, message: str, rollouts: Sequence[OverlappingRollout],
                 appliances: Sequence[str]) -> None:
        super().__init__(message)
        self.rollouts = list(rollouts)
        self.appliances = list(appliances)


@dataclass(frozen=True)
class Rollout:
    id: int
    name: str
    target_version: str
    selector: Selector
    strategy: Strategy
    state: RolloutState
    current_wave: int | None
    schedule_at: datetime | None
    created_by: str
    abort_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    targeted: int
    # when `orchestrator prune` deleted its tasks and events (its counts remain)
    pruned_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "target_version": self.target_version,
            "selector": self.selector.to_dict(),
            "strategy": self.strategy.to_dict(),
            "state": str(self.state),
            "current_wave": self.current_wave,
            "schedule_at": _iso(self.schedule_at),
            "created_by": self.created_by,
            "abort_reason": self.abort_reason,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "targeted": self.targeted,
            "pruned_at": _iso(self.pruned_at),
        }


@dataclass(frozen=True)
class WavePlan:
    """One wave of a plan. `requires_approval`: the gate AFTER this wave waits for an
    operator before the next wave starts (the `rollout_waves.requires_approval` column)."""

    number: int
    appliances: list[PlanItem]
    requires_approval: bool


@dataclass(frozen=True)
class Plan:
    target_version: str
    selector: Selector
    strategy: Strategy
    waves: list[WavePlan] = field(default_factory=list)

    @property
    def targeted(self) -> int:
        return sum(len(w.appliances) for w in self.waves)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_version": self.target_version,
            "targeted": self.targeted,
            "selector": self.selector.to_dict(),
            "strategy": self.strategy.to_dict(),
            "waves": [
                {
                    "number": w.number,
                    "size": len(w.appliances),
                    "requires_approval": w.requires_approval,
                    "sites": sorted({a.site for a in w.appliances}),
                    "appliances": [a.name for a in w.appliances],
                }
                for w in self.waves
            ],
        }


# ------------------------------------------------------------------ overlapping rollouts
# The rule, the lock and the query are in `store/overlap.py`; the refusal is here.
def overlap_error(
    action: str, rollouts: Sequence[OverlappingRollout], appliances: Sequence[str],
    remedy: str,
) -> OverlapError:
    """The refusal: `action` ("cannot start rollout 7") names what was refused; the message
    (`overlap_message`) names the other rollouts, the appliances and `remedy`."""
    return OverlapError(overlap_message(action, rollouts, appliances, remedy), rollouts,
                        appliances)


_QUEUE_HINT = ("--after-overlapping (API: strategy.after_overlapping: true) to queue "
               "behind {it}")


async def _check_overlap(
    conn: DB, strategy: Strategy, appliance_ids: Sequence[int], exclude_rollout: int | None,
    action: str, remedy: str,
) -> None:
    """Take the overlap lock, then refuse when the appliances overlap an active rollout
    (unless the strategy says after_overlapping)."""
    await lock_overlap_check(conn)
    if strategy.after_overlapping:
        return
    rollouts, appliances = await find_overlaps(conn, appliance_ids, exclude_rollout)
    if rollouts:
        raise overlap_error(action, rollouts, appliances, remedy)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


_ROLLOUT_COLUMNS = """
    r.id, r.name, r.target_version, r.selector, r.strategy, r.state, r.current_wave,
    r.schedule_at, r.created_by, r.abort_reason, r.created_at, r.started_at, r.finished_at,
    r.pruned_at,
    (SELECT coalesce(sum(c.n), 0) FROM (
        SELECT n FROM task_counts WHERE rollout_id = r.id
        UNION ALL SELECT n FROM task_count_deltas WHERE rollout_id = r.id) AS c) AS targeted
"""

# A rollout's task counts per (wave, site, state) without reading its tasks: the totals
# plus the deltas not yet folded into them (migration 0007). They survive `prune`.
ROLLOUT_COUNTS = """SELECT wave, site, state, sum(n)::int AS n
FROM (SELECT wave, site, state, n FROM task_counts WHERE rollout_id = $1
      UNION ALL
      SELECT wave, site, state, n FROM task_count_deltas WHERE rollout_id = $1) AS counted
GROUP BY wave, site, state HAVING sum(n) > 0"""


def _rollout(row: asyncpg.Record) -> Rollout:
    return Rollout(
        id=row["id"], name=row["name"], target_version=row["target_version"],
        selector=parse_selector(row["selector"]), strategy=parse_strategy(row["strategy"]),
        state=RolloutState(row["state"]), current_wave=row["current_wave"],
        schedule_at=row["schedule_at"], created_by=row["created_by"],
        abort_reason=row["abort_reason"], created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        targeted=int(row["targeted"]), pruned_at=row["pruned_at"],
    )


async def select_targets(conn: DB, selector: Selector) -> list[PlanItem]:
    rows = await conn.fetch(
        """SELECT id, name, site FROM appliances
           WHERE enabled
             AND (cardinality($1::text[]) = 0 OR site = ANY($1))
             AND (cardinality($2::text[]) = 0 OR tags && $2)
             AND (cardinality($3::text[]) = 0 OR name = ANY($3))
             AND (cardinality($4::text[]) = 0 OR current_version = ANY($4))
           ORDER BY name""",
        list(selector.sites), list(selector.tags), list(selector.names),
        list(selector.current_versions),
    )
    return [PlanItem(appliance_id=r["id"], name=r["name"], site=r["site"]) for r in rows]


def _parse_request(
    target_version: str, selector: Mapping[str, Any] | None, strategy: Mapping[str, Any] | None
) -> tuple[str, Selector, Strategy]:
    version = (target_version or "").strip()
    if not version:
        raise RolloutError("target_version: required, got an empty value")
    return version, parse_selector(selector or {}), parse_strategy(strategy or {})


async def preview_plan(
    conn: DB,
    target_version: str,
    selector: Mapping[str, Any] | None = None,
    strategy: Mapping[str, Any] | None = None,
) -> Plan:
    """The plan a rollout would get now; nothing is written."""
    version, sel, strat = _parse_request(target_version, selector, strategy)
    items = await select_targets(conn, sel)
    if not items:
        raise EmptySelection(f"the selector matches no enabled appliance: {sel.to_dict()}")
    waves = plan_waves(items, strat.waves, strat.order, strat.seed)
    return Plan(
        target_version=version, selector=sel, strategy=strat,
        waves=[
            WavePlan(i, wave, wave_requires_approval(strat.approval, i, len(waves)))
            for i, wave in enumerate(waves)
        ],
    )


def request_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


async def create_rollout(
    pool: asyncpg.Pool,
    *,
    name: str,
    target_version: str,
    selector: Mapping[str, Any] | None = None,
    strategy: Mapping[str, Any] | None = None,
    actor: Actor,
    schedule_at: datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[Rollout, bool]:
    """Create a DRAFT rollout with its plan snapshot (waves and one task per appliance).

    Returns (rollout, created). With an idempotency key, the same key and body return the
    existing rollout (created False); the same key with another body raises
    IdempotencyConflict.
    """
    if not (name or "").strip():
        raise RolloutError("name: required, got an empty value")
    body = {
        "name": name, "target_version": target_version, "selector": selector or {},
        "strategy": strategy or {}, "schedule_at": _iso(schedule_at),
    }
    digest = request_hash(body) if idempotency_key else None
    async with pool.acquire() as conn, conn.transaction():
        if idempotency_key and digest:
            existing = await _created_before(conn, idempotency_key, digest)
            if existing is not None:
                return existing, False
        plan = await preview_plan(conn, target_version, selector, strategy)
        await _check_overlap(
            conn, plan.strategy,
            [item.appliance_id for wave in plan.waves for item in wave.appliances], None,
            f"cannot create rollout {name.strip()!r}",
            "pass " + _QUEUE_HINT,
        )
        rollout_id = await conn.fetchval(
            """INSERT INTO rollouts (name, target_version, selector, strategy, created_by,
                                     schedule_at, idempotency_key, request_hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
            name.strip(), plan.target_version, plan.selector.to_dict(), plan.strategy.to_dict(),
            actor.name, schedule_at, idempotency_key, digest,
        )
        await _insert_plan(conn, rollout_id, plan)
        await record_audit(
            conn, actor, "rollout.create", "rollout", rollout_id,
            {"name": name, "target_version": plan.target_version, "targeted": plan.targeted},
        )
        await _notify(conn, rollout_id)
        created = await _get(conn, rollout_id)
    planned = sum(len(wave.appliances) for wave in plan.waves)
    if planned >= ANALYZE_AFTER_TASKS:
        await _analyze_tasks(pool)
    return created, True


# A rollout of at least this many tasks refreshes the planner's statistics of `tasks` as
# soon as it is created (see _analyze_tasks).
ANALYZE_AFTER_TASKS: Final = 1000


async def _analyze_tasks(pool: asyncpg.Pool) -> None:
    """`ANALYZE tasks` after a large rollout was planned. Until autovacuum gets to it (up
    to a minute later), the planner plans the claims of the new rollout from statistics
    without its tasks: at 100,000 tasks its first claims took 65-120 ms instead of about
    6 ms (bench/rollout.py, docs/benchmarks.md). Best effort: a role that may not analyze
    the table gets a warning from PostgreSQL, and any error is left to autovacuum."""
    with contextlib.suppress(asyncpg.PostgresError, OSError):
        async with pool.acquire() as conn:
            await conn.execute("ANALYZE tasks")


async def _created_before(conn: DB, idempotency_key: str, digest: str) -> Rollout | None:
    """The rollout created earlier with this idempotency key and the same request (None
    when the key is new); IdempotencyConflict when its request differed. Holds the key's
    lock until the transaction ends, so that two requests with one key create one rollout."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('idempotency'), hashtext($1))",
        idempotency_key,
    )
    existing = await conn.fetchrow(
        "SELECT id, request_hash FROM rollouts WHERE idempotency_key = $1",
        idempotency_key,
    )
    if not existing:
        return None
    if existing["request_hash"] != digest:
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r} was used for rollout "
            f"{existing['id']} with a different request"
        )
    return await _get(conn, existing["id"])


async def _insert_plan(conn: DB, rollout_id: int, plan: Plan) -> None:
    """The plan snapshot of a new rollout: its waves, and one PENDING task per appliance
    (with its first event) in plan order."""
    await conn.executemany(
        """INSERT INTO rollout_waves (rollout_id, number, planned_size, requires_approval)
           VALUES ($1, $2, $3, $4)""",
        [(rollout_id, w.number, len(w.appliances), w.requires_approval) for w in plan.waves],
    )
    ids: list[int] = []
    waves: list[int] = []
    sites: list[str] = []
    for wave in plan.waves:
        for item in wave.appliances:
            ids.append(item.appliance_id)
            waves.append(wave.number)
            sites.append(item.site)
    await conn.execute(
        """WITH planned AS (
               INSERT INTO tasks (rollout_id, appliance_id, wave, position, site)
               SELECT $1, a, w, p - 1, s
               FROM unnest($2::bigint[], $3::int[], $4::text[]) WITH ORDINALITY AS u(a, w, s, p)
               RETURNING id, rollout_id)
           INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
           SELECT id, rollout_id, NULL, 'PENDING', '{"reason": "planned"}' FROM planned""",
        rollout_id, ids, waves, sites,
    )


async def _notify(conn: DB, rollout_id: int) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"rollout:{rollout_id}")


async def _get(conn: DB, rollout_id: int, *, lock: bool = False) -> Rollout:
    """The rollout; with `lock`, its row locked until the transaction ends, FOR NO KEY
    UPDATE (as `lock_for_tick`): every other writer of the row and every FOR SHARE reader
    waits, but not the foreign-key checks of rows inserted for the rollout (FOR KEY SHARE).
    Under FOR UPDATE, a retry-failed that waited for a task row deadlocked with the
    engine's transaction holding that row and inserting the task's event."""
    if lock:
        await conn.execute("SELECT 1 FROM rollouts WHERE id = $1 FOR NO KEY UPDATE",
                           rollout_id)
    row = await conn.fetchrow(
        f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts r WHERE r.id = $1", rollout_id
    )
    if row is None:
        raise RolloutNotFound(f"rollout {rollout_id} does not exist")
    return _rollout(row)


async def get_rollout(conn: DB, rollout_id: int) -> Rollout:
    return await _get(conn, rollout_id)


async def list_rollouts(
    conn: DB, *, states: Sequence[str] | None = None, after_id: int | None = None,
    limit: int = 100,
) -> list[Rollout]:
    rows = await conn.fetch(
        f"""SELECT {_ROLLOUT_COLUMNS} FROM rollouts r
            WHERE ($1::text[] IS NULL OR r.state = ANY($1))
              AND ($2::bigint IS NULL OR r.id < $2)
            ORDER BY r.id DESC LIMIT $3""",
        list(states) if states else None, after_id, limit,
    )
    return [_rollout(r) for r in rows]


# ------------------------------------------------------------------ operator controls
@dataclass(frozen=True)
class OperationResult:
    rollout: Rollout
    message: str


async def start_rollout(
    pool: asyncpg.Pool, rollout_id: int, actor: Actor, *, schedule_at: datetime | None = None
) -> OperationResult:
    """Start a DRAFT rollout (SCHEDULED when its schedule_at is in the future) or a
    SCHEDULED one now. `schedule_at` (DRAFT only) sets the rollout's schedule_at first."""
    async with pool.acquire() as conn, conn.transaction():
        rollout = await _get(conn, rollout_id, lock=True)
        check_operation("start", rollout.state)
        if schedule_at is not None:
            if rollout.state != RolloutState.DRAFT:
                raise RolloutError(
                    f"cannot schedule rollout {rollout_id}: it is {rollout.state} (a start "
                    "time applies to a DRAFT rollout; start without one to start it now)"
                )
            await conn.execute(
                "UPDATE rollouts SET schedule_at = $2, updated_at = now() WHERE id = $1",
                rollout_id, schedule_at,
            )
            rollout = await _get(conn, rollout_id)
        if rollout.state == RolloutState.DRAFT:
            # a SCHEDULED rollout is active already: it was checked when it was started
            await _check_overlap(
                conn, rollout.strategy,
                await _appliances_of(conn, rollout_id, UNFINISHED_TASK_STATES), rollout_id,
                f"cannot start rollout {rollout_id}",
                "create it again with " + _QUEUE_HINT + ", or start it once {it} {has} ended",
            )
        scheduled = (
            rollout.state == RolloutState.DRAFT
            and rollout.schedule_at is not None
            and rollout.schedule_at > await conn.fetchval("SELECT now()")
        )
        if scheduled:
            await conn.execute(
                "UPDATE rollouts SET state = 'SCHEDULED', updated_at = now() WHERE id = $1",
                rollout_id,
            )
            message = f"rollout {rollout_id} is scheduled to start at {_iso(rollout.schedule_at)}"
            await webhooks.emit(conn, "rollout.scheduled", rollout_id, {
                "schedule_at": _iso(rollout.schedule_at), "by": actor.name})
        else:
            await begin_running(conn, rollout_id, reason=f"started by {actor.name}")
            message = f"rollout {rollout_id} started"
        await record_audit(conn, actor, "rollout.start", "rollout", rollout_id,
                           {"schedule_at": _iso(schedule_at)} if schedule_at else {})
        await _notify(conn, rollout_id)
        return OperationResult(await _get(conn, rollout_id), message)


async def _appliances_of(conn: DB, rollout_id: int, states: Sequence[str]) -> list[int]:
    rows = await conn.fetch(
        "SELECT appliance_id FROM tasks WHERE rollout_id = $1 AND state = ANY($2::text[])",
        rollout_id, list(states),
    )
    return [int(r["appliance_id"]) for r in rows]


async def begin_running(conn: DB, rollout_id: int, *, reason: str = "started") -> None:
    """DRAFT/SCHEDULED -> RUNNING with the first wave open (also used by the scheduler);
    `reason` goes into the rollout.started notification."""
    await conn.execute(
        """UPDATE rollouts SET state = 'RUNNING', current_wave = 0,
                  started_at = coalesce(started_at, now()), updated_at = now()
           WHERE id = $1""",
        rollout_id,
    )
    await conn.execute(
        """UPDATE rollout_waves SET state = 'RUNNING', started_at = now()
           WHERE rollout_id = $1 AND number = 0 AND state = 'PENDING'""",
        rollout_id,
    )
    if await webhooks.wanted(conn):
        waves = await conn.fetchval(
            "SELECT count(*) FROM rollout_waves WHERE rollout_id = $1", rollout_id)
        await webhooks.emit(conn, "rollout.started", rollout_id, {
            "reason": reason, "waves": int(waves),
            "appliances": sum((await outcome_counts(conn, rollout_id)).values())})
        await _wave_event(conn, "wave.started", rollout_id, 0)


async def pause_rollout(pool: asyncpg.Pool, rollout_id: int, actor: Actor) -> OperationResult:
    async with pool.acquire() as conn, conn.transaction():
        rollout = await _get(conn, rollout_id, lock=True)
        check_operation("pause", rollout.state)
        await conn.execute(
            "UPDATE rollouts SET state = 'PAUSED', updated_at = now() WHERE id = $1", rollout_id
        )
        in_flight = await _in_flight(conn, rollout_id)
        await record_audit(conn, actor, "rollout.pause", "rollout", rollout_id,
                           {"from_state": str(rollout.state)})
        await webhooks.emit(conn, "rollout.paused", rollout_id, {
            "by": actor.name, "from_state": str(rollout.state), "in_flight": in_flight})
        await _notify(conn, rollout_id)
        return OperationResult(
            await _get(conn, rollout_id),
            f"rollout {rollout_id} paused: no new installs start"
            + (f"; {in_flight} install(s) already accepted run to completion" if in_flight
               else ""),
        )


async def resume_rollout(pool: asyncpg.Pool, rollout_id: int, actor: Actor) -> OperationResult:
    async with pool.acquire() as conn, conn.transaction():
        rollout = await _get(conn, rollout_id, lock=True)
        check_operation("resume", rollout.state)
        if rollout.started_at is None:
            await begin_running(conn, rollout_id, reason=f"resumed by {actor.name}")
        else:
            await conn.execute(
                "UPDATE rollouts SET state = 'RUNNING', updated_at = now() WHERE id = $1",
                rollout_id,
            )
        await record_audit(conn, actor, "rollout.resume", "rollout", rollout_id, {})
        await webhooks.emit(conn, "rollout.resumed", rollout_id, {"by": actor.name})
        await _notify(conn, rollout_id)
        return OperationResult(await _get(conn, rollout_id), f"rollout {rollout_id} resumed")


async def cancel_pending_tasks(conn: DB, rollout_id: int, reason: str) -> int:
    """PENDING -> CANCELLED for every never-started task of the rollout, with events."""
    count = await conn.fetchval(
        """WITH cancelled AS (
               UPDATE tasks SET state = 'CANCELLED', finished_at = now(), updated_at = now(),
                                error_code = 'CANCELLED', error_message = $2
               WHERE rollout_id = $1 AND state = 'PENDING'
               RETURNING id, rollout_id),
           events AS (
               INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
               SELECT id, rollout_id, 'PENDING', 'CANCELLED', jsonb_build_object('reason', $2::text)
               FROM cancelled)
           SELECT count(*) FROM cancelled""",
        rollout_id, reason,
    )
    await conn.execute(
        """UPDATE rollout_waves SET state = 'CANCELLED', finished_at = now()
           WHERE rollout_id = $1 AND state IN ('PENDING', 'AWAITING_APPROVAL', 'SOAKING')""",
        rollout_id,
    )
    return int(count)


async def _cancel_open_waves(conn: DB, rollout_id: int) -> None:
    """Every wave of a cancelled rollout that has not ended (PENDING, RUNNING, SOAKING,
    AWAITING_APPROVAL) becomes CANCELLED (WAVE_TRANSITIONS allows it from each); waves that
    ended (SUCCEEDED, FAILED) keep their state. Installs still in flight in the active
    wave run to their end; the wave's state says that the rollout will not continue."""
    await conn.execute(
        """UPDATE rollout_waves SET state = 'CANCELLED', finished_at = coalesce(finished_at, now())
           WHERE rollout_id = $1
             AND state IN ('PENDING', 'RUNNING', 'SOAKING', 'AWAITING_APPROVAL')""",
        rollout_id,
    )


async def cancel_rollout(pool: asyncpg.Pool, rollout_id: int, actor: Actor) -> OperationResult:
    async with pool.acquire() as conn, conn.transaction():
        rollout = await _get(conn, rollout_id, lock=True)
        check_operation("cancel", rollout.state)
        cancelled = await cancel_pending_tasks(conn, rollout_id, f"cancelled by {actor.name}")
        await _cancel_open_waves(conn, rollout_id)
        in_flight = await _in_flight(conn, rollout_id)
        await conn.execute(
            """UPDATE rollouts SET state = 'CANCELLED', updated_at = now(),
                      abort_reason = coalesce(abort_reason, $2),
                      finished_at = now()
               WHERE id = $1""",
            rollout_id, f"cancelled by {actor.name}",
        )
        await record_audit(conn, actor, "rollout.cancel", "rollout", rollout_id,
                           {"cancelled_tasks": cancelled, "in_flight": in_flight})
        await _finished_event(conn, rollout_id, "CANCELLED", f"cancelled by {actor.name}",
                              in_flight=in_flight)
        await _notify(conn, rollout_id)
        message = f"rollout {rollout_id} cancelled: {cancelled} task(s) will not start"
        if in_flight:
            message += (
                f"; {in_flight} install(s) already accepted by appliances cannot be stopped "
                "and are followed to their end"
            )
        return OperationResult(await _get(conn, rollout_id), message)


async def approve_rollout(pool: asyncpg.Pool, rollout_id: int, actor: Actor) -> OperationResult:
    async with pool.acquire() as conn, conn.transaction():
        rollout = await _get(conn, rollout_id, lock=True)
        check_operation("approve", rollout.state)
        wave = await conn.fetchval(
            """UPDATE rollout_waves SET approved_by = $2, approved_at = now()
               WHERE (rollout_id, number) = (
                   SELECT rollout_id, number FROM rollout_waves
                   WHERE rollout_id = $1 AND requires_approval AND approved_at IS NULL
                     AND number >= coalesce($3::int, 0)
                   ORDER BY number LIMIT 1)
               RETURNING number""",
            rollout_id, actor.name, rollout.current_wave,
        )
        if wave is None:
            raise RolloutError(
                f"rollout {rollout_id} has no wave waiting for approval "
                f"(current wave {rollout.current_wave}, approval "
                f"{rollout.strategy.approval!r})"
            )
        await record_audit(conn, actor, "rollout.approve", "rollout", rollout_id, {"wave": wave})
        await _notify(conn, rollout_id)
        return OperationResult(
            await _get(conn, rollout_id), f"rollout {rollout_id}: wave {wave} approved"
        )


async def retry_failed(pool: asyncpg.Pool, rollout_id: int, actor: Actor) -> OperationResult:
    """FAILED, TIMED_OUT and CANCELLED tasks go back to PENDING as fresh tasks (attempt 0,
    no outcome, no install sent in this attempt; `installs_sent` is kept: it tells a later
    attempt that this task already installed once); the rollout runs again, its
    abort_reason cleared. Refused like a start when the retried appliances overlap another
    active rollout (unless the strategy says after_overlapping)."""
    async with pool.acquire() as conn, conn.transaction():
        rollout = await _get(conn, rollout_id, lock=True)
        check_operation("retry-failed", rollout.state)
        pruned = await conn.fetchval("SELECT pruned_at FROM rollouts WHERE id = $1",
                                     rollout_id)
        if pruned is not None:
            raise RolloutError(
                f"cannot retry rollout {rollout_id}: it was pruned on {pruned:%Y-%m-%d} "
                "(orchestrator prune deleted its tasks); create a new rollout instead")
        await _check_overlap(
            conn, rollout.strategy,
            await _appliances_of(conn, rollout_id, RETRYABLE_STATES), rollout_id,
            f"cannot retry rollout {rollout_id}",
            "create a new rollout with " + _QUEUE_HINT + ", or retry once {it} {has} ended",
        )
        rows = await conn.fetch(
            """WITH retried AS (
                   UPDATE tasks t SET state = 'PENDING', finished_at = NULL, attempt = 0,
                          not_before = NULL, error_code = NULL, error_message = NULL,
                          progress = NULL, remote_task_id = NULL, from_version = NULL,
                          final_version = NULL, accepted_at = NULL, install_sent_at = NULL,
                          reconfigure_required = NULL, dispatched_at = NULL,
                          updated_at = now()
                   FROM (SELECT id, state FROM tasks WHERE rollout_id = $1
                         AND state = ANY($3::text[]) FOR UPDATE) old
                   WHERE t.id = old.id
                   RETURNING t.id, t.rollout_id, t.wave, old.state AS from_state),
               events AS (
                   INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
                   SELECT id, rollout_id, from_state, 'PENDING',
                          jsonb_build_object('reason', 'retry-failed', 'by', $2::text)
                   FROM retried)
               SELECT wave, count(*) AS n FROM retried GROUP BY wave ORDER BY wave""",
            rollout_id, actor.name, list(RETRYABLE_STATES),
        )
        if not rows:
            raise RolloutError(f"rollout {rollout_id} has no failed, timed-out or cancelled task")
        retried = sum(int(r["n"]) for r in rows)
        current = rollout.current_wave if rollout.current_wave is not None else 0
        if rollout.state in TERMINAL_ROLLOUT_STATES:
            await conn.execute(
                """UPDATE rollouts SET state = 'RUNNING', abort_reason = NULL, finished_at = NULL,
                          current_wave = $2, started_at = coalesce(started_at, now()),
                          updated_at = now()
                   WHERE id = $1""",
                rollout_id, current,
            )
        elif rollout.abort_reason is not None:
            # a tripped policy still draining its installs: the retry lifts the trip
            await conn.execute(
                "UPDATE rollouts SET abort_reason = NULL, updated_at = now() WHERE id = $1",
                rollout_id,
            )
        # Waves up to the current one run their retried tasks at once; later waves (whose
        # tasks a tripped policy or a cancel never started) wait for their gate again.
        await conn.execute(
            """UPDATE rollout_waves SET finished_at = NULL,
                      state = CASE WHEN number <= $2 THEN 'RUNNING' ELSE 'PENDING' END
               WHERE rollout_id = $1 AND (number = ANY($3::int[])
                     OR (number > $2 AND state = 'CANCELLED'))""",
            rollout_id, current, [int(r["wave"]) for r in rows],
        )
        await record_audit(conn, actor, "rollout.retry-failed", "rollout", rollout_id,
                           {"tasks": retried})
        await _notify(conn, rollout_id)
        return OperationResult(
            await _get(conn, rollout_id),
            f"rollout {rollout_id}: {retried} task(s) will be retried",
        )


async def _in_flight(conn: DB, rollout_id: int) -> int:
    return int(await conn.fetchval(
        """SELECT count(*) FROM tasks WHERE rollout_id = $1
           AND state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')""",
        rollout_id,
    ))


# ------------------------------------------------------------------ the engine's ticks
# The scheduler (orchestrator/engine/engine.py) reads a rollout and moves its state and its
# waves with these, inside the transaction of one tick that holds the rollout's advisory
# lock (`store.tasks.lock_rollout`); every write of `rollouts.state` and of a wave's state
# is in this module.
async def active_rollout_ids(conn: DB, states: Sequence[str]) -> list[int]:
    """The ids of the rollouts in one of `states`, in id order."""
    rows = await conn.fetch(
        "SELECT id FROM rollouts WHERE state = ANY($1::text[]) ORDER BY id",
        list(states),
    )
    return [int(row["id"]) for row in rows]


LOCK_FOR_TICK = """SELECT state, current_wave, strategy, abort_reason, schedule_at,
       pace_concurrency, extract(epoch FROM now() - pace_evaluated_at)::float8 AS pace_age
FROM rollouts WHERE id = $1 FOR NO KEY UPDATE"""


async def lock_for_tick(conn: DB, rollout_id: int) -> asyncpg.Record | None:
    """The rollout's row as a tick reads it (state, current_wave, strategy, abort_reason,
    schedule_at; the adaptive pace's `pace_concurrency` and `pace_age`, the seconds since
    it was last decided: store/pace.py), locked until the transaction ends; None: no such
    rollout.

    FOR NO KEY UPDATE, not FOR UPDATE: it excludes every other writer of the row (an
    operator's pause or cancel, the runners' guarded sends, which read it FOR SHARE) as
    FOR UPDATE does, but not the foreign-key checks of the `task_events` that the runners'
    transitions insert (FOR KEY SHARE of their rollout): under FOR UPDATE every batch of
    transitions waited for the tick that held the row, and a busy rollout ticks back to
    back while a burst of slots frees."""
    row: asyncpg.Record | None = await conn.fetchrow(LOCK_FOR_TICK, rollout_id)
    return row


# Folds the rollout's counter deltas into its totals (see migration 0007) and returns the
# counts per (wave, state) as of this statement's snapshot: the totals before the fold plus
# the deltas it folds, which is what the totals hold once it commits.
TASK_COUNTS_BY_WAVE = """WITH folded AS (
    DELETE FROM task_count_deltas WHERE rollout_id = $1
    RETURNING wave, site, state, n, last_finished_at
),
summed AS (
    SELECT wave, site, state, sum(n)::int AS n, max(last_finished_at) AS last
    FROM folded GROUP BY wave, site, state
),
stored AS (
    INSERT INTO task_counts AS c (rollout_id, wave, site, state, n, last_finished_at)
    SELECT $1, wave, site, state, n, last FROM summed ORDER BY wave, site, state
    ON CONFLICT (rollout_id, wave, site, state) DO UPDATE
    SET n = c.n + EXCLUDED.n,
        last_finished_at = greatest(c.last_finished_at, EXCLUDED.last_finished_at)
)
SELECT wave, state, sum(n)::int AS n, max(last) AS last
FROM (SELECT wave, state, n, last_finished_at AS last FROM task_counts WHERE rollout_id = $1
      UNION ALL
      SELECT wave, state, n, last FROM summed) AS counted
GROUP BY wave, state HAVING sum(n) > 0"""

WAVE_GATE = """SELECT state, requires_approval, approved_at,
       (SELECT max(number) FROM rollout_waves WHERE rollout_id = $1) AS last_wave
FROM rollout_waves WHERE rollout_id = $1 AND number = $2"""


async def task_counts_by_wave(conn: DB, rollout_id: int) -> list[asyncpg.Record]:
    """The rollout's tasks per (wave, state): n, and the last finished_at among them."""
    return list(await conn.fetch(TASK_COUNTS_BY_WAVE, rollout_id))


async def wave_gate(conn: DB, rollout_id: int, number: int) -> asyncpg.Record | None:
    """One wave's gate (state, requires_approval, approved_at) and the rollout's last wave
    number (`last_wave`); None: no such wave."""
    row: asyncpg.Record | None = await conn.fetchrow(WAVE_GATE, rollout_id, number)
    return row


async def set_failure_reason(conn: DB, rollout_id: int, why: str) -> None:
    """The reason of a rollout that finishes FAILED (abort_reason; updated_at unchanged:
    the finish that follows in the same transaction sets it)."""
    await conn.execute(
        "UPDATE rollouts SET abort_reason = $2 WHERE id = $1", rollout_id, why)


async def record_trip(conn: DB, rollout_id: int, reason: str) -> None:
    """The failure policy tripped: abort_reason says why; no new install starts."""
    await conn.execute(
        "UPDATE rollouts SET abort_reason = $2, updated_at = now() WHERE id = $1",
        rollout_id, reason,
    )


async def open_wave(conn: DB, rollout_id: int, number: int) -> None:
    """The rollout's current wave becomes `number`, and that wave RUNNING."""
    await conn.execute(
        "UPDATE rollouts SET current_wave = $2, updated_at = now() WHERE id = $1",
        rollout_id, number,
    )
    await conn.execute(
        """UPDATE rollout_waves SET state = 'RUNNING', started_at = now()
           WHERE rollout_id = $1 AND number = $2""",
        rollout_id, number,
    )
    await _wave_event(conn, "wave.started", rollout_id, number)


async def set_rollout_state(conn: DB, rollout_id: int, state: str) -> None:
    """RUNNING <-> WAITING_WINDOW (the scheduler's moves of an unfinished rollout), then
    notify the engines."""
    await conn.execute(
        "UPDATE rollouts SET state = $2, updated_at = now() WHERE id = $1", rollout_id, state
    )
    await _notify(conn, rollout_id)


async def set_wave_state(conn: DB, rollout_id: int, number: int, state: str) -> None:
    """One wave's state; a wave that ends (SUCCEEDED, FAILED, CANCELLED) gets its
    finished_at (kept when it has one)."""
    finished = state in TERMINAL_WAVE_STATES
    await conn.execute(
        """UPDATE rollout_waves SET state = $3,
                  finished_at = CASE WHEN $4 THEN coalesce(finished_at, now())
                                     ELSE finished_at END
           WHERE rollout_id = $1 AND number = $2""",
        rollout_id, number, state, finished,
    )
    if state in ("SUCCEEDED", "FAILED"):
        await _wave_event(conn, "wave.finished", rollout_id, number, state=state)


async def finish_rollout(conn: DB, rollout_id: int, state: str) -> None:
    """The rollout ends in `state` (a terminal one), then notify the engines (and the
    webhooks: rollout.finished)."""
    await conn.execute(
        """UPDATE rollouts SET state = $2, finished_at = now(), updated_at = now()
           WHERE id = $1""",
        rollout_id, state,
    )
    await _notify(conn, rollout_id)
    await _finished_event(conn, rollout_id, state, None)


# ------------------------------------------------------------------ notifications
# The events of docs/notifications.md that the rollout's own transitions cause, written to
# the outbox (store/webhooks.py) in the transaction of the transition, and only when some
# webhook exists.
_COUNTS = """SELECT state, sum(n)::int AS n FROM (
    SELECT state, n FROM task_counts WHERE rollout_id = $1 AND ($2::int IS NULL OR wave = $2)
    UNION ALL
    SELECT state, n FROM task_count_deltas
    WHERE rollout_id = $1 AND ($2::int IS NULL OR wave = $2)) c
GROUP BY state HAVING sum(n) <> 0 ORDER BY state"""


async def outcome_counts(conn: DB, rollout_id: int, wave: int | None = None) -> dict[str, int]:
    """Tasks per state of the rollout (or of one wave), from its counters (migration 0007),
    exact at this statement's snapshot."""
    return {r["state"]: int(r["n"]) for r in await conn.fetch(_COUNTS, rollout_id, wave)}


async def _wave_event(conn: DB, event_type: str, rollout_id: int, number: int,
                      *, state: str | None = None) -> None:
    if not await webhooks.wanted(conn):
        return
    wave = await conn.fetchrow(
        """SELECT planned_size, requires_approval, (SELECT max(number) FROM rollout_waves
                  WHERE rollout_id = $1) AS last_wave
           FROM rollout_waves WHERE rollout_id = $1 AND number = $2""", rollout_id, number)
    data: dict[str, Any] = {
        "wave": number, "last_wave": wave["last_wave"] if wave else None,
        "size": wave["planned_size"] if wave else None,
    }
    if state is None:
        data["requires_approval_after"] = bool(wave and wave["requires_approval"])
    else:
        data["state"] = state
        data["counts"] = await outcome_counts(conn, rollout_id, number)
    await webhooks.emit(conn, event_type, rollout_id, data)


async def _finished_event(conn: DB, rollout_id: int, state: str, reason: str | None,
                          *, in_flight: int = 0) -> None:
    """rollout.finished; `reason` None: the rollout's abort_reason (read only when some
    webhook exists)."""
    if not await webhooks.wanted(conn):
        return
    if reason is None:
        reason = await conn.fetchval("SELECT abort_reason FROM rollouts WHERE id = $1",
                                     rollout_id)
    base = f"/api/v1/rollouts/{rollout_id}/report"
    await webhooks.emit(conn, "rollout.finished", rollout_id, {
        "state": state, "reason": reason, "counts": await outcome_counts(conn, rollout_id),
        "in_flight": in_flight,
        "reports": {fmt: f"{base}?format={fmt}" for fmt in ("json", "csv", "html")},
    })


# ------------------------------------------------------------------ small look-ups
async def rollout_state(conn: DB, rollout_id: int) -> str | None:
    """The rollout's state; None: no such rollout."""
    state: str | None = await conn.fetchval(
        "SELECT state FROM rollouts WHERE id = $1", rollout_id)
    return state


async def rollout_exists(conn: DB, rollout_id: int) -> bool:
    return await conn.fetchval("SELECT 1 FROM rollouts WHERE id = $1", rollout_id) is not None


async def rollout_creator(conn: DB, rollout_id: int) -> str | None:
    """Who created the rollout (created_by); None: no such rollout."""
    creator: str | None = await conn.fetchval(
        "SELECT created_by FROM rollouts WHERE id = $1", rollout_id)
    return creator


async def rollouts_by_state(conn: DB) -> dict[str, int]:
    """How many rollouts are in each state (states without any are left out)."""
    rows = await conn.fetch(
        "SELECT state, count(*)::bigint AS n FROM rollouts GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


# ------------------------------------------------------------------ progress views
@dataclass(frozen=True)
class RolloutCounts:
    by_state: dict[str, int]
    by_wave: dict[int, dict[str, int]]
    by_site: dict[str, dict[str, int]]
    waves: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_state": self.by_state,
            "by_wave": {str(k): v for k, v in self.by_wave.items()},
            "by_site": self.by_site,
            "waves": self.waves,
        }


# the task counts by state of several rollouts (a page of the list) in one statement, from
# the same counters as ROLLOUT_COUNTS (both tables are keyed by rollout_id first)
STATE_COUNTS = """SELECT rollout_id, state, sum(n)::int AS n
FROM (SELECT rollout_id, state, n FROM task_counts WHERE rollout_id = ANY($1::bigint[])
      UNION ALL
      SELECT rollout_id, state, n FROM task_count_deltas
      WHERE rollout_id = ANY($1::bigint[])) AS counted
GROUP BY rollout_id, state HAVING sum(n) > 0
ORDER BY rollout_id, state"""


async def state_counts(conn: DB, rollout_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    """rollout id -> its tasks by state (every id given is a key, {} when it has none)."""
    out: dict[int, dict[str, int]] = {rid: {} for rid in rollout_ids}
    if rollout_ids:
        for r in await conn.fetch(STATE_COUNTS, list(rollout_ids)):
            out[r["rollout_id"]][r["state"]] = int(r["n"])
    return out


async def rollout_counts(conn: DB, rollout_id: int) -> RolloutCounts:
    rows = await conn.fetch(ROLLOUT_COUNTS, rollout_id)
    by_state: dict[str, int] = {}
    by_wave: dict[int, dict[str, int]] = {}
    by_site: dict[str, dict[str, int]] = {}
    for r in rows:
        n = int(r["n"])
        by_state[r["state"]] = by_state.get(r["state"], 0) + n
        w = by_wave.setdefault(int(r["wave"]), {})
        w[r["state"]] = w.get(r["state"], 0) + n
        s = by_site.setdefault(r["site"], {})
        s[r["state"]] = s.get(r["state"], 0) + n
    waves = [
        {
            "number": w["number"], "planned_size": w["planned_size"], "state": w["state"],
            "requires_approval": w["requires_approval"], "approved_by": w["approved_by"],
            "started_at": _iso(w["started_at"]), "finished_at": _iso(w["finished_at"]),
        }
        for w in await conn.fetch(
            "SELECT * FROM rollout_waves WHERE rollout_id = $1 ORDER BY number", rollout_id
        )
    ]
    return RolloutCounts(by_state, dict(sorted(by_wave.items())), dict(sorted(by_site.items())),
                         waves)


__all__ = [
    "IdempotencyConflict",
    "OperationResult",
    "OverlapError",
    "OverlappingRollout",
    "Plan",
    "Rollout",
    "RolloutCounts",
    "RolloutError",
    "RolloutNotFound",
    "TaskState",
    "WaveState",
    "approve_rollout",
    "cancel_rollout",
    "create_rollout",
    "find_overlaps",
    "get_rollout",
    "list_rollouts",
    "lock_overlap_check",
    "pause_rollout",
    "preview_plan",
    "resume_rollout",
    "retry_failed",
    "rollout_counts",
    "start_rollout",
    "state_counts",
]
