"""Helpers for tests (importable as `tests.helpers`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def url_with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(db_url: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for running the `orchestrator` command as a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["ORCHESTRATOR_LOG_FORMAT"] = "json"
    if db_url:
        env["ORCHESTRATOR_DATABASE_URL"] = db_url
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "orchestrator"), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )
