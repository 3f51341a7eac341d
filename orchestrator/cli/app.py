"""The `orchestrator` command: the parser, the dispatch to a command module, and how a
failure ends (one line on stderr, the exit code).

Exit codes: 0 done, 1 the operation failed (message on stderr), 2 bad usage or settings.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import select
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn
from urllib.parse import urlsplit

from orchestrator import __version__
from orchestrator.cli.common import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_USAGE,
)
from orchestrator.logs import configure_logging
from orchestrator.settings import Settings, SettingsError, load_settings
from orchestrator.store.db import DB_ERRORS

# Each command: (module of orchestrator.cli, its function adding the command), in the
# order `--help` lists them. A command line imports only its own command's module: the
# engine, the API server, the simulator and the reports are not loaded to list rollouts
# (a command starts in about half the time it took with every module).
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("config", "add_command"),
    "migrate": ("migrate", "add_command"),
    "appliances": ("appliances", "add_command"),
    "rollout": ("rollout", "add_command"),
    "windows": ("windows", "add_command"),
    "sites": ("sites", "add_command"),
    "report": ("report", "add_command"),
    "prune": ("prune", "add_command"),
    "run": ("rollout", "add_run_command"),
    "serve": ("serve", "add_command"),
    "tokens": ("tokens", "add_command"),
    "webhooks": ("webhooks", "add_command"),
    "simulate": ("simulator", "add_command"),
    "demo": ("demo", "add_command"),
}


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


# --------------------------------------------------------------------------- parser
def command_word(argv: Sequence[str]) -> str | None:
    """The command a command line names (`rollout` in `--config c.toml rollout list`), or
    None when that is not clear before parsing (`--help`, an unknown word, none)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif word.startswith("--config="):
            continue
        elif word.startswith("-") or word not in COMMANDS:
            return None
        else:
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with `command`, one that knows only that command (and the
    global options), so that only its module is imported."""
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
    for name, (module, adder) in COMMANDS.items():
        if command is None or name == command:
            getattr(importlib.import_module(f"orchestrator.cli.{module}"), adder)(sub)
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


def _known_failure(settings: Settings, exc: Exception) -> tuple[str, int] | None:
    """The line and exit code that end the command on `exc`, or None for a bug (its
    traceback is shown). The error classes are imported here, once a command failed."""
    from orchestrator.cli.common import CommandError, UsageError
    from orchestrator.domain.selector import SelectorError
    from orchestrator.domain.states import OperationNotAllowed
    from orchestrator.domain.strategy import StrategyError
    from orchestrator.domain.windows import WindowError
    from orchestrator.inventory import InventoryError
    from orchestrator.simulator.config import SimulatorConfigError
    from orchestrator.simulator.faults import FaultProfileError
    from orchestrator.store import migrations
    from orchestrator.store.embedded import EmbeddedPostgresError
    from orchestrator.store.rollouts import RolloutError
    from orchestrator.store.sites import SiteError
    from orchestrator.store.webhooks import WebhookError
    from orchestrator.store.windows import WindowStoreError

    if isinstance(exc, InventoryError | migrations.MigrationError):
        return str(exc), EXIT_FAILED
    if isinstance(exc, EmbeddedPostgresError):
        return f"embedded PostgreSQL: {exc}", EXIT_FAILED
    if isinstance(exc, CommandError | UsageError | RolloutError | OperationNotAllowed):
        return str(exc), EXIT_FAILED
    if isinstance(exc, StrategyError | SelectorError):
        return f"invalid rollout request: {exc}", EXIT_FAILED
    if isinstance(exc, WindowError):
        return f"invalid maintenance window: {exc}", EXIT_FAILED
    if isinstance(exc, WindowStoreError | SiteError | WebhookError):
        return str(exc), EXIT_FAILED
    if isinstance(exc, SimulatorConfigError | FaultProfileError):
        return str(exc), EXIT_USAGE
    if isinstance(exc, DB_ERRORS):
        return _database_problem(settings, exc), EXIT_FAILED
    return None


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(command_word(words))
    try:
        args = parser.parse_args(attach_option_values(parser, words))
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
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:
        known = _known_failure(settings, exc)
        if known is None:
            raise
        _fail(*known)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
