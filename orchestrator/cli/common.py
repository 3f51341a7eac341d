"""What the command modules share: the database runner, the CLI actor, tables, errors and
argument types. Imports no other module of `orchestrator.cli`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.settings import Settings
from orchestrator.store import migrations
from orchestrator.store.audit import Actor
from orchestrator.store.db import connect, create_pool, database_url

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what other tools report when the reader went away

Body = Callable[[asyncpg.Pool], Awaitable[int]]


class CommandError(OrchestratorError):
    """An operation failed in a way the user can act on; the message says how."""


class UsageError(OrchestratorError):
    """A bad command-line value; the message names it."""


def cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(name=user, via="cli")


# --------------------------------------------------------------------------- arguments
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty")
    return text


# --------------------------------------------------------------------------- output
def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --------------------------------------------------------------------------- database
async def _with_database(
    settings: Settings,
    url: str,
    body: Body,
    *,
    migrate_embedded: bool,
) -> int:
    conn = await connect(url)
    try:
        if migrate_embedded and not settings.database_url:
            # the embedded database is ours: keep it migrated without a separate step
            await migrations.migrate(conn)
        else:
            await migrations.ensure_current(conn)
    finally:
        await conn.close()
    async with create_pool(url, settings) as pool:
        return await body(pool)


def run_with_database(settings: Settings, body: Body, url_out: list[str] | None = None) -> int:
    """Resolve the database (embedded or configured), check migrations, run `body(pool)`.

    `url_out`, when given, receives the URL (for a LISTEN connection of the engine).
    """
    with database_url(settings) as url:
        if url_out is not None:
            url_out.append(url)
        return asyncio.run(_with_database(settings, url, body, migrate_embedded=True))
