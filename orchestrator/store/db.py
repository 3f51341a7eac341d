"""Connections: the asyncpg pool, and the database URL (configured, or the embedded server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from orchestrator.settings import Settings

# Anything that runs a statement: a connection, a pool, or a connection taken from a pool.
DB = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


@contextlib.contextmanager
def database_url(settings: Settings, announce: Any = None) -> Iterator[str]:
    """Yield the URL to use: `database_url`, or the embedded server started for this block."""
    if settings.database_url:
        yield settings.database_url
        return
    from orchestrator.store.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir, announce=announce)
    url = server.start()
    try:
        yield url
    finally:
        server.release()


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


# Database errors worth waiting out and trying again: the connection or the server went
# away, or the server asked to try again (a deadlock, a serialization failure). The one
# definition: the engine, its runners and the API all use it.
DB_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, starting up, cancelled
    asyncpg.exceptions._base.InternalClientError,  # a connection left mid-protocol by a drop
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncio.TimeoutError,
)


async def connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool without asyncpg's default reset round trip
    (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): pooled connections take only
    transaction-scoped advisory locks, LISTEN on a dedicated connection, and never change
    session settings, so there is nothing to reset."""


@contextlib.asynccontextmanager
async def create_pool(
    url: str, settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[asyncpg.Pool]:
    opts: dict[str, Any] = {}
    if settings is not None:
        opts = {
            "min_size": settings.db_pool_min_size,
            "max_size": settings.db_pool_max_size,
            "command_timeout": settings.db_command_timeout,
        }
    opts.update(overrides)
    pool = await asyncpg.create_pool(url, init=_init_connection, reset=_keep_session, **opts)
    try:
        yield pool
    finally:
        await pool.close()
