"""Migration runner: `migrations/NNNN_name.sql`, applied in order, each in its own transaction.

Every applied migration is recorded in `schema_migrations` with the SHA-256 of its file.
A PostgreSQL advisory lock serialises runners, so several processes may migrate at once.
A migration whose file changed after it was applied is refused: landed migrations are
never edited, a new one is added instead.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from orchestrator.domain.errors import OrchestratorError

# Any constant works; this one spells "orchmigr" in ASCII.
MIGRATION_LOCK_ID = 0x6F7263686D696772
_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

DEFAULT_MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class MigrationError(OrchestratorError, RuntimeError):
    """The migrations on disk and in the database disagree."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    version: str
    name: str
    applied_at: str | None
    state: str  # applied | pending | changed | missing-file


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or DEFAULT_MIGRATIONS_DIR
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: list[Migration] = []
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migration files are named NNNN_lower_snake.sql")
        found.append(Migration(m["version"], m["name"], path, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version number in {directory}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)"""


async def _applied(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )
    return {r["version"]: r for r in rows}


def _check_unchanged(migrations: list[Migration], applied: dict[str, asyncpg.Record]) -> None:
    on_disk = {m.version: m for m in migrations}
    for version, row in applied.items():
        m = on_disk.get(version)
        if m is None:
            raise MigrationError(
                f"migration {version}_{row['name']} is applied but its file is missing"
            )
        if m.checksum != row["checksum"]:
            raise MigrationError(
                f"migration {m.path.name} changed after it was applied "
                f"(checksum {row['checksum'][:12]} in the database, {m.checksum[:12]} on disk); "
                "landed migrations are never edited: restore it and add a new migration"
            )


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Apply pending migrations; return those applied by this call."""
    migrations = load_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        _check_unchanged(migrations, applied)
        done: list[Migration] = []
        for m in migrations:
            if m.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum,
                )
            done.append(m)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)


async def status(conn: asyncpg.Connection, directory: Path | None = None) -> list[MigrationStatus]:
    migrations = load_migrations(directory)
    applied = await _applied(conn)
    out: list[MigrationStatus] = []
    for m in migrations:
        row = applied.get(m.version)
        if row is None:
            out.append(MigrationStatus(m.version, m.name, None, "pending"))
        else:
            state = "applied" if row["checksum"] == m.checksum else "changed"
            out.append(MigrationStatus(m.version, m.name, row["applied_at"].isoformat(), state))
    known = {m.version for m in migrations}
    for version, row in applied.items():
        if version not in known:
            out.append(
                MigrationStatus(version, row["name"], row["applied_at"].isoformat(), "missing-file")
            )
    return out


async def ensure_current(conn: asyncpg.Connection, directory: Path | None = None) -> None:
    """Refuse to run against a database whose migrations are pending or were edited."""
    migrations = load_migrations(directory)
    applied = await _applied(conn)
    _check_unchanged(migrations, applied)
    pending = [f"{m.version}_{m.name}" for m in migrations if m.version not in applied]
    if pending:
        raise MigrationError(
            f"the database is not migrated ({len(pending)} pending: {', '.join(pending)}); "
            "run `orchestrator migrate`"
        )
