"""`orchestrator migrate [--status]`: apply or list the database migrations."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from orchestrator.cli.common import EXIT_FAILED, print_table
from orchestrator.settings import Settings
from orchestrator.store import migrations
from orchestrator.store.db import connect, database_url


def add_command(sub: Any) -> None:
    """`migrate [--status]`."""
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--status", action="store_true", help="list applied and pending")
    migrate.set_defaults(func=cmd_migrate)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def body(url: str) -> int:
        conn = await connect(url)
        try:
            if args.status:
                rows = await migrations.status(conn)
                print_table(
                    ["version", "name", "state", "applied_at"],
                    [(r.version, r.name, r.state, r.applied_at) for r in rows],
                )
                return 0 if all(r.state in ("applied", "pending") for r in rows) else EXIT_FAILED
            done = await migrations.migrate(conn)
        finally:
            await conn.close()
        if done:
            for m in done:
                print(f"applied {m.version}_{m.name}")
        else:
            print("database is up to date")
        return 0

    with database_url(settings) as url:
        return asyncio.run(body(url))
