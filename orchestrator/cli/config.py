"""`orchestrator config show`: the effective settings, secrets masked."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orchestrator.settings import Settings


def add_command(sub: Any) -> None:
    """`config show [--json]`."""
    config = sub.add_parser("config", help="inspect settings")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the effective settings, secrets masked")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_config_show)


def cmd_config_show(settings: Settings, args: argparse.Namespace) -> int:
    values = settings.masked()
    if args.json:
        print(json.dumps(values, indent=2, default=str))
        return 0
    for key, value in values.items():
        shown = json.dumps(value, default=str) if value is not None else "(unset)"
        if key == "database_url" and value is None:
            shown = f"(unset: embedded PostgreSQL in {settings.data_dir})"
        print(f"{key} = {shown}")
    return 0
