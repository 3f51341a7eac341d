"""Helpers for tests (importable as `tests.helpers`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
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
    # simulated fleets answer on http://127.0.0.1, a lab's addresses (tests of the rules
    # themselves pass "false")
    env["ORCHESTRATOR_APPLIANCE_ALLOW_HTTP"] = "true"
    env["ORCHESTRATOR_APPLIANCE_ALLOW_LOCAL_ADDRESSES"] = "true"
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


async def drop_database(server_url: str, name: str) -> None:
    """Drop database `name` on the server of `server_url` (connections to it are ended)."""
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def cloned_database(
    server_url: str, template: str | None, prefix: str
) -> AsyncIterator[str]:
    """A fresh database cloned from `template` (None: an empty one); dropped on exit.
    Yields its URL."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        clone = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clone}')
        yield url_with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def eventually(probe: Any, done: Any, *, timeout: float = 30.0,
                     interval: float = 0.05) -> Any:
    """Poll `await probe()` until `done(value)` holds; fail with the last value after
    `timeout` seconds. The deadline is generous: tests assert behaviour, never speed."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if done(value):
            return value
        assert loop.time() < deadline, f"not reached within {timeout} s: last {value!r}"
        await asyncio.sleep(interval)


class LoggedPopen(subprocess.Popen[str]):
    """A child process whose stdout and stderr go to files, never to pipes: a test that
    polls while the child runs reads nothing, and a burst of log lines into a full pipe
    would block the child (an engine, a server) under test. communicate() waits and
    returns the files' text; output() reads them at any time."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        import tempfile

        for key in ("stdout", "stderr", "text"):
            kwargs.pop(key, None)
        self._logs = [tempfile.NamedTemporaryFile(  # removed when the object goes
            "wb", prefix=f"{Path(args[0]).name}-{name}-", suffix=".log")
            for name in ("out", "err")]
        super().__init__(args, stdout=self._logs[0], stderr=self._logs[1], text=True,
                         **kwargs)

    def output(self) -> tuple[str, str]:
        out, err = (Path(f.name).read_text(errors="replace") if not f.closed else ""
                    for f in self._logs)
        return out, err

    def communicate(self, input: str | None = None,
                    timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()
