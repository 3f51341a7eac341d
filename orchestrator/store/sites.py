"""Sites: the fleet-wide capacity of each site (table `sites`).

A site is any value of `appliances.site`, or a row of `sites`. `sites.max_in_flight` caps
the installs in flight at that site across every rollout together (NULL: unlimited); the
engine enforces it in its claim, beside each rollout's own `per_site_concurrency`. In flight
means a task in DISPATCHING, INSTALLING or VERIFYING, or a timed-out install still holding
its slot (`tasks.holds_slot`, see engine/held.py), counted by `tasks.site` (the site the
appliance had when the rollout was planned).

These functions are the one implementation behind `orchestrator sites` and
`/api/v1/sites`; a change is written to `audit_log` in the same transaction and wakes the
engines (`NOTIFY orchestrator`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.states import IN_FLIGHT_TASK_STATES
from orchestrator.store import tasks as task_store
from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB
from orchestrator.store.rollouts import NOTIFY_CHANNEL

MAX_LIMIT: Final = 1_000_000
MAX_NAME: Final = 253  # the sites table's bound


class SiteError(OrchestratorError):
    """A site request is refused; the message names the site or the value at fault.

    `field`: what is at fault ("site" or "max_in_flight").
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


class SiteNotFound(SiteError):
    """No appliance has this site and `sites` has no row for it."""


@dataclass(frozen=True)
class Site:
    name: str
    max_in_flight: int | None  # None: unlimited
    in_flight: int  # tasks in flight there now, all rollouts together (held slots too)
    appliances: int  # appliances of the inventory at this site
    updated_at: datetime | None  # when its limit was last set or cleared; None: never
    held: int = 0  # of in_flight: timed-out installs holding their slot

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "max_in_flight": self.max_in_flight,
            "in_flight": self.in_flight, "held": self.held, "appliances": self.appliances,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }


def check_site_name(name: object) -> str:
    """The site name as given; SiteError when it is not a non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise SiteError("site", f"site: {name!r} is not a site name (it must not be empty)")
    return name


def check_limit(value: object) -> int | None:
    """A site limit: None (unlimited) or an integer in [1, MAX_LIMIT]; SiteError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SiteError("max_in_flight",
                        f"max_in_flight: {value!r} is not an integer >= 1 (or null: unlimited)")
    if value > MAX_LIMIT:
        raise SiteError("max_in_flight",
                        f"max_in_flight: {value!r} is larger than {MAX_LIMIT}")
    return value


_SELECT = """
    WITH counts AS (SELECT site, count(*) AS n FROM appliances GROUP BY site),
         flight AS (SELECT site, count(*) AS n, count(*) FILTER (WHERE holds_slot) AS held
                    FROM tasks WHERE state = ANY($1::text[]) OR holds_slot GROUP BY site),
         names AS (SELECT site AS name FROM counts UNION SELECT name FROM sites)
    SELECT names.name, s.max_in_flight, s.updated_at,
           coalesce(counts.n, 0) AS appliances, coalesce(flight.n, 0) AS in_flight,
           coalesce(flight.held, 0) AS held
    FROM names
    LEFT JOIN sites s ON s.name = names.name
    LEFT JOIN counts ON counts.site = names.name
    LEFT JOIN flight ON flight.site = names.name
"""


def _site(row: asyncpg.Record) -> Site:
    return Site(name=row["name"], max_in_flight=row["max_in_flight"],
                in_flight=int(row["in_flight"]), appliances=int(row["appliances"]),
                updated_at=row["updated_at"], held=int(row["held"]))


async def list_sites(db: DB) -> list[Site]:
    """Every site (from the inventory or with a row in `sites`), by name."""
    rows = await db.fetch(_SELECT + " ORDER BY names.name", sorted(IN_FLIGHT_TASK_STATES))
    return [_site(r) for r in rows]


async def get_site(db: DB, name: str) -> Site:
    """One site; SiteNotFound when neither the inventory nor `sites` knows it."""
    check_site_name(name)
    row = await db.fetchrow(
        _SELECT + " WHERE names.name = $2", sorted(IN_FLIGHT_TASK_STATES), name)
    if row is None:
        raise SiteNotFound("site", await _unknown(db, name))
    return _site(row)


async def _unknown(db: DB, name: str, shown: int = 10) -> str:
    known = [r["name"] for r in await db.fetch(
        """SELECT name FROM (SELECT DISTINCT site AS name FROM appliances
                             UNION SELECT name FROM sites) n ORDER BY name LIMIT $1""",
        shown + 1,
    )]
    listed = ", ".join(known[:shown]) + (", ..." if len(known) > shown else "")
    return (f"site: unknown site {name!r}: no appliance is at it and it has no limit "
            f"(known sites: {listed or 'none'})")


async def set_site_limit(db: DB, name: str, max_in_flight: int | None, actor: Actor) -> Site:
    """Set (an integer >= 1) or clear (None: unlimited) a site's fleet-wide limit.

    The site must be known (SiteNotFound names it); a bad limit is a SiteError naming the
    value. Upserts `sites`, writes `audit_log` (`site.set-limit`) and notifies the engines,
    in one transaction (a savepoint when `db` is already in one).
    """
    check_site_name(name)
    if len(name) > MAX_NAME:
        raise SiteError("site", f"site: {name[:40]!r}... is longer than {MAX_NAME} "
                                "characters: such a site cannot have a limit")
    limit = check_limit(max_in_flight)
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            return await _set_limit(conn, name, limit, actor)
    async with db.transaction():
        return await _set_limit(db, name, limit, actor)


async def _set_limit(conn: Any, name: str, limit: int | None, actor: Actor) -> Site:
    previous = await conn.fetchrow(
        "SELECT max_in_flight FROM sites WHERE name = $1 FOR UPDATE", name
    )
    if previous is None:
        known = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM appliances WHERE site = $1)",
                                    name)
        if not known:
            raise SiteNotFound("site", await _unknown(conn, name))
    await conn.execute(
        """INSERT INTO sites (name, max_in_flight) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET max_in_flight = EXCLUDED.max_in_flight,
                                            updated_at = now()""",
        name, limit,
    )
    await record_audit(conn, actor, "site.set-limit", "site", name, {
        "max_in_flight": limit,
        "previous": previous["max_in_flight"] if previous is not None else None,
    })
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"site:{name}")
    return await get_site(conn, name)


@dataclass(frozen=True)
class HeldSlot:
    task: int
    rollout: int
    appliance: str
    site: str
    since: datetime | None  # when the task timed out
    last_look: datetime | None  # the engines' last look at the appliance

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for key in ("since", "last_look"):
            out[key] = out[key].isoformat() if out[key] else None
        return out


async def list_held(db: DB) -> list[HeldSlot]:
    """Every slot held by a timed-out install, oldest task first."""
    rows = await task_store.held_slots(db)
    return [HeldSlot(task=r["id"], rollout=r["rollout_id"], appliance=r["appliance"],
                     site=r["site"], since=r["since"], last_look=r["last_look"])
            for r in rows]


async def release_held(db: DB, appliance: str, actor: Actor) -> list[int]:
    """An operator frees the slots held by timed-out installs on `appliance` (known idle,
    or gone); the released task ids. SiteError naming the appliance when it is unknown or
    holds no slot. Audited; wakes the engines."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            return await _release_held(conn, appliance, actor)
    async with db.transaction():
        return await _release_held(db, appliance, actor)


async def _release_held(conn: Any, appliance: str, actor: Actor) -> list[int]:
    appliance_id = await conn.fetchval("SELECT id FROM appliances WHERE name = $1", appliance)
    if appliance_id is None:
        raise SiteError("appliance", f"appliance: no appliance named {appliance!r}")
    released = await task_store.release_appliance_slots(
        conn, appliance_id, reason=f"released by {actor.name} ({actor.via})")
    if not released:
        raise SiteError("appliance", f"appliance {appliance!r} holds no slot (no timed-out "
                                     "install of it is counted as in flight)")
    await record_audit(conn, actor, "site.release-held", "appliance", appliance,
                       {"tasks": released})
    return released


__all__ = [
    "MAX_LIMIT",
    "HeldSlot",
    "Site",
    "SiteError",
    "SiteNotFound",
    "check_limit",
    "check_site_name",
    "get_site",
    "list_held",
    "list_sites",
    "release_held",
    "set_site_limit",
]
