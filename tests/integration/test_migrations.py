from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from orchestrator.store import migrations
from orchestrator.store.db import connect

EXPECTED_TABLES = {
    "appliances", "maintenance_windows", "rollouts", "rollout_waves", "tasks",
    "task_events", "audit_log", "api_tokens", "schema_migrations",
}


async def test_all_migrations_apply_to_an_empty_database(empty_db_url: str) -> None:
    conn = await connect(empty_db_url)
    try:
        done = await migrations.migrate(conn)
        assert [m.version for m in done] == [m.version for m in migrations.load_migrations()]
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert EXPECTED_TABLES <= tables
        # running again changes nothing
        assert await migrations.migrate(conn) == []
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        assert len(rows) == len(done)
        await migrations.ensure_current(conn)
        assert {s.state for s in await migrations.status(conn)} == {"applied"}
    finally:
        await conn.close()


async def test_concurrent_runners_apply_each_migration_once(empty_db_url: str) -> None:
    conns = [await connect(empty_db_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c) for c in conns))
        applied = [m.version for result in results for m in result]
        assert sorted(applied) == [m.version for m in migrations.load_migrations()]
    finally:
        for c in conns:
            await c.close()


async def test_pending_and_changed_migrations_are_refused(
    empty_db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(migrations.DEFAULT_MIGRATIONS_DIR, directory)
    conn = await connect(empty_db_url)
    try:
        with pytest.raises(migrations.MigrationError, match="not migrated"):
            await migrations.ensure_current(conn, directory)
        await migrations.migrate(conn, directory)
        # a new migration is pending, then applied
        (directory / "9999_extra.sql").write_text("CREATE TABLE extra (id int);")
        assert [s.state for s in await migrations.status(conn, directory)][-1] == "pending"
        with pytest.raises(migrations.MigrationError, match="9999_extra"):
            await migrations.ensure_current(conn, directory)
        assert [m.name for m in await migrations.migrate(conn, directory)] == ["extra"]
        # editing a landed migration is refused
        first = sorted(directory.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited\n")
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            await migrations.migrate(conn, directory)
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            await migrations.ensure_current(conn, directory)
        assert "changed" in {s.state for s in await migrations.status(conn, directory)}
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_is_not_recorded(
    empty_db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (directory / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_fn();")
    conn = await connect(empty_db_url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrations.migrate(conn, directory)
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
    finally:
        await conn.close()


async def test_schema_constraints_protect_invariants(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute(
            "INSERT INTO appliances (name, base_url, site) VALUES ('a', 'ftp://a', 's')"
        )
    aid = await pool.fetchval(
        "INSERT INTO appliances (name, base_url, site) VALUES ('a', 'https://a/x', 's') "
        "RETURNING id"
    )
    rid = await pool.fetchval(
        "INSERT INTO rollouts (name, target_version, created_by) VALUES ('r', '9', 't') "
        "RETURNING id"
    )
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE rollouts SET state = 'EXPLODED' WHERE id = $1", rid)
    await pool.execute(
        "INSERT INTO rollout_waves (rollout_id, number, planned_size) VALUES ($1, 0, 1)", rid
    )
    insert_task = (
        "INSERT INTO tasks (rollout_id, appliance_id, wave, position, site) "
        "VALUES ($1, $2, $3, $4, 's') RETURNING id"
    )
    tid = await pool.fetchval(insert_task, rid, aid, 0, 0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(insert_task, rid, aid, 0, 1)
    other = await pool.fetchval(
        "INSERT INTO appliances (name, base_url, site) VALUES ('b', 'https://b/x', 's') "
        "RETURNING id"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):  # wave 5 was never planned
        await pool.execute(insert_task, rid, other, 5, 2)
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE tasks SET state = 'LIMBO' WHERE id = $1", tid)
    with pytest.raises(asyncpg.CheckViolationError):  # terminal without finished_at
        await pool.execute("UPDATE tasks SET state = 'SUCCEEDED' WHERE id = $1", tid)
    eid = await pool.fetchval(
        "INSERT INTO task_events (task_id, rollout_id, to_state) VALUES ($1, $2, 'PENDING') "
        "RETURNING id", tid, rid,
    )
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await pool.execute("UPDATE task_events SET to_state = 'X' WHERE id = $1", eid)
    # an appliance with tasks cannot be deleted (PostgreSQL 18 names it a RESTRICT violation)
    with pytest.raises((asyncpg.ForeignKeyViolationError, asyncpg.RestrictViolationError)):
        await pool.execute("DELETE FROM appliances WHERE id = $1", aid)


async def test_claim_indexes_exist(pool: asyncpg.Pool) -> None:
    names = {
        r["indexname"]
        for r in await pool.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'")
    }
    assert {"tasks_pending_idx", "tasks_in_flight_idx", "tasks_rollout_dispatched_idx"} <= names
    # 0006 dropped it: the reclaim finds in-flight tasks through the busy-task indexes, and
    # a lease renewal changes no indexed column (tests/integration/test_query_plans.py)
    assert "tasks_lease_idx" not in names
