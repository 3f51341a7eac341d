"""Maintenance windows: the SQL of the `maintenance_windows` aggregate."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.windows import WindowSpec, parse_window
from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB

_COLUMNS = "id, name, cron, duration_s, timezone, cutoff_s, sites, tags"


class WindowStoreError(OrchestratorError):
    """A window request is refused; the message names the window."""


@dataclass(frozen=True)
class StoredWindow:
    id: int
    spec: WindowSpec

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec.to_dict()}


def _spec(row: asyncpg.Record) -> StoredWindow:
    return StoredWindow(id=row["id"], spec=parse_window({
        "name": row["name"], "cron": row["cron"], "duration": row["duration_s"],
        "timezone": row["timezone"], "cutoff": row["cutoff_s"],
        "sites": list(row["sites"]), "tags": list(row["tags"]),
    }))


async def create_window(conn: DB, data: Mapping[str, Any], actor: Actor) -> StoredWindow:
    """Validate (WindowError names the bad field; a window that never opens within 400
    days is refused on window.cron) and store a window."""
    spec = parse_window(data, now=datetime.now(UTC))
    values = spec.to_dict()
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO maintenance_windows (name, cron, duration_s, timezone, cutoff_s,
                                                 sites, tags)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
            spec.name, spec.cron, values["duration"], spec.timezone, values["cutoff"],
            list(spec.sites), list(spec.tags),
        )
    except asyncpg.UniqueViolationError:
        raise WindowStoreError(f"a window named {spec.name!r} exists already") from None
    assert row is not None
    await record_audit(conn, actor, "window.create", "maintenance_window", row["id"],
                       {"name": spec.name})
    return _spec(row)


async def list_windows(conn: DB) -> list[StoredWindow]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM maintenance_windows ORDER BY name")
    return [_spec(r) for r in rows]


async def get_window(conn: DB, name_or_id: str | int) -> StoredWindow:
    if isinstance(name_or_id, int) or str(name_or_id).isdigit():
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM maintenance_windows WHERE id = $1", int(name_or_id)
        )
    else:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM maintenance_windows WHERE name = $1", str(name_or_id)
        )
    if row is None:
        raise WindowStoreError(f"no maintenance window {name_or_id!r}")
    return _spec(row)


async def update_window(conn: DB, name_or_id: str | int, changes: Mapping[str, Any],
                        actor: Actor) -> StoredWindow:
    """Apply `changes` to a window and validate the result as a whole (WindowError names
    the bad field); the row is locked for the transaction."""
    window = await get_window(conn, name_or_id)
    await conn.execute("SELECT 1 FROM maintenance_windows WHERE id = $1 FOR UPDATE", window.id)
    spec = parse_window({**window.spec.to_dict(), **changes}, now=datetime.now(UTC))
    values = spec.to_dict()
    try:
        row = await conn.fetchrow(
            f"""UPDATE maintenance_windows SET name = $2, cron = $3, duration_s = $4,
                       timezone = $5, cutoff_s = $6, sites = $7, tags = $8,
                       updated_at = now()
                WHERE id = $1 RETURNING {_COLUMNS}""",
            window.id, spec.name, spec.cron, values["duration"], spec.timezone,
            values["cutoff"], list(spec.sites), list(spec.tags),
        )
    except asyncpg.UniqueViolationError:
        raise WindowStoreError(f"a window named {spec.name!r} exists already") from None
    if row is None:
        raise WindowStoreError(f"no maintenance window {name_or_id!r}")
    await record_audit(conn, actor, "window.update", "maintenance_window", window.id,
                       {"name": spec.name, "changed": sorted(changes)})
    return _spec(row)


async def delete_window(conn: DB, name_or_id: str | int, actor: Actor) -> StoredWindow:
    window = await get_window(conn, name_or_id)
    await conn.execute("DELETE FROM maintenance_windows WHERE id = $1", window.id)
    await record_audit(conn, actor, "window.delete", "maintenance_window", window.id,
                       {"name": window.spec.name})
    return window


async def all_specs(conn: DB) -> list[WindowSpec]:
    return [w.spec for w in await list_windows(conn)]


async def any_window(conn: DB) -> bool:
    """Whether any maintenance window exists."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM maintenance_windows)"))
