"""Engines register and heartbeat, so that anyone can tell whether a rollout can progress.

Every engine process (`orchestrator run`, `orchestrator serve` with its engine) inserts a row
when it starts, refreshes `heartbeat_at` every few seconds and marks `stopped_at` when it
stops cleanly. An engine is live while its heartbeat is younger than `stale_after` seconds
(a process killed without a clean stop simply ages out).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.store.db import DB

# An engine whose heartbeat is older than this is taken for dead. The engine beats every
# `HEARTBEAT_INTERVAL` seconds, so a few missed beats (a busy database) do not count.
HEARTBEAT_INTERVAL = 5.0
STALE_AFTER = 30.0


async def register(conn: DB, owner: str) -> None:
    await conn.execute(
        """INSERT INTO engines (owner) VALUES ($1)
           ON CONFLICT (owner) DO UPDATE SET started_at = now(), heartbeat_at = now(),
                                             stopped_at = NULL""",
        owner,
    )


async def heartbeat(conn: DB, owner: str) -> None:
    """Refresh this engine's heartbeat (registering it again if its row was removed)."""
    status = await conn.execute(
        "UPDATE engines SET heartbeat_at = now(), stopped_at = NULL WHERE owner = $1", owner
    )
    if status.split()[-1] == "0":
        await register(conn, owner)


async def stopped(conn: DB, owner: str) -> None:
    await conn.execute("UPDATE engines SET stopped_at = now() WHERE owner = $1", owner)


@dataclass(frozen=True)
class EngineStatus:
    """Whether any engine is live, how many, and when the last one was heard of."""

    live: int
    last_heartbeat_at: datetime | None  # the newest heartbeat of any engine, live or not
    stale_after: float

    @property
    def alive(self) -> bool:
        return self.live > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "live_engines": self.live,
            "last_heartbeat_at": self.last_heartbeat_at.isoformat()
            if self.last_heartbeat_at else None,
        }

    def sentence(self) -> str:
        """For people: empty when an engine is live."""
        if self.alive:
            return ""
        if self.last_heartbeat_at is None:
            heard = "none has ever run against this database"
        else:
            heard = f"none heard of since {self.last_heartbeat_at.isoformat(timespec='seconds')}"
        return (f"no engine is running ({heard}): nothing will progress until one runs "
                "(`orchestrator run` or `orchestrator serve`)")


async def engine_status(conn: DB, stale_after: float = STALE_AFTER) -> EngineStatus:
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE stopped_at IS NULL
                                   AND heartbeat_at > now() - make_interval(secs => $1))
                  AS live,
                  max(coalesce(stopped_at, heartbeat_at)) AS last
           FROM engines""",
        stale_after,
    )
    assert row is not None
    return EngineStatus(live=int(row["live"]), last_heartbeat_at=row["last"],
                        stale_after=stale_after)


# Rollout states in which a rollout moves only while an engine runs (PAUSED and DRAFT wait
# for an operator, the others have ended).
NEEDS_ENGINE = ("SCHEDULED", "RUNNING", "WAITING_WINDOW")


async def blocked_reason(conn: DB, rollout_state: str,
                         status: EngineStatus | None = None) -> str | None:
    """Why a rollout in `rollout_state` cannot progress now (no engine is live), or None.
    `status`: an `engine_status` already read (else it is read here)."""
    if rollout_state not in NEEDS_ENGINE:
        return None
    if status is None:
        status = await engine_status(conn)
    return status.sentence() or None


async def not_live_reason(conn: DB, owner: str, stale_after: float = STALE_AFTER) -> str | None:
    """Why the engine `owner` is not live (for /readyz of a process running its own engine),
    or None when it is."""
    row = await conn.fetchrow(
        """SELECT heartbeat_at, stopped_at,
                  heartbeat_at > now() - make_interval(secs => $2) AS fresh
           FROM engines WHERE owner = $1""",
        owner, stale_after,
    )
    if row is None:
        return f"engine {owner} has not registered (yet)"
    if row["stopped_at"] is not None:
        return f"engine {owner} stopped at {row['stopped_at'].isoformat(timespec='seconds')}"
    if not row["fresh"]:
        return (f"engine {owner} has not sent a heartbeat since "
                f"{row['heartbeat_at'].isoformat(timespec='seconds')} (more than "
                f"{stale_after:g} s ago)")
    return None
