"""Task events of a rollout, read in id order without ever skipping one (for the SSE stream).

`task_events.id` comes from a sequence, and sequence numbers are handed out when a row is
inserted, not when its transaction commits: a transition that got id 10 may commit after
one that got id 11. A reader that saw 11 and moved its cursor past it would never see 10,
and a client resuming with `Last-Event-ID: 11` would miss it for good.

`EventReader` therefore only passes an id once every row with a smaller id is either
visible or will never exist:

1. it reads `M`, the largest id of the rollout's events visible now (snapshot S);
2. it takes a transaction id `X` of its own (`pg_current_xact_id()`), after S;
3. it waits until no transaction older than `X` is running
   (`pg_snapshot_xmin(pg_current_snapshot()) > X`);
4. it reads every event in (cursor, M] and moves the cursor to M.

A row with an id below M got its id before S was taken. Every writer of `task_events`
writes (or locks) a `tasks` or `rollouts` row before it inserts an event, so that
transaction already had its transaction id then: an id below X. After step 3 it has
committed (its row is visible to step 4) or rolled back (the id is a hole for ever).
Readers block no writer; a reader waits only while some transaction that started before
it is still running (normally milliseconds).

Step 4 is paged: one `poll()` returns at most `PAGE` events (the cursor moves to the last
one, and `Batch.more` says that more confirmed events follow), so a client resuming from
`Last-Event-ID: 0` on a long rollout gets its backlog page by page, never all of it in
memory at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from orchestrator.domain.states import IN_FLIGHT_TASK_STATES
from orchestrator.store.db import DB

PAGE = 500  # events one poll() reads and returns at most


@dataclass(frozen=True)
class TaskEvent:
    id: int
    task_id: int
    appliance: str
    site: str
    wave: int
    from_state: str | None
    to_state: str
    at: datetime
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "task_id": self.task_id, "appliance": self.appliance,
            "site": self.site, "wave": self.wave, "from_state": self.from_state,
            "to_state": self.to_state, "at": self.at.isoformat(), "detail": self.detail,
        }


@dataclass(frozen=True)
class Head:
    """What a reader sees of a rollout at one instant."""

    max_id: int | None  # the largest event id above the cursor, None: nothing new
    state: str | None  # the rollout's state; None: the rollout does not exist
    in_flight: bool  # whether any of its tasks is in flight


@dataclass(frozen=True)
class Batch:
    events: list[TaskEvent]
    head: Head
    confirmed: bool  # False: new events exist but older transactions are still running
    more: bool = False  # True: a full page; more confirmed events follow at once


async def read_head(conn: DB, rollout_id: int, after_id: int) -> Head:
    row = await conn.fetchrow(
        """SELECT (SELECT max(id) FROM task_events WHERE rollout_id = $1 AND id > $2) AS max_id,
                  (SELECT state FROM rollouts WHERE id = $1) AS state,
                  EXISTS (SELECT 1 FROM tasks WHERE rollout_id = $1
                          AND state = ANY($3::text[])) AS in_flight""",
        rollout_id, after_id, sorted(IN_FLIGHT_TASK_STATES),
    )
    assert row is not None
    return Head(row["max_id"], row["state"], bool(row["in_flight"]))


async def new_xid(conn: DB) -> str:
    """A transaction id of our own, committed at once (autocommit)."""
    return str(await conn.fetchval("SELECT pg_current_xact_id()::text"))


async def older_finished(conn: DB, xid: str) -> bool:
    """Whether every transaction with an id below `xid` has ended."""
    return bool(await conn.fetchval(
        "SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8", xid
    ))


async def events_between(
    conn: DB, rollout_id: int, after_id: int, upto_id: int, limit: int = PAGE
) -> list[TaskEvent]:
    rows = await conn.fetch(
        """SELECT e.id, e.task_id, a.name AS appliance, t.site, t.wave, e.from_state,
                  e.to_state, e.at, e.detail
           FROM task_events e JOIN tasks t ON t.id = e.task_id
           JOIN appliances a ON a.id = t.appliance_id
           WHERE e.rollout_id = $1 AND e.id > $2 AND e.id <= $3
           ORDER BY e.id LIMIT $4""",
        rollout_id, after_id, upto_id, limit,
    )
    return [TaskEvent(**dict(r)) for r in rows]


class EventReader:
    """Reads one rollout's task events after `after_id`, in id order, each exactly once
    across reconnections (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, rollout_id: int, after_id: int = 0) -> None:
        self.pool = pool
        self.rollout_id = rollout_id
        self.after_id = after_id
        self._pending: tuple[int, str] | None = None  # (M, X) of steps 1-2
        self._confirmed = False  # step 3 is done for the pending (M, X)

    async def poll(self, *, settle: float = 1.0, limit: int = PAGE) -> Batch:
        """New events, at most `limit` of them, if they can be confirmed within `settle`
        seconds; `more` says that a full page was returned and more are confirmed."""
        async with self.pool.acquire() as conn:
            head = await read_head(conn, self.rollout_id, self.after_id)
            if self._pending is None:
                if head.max_id is None:
                    return Batch([], head, True)
                self._pending = (head.max_id, await new_xid(conn))
                self._confirmed = False
            upto, xid = self._pending
            if not self._confirmed:
                deadline = time.monotonic() + settle
                delay = 0.002
                while not await older_finished(conn, xid):
                    if time.monotonic() >= deadline:
                        return Batch([], head, False)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.05)
                self._confirmed = True
            events = await events_between(conn, self.rollout_id, self.after_id, upto, limit)
            if len(events) >= limit:
                self.after_id = events[-1].id  # the rest of (cursor, M] comes next
                return Batch(events, head, True, more=True)
            self.after_id = upto
            self._pending = None
            return Batch(events, head, True)

    async def settled(self, *, settle: float = 5.0) -> bool:
        """Whether, once every transaction running now has ended, no event is left after
        the cursor (used before the stream ends)."""
        async with self.pool.acquire() as conn:
            xid = await new_xid(conn)
            deadline = time.monotonic() + settle
            while not await older_finished(conn, xid):
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.01)
            head = await read_head(conn, self.rollout_id, self.after_id)
            return head.max_id is None
