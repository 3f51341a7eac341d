"""`orchestrator windows ...`: maintenance windows from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from orchestrator.cli.common import UsageError, cli_actor, run_with_database
from orchestrator.domain.windows import SEARCH_HORIZON, check_zone, covering, next_openings
from orchestrator.settings import Settings
from orchestrator.store import windows as window_store
from orchestrator.store.audit import Actor


def add_command(sub: Any) -> None:
    windows = sub.add_parser("windows", help="maintenance windows")
    wsub = windows.add_subparsers(dest="windows_command", required=True, metavar="ACTION")
    create = wsub.add_parser("create", help="create a window")
    create.add_argument("--name", required=True)
    create.add_argument("--cron", required=True, help='5-field cron, e.g. "0 22 * * 1-5"')
    create.add_argument("--duration", required=True, help="e.g. 4h, 90m, 1h30m, 3600")
    create.add_argument("--timezone", required=True, help="IANA zone, e.g. Europe/Amsterdam")
    create.add_argument("--cutoff", default="0", help="no install starts with less left")
    create.add_argument("--site", action="append", default=[], help="repeatable")
    create.add_argument("--tag", action="append", default=[], help="repeatable")
    create.add_argument("--json", action="store_true")
    lst = wsub.add_parser("list", help="list windows")
    lst.add_argument("--json", action="store_true")
    show = wsub.add_parser("show", help="one window and its next openings")
    show.add_argument("window", help="name or id")
    show.add_argument("--json", action="store_true")
    delete = wsub.add_parser("delete", help="delete a window")
    delete.add_argument("window", help="name or id")
    nxt = wsub.add_parser("next", help="the next openings for a site (local time and UTC)")
    nxt.add_argument("--site", required=True)
    nxt.add_argument("--tag", action="append", default=[])
    nxt.add_argument("--timezone", help="an appliance's own zone, overriding the window's")
    nxt.add_argument("--count", type=int, default=5, help="how many openings (default 5)")
    nxt.add_argument("--json", action="store_true")
    windows.set_defaults(func=cmd_windows)


def _fmt(moment: datetime, zone: str) -> str:
    local = moment.astimezone(ZoneInfo(zone))
    return f"{local:%Y-%m-%d %H:%M %Z} ({moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"


def cmd_windows(settings: Settings, args: argparse.Namespace) -> int:
    actor = cli_actor()
    action = args.windows_command
    now = datetime.now(UTC)
    if action == "next":  # before any database
        _check_next_args(args)
    run = _ACTIONS.get(action, _next)

    async def body(pool: asyncpg.Pool) -> int:
        return await run(pool, args, actor, now)

    return run_with_database(settings, body)


def _check_next_args(args: argparse.Namespace) -> None:
    if args.count < 1:
        raise UsageError(f"windows next: --count {args.count} is not an integer >= 1")
    if args.timezone is not None:
        try:
            check_zone(args.timezone)
        except ValueError as exc:
            raise UsageError(f"windows next: --timezone {exc}") from None


async def _create(
    pool: asyncpg.Pool, args: argparse.Namespace, actor: Actor, now: datetime
) -> int:
    window = await window_store.create_window(pool, {
        "name": args.name, "cron": args.cron, "duration": args.duration,
        "timezone": args.timezone, "cutoff": args.cutoff,
        "sites": args.site, "tags": args.tag,
    }, actor)
    if args.json:
        print(json.dumps(window.to_dict(), indent=2))
    else:
        first = next_openings(window.spec, now, 1)
        when = _fmt(first[0][0], window.spec.timezone) if first else "never"
        print(f"created window {window.spec.name!r}; next opening {when}")
    return 0


async def _list(
    pool: asyncpg.Pool, args: argparse.Namespace, actor: Actor, now: datetime
) -> int:
    items = await window_store.list_windows(pool)
    if args.json:
        print(json.dumps([w.to_dict() for w in items], indent=2))
        return 0
    for w in items:
        d = w.to_dict()
        scope = ", ".join([*(f"site {x}" for x in d["sites"]),
                           *(f"tag {x}" for x in d["tags"])])
        print(f"{w.spec.name:<24} {w.spec.cron:<16} {d['duration']:>6}s "
              f"{w.spec.timezone:<20} cutoff {d['cutoff']}s  {scope}")
    print(f"{len(items)} window(s)")
    return 0


async def _show(
    pool: asyncpg.Pool, args: argparse.Namespace, actor: Actor, now: datetime
) -> int:
    window = await window_store.get_window(pool, args.window)
    upcoming = next_openings(window.spec, now, 3)
    if args.json:
        print(json.dumps({**window.to_dict(), "next": [
            {"opens": a.isoformat(), "closes": b.isoformat()} for a, b in upcoming
        ]}, indent=2))
        return 0
    for key, value in window.to_dict().items():
        print(f"{key:>10}: {value}")
    for opens, closes in upcoming:
        print(f"      next: {_fmt(opens, window.spec.timezone)} -> "
              f"{_fmt(closes, window.spec.timezone)}")
    return 0


async def _delete(
    pool: asyncpg.Pool, args: argparse.Namespace, actor: Actor, now: datetime
) -> int:
    window = await window_store.delete_window(pool, args.window, actor)
    print(f"deleted window {window.spec.name!r}")
    return 0


async def _next(
    pool: asyncpg.Pool, args: argparse.Namespace, actor: Actor, now: datetime
) -> int:
    specs = covering(await window_store.all_specs(pool), args.site, tuple(args.tag))
    rows: list[tuple[datetime, datetime, str, str]] = []
    for spec in specs:
        zone = args.timezone or spec.timezone
        for opens, closes in next_openings(spec, now, args.count, args.timezone):
            rows.append((opens, closes, spec.name, zone))
    rows.sort()
    rows = rows[: args.count]
    if specs and len(rows) < args.count:
        print(f"note: {len(rows)} opening(s) in the next {SEARCH_HORIZON.days} days (the "
              f"search horizon), fewer than --count {args.count}", file=sys.stderr)
    if args.json:
        print(json.dumps([{"window": n, "opens": a.isoformat(), "closes": b.isoformat(),
                           "timezone": z} for a, b, n, z in rows], indent=2))
        return 0
    if not specs:
        print(f"no window covers site {args.site!r}: its appliances are not restricted")
        return 0
    for opens, closes, name, zone in rows:
        print(f"{name:<24} {_fmt(opens, zone)} -> {_fmt(closes, zone)}")
    return 0


# the action of each `windows ACTION` (`next` checks its arguments before any database)
_Action = Callable[[asyncpg.Pool, argparse.Namespace, Actor, datetime], Awaitable[int]]
_ACTIONS: dict[str, _Action] = {
    "create": _create, "list": _list, "show": _show, "delete": _delete, "next": _next,
}
