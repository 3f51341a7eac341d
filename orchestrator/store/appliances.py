"""Appliance inventory: the SQL of the `appliances` aggregate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import ApplianceSpec, url_host
from orchestrator.domain.models import Appliance
from orchestrator.store.db import DB

_COLUMNS = (
    "id, name, base_url, site, tags, timezone, credentials_ref, tls_ca_file, "
    "tls_thumbprint, current_version, last_seen_at, enabled"
)

UPSERT = """
INSERT INTO appliances (name, base_url, site, tags, timezone, credentials_ref,
                        tls_ca_file, tls_thumbprint)
SELECT r.name, r.base_url, r.site, r.tags, r.timezone, r.credentials_ref,
       r.tls_ca_file, r.tls_thumbprint
FROM jsonb_to_recordset($1::jsonb) AS r(
    name text, base_url text, site text, tags text[], timezone text,
    credentials_ref text, tls_ca_file text, tls_thumbprint text)
ON CONFLICT (name) DO UPDATE SET
    base_url = EXCLUDED.base_url,
    site = EXCLUDED.site,
    tags = EXCLUDED.tags,
    timezone = EXCLUDED.timezone,
    credentials_ref = EXCLUDED.credentials_ref,
    tls_ca_file = EXCLUDED.tls_ca_file,
    tls_thumbprint = EXCLUDED.tls_thumbprint,
    updated_at = now()
RETURNING (xmax = 0) AS inserted
"""


class HostChangeError(OrchestratorError):
    """An import or update moves appliances to another host without naming their
    credentials_ref: their secret would follow them unasked. Nothing is written."""

    def __init__(self, changes: list[tuple[str, str, str]]) -> None:
        self.changes = changes  # (name, old host, new host)
        shown = "; ".join(f"appliance {name!r}: base_url host {old} -> {new}"
                          for name, old, new in changes[:20])
        more = f"; and {len(changes) - 20} more" if len(changes) > 20 else ""
        super().__init__(
            f"{shown}{more}: a change of an appliance's host must give its credentials_ref "
            "again in the same change (the credentials would otherwise be sent to the new "
            "host)"
        )


async def check_host_changes(conn: DB, specs: Sequence[ApplianceSpec]) -> None:
    """Raise HostChangeError for the specs without a credentials_ref whose appliance exists
    under another host (the rows are locked until the transaction ends)."""
    bare = {s.name: s for s in specs if s.credentials_ref is None}
    if not bare:
        return
    rows = await conn.fetch(
        "SELECT name, base_url FROM appliances WHERE name = ANY($1::text[]) "
        "ORDER BY name FOR UPDATE", list(bare))
    changes = []
    for r in rows:
        old, new = url_host(r["base_url"]), url_host(bare[r["name"]].base_url)
        if old != new:
            changes.append((r["name"], old, new))
    if changes:
        raise HostChangeError(changes)


@dataclass(frozen=True)
class ImportSummary:
    inserted: int
    updated: int

    @property
    def total(self) -> int:
        return self.inserted + self.updated


def _row(r: asyncpg.Record) -> Appliance:
    return Appliance(
        id=r["id"], name=r["name"], base_url=r["base_url"], site=r["site"],
        tags=tuple(r["tags"]), timezone=r["timezone"], credentials_ref=r["credentials_ref"],
        tls_ca_file=r["tls_ca_file"], tls_thumbprint=r["tls_thumbprint"],
        current_version=r["current_version"], last_seen_at=r["last_seen_at"],
        enabled=r["enabled"],
    )


async def upsert_appliances(
    conn: DB, specs: Sequence[ApplianceSpec]
) -> ImportSummary:
    """Insert or update by name, all in one transaction (one statement).

    Raises HostChangeError (nothing written) when a spec without a credentials_ref moves
    an existing appliance to another host."""
    await check_host_changes(conn, specs)
    payload: list[dict[str, Any]] = []
    for spec in specs:
        item = asdict(spec)
        item["tags"] = list(spec.tags)
        payload.append(item)
    rows = await conn.fetch(UPSERT, payload)
    inserted = sum(1 for r in rows if r["inserted"])
    return ImportSummary(inserted=inserted, updated=len(rows) - inserted)


async def list_appliances(
    conn: DB,
    *,
    site: str | None = None,
    tag: str | None = None,
    names: Sequence[str] | None = None,
    after_id: int = 0,
    limit: int | None = None,
    version: str | None = None,
) -> list[Appliance]:
    """By id; `version`: only appliances whose current version is exactly that."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM appliances
            WHERE ($1::text IS NULL OR site = $1)
              AND ($2::text IS NULL OR tags @> ARRAY[$2::text])
              AND ($3::text[] IS NULL OR name = ANY($3))
              AND id > $4
              AND ($6::text IS NULL OR current_version = $6)
            ORDER BY id
            LIMIT $5""",
        site, tag, list(names) if names is not None else None, after_id, limit, version,
    )
    return [_row(r) for r in rows]


# an appliance's newest task (by id: the latest rollout that targeted it), per appliance of
# a page in one statement; tasks_appliance_id_idx (migration 0012) gives each its first row
LAST_TASKS = """SELECT a.id AS appliance_id, t.rollout_id, t.id AS task_id, t.state,
       t.error_code, r.target_version, t.finished_at
FROM unnest($1::bigint[]) AS a (id)
CROSS JOIN LATERAL (
    SELECT id, rollout_id, state, error_code, finished_at FROM tasks
    WHERE appliance_id = a.id ORDER BY id DESC LIMIT 1) AS t
JOIN rollouts r ON r.id = t.rollout_id"""


async def last_tasks(conn: DB, appliance_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """appliance id -> its newest task: {rollout_id, task_id, state, error_code,
    target_version, finished_at (ISO 8601 or None)}; appliances never targeted are left
    out."""
    if not appliance_ids:
        return {}
    rows = await conn.fetch(LAST_TASKS, list(appliance_ids))
    return {
        r["appliance_id"]: {
            "rollout_id": r["rollout_id"], "task_id": r["task_id"], "state": r["state"],
            "error_code": r["error_code"], "target_version": r["target_version"],
            "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        }
        for r in rows
    }


async def get_appliance(conn: DB, name: str) -> Appliance | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM appliances WHERE name = $1", name)
    return _row(row) if row else None


async def count_appliances(conn: DB) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM appliances"))


async def lock_appliance(conn: DB, name: str) -> bool:
    """Lock the appliance's row for this transaction; False when it does not exist."""
    return bool(await conn.fetchval(
        "SELECT true FROM appliances WHERE name = $1 FOR UPDATE", name))


async def set_enabled(conn: DB, name: str, enabled: bool) -> None:
    await conn.execute(
        "UPDATE appliances SET enabled = $2, updated_at = now() WHERE name = $1",
        name, enabled)


async def referencing_rollouts(conn: DB, name: str, limit: int = 20) -> list[int]:
    rows = await conn.fetch(
        """SELECT DISTINCT t.rollout_id FROM tasks t JOIN appliances a
           ON a.id = t.appliance_id WHERE a.name = $1 ORDER BY 1 LIMIT $2""",
        name, limit)
    return [int(r["rollout_id"]) for r in rows]


async def remove_appliance(conn: DB, name: str) -> bool:
    return await conn.fetchval(
        "DELETE FROM appliances WHERE name = $1 RETURNING true", name) is not None
