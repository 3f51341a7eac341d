"""The `orchestrator` command.

Exit codes: 0 done, 1 the operation failed (message on stderr), 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import errno
import json
import os
import select
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import asyncpg

from orchestrator import __version__, cli_rollout, cli_sites, cli_windows
from orchestrator import demo as demo_cli
from orchestrator.api import cli as api_cli
from orchestrator.domain.selector import SelectorError
from orchestrator.domain.states import OperationNotAllowed, RolloutState
from orchestrator.domain.strategy import StrategyError
from orchestrator.domain.windows import WindowError
from orchestrator.inventory import InventoryError, read_inventory, target_policy
from orchestrator.logs import configure_logging
from orchestrator.reports import cli as report_cli
from orchestrator.settings import Settings, SettingsError, load_settings
from orchestrator.simulator import cli as simulator_cli
from orchestrator.simulator.config import SimulatorConfigError
from orchestrator.simulator.faults import FaultProfileError
from orchestrator.store import appliances as appliance_store
from orchestrator.store import migrations
from orchestrator.store.db import connect, create_pool, database_url
from orchestrator.store.embedded import EmbeddedPostgresError
from orchestrator.store.rollouts import RolloutError
from orchestrator.store.sites import SiteError
from orchestrator.store.windows import WindowStoreError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what other tools report when the reader went away


class CommandError(Exception):
    """An operation failed in a way the user can act on; the message says how."""


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    print(f"orchestrator: {message}", file=sys.stderr)
    raise SystemExit(code)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands refuse arguments they do not know themselves.

    Plain argparse hands a subcommand's unrecognised arguments back to the top-level
    parser, whose error then shows the top-level usage line; here the subcommand's own
    parser reports them, with its usage (`add_subparsers` makes subparsers of this class).
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            hint = ""
            for extra in extras:
                close = difflib.get_close_matches(
                    extra.split("=", 1)[0],
                    [o for o in self._option_string_actions if o.startswith("--")], n=1,
                )
                if extra.startswith("--") and close:
                    hint = f" (did you mean {close[0]}?)"
                    break
            self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed, extras


def attach_option_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """`--opt VALUE` -> `--opt=VALUE` when VALUE starts with '-' and is not an option itself.

    argparse reads a token such as `-1h` after an option that takes a value as another
    option (`--duration: expected one argument`); joined, the value reaches the field's
    own validation, which names it (`window.duration: '-1h' is not a duration ...`).
    Subcommands are followed so that each token is looked up in the parser that reads it.
    """
    out: list[str] = []
    current = parser
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            out.extend(words[i:])
            break
        if word.startswith("-") and "=" not in word:
            action = current._option_string_actions.get(word)
            takes_value = action is not None and action.nargs is None
            if takes_value and i + 1 < len(words):
                value = words[i + 1]
                known = value.split("=", 1)[0] in current._option_string_actions
                if value.startswith("-") and value != "--" and not known:
                    out.append(f"{word}={value}" if word.startswith("--") else word + value)
                else:
                    out.extend([word, value])
                i += 2
                continue
        elif not word.startswith("-"):
            for sub in current._actions:
                if isinstance(sub, argparse._SubParsersAction) and word in sub.choices:
                    current = sub.choices[word]
                    break
        out.append(word)
        i += 1
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty")
    return text


# --------------------------------------------------------------------------- helpers
def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line.rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


Body = Callable[[asyncpg.Pool], Awaitable[int]]


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


# --------------------------------------------------------------------------- commands
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


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    async def body(url: str) -> int:
        conn = await connect(url)
        try:
            if args.status:
                rows = await migrations.status(conn)
                _print_table(
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
        _print_table(
            ["name", "site", "tags", "version", "base_url"],
            [(a.name, a.site, ";".join(a.tags), a.current_version or "-", a.base_url)
             for a in items],
        )
        print(f"{len(items)} appliance(s)")
        return 0

    return run_with_database(settings, body)


def run_with_database_url(settings: Settings, body: Body, url_out: list[str]) -> int:
    return run_with_database(settings, body, url_out)


def add_rollout_parsers(sub: Any) -> None:
    rollout = sub.add_parser("rollout", help="plan, start and steer rollouts")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    create = rsub.add_parser("create", help="create a rollout (DRAFT) with its plan")
    create.add_argument("--name", required=True)
    cli_rollout.add_selector_and_strategy(create)
    create.add_argument("--schedule-at", help="ISO 8601 time with zone: start no earlier")
    create.add_argument("--start", action="store_true", help="start it right away")
    create.add_argument("--json", action="store_true")
    plan = rsub.add_parser("plan", help="preview the plan: nothing is written")
    cli_rollout.add_selector_and_strategy(plan)
    plan.add_argument("--json", action="store_true")
    for name, text in (
        ("start", "start a DRAFT rollout (or a SCHEDULED one now)"),
        ("pause", "stop new installs; accepted ones finish"),
        ("resume", "resume a paused rollout"),
        ("cancel", "cancel: never-started tasks are cancelled"),
        ("approve", "approve the next wave's gate"),
        ("retry-failed", "put failed, timed-out and cancelled tasks back to pending"),
        ("watch", "live progress per wave until the rollout ends"),
    ):
        p = rsub.add_parser(name, help=text)
        p.add_argument("id", type=int)
    rsub.choices["start"].add_argument(
        "--schedule-at", help="ISO 8601 time with zone: a DRAFT rollout starts no earlier "
                              "(SCHEDULED until then)")
    show = rsub.add_parser("show", help="state, counts and waves of a rollout")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    lst = rsub.add_parser("list", help="recent rollouts")
    lst.add_argument("--state", action="append", default=[], type=str.upper,
                     choices=[str(s) for s in RolloutState], metavar="STATE",
                     help="repeatable: " + ", ".join(s.lower() for s in RolloutState))
    lst.add_argument("--limit", type=_positive_int, default=50)
    lst.add_argument("--json", action="store_true")
    rollout.set_defaults(func=lambda s, a: cli_rollout.cmd_rollout(s, a, run_with_database))


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="orchestrator",
        description="Roll appliance updates out across a fleet, safely.",
    )
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    parser.add_argument(
        "--config", metavar="PATH",
        help="settings file (default: $ORCHESTRATOR_CONFIG, else ./config/orchestrator.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = sub.add_parser("config", help="inspect settings")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print the effective settings, secrets masked")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_config_show)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--status", action="store_true", help="list applied and pending")
    migrate.set_defaults(func=cmd_migrate)

    appl = sub.add_parser("appliances", help="the appliance inventory")
    appl_sub = appl.add_subparsers(dest="appliances_command", required=True, metavar="ACTION")
    imp = appl_sub.add_parser(
        "import", help="upsert appliances from a CSV or JSON file (all or nothing)"
    )
    imp.add_argument("file", type=_non_empty)
    imp.add_argument("--format", choices=["csv", "json"], help="default: from the file suffix")
    imp.set_defaults(func=cmd_appliances_import)
    lst = appl_sub.add_parser("list", help="list appliances")
    lst.add_argument("--site", type=_non_empty)
    lst.add_argument("--tag", type=_non_empty)
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_appliances_list)

    add_rollout_parsers(sub)
    cli_windows.add_arguments(sub)
    sub.choices["windows"].set_defaults(
        func=lambda s, a: cli_windows.cmd_windows(s, a, run_with_database, cli_rollout.cli_actor())
    )

    cli_sites.add_arguments(sub)
    sub.choices["sites"].set_defaults(
        func=lambda s, a: cli_sites.cmd_sites(s, a, run_with_database, cli_rollout.cli_actor(),
                                              _print_table)
    )

    report = sub.add_parser("report", help="a rollout's report: JSON, CSV or HTML")
    report_cli.add_arguments(report)
    report.set_defaults(func=lambda s, a: report_cli.cmd_report(s, a, run_with_database))

    run = sub.add_parser("run", help="run the rollout engine until SIGTERM")
    run.add_argument("--until-idle", action="store_true",
                     help="exit once no rollout is active and no task runs")
    run.set_defaults(func=lambda s, a: cli_rollout.cmd_run(s, a, run_with_database_url))

    serve = sub.add_parser("serve", help="serve the REST API and run the engine until SIGTERM")
    api_cli.add_serve_arguments(serve)
    serve.set_defaults(func=lambda s, a: api_cli.cmd_serve(s, a, run_with_database_url))

    tokens = sub.add_parser("tokens", help="API bearer tokens: create, list, revoke")
    api_cli.add_tokens_arguments(tokens)
    tokens.set_defaults(func=lambda s, a: api_cli.cmd_tokens(s, a, run_with_database))

    simulate = sub.add_parser("simulate", help="serve a simulated appliance fleet")
    simulator_cli.add_arguments(simulate)
    simulate.set_defaults(func=lambda _s, a: simulator_cli.run(a))

    demo = sub.add_parser(
        "demo", help="a whole rollout on a simulated fleet with faults, in about a minute"
    )
    demo_cli.add_arguments(demo)
    demo.set_defaults(func=demo_cli.cmd_demo)

    return parser


def _database_problem(settings: Settings, exc: BaseException) -> str:
    """One line for a database error; a server that cannot be reached is named."""
    unreachable = isinstance(exc, ConnectionError | TimeoutError | socket.gaierror) or (
        isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                                   errno.ENETUNREACH, errno.ETIMEDOUT)
    )
    if unreachable:
        where = "the database server"
        if settings.database_url:
            try:
                parts = urlsplit(settings.database_url)
                where = f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}"
            except ValueError:
                pass
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, socket.gaierror) and exc.strerror:
            reason = exc.strerror
        elif isinstance(exc, OSError) and exc.errno and exc.errno > 0:
            reason = os.strerror(exc.errno)
        return f"database: cannot connect to {where}: {reason}"
    return f"database: {type(exc).__name__}: {exc}"


def _stdout_broken() -> bool:
    """Whether stdout is a pipe (or socket) whose reader went away."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_broken_pipe() -> int:
    """The reader of our stdout went away (`| head`): end quietly, as other tools do.

    stdout is pointed at /dev/null so that the interpreter's final flush of what is still
    buffered raises nothing either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(
            attach_option_values(parser, sys.argv[1:] if argv is None else argv)
        )
    except SystemExit:
        try:
            sys.stdout.flush()  # --help into a closed pipe
        except BrokenPipeError:
            raise SystemExit(_quiet_broken_pipe()) from None
        raise
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        _fail(f"invalid setting: {exc}", EXIT_USAGE)
    configure_logging(settings.log_format, settings.log_level)
    try:
        code: int = args.func(settings, args)
        sys.stdout.flush()  # a closed pipe shows here when the output was short
    except BrokenPipeError as exc:
        if not _stdout_broken():
            _fail(f"database: {type(exc).__name__}: {exc}")
        return _quiet_broken_pipe()
    except InventoryError as exc:
        _fail(str(exc))
    except migrations.MigrationError as exc:
        _fail(str(exc))
    except EmbeddedPostgresError as exc:
        _fail(f"embedded PostgreSQL: {exc}")
    except (CommandError, cli_rollout.UsageError, RolloutError, OperationNotAllowed) as exc:
        _fail(str(exc))
    except (StrategyError, SelectorError) as exc:
        _fail(f"invalid rollout request: {exc}")
    except WindowError as exc:
        _fail(f"invalid maintenance window: {exc}")
    except WindowStoreError as exc:
        _fail(str(exc))
    except SiteError as exc:
        _fail(str(exc))
    except (SimulatorConfigError, FaultProfileError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _fail(_database_problem(settings, exc))
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
