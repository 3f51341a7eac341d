"""`orchestrator run` and `orchestrator serve` as real processes: when a background loop of
the engine fails (the `lease_loop_crash` failpoint), the process drains, stops and exits
non-zero with one line on stderr, so that a supervisor restarts it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, eventually, free_port

ENV = {
    "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.3",
    "ORCHESTRATOR_ENGINE_LEASE_SECONDS": "3",  # the lease loop passes every second
    "ORCHESTRATOR_LOG_LEVEL": "warning",
    "ORCH_FAILPOINTS": "lease_loop_crash=#2",
}
MESSAGE = ("orchestrator: engine stopped: background task leases failed: "
           "InjectedFault('lease_loop_crash')")


@pytest.mark.parametrize("command", [
    ["run"],
    ["serve", "--port", "{port}"],
    ["serve", "--no-api"],
])
async def test_a_failed_loop_ends_the_process_non_zero(
        db_url: str, tmp_path: Path, command: list[str]) -> None:
    log = tmp_path / "failpoints.log"
    args = [part.format(port=free_port()) for part in command]
    proc = LoggedPopen([str(VENV_BIN / "orchestrator"), *args],
                       env=cli_env(db_url, **ENV, ORCH_FAILPOINTS_LOG=str(log)), cwd=ROOT)
    try:
        async def poll() -> int | None:
            return proc.poll()

        code = await eventually(poll, lambda rc: rc is not None, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate()
    assert code == 1, err[-3000:]
    # the fault fired, in this process, on the second pass
    assert log.read_text().splitlines() == [f"lease_loop_crash hit=2 pid={proc.pid}"]
    assert "engine_background_failed" in err and "leases" in err
    assert err.strip().splitlines()[-1] == MESSAGE, err[-3000:]
    assert err.count(MESSAGE) == 1
    assert "Traceback" not in err


async def test_without_the_failpoint_sigterm_still_exits_zero(db_url: str) -> None:
    """The supervision changes nothing of a normal stop."""
    env = {k: v for k, v in ENV.items() if k != "ORCH_FAILPOINTS"}
    proc = LoggedPopen([str(VENV_BIN / "orchestrator"), "run"], env=cli_env(db_url, **env),
                       cwd=ROOT)
    try:
        async def running() -> str:
            return proc.output()[1]

        await eventually(running, lambda err: "running (SIGTERM" in err, timeout=60)
        await asyncio.sleep(2.5)  # a few passes of the lease loop
        assert proc.poll() is None
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "engine_background_failed" not in err

