"""`orchestrator appliances ...`: the appliance inventory (import, list)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.cli.common import CommandError, non_empty, print_table, run_with_database
from orchestrator.inventory import read_inventory, target_policy
from orchestrator.settings import Settings
from orchestrator.store import appliances as appliance_store


def add_command(sub: Any) -> None:
    """`appliances import FILE` and `appliances list`."""
    appl = sub.add_parser("appliances", help="the appliance inventory")
    appl_sub = appl.add_subparsers(dest="appliances_command", required=True, metavar="ACTION")
    imp = appl_sub.add_parser(
        "import", help="upsert appliances from a CSV or JSON file (all or nothing)"
    )
    imp.add_argument("file", type=non_empty)
    imp.add_argument("--format", choices=["csv", "json"], help="default: from the file suffix")
    imp.set_defaults(func=cmd_appliances_import)
    lst = appl_sub.add_parser("list", help="list appliances")
    lst.add_argument("--site", type=non_empty)
    lst.add_argument("--tag", type=non_empty)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_appliances_list)


def cmd_appliances_import(settings: Settings, args: argparse.Namespace) -> int:
    result = read_inventory(Path(args.file), args.format, target_policy(settings),
                            max_rows=settings.appliance_import_max_rows)

    async def body(pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn, conn.transaction():
            try:
                summary = await appliance_store.upsert_appliances(conn, result.specs)
            except appliance_store.HostChangeError as exc:
                raise CommandError(f"{args.file}: {exc}; nothing imported") from None
        print(
            f"imported {summary.total} appliance(s) from {args.file}: "
            f"{summary.inserted} new, {summary.updated} updated"
        )
        return 0

    return run_with_database(settings, body)


def cmd_appliances_list(settings: Settings, args: argparse.Namespace) -> int:
    async def body(pool: asyncpg.Pool) -> int:
        items = await appliance_store.list_appliances(pool, site=args.site, tag=args.tag)
        if args.json:
            print(json.dumps(
                [
                    {
                        "name": a.name, "base_url": a.base_url, "site": a.site,
                        "tags": list(a.tags), "timezone": a.timezone,
                        "credentials_ref": a.credentials_ref,
                        "current_version": a.current_version, "enabled": a.enabled,
                    }
                    for a in items
                ],
                indent=2,
            ))
            return 0
        print_table(
            ["name", "site", "tags", "version", "base_url"],
            [(a.name, a.site, ";".join(a.tags), a.current_version or "-", a.base_url)
             for a in items],
        )
        print(f"{len(items)} appliance(s)")
        return 0

    return run_with_database(settings, body)
