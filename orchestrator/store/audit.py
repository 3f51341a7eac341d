"""Audit log: who did what, through which door (CLI, API, engine, schedule)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.store.db import DB


@dataclass(frozen=True)
class Actor:
    """Who asks: a token's name through the API, the OS user through the CLI."""

    name: str
    via: str = "cli"  # cli | api | engine | schedule


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    via: str
    action: str
    target_type: str
    target_id: str | None
    detail: dict[str, Any]


async def record_audit(
    conn: DB, actor: Actor, action: str, target_type: str, target_id: object,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        """INSERT INTO audit_log (actor, via, action, target_type, target_id, detail)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        actor.name, actor.via, action, target_type,
        None if target_id is None else str(target_id), detail or {},
    )


async def list_audit(
    conn: DB, *, before_id: int | None = None, limit: int = 100
) -> list[AuditEntry]:
    rows = await conn.fetch(
        """SELECT id, at, actor, via, action, target_type, target_id, detail FROM audit_log
           WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2""",
        before_id, limit,
    )
    return [AuditEntry(**dict(r)) for r in rows]
