"""`orchestrator sites ...`: the fleet-wide capacity of each site.

    orchestrator sites list [--json]
    orchestrator sites set-limit SITE N         # at most N installs in flight at SITE
    orchestrator sites set-limit SITE --clear   # unlimited again
    orchestrator sites held [--json]            # timed-out installs still holding a slot
    orchestrator sites release APPLIANCE        # free them (the appliance is idle or gone)
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

import asyncpg

from orchestrator.cli.common import cli_actor, print_table, run_with_database
from orchestrator.settings import Settings
from orchestrator.store import sites as site_store
from orchestrator.store.sites import SiteError


def add_command(sub: Any) -> None:
    sites = sub.add_parser("sites", help="fleet-wide capacity per site (all rollouts together)")
    ssub = sites.add_subparsers(dest="sites_command", required=True, metavar="ACTION")
    lst = ssub.add_parser("list", help="sites: limit, installs in flight now, appliances")
    lst.add_argument("--json", action="store_true")
    limit = ssub.add_parser(
        "set-limit", help="cap the installs in flight at a site across every rollout",
        description="SITE N: at most N (an integer >= 1) installs in flight at SITE across "
                    "every rollout together; SITE --clear: unlimited again.",
    )
    limit.add_argument("site", metavar="SITE")
    limit.add_argument("limit", nargs="?", metavar="N",
                       help="an integer >= 1 (leave it out with --clear)")
    limit.add_argument("--clear", action="store_true", help="remove the limit: unlimited")
    held = ssub.add_parser(
        "held", help="timed-out installs that still count as in flight",
        description="A task that timed out after its install was sent keeps its slot until "
                    "an engine sees its appliance answer with no install task running.",
    )
    held.add_argument("--json", action="store_true")
    release = ssub.add_parser(
        "release", help="free the slots held by an appliance's timed-out installs",
        description="Use when you know the appliance is idle (or gone): its timed-out "
                    "install stops counting as in flight at once.",
    )
    release.add_argument("appliance", metavar="APPLIANCE")
    sites.set_defaults(func=cmd_sites)


def parse_limit(args: argparse.Namespace) -> int | None:
    """N, or None with --clear; SiteError (one line naming the value) otherwise."""
    if args.clear:
        if args.limit is not None:
            raise SiteError("max_in_flight",
                            f"sites set-limit: give N or --clear, not both (got N {args.limit!r})")
        return None
    if args.limit is None:
        raise SiteError("max_in_flight",
                        "sites set-limit: give the limit N (an integer >= 1) or --clear")
    text = args.limit.strip()
    try:
        value = int(text, 10)
    except ValueError:
        raise SiteError("max_in_flight", f"sites set-limit: N {args.limit!r} is not an "
                                         "integer >= 1 (use --clear for unlimited)") from None
    if value < 1 or value > site_store.MAX_LIMIT:
        bound = "an integer >= 1" if value < 1 else f"at most {site_store.MAX_LIMIT}"
        raise SiteError("max_in_flight", f"sites set-limit: N {args.limit!r} is not {bound} "
                                         "(use --clear for unlimited)")
    return value


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _shown(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


def cmd_sites(settings: Settings, args: argparse.Namespace) -> int:
    actor = cli_actor()
    action = args.sites_command
    limit = parse_limit(args) if action == "set-limit" else None  # before any database

    async def body(pool: asyncpg.Pool) -> int:
        if action == "list":
            items = await site_store.list_sites(pool)
            if args.json:
                print(json.dumps([s.to_dict() for s in items], indent=2))
                return 0
            print_table(["site", "limit", "in flight", "held", "appliances"],
                        [(s.name, _shown(s.max_in_flight), s.in_flight, s.held, s.appliances)
                         for s in items])
            print(f"{len(items)} site(s)")
            return 0
        if action == "held":
            slots = await site_store.list_held(pool)
            if args.json:
                print(json.dumps([h.to_dict() for h in slots], indent=2))
                return 0
            print_table(["task", "rollout", "appliance", "site", "timed out", "last look"],
                        [(h.task, h.rollout, h.appliance, h.site, _when(h.since),
                          _when(h.last_look)) for h in slots])
            print(f"{len(slots)} held slot(s)")
            return 0
        if action == "release":
            released = await site_store.release_held(pool, args.appliance, actor)
            print(f"appliance {args.appliance!r}: {len(released)} held slot(s) released "
                  f"(task(s) {', '.join(map(str, released))})")
            return 0
        before = await site_store.get_site(pool, args.site)
        site = await site_store.set_site_limit(pool, args.site, limit, actor)
        print(f"site {site.name!r}: limit {_shown(site.max_in_flight)} (was "
              f"{_shown(before.max_in_flight)}); {site.in_flight} install(s) in flight now")
        return 0

    return run_with_database(settings, body)
