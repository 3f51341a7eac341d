"""The adaptive pace's rows (migration 0014): a rollout's current pace, the figures of an
interval, and the record of each change.

The engine (orchestrator/engine/pace.py) calls these inside the tick's transaction, which
holds the rollout's advisory lock and its row (`rollouts.lock_for_tick`), so one engine at a
time decides a rollout's pace, and every replica's claim reads the same
`rollouts.pace_concurrency`. Times are the database's (`now()`), the same clock for every
replica.

A change of the pace is written three ways, in that transaction:
- the rollout's row: `pace_concurrency`, `pace_changed_at`, `pace_reason`;
- a task event on the last task that finished in the interval, from its state to the same
  state (as a lease take-over writes one), with `detail.pace` = {from, to, change, reason,
  ...}: the SSE stream (`event: task`) and the reports' event lists show it;
- an `audit_log` row, action `rollout.pace`, by `engine:<owner>` via `engine`.
The rollout's row is written before the event, as every writer of `task_events` does
(store/events.py relies on it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB


@dataclass(frozen=True)
class PaceState:
    """A rollout's adaptive pace as its row says: the installs in flight the claim allows
    now, and when and why it last changed (or started)."""

    concurrency: int
    reason: str | None
    changed_at: datetime | None
    evaluated_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None
        return {"concurrency": self.concurrency, "reason": self.reason,
                "changed_at": iso(self.changed_at), "evaluated_at": iso(self.evaluated_at)}


@dataclass(frozen=True)
class IntervalOutcomes:
    """The executed tasks of a rollout that finished in an interval: how many succeeded and
    how many failed (FAILED or TIMED_OUT), the median seconds from dispatch to success of
    the successes, and the last of them to finish (the task its pace event is written on)."""

    succeeded: int
    failed: int
    median_seconds: float | None
    last_task_id: int | None
    last_task_state: str | None


async def pace_state(conn: DB, rollout_id: int) -> PaceState | None:
    """The rollout's current pace; None: no such rollout, or its pace has not started (off,
    or not run yet)."""
    row = await conn.fetchrow(
        """SELECT pace_concurrency, pace_reason, pace_changed_at, pace_evaluated_at
           FROM rollouts WHERE id = $1""", rollout_id)
    if row is None or row["pace_concurrency"] is None:
        return None
    return PaceState(row["pace_concurrency"], row["pace_reason"], row["pace_changed_at"],
                     row["pace_evaluated_at"])


INTERVAL_OUTCOMES = """WITH done AS (
    SELECT id, state, finished_at,
           extract(epoch FROM finished_at - dispatched_at)::float8 AS seconds
    FROM tasks
    WHERE rollout_id = $1 AND state IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT')
      AND finished_at > (SELECT pace_evaluated_at FROM rollouts WHERE id = $1)
),
last AS (SELECT id, state FROM done ORDER BY finished_at DESC, id DESC LIMIT 1)
SELECT count(*) FILTER (WHERE state = 'SUCCEEDED')::int AS succeeded,
       count(*) FILTER (WHERE state <> 'SUCCEEDED')::int AS failed,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds)
           FILTER (WHERE state = 'SUCCEEDED' AND seconds IS NOT NULL) AS median_seconds,
       (SELECT id FROM last) AS last_task_id, (SELECT state FROM last) AS last_task_state
FROM done"""


async def interval_outcomes(conn: DB, rollout_id: int) -> IntervalOutcomes:
    """The rollout's executed tasks that finished since its pace was last decided
    (`pace_evaluated_at`)."""
    row = await conn.fetchrow(INTERVAL_OUTCOMES, rollout_id)
    assert row is not None
    return IntervalOutcomes(int(row["succeeded"]), int(row["failed"]), row["median_seconds"],
                            row["last_task_id"], row["last_task_state"])


async def canary_seconds(conn: DB, rollout_id: int) -> float | None:
    """The median seconds from dispatch to success of the rollout's wave 0 (its canary)
    tasks that succeeded; None: none has yet."""
    value: float | None = await conn.fetchval(
        """SELECT percentile_cont(0.5) WITHIN GROUP (
                      ORDER BY extract(epoch FROM finished_at - dispatched_at)::float8)
           FROM tasks WHERE rollout_id = $1 AND wave = 0 AND state = 'SUCCEEDED'
             AND dispatched_at IS NOT NULL""", rollout_id)
    return value


async def start_pace(conn: DB, rollout_id: int, concurrency: int, reason: str) -> None:
    """The pace starts at `concurrency` (nothing finished yet counts toward its first
    interval)."""
    await conn.execute(
        """UPDATE rollouts SET pace_concurrency = $2, pace_evaluated_at = now(),
                  pace_changed_at = now(), pace_reason = $3
           WHERE id = $1""", rollout_id, concurrency, reason)


async def pace_held(conn: DB, rollout_id: int) -> None:
    """The pace was decided and stays: its next interval starts now."""
    await conn.execute("UPDATE rollouts SET pace_evaluated_at = now() WHERE id = $1",
                       rollout_id)


async def record_pace_change(
    conn: DB, rollout_id: int, *, previous: int, concurrency: int, reason: str,
    task_id: int, task_state: str, detail: dict[str, Any], owner: str,
) -> None:
    """The pace changed from `previous` to `concurrency` because of `reason`: the row, a
    task event on task `task_id` (in `task_state`, which it keeps) and an audit row.
    `detail`: further figures of the interval for the event and the audit row."""
    change = "grow" if concurrency > previous else "shrink"
    await conn.execute(
        """UPDATE rollouts SET pace_concurrency = $2, pace_evaluated_at = now(),
                  pace_changed_at = now(), pace_reason = $3
           WHERE id = $1""", rollout_id, concurrency, reason)
    pace = {"from": previous, "to": concurrency, "change": change, "reason": reason, **detail}
    await conn.execute(
        """INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
           VALUES ($1, $2, $3, $3, $4)""",
        task_id, rollout_id, task_state,
        {"reason": f"pace {previous} -> {concurrency}: {reason}", "pace": pace})
    await record_audit(conn, Actor(name=f"engine:{owner}", via="engine"), "rollout.pace",
                       "rollout", rollout_id, pace)


async def pace_events(conn: DB, rollout_id: int) -> list[dict[str, Any]]:
    """The rollout's pace changes, oldest first: each event's id, time, task id and
    `detail.pace`."""
    rows = await conn.fetch(
        """SELECT id, at, task_id, detail->'pace' AS pace FROM task_events
           WHERE rollout_id = $1 AND detail ? 'pace' ORDER BY id""", rollout_id)
    return [{"id": r["id"], "at": r["at"].isoformat(), "task_id": r["task_id"], **r["pace"]}
            for r in rows]


__all__ = [
    "IntervalOutcomes",
    "PaceState",
    "canary_seconds",
    "interval_outcomes",
    "pace_events",
    "pace_held",
    "pace_state",
    "record_pace_change",
    "start_pace",
]
