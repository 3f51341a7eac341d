"""A throw-away database for a benchmark: on ORCHESTRATOR_DATABASE_URL or TEST_DATABASE_URL
when set, else on an embedded PostgreSQL in a temporary directory; dropped afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.store.embedded import EmbeddedPostgres


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def temporary_database(prefix: str) -> Iterator[str]:
    """Yield the URL of a new, empty database named `<prefix>_<random>`."""
    server = os.environ.get("ORCHESTRATOR_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    data_dir = Path(tempfile.mkdtemp(prefix=f"orch-{prefix}-pg-"))
    embedded = None
    if not server:
        embedded = EmbeddedPostgres(data_dir, announce=lambda _m: None)
        server = embedded.start()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(server)
    try:
        asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if embedded:
            embedded.release()
        shutil.rmtree(data_dir, ignore_errors=True)
