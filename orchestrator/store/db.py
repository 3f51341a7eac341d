"""Connections: the asyncpg pool, and the database URL (configured, or the embedded server).

The pool's `acquire()` waits for a free connection without end by default. Code that must
not hang (every API request: `orchestrator/api/app.py` sets it for each request) bounds
that wait with `bounded_acquire(seconds)`: within it, every acquire that names no timeout
of its own (including those of `pool.fetch()`, `pool.execute()`, ...) gives up after
`seconds` with `AcquireTimeout`. It is a context variable, so on a pool that the API
shares with the engine the engine's waits stay unbounded.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolAcquireContext, PoolConnectionProxy

from orchestrator.domain.errors import OrchestratorError
from orchestrator.settings import Settings

# Anything that runs a statement: a connection, a pool, or a connection taken from a pool.
DB = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy


@contextlib.contextmanager
def database_url(settings: Settings, announce: Any = None) -> Iterator[str]:
    """Yield the URL to use: `database_url`, or the embedded server started for this block;
    with `database_name`, that database on the same server."""
    if settings.database_url:
        yield with_database(settings.database_url, settings.database_name)
        return
    from orchestrator.store.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.data_dir, announce=announce)
    url = server.start()
    try:
        yield with_database(url, settings.database_name)
    finally:
        server.release()


def with_database(url: str, name: str | None) -> str:
    """`url` with its database replaced by `name` (None: unchanged)."""
    if not name:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


def database_of(url: str) -> str:
    """The database name a URL names."""
    return urlsplit(url).path.lstrip("/")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


# The database errors, defined here once: the engine, its runners, the API, the metrics and
# the CLI import them.
#
# The connection or the server is gone, or no connection came in time (`TimeoutError`,
# `AcquireTimeout` among them; `TimeoutError` is an `OSError` and `asyncio.TimeoutError`).
DB_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
)

# Database errors worth waiting out and trying again (the engine and its runners retry
# them): the connection or the server went away, or the server asked to try again (a
# deadlock, a serialization failure).
DB_TRANSIENT: tuple[type[BaseException], ...] = (
    *DB_CONNECTION_LOST,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, starting up, cancelled
    asyncpg.exceptions._base.InternalClientError,  # a connection left mid-protocol by a drop
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)

# The database errors an API request answers with 503 ("the database is unavailable; retry
# later") instead of 500. Not DB_TRANSIENT: the API does not treat a deadlock, a
# serialization failure, an administrator's shutdown or a connection left mid-protocol as
# the database being unavailable (those answer 500, as before), but it does count a server
# with no connection slot free (`TooManyConnectionsError`, which the engine does not retry).
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *DB_CONNECTION_LOST,
    asyncpg.CannotConnectNowError,  # the server is starting up or shutting down
    asyncpg.TooManyConnectionsError,
    asyncpg.QueryCanceledError,  # statement_timeout, or cancelled by an administrator
)

# Any failure of the database, transient or not (the server refused the statement too):
# what makes the metrics' `database_up` 0 and what the CLI reports as a database problem.
DB_ERRORS: tuple[type[BaseException], ...] = (*DB_TRANSIENT, asyncpg.PostgresError)


async def connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


async def recreate_database(conn: asyncpg.Connection, name: str) -> None:
    """Drop the database `name` (ending its sessions) and create it again, empty. `name`
    is put into the statements as a quoted identifier: the caller checks it first."""
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.execute(f'CREATE DATABASE "{name}"')


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool without asyncpg's default reset round trip
    (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL): pooled connections take only
    transaction-scoped advisory locks, LISTEN on a dedicated connection, and never change
    session settings, so there is nothing to reset."""


# The wait for a free connection that `Pool.acquire()` applies when its caller names none;
# None: no bound (asyncpg's default). Set with `bounded_acquire()`.
ACQUIRE_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "orchestrator_acquire_timeout", default=None)


class AcquireTimeout(OrchestratorError, TimeoutError):
    """No connection of the pool came free (or could be opened) within the bound."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"no database connection within {seconds:g} s")


@contextlib.contextmanager
def bounded_acquire(seconds: float | None) -> Iterator[None]:
    """Within this block (this task and the tasks it creates), acquires without a timeout
    of their own wait at most `seconds` (None: without end)."""
    token = ACQUIRE_TIMEOUT.set(seconds)
    try:
        yield
    finally:
        ACQUIRE_TIMEOUT.reset(token)


class _Acquire(PoolAcquireContext):
    __slots__ = ()

    async def __aenter__(self) -> PoolConnectionProxy:
        try:
            return await super().__aenter__()
        except TimeoutError:
            if self.timeout is None:
                raise
            raise AcquireTimeout(self.timeout) from None


class Pool(asyncpg.Pool):
    """asyncpg's pool, whose `acquire()` applies the bound of `bounded_acquire()`."""

    __slots__ = ()

    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        return _Acquire(self, ACQUIRE_TIMEOUT.get() if timeout is None else timeout)


@contextlib.asynccontextmanager
async def create_pool(
    url: str, settings: Settings | None = None, **overrides: Any
) -> AsyncIterator[asyncpg.Pool]:
    # asyncpg.create_pool's defaults; it builds an asyncpg.Pool the same way
    opts: dict[str, Any] = {"min_size": 10, "max_size": 10, "max_queries": 50_000,
                            "max_inactive_connection_lifetime": 300.0}
    if settings is not None:
        opts.update({
            "min_size": settings.db_pool_min_size,
            "max_size": settings.db_pool_max_size,
            "command_timeout": settings.db_command_timeout,
        })
    opts.update(overrides)
    pool: asyncpg.Pool = await Pool(
        url, init=_init_connection, reset=_keep_session, loop=None,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record, **opts)
    try:
        yield pool
    finally:
        await pool.close()
