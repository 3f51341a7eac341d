"""Shared fixtures: a real PostgreSQL for every test above unit level.

The server is the embedded one (started once per session in a temporary directory) unless
TEST_DATABASE_URL points at another. A template database is migrated once; every test that
asks for `db_url` gets its own database cloned from it (CREATE DATABASE ... TEMPLATE).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from hypothesis import HealthCheck, settings

from orchestrator.store import migrations
from orchestrator.store.db import connect, create_pool
from orchestrator.store.embedded import EmbeddedPostgres
from tests.helpers import cloned_database, url_with_database

# Property tests judge results, not speed: on a shared 2-core machine input generation can
# be slow for reasons that are not the test's (other suites, benchmarks), and hypothesis's
# "too slow" health check or its 200 ms deadline would fail a correct test.
settings.register_profile("shared-machine", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a database on the test server that may create and drop databases."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Not under pytest's own temporary directory: pytest resets that to mode 0700 when any
    # session starts, which would lock out the server's system user when running as root.
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrator-test-pg-"))
    server = EmbeddedPostgres(data_dir, announce=lambda _m: None)
    url = server.start()
    try:
        yield url
    finally:
        server.release()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_or_external() -> str:
    return "external" if os.environ.get("TEST_DATABASE_URL") else "embedded"


@pytest.fixture(scope="session")
async def template_db(pg_server_url: str) -> AsyncIterator[str]:
    name = f"orch_tpl_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await connect(url_with_database(pg_server_url, name))
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db_url(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    async with cloned_database(pg_server_url, template_db, "orch_test") as url:
        yield url


@pytest.fixture
async def empty_db_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    async with cloned_database(pg_server_url, None, "orch_empty") as url:
        yield url


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with create_pool(db_url, min_size=1, max_size=10) as p:
        yield p


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Every test starts from structlog's defaults: a test that configures logging (at
    `warning`, say) would otherwise filter the info lines that a later test of the same
    worker captures with `capture_logs` (which replaces the processors, not the level)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
