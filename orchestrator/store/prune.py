"""Retention: the SQL of `orchestrator prune` and of the engine's daily prune.

A rollout that ended (SUCCEEDED, COMPLETED_WITH_FAILURES, FAILED or CANCELLED) before the
cutoff loses its `tasks` and `task_events` rows; its `rollouts` row, its `rollout_waves`
rows, its per-state counts (`task_counts`, kept by triggers on INSERT and UPDATE of tasks,
never on DELETE) and the audit log stay. `rollouts.pruned_at` (migration 0008) says so.

How one rollout is pruned, in short transactions (a prune of a rollout of 100,000 tasks
never holds one giant transaction, nor locks that an engine waits for):

1. `claim`: the rollout's row locked FOR UPDATE SKIP LOCKED (a rollout another prune or an
   operator holds right now is left for the next prune), checked (terminal, ended before
   the cutoff, no task in flight or holding a slot), and marked `pruned_at = now()`.
   From then on a retry-failed of the rollout is refused (the CHECK of 0008 refuses a
   pruned rollout without `finished_at`).
2. Its task events, then its tasks, `chunk` rows per transaction, each transaction taking
   the rollout's row FOR SHARE and checking that it is still pruned and terminal (never
   an active rollout, whatever happened in between). The rows of a chunk are picked with
   SKIP LOCKED: two prunes at once (engine replicas, or an operator's prune during the
   engine's) share the work instead of waiting for each other, and each counts only what
   it removed itself.
3. `prune_finished_at = now()` once no task of the rollout is left.

A prune that stopped half-way (crash, restart, a statement timeout) leaves a rollout with
`pruned_at` and without `prune_finished_at`: the next prune finishes it, whatever its
cutoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from orchestrator.domain.states import IN_FLIGHT_TASK_STATES, TERMINAL_ROLLOUT_STATES
from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB

# rows of task_events or of tasks deleted per transaction
DEFAULT_CHUNK = 5000

_TERMINAL = sorted(TERMINAL_ROLLOUT_STATES)
_IN_FLIGHT = sorted(IN_FLIGHT_TASK_STATES)

# A task of the rollout in flight, or holding its slot after a timed-out install: the rollout
# is left alone (deleting the task would free a slot an install may still use). Two
# EXISTS, each answered by a partial index (tasks_in_flight_idx, tasks_held_slot_idx)
# without reading the rollout's other tasks.
_BUSY_SQL = """(EXISTS (SELECT 1 FROM tasks t WHERE t.rollout_id = r.id
                      AND t.state = ANY($3::text[]))
        OR EXISTS (SELECT 1 FROM tasks t WHERE t.rollout_id = r.id AND t.holds_slot))"""

# Rollouts ended before the cutoff and not pruned yet, and pruned ones whose prune has not
# finished (it stopped half-way), oldest end first (rollouts_prunable_idx).
CANDIDATES = f"""
SELECT r.id, r.name, r.state, r.finished_at, r.pruned_at, {_BUSY_SQL} AS busy
FROM rollouts r
WHERE r.finished_at IS NOT NULL AND r.prune_finished_at IS NULL
  AND r.state = ANY($2::text[]) AND (r.pruned_at IS NOT NULL OR r.finished_at < $1)
ORDER BY r.finished_at, r.id
"""

# What a prune would remove from one rollout (index-only counts by rollout).
SIZES = """
SELECT (SELECT count(*) FROM tasks t WHERE t.rollout_id = $1) AS tasks,
       (SELECT count(*) FROM task_events e WHERE e.rollout_id = $1) AS events
"""

CLAIM = f"""
SELECT r.id, r.pruned_at, {_BUSY_SQL} AS busy
FROM rollouts r
WHERE r.id = $1 AND r.finished_at IS NOT NULL AND r.prune_finished_at IS NULL
  AND r.state = ANY($2::text[]) AND (r.pruned_at IS NOT NULL OR r.finished_at < $4)
FOR UPDATE OF r SKIP LOCKED
"""

MARK = "UPDATE rollouts SET pruned_at = now() WHERE id = $1 AND pruned_at IS NULL"

# Held FOR SHARE by each chunk's transaction: a retry-failed (which locks the row FOR NO KEY
# UPDATE) waits for the chunk, and a chunk never runs on a rollout that is not terminal.
STILL_PRUNABLE = """
SELECT 1 FROM rollouts
WHERE id = $1 AND pruned_at IS NOT NULL AND state = ANY($2::text[])
FOR SHARE
"""

# `id = ANY(ARRAY(...))`: the chunk's ids are collected first (through the index by rollout)
# and deleted by primary key; with `id IN (...)` the planner may prefer a hash join that
# reads the whole table for a large chunk. The ORDER BY follows the index by rollout
# (task_events_rollout_idx, tasks_rollout_state_id_idx): without it, for a rollout that is
# most of the table, the planner reads the table from its start until it has a chunk, past
# the dead rows of every earlier chunk.
DELETE_EVENTS = """
WITH gone AS (
    DELETE FROM task_events WHERE id = ANY(ARRAY(
        SELECT id FROM task_events WHERE rollout_id = $1
        ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED))
    RETURNING 1)
SELECT count(*) FROM gone
"""

# The cascade of task_events.task_id removes any event written after the events' pass
# (there should be none: the rollout is terminal).
DELETE_TASKS = """
WITH gone AS (
    DELETE FROM tasks WHERE id = ANY(ARRAY(
        SELECT id FROM tasks WHERE rollout_id = $1
        ORDER BY rollout_id, state LIMIT $2 FOR UPDATE SKIP LOCKED))
    RETURNING 1)
SELECT count(*) FROM gone
"""

# The prune of a rollout is finished once no task of it is left, committed or not (a
# concurrent prune's chunk not committed yet still shows its rows: the rollout is marked
# by whichever prune deletes the last ones). The scalar subquery in index order reads one
# entry of tasks_rollout_state_id_idx, whatever the planner thinks of the rollout's size.
MARK_FINISHED = """
UPDATE rollouts SET prune_finished_at = now()
WHERE id = $1 AND pruned_at IS NOT NULL AND prune_finished_at IS NULL
  AND (SELECT t.id FROM tasks t WHERE t.rollout_id = $1
       ORDER BY t.rollout_id, t.state LIMIT 1) IS NULL
"""

PRUNED_ROLLOUT = "SELECT pruned_at FROM rollouts WHERE id = $1"


@dataclass
class PrunedRollout:
    """One rollout of a prune: what was removed (or, in a dry run, would be)."""

    id: int
    name: str
    state: str
    finished_at: datetime
    tasks: int = 0
    events: int = 0
    # None: pruned (or prunable); else why it was left alone this time
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state,
                "finished_at": self.finished_at.isoformat(), "tasks": self.tasks,
                "events": self.events, "skipped": self.skipped}


@dataclass
class PruneResult:
    cutoff: datetime
    dry_run: bool
    rollouts: list[PrunedRollout] = field(default_factory=list)

    @property
    def pruned(self) -> list[PrunedRollout]:
        return [r for r in self.rollouts if r.skipped is None]

    @property
    def tasks(self) -> int:
        return sum(r.tasks for r in self.pruned)

    @property
    def events(self) -> int:
        return sum(r.events for r in self.pruned)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run,
            "rollouts": len(self.pruned), "tasks": self.tasks, "events": self.events,
            "skipped": len(self.rollouts) - len(self.pruned),
            "by_rollout": [r.to_dict() for r in self.rollouts],
        }


# called after each chunk deleted, with the rollout's counts so far
Progress = Callable[[PrunedRollout], None]


_BUSY = "a task still holds a slot or is in flight (see `orchestrator appliances release`)"


async def candidates(conn: DB, cutoff: datetime, *, sizes: bool = True) -> list[PrunedRollout]:
    """The rollouts a prune with `cutoff` would take, oldest end first; with `sizes`,
    how many tasks and events each holds. One whose tasks are busy is marked skipped."""
    out = []
    for r in await conn.fetch(CANDIDATES, cutoff, _TERMINAL, _IN_FLIGHT):
        item = PrunedRollout(int(r["id"]), r["name"], r["state"], r["finished_at"],
                             skipped=_BUSY if r["busy"] else None)
        if sizes:
            row = await conn.fetchrow(SIZES, item.id)
            assert row is not None
            item.tasks, item.events = int(row["tasks"]), int(row["events"])
        out.append(item)
    return out


async def _claim(pool: asyncpg.Pool, rollout_id: int, cutoff: datetime) -> str | None:
    """Mark the rollout pruned; None when it is ours to prune, else why not."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(CLAIM, rollout_id, _TERMINAL, _IN_FLIGHT, cutoff)
        if row is None:
            return "locked or no longer prunable (another prune, or an operator, has it)"
        if row["busy"]:
            return _BUSY
        await conn.execute(MARK, rollout_id)
        return None


async def _delete_chunk(pool: asyncpg.Pool, statement: str, rollout_id: int,
                        chunk: int) -> int | None:
    """One chunk in its own transaction; None: the rollout is no longer prunable."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(STILL_PRUNABLE, rollout_id, _TERMINAL) is None:
            return None
        return int(await conn.fetchval(statement, rollout_id, chunk))


async def _prune_one(pool: asyncpg.Pool, item: PrunedRollout, cutoff: datetime, chunk: int,
                     actor: Actor, progress: Progress | None) -> None:
    why = await _claim(pool, item.id, cutoff)
    if why is not None:
        item.skipped, item.tasks, item.events = why, 0, 0
        return
    item.tasks = item.events = 0
    for statement, attr in ((DELETE_EVENTS, "events"), (DELETE_TASKS, "tasks")):
        while True:
            n = await _delete_chunk(pool, statement, item.id, chunk)
            if n is None:
                item.skipped = "stopped: the rollout is no longer terminal"
                return
            setattr(item, attr, getattr(item, attr) + n)
            if n == 0:  # none left (or the rest locked by another prune, which ends it)
                break
            if progress is not None:
                progress(item)
    async with pool.acquire() as conn, conn.transaction():
        finished = await conn.execute(MARK_FINISHED, item.id) == "UPDATE 1"
        # two prunes at once that shared a rollout: each records what it removed itself
        if finished or item.tasks or item.events:
            await record_audit(conn, actor, "rollout.prune", "rollout", item.id, {
                "cutoff": cutoff.isoformat(), "tasks": item.tasks, "events": item.events,
                "finished": finished,
            })


async def prune(
    pool: asyncpg.Pool, cutoff: datetime, *, actor: Actor, dry_run: bool = False,
    chunk: int = DEFAULT_CHUNK, progress: Progress | None = None,
) -> PruneResult:
    """Delete the tasks and task events of the rollouts that ended before `cutoff` (see
    the module docstring); with `dry_run`, only count them. Each rollout pruned gets an
    entry `rollout.prune` in the audit log (who, the cutoff, what was removed)."""
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    async with pool.acquire() as conn:
        found = await candidates(conn, cutoff, sizes=dry_run)
    result = PruneResult(cutoff=cutoff, dry_run=dry_run, rollouts=found)
    if dry_run:
        return result
    for item in found:
        if item.skipped is None:
            await _prune_one(pool, item, cutoff, chunk, actor, progress)
    return result


async def pruned_at(conn: DB, rollout_id: int) -> datetime | None:
    """When a prune took the rollout's tasks and events; None: not pruned (or no such
    rollout)."""
    value: datetime | None = await conn.fetchval(PRUNED_ROLLOUT, rollout_id)
    return value
