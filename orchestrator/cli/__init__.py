"""The `orchestrator` command: one module per command group.

`app` builds the parser and runs a command (exit codes, error messages); `common` holds
what the command modules share (the database runner, the CLI actor, tables, errors). The
package itself imports nothing at import time, so that `orchestrator.cli.common` and the
other modules can be imported on their own without pulling in every command.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script `orchestrator` (see `orchestrator.cli.app.main`)."""
    from orchestrator.cli.app import main as run

    return run(argv)
