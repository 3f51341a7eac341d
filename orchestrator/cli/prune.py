"""`orchestrator prune --older-than 90d [--dry-run] [--json]`: retention.

Deletes the tasks and task events of the rollouts that ended (SUCCEEDED,
COMPLETED_WITH_FAILURES, FAILED, CANCELLED) longer ago than the age given; the rollouts
themselves, their waves, their per-state counts and the audit log stay, and their reports
say that they were pruned. Active rollouts are never touched. Progress goes to stderr
(a line per rollout and per 50,000 rows when stderr is a terminal); the result to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from orchestrator.cli.common import cli_actor, run_with_database
from orchestrator.settings import Settings, parse_age
from orchestrator.store import prune as prune_store

PROGRESS_EVERY = 50_000


def age(text: str) -> timedelta:
    """argparse type of --older-than: the error names the bad value."""
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_command(sub: Any) -> None:
    """`prune --older-than AGE [--dry-run] [--json]`."""
    p = sub.add_parser(
        "prune", help="delete the tasks and events of rollouts that ended long ago",
        description="Delete the tasks and task events of the rollouts that ended longer "
                    "ago than --older-than. Each rollout, its waves, its per-state counts and "
                    "the audit log are kept; active rollouts are never touched.")
    p.add_argument("--older-than", metavar="AGE", type=age, required=True,
                   help="rollouts that ended more than this long ago, e.g. 90d, 12h, 2w "
                        "(units w, d, h, m)")
    p.add_argument("--dry-run", action="store_true",
                   help="only count what would be deleted")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)


def _progress(item: prune_store.PrunedRollout, shown: dict[int, int]) -> None:
    done = item.tasks + item.events
    if done - shown.get(item.id, 0) >= PROGRESS_EVERY:
        shown[item.id] = done
        print(f"rollout {item.id}: {item.events} events, {item.tasks} tasks deleted so far",
              file=sys.stderr, flush=True)


def _print(result: prune_store.PruneResult) -> None:
    verb = "would delete" if result.dry_run else "deleted"
    when = f"{result.cutoff:%Y-%m-%d %H:%M} UTC"
    for r in result.rollouts:
        line = (f"rollout {r.id} ({r.name}, {r.state}, ended "
                f"{r.finished_at.astimezone(UTC):%Y-%m-%d}): ")
        if r.skipped:
            print(line + f"skipped: {r.skipped}")
        else:
            print(line + f"{verb} {r.tasks} tasks, {r.events} events")
    if not result.rollouts:
        print(f"nothing to prune: no rollout that ended before {when} has tasks left")
        return
    print(f"{len(result.pruned)} rollout(s) ended before {when}: {verb} {result.tasks} "
          f"tasks and {result.events} task events" + (
              f"; {len(result.rollouts) - len(result.pruned)} skipped"
              if len(result.rollouts) > len(result.pruned) else ""))
    if result.dry_run and result.pruned:
        print("(dry run: nothing was deleted)")


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    older_than: timedelta = args.older_than

    async def body(pool: asyncpg.Pool) -> int:
        cutoff = datetime.now(UTC) - older_than
        shown: dict[int, int] = {}
        tty = sys.stderr.isatty()
        if not args.dry_run and not args.json:
            print(f"pruning rollouts that ended before {cutoff:%Y-%m-%d %H:%M} UTC ...",
                  file=sys.stderr, flush=True)
        result = await prune_store.prune(
            pool, cutoff, actor=cli_actor(), dry_run=args.dry_run,
            progress=(lambda item: _progress(item, shown)) if tty else None,
        )
        if args.json:
            print(json.dumps(result.to_dict(), indent=2))
        else:
            _print(result)
        return 0

    return run_with_database(settings, body)
