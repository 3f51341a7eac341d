"""`orchestrator rollout preflight ID`: check every appliance of a rollout without installing
anything (docs/preflight.md), in this process, with a progress bar on stderr.

The run is recorded with the rollout like the engine's own (`rollout show`, the API, the
reports and the forecast show its results); while it runs, the engines start no install of
the rollout. Exit code 0 when no appliance fails, 1 when some do (or the run could not be
made).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from typing import Any

import asyncpg

from orchestrator.cli.common import CommandError, cli_actor, print_table, run_with_database
from orchestrator.domain.preflight import Result, Verdict, summary_line
from orchestrator.inventory import target_policy
from orchestrator.settings import Settings
from orchestrator.store import preflight as preflight_store
from orchestrator.store.preflight import PreflightError, PreflightTarget, Summary

# appliances listed in the text output (the problems, worst first); --json lists all
SHOWN = 50
LEASE_SECONDS = 30.0


def add_parser(rsub: Any) -> None:
    """`rollout preflight ID [--json] [--all]` under `rollout`."""
    p = rsub.add_parser(
        "preflight", help="check every appliance of a rollout without installing anything",
        description="Check every targeted appliance of the rollout (reachable, TLS, "
                    "credentials, version, key services, reconfigure-required, update "
                    "repository, target version offered) under the rollout's limits, "
                    "without installing anything. Exit code 1 when an appliance fails.")
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true",
                   help="the run, the summary and every appliance's result as JSON")
    p.add_argument("--all", action="store_true",
                   help="list every appliance, not only those with a problem")
    p.set_defaults(func=cmd_preflight)


def summary_lines(summary: Summary | None, *, indent: str = "  ") -> list[str]:
    """`pre-flight: 290 ok, 3 warn, 5 fail, 2 skip (run 4, start, finished ...)` and the
    problems by code: what `rollout show` prints."""
    if summary is None:
        return [f"{indent}pre-flight: not run"]
    run = summary.run
    where = ""
    if run is not None:
        when = run.finished_at or run.started_at or run.created_at
        if run.state == "finished":
            where = f" (run {run.id}, {run.trigger}, {when:%Y-%m-%d %H:%M:%S} UTC"
            where += f"; {run.left_out} left out)" if run.left_out else ")"
        else:
            where = f" (run {run.id}, {run.trigger}: {run.state}, {run.done}/{run.total})"
    lines = [f"{indent}pre-flight: {summary_line(summary.counts)}{where}"]
    problems = [f"{code} {n}" for result, code, n in summary.codes
                if result in (Result.FAIL, Result.WARN)]
    if problems:
        lines.append(f"{indent}  problems: {', '.join(problems)}")
    return lines


def cmd_preflight(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.appliance import ApplianceHttp  # here: the other commands start faster
    from orchestrator.engine.preflight import execute_run

    owner = f"cli:{socket.gethostname()}:{os.getpid()}"

    async def body(pool: asyncpg.Pool) -> int:
        try:
            run = await preflight_store.request_run(pool, args.id, cli_actor(), owner=owner,
                                                    lease_seconds=LEASE_SECONDS)
        except PreflightError as exc:
            raise CommandError(f"rollout preflight {args.id}: {exc}") from None
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[detail]}", markup=False))
        with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
            bar = progress.add_task(escape(f"pre-flight of rollout {args.id}"), total=None,
                                    detail="")
            counts: dict[str, int] = {}

            def on_total(total: int) -> None:
                progress.update(bar, total=total)

            def on_progress(target: PreflightTarget, verdict: Verdict, done: int,
                            total: int) -> None:
                counts[str(verdict.result)] = counts.get(str(verdict.result), 0) + 1
                progress.update(bar, completed=done, detail=summary_line(counts))

            async with ApplianceHttp(settings) as http:
                finished = await execute_run(
                    pool, http, run, owner=owner, policy=target_policy(settings),
                    lease_seconds=LEASE_SECONDS, on_progress=on_progress, on_total=on_total)
        if finished is None:
            raise CommandError(f"rollout preflight {args.id}: run {run.id} was taken over by "
                               "another process (this one was too slow to keep its lease)")
        summary = await preflight_store.summary(pool, args.id)
        results = await preflight_store.results(pool, args.id)
        mine = [r for r in results if r.run_id == finished.id]
        if args.json:
            print(json.dumps({
                "rollout_id": args.id, "run": finished.to_dict(),
                "summary": summary.to_dict() if summary else None,
                "items": [r.to_dict() for r in mine]}, indent=2))
        else:
            print(f"pre-flight of rollout {args.id}: {len(mine)} appliance(s) checked: "
                  f"{summary_line(finished.counts)}")
            if finished.left_out:
                print(f"  {finished.left_out} appliance(s) left out of the plan (SKIPPED): "
                      "the strategy says preflight: required")
            shown = mine if args.all else [r for r in mine if r.result != Result.OK]
            if shown:
                print_table(("appliance", "site", "result", "code", "message"),
                            [(r.appliance, r.site, r.result, r.code or "", r.message)
                             for r in shown[:SHOWN]])
                if len(shown) > SHOWN:
                    print(f"... and {len(shown) - SHOWN} more (--json lists every one)")
        return 1 if finished.counts.get(Result.FAIL, 0) else 0

    return run_with_database(settings, body)


__all__ = ["add_parser", "cmd_preflight", "summary_lines"]
