"""`orchestrator report ROLLOUT [--format json|csv|html] [-o FILE]`.

JSON to stdout by default. With `-o`, the report is written to FILE atomically (a
temporary file beside it, renamed once complete). The CSV is streamed either way: rows go
out batch by batch as they are read from the database.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.cli.common import run_with_database
from orchestrator.reports.render import FORMATS, as_chunks, render, write_stream
from orchestrator.settings import Settings
from orchestrator.store import reports as report_store
from orchestrator.store.forecast import TERMINAL_ROLLOUT, rollout_forecast


def add_command(sub: Any) -> None:
    """`report ROLLOUT ...`."""
    report = sub.add_parser("report", help="a rollout's report: JSON, CSV or HTML")
    add_arguments(report)
    report.set_defaults(func=cmd_report)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rollout", type=int, metavar="ROLLOUT", help="the rollout's id")
    p.add_argument("--format", choices=FORMATS, default="json",
                   help="json (default): the report as one object; csv: one row per "
                        "appliance; html: a self-contained page with charts")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the report to FILE instead of stdout")


async def _eta(pool: asyncpg.Pool, rollout_id: int, settings: Settings) -> datetime | None:
    """The forecast completion of a rollout that has not ended (None once it has)."""
    row = await report_store.rollout_row(pool, rollout_id)
    if row is None or row["state"] in TERMINAL_ROLLOUT:
        return None
    forecast = await rollout_forecast(pool, rollout_id, datetime.now(UTC),
                                      settings.eta_task_seconds)
    return forecast.eta


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    if args.output and not Path(args.output).parent.is_dir():
        print(f"orchestrator: -o {args.output}: no directory {Path(args.output).parent}",
              file=sys.stderr)
        return 2

    async def body(pool: asyncpg.Pool) -> int:
        eta = await _eta(pool, args.rollout, settings) if args.format != "csv" else None
        _, payload = await render(pool, args.rollout, args.format, eta=eta)
        if args.output:
            path = await write_stream(Path(args.output), as_chunks(payload))
            print(f"wrote the {args.format} report of rollout {args.rollout} to {path}",
                  file=sys.stderr)
            return 0
        out = sys.stdout.buffer
        # a reader that goes away (`| head`) raises BrokenPipeError: the CLI's main entry
        # point ends quietly then, as other tools do
        async with contextlib.aclosing(as_chunks(payload)) as chunks:
            async for chunk in chunks:
                out.write(chunk)
            out.flush()
        return 0

    return run_with_database(settings, body)
