"""After `orchestrator demo`, the commands it prints to look at its rollout again work as
printed: each line is run by a shell, in order, in the directory the demo ran from (the
`export` line carries over, as in the user's terminal), and each shows the demo's rollout,
not an empty database. A demo run takes ~20 s with short installs: `slow`."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_api_serve import wait_ready
from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, drop_database, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]

HEADER = "Look at it again"


def printed_commands(stdout: str) -> list[str]:
    """The lines of the demo's 'Look at it again' section, as printed."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    return [line.strip() for line in lines[start + 1:] if line.strip()]


def shell(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-e", "-c", script], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_the_commands_the_demo_prints_show_its_rollout(pg_server_url: str,
                                                             tmp_path: Path) -> None:
    name = f"demo_{uuid.uuid4().hex[:8]}"
    port = free_port()
    # the user's environment: the server the demo ran on, and a port of the test's own
    # (the printed `serve` takes it from the settings, as it would 8080)
    env = cli_env(pg_server_url, ORCHESTRATOR_API_PORT=str(port))
    try:
        demo = subprocess.run(
            [str(VENV_BIN / "orchestrator"), "demo", "--database-name", name,
             "--appliances", "30", "--sites", "3", "--profile", "none",
             "--install-seconds", "0.5", "--reboot-seconds", "0.3",
             "--report-dir", str(tmp_path / "reports")],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert "rollout 1: SUCCEEDED" in demo.stdout, demo.stdout
        commands = printed_commands(demo.stdout)
        exports = [c for c in commands if c.startswith("export ")]
        assert exports == [f"export ORCHESTRATOR_DATABASE_NAME={name}"]
        # run from where `make demo` runs: the repository (`.venv/bin/orchestrator ...`)
        assert all(c.startswith((".venv/bin/orchestrator ", "export ")) for c in commands)
        prefix = exports[0] + "\n"
        by_verb = {c.split()[1]: c for c in commands if not c.startswith("export ")}

        shown = shell(prefix + by_verb["rollout"], env, ROOT)
        assert shown.returncode == 0, shown.stderr
        assert "SUCCEEDED" in shown.stdout and "demo rollout" in shown.stdout, shown.stdout

        report_cmd = by_verb["report"].replace("-o rollout-1.html",
                                               f"-o {tmp_path / 'rollout-1.html'}")
        assert report_cmd != by_verb["report"], "the report command names its file"
        report = shell(prefix + report_cmd, env, ROOT)
        assert report.returncode == 0, report.stderr
        html = (tmp_path / "rollout-1.html").read_text()
        assert "<html" in html.lower() and "demo rollout" in html

        created = shell(prefix + by_verb["tokens"], env, ROOT)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert re.fullmatch(r"orch_\S{30,}", token), "tokens create prints the token"
        assert token not in demo.stdout + demo.stderr, "the demo itself prints no token"

        server = LoggedPopen(["bash", "-c", prefix + "exec " + by_verb["serve"].split("#")[0]],
                             env=env, cwd=ROOT)
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base, server, timeout=60)
            async with aiohttp.ClientSession() as session:
                auth = {"Authorization": f"Bearer {token}"}
                async with session.get(f"{base}/api/v1/rollouts/1", headers=auth) as resp:
                    assert resp.status == 200
                    rollout = await resp.json()
                assert (rollout["name"], rollout["state"]) == ("demo rollout", "SUCCEEDED")
                async with session.get(f"{base}/api/docs") as resp:
                    assert resp.status == 200
                async with session.get(f"{base}/") as resp:  # the console the line names
                    assert resp.status == 200
                    assert "text/html" in resp.headers["Content-Type"]
        finally:
            server.terminate()
            server.wait(30)
    finally:
        await drop_database(pg_server_url, name)


async def test_demo_serve_keeps_the_fleet_and_runs_a_second_rollout(pg_server_url: str) -> None:
    """`orchestrator demo --serve`: after its rollout the demo keeps the simulated fleet, the
    API and the engine running; a second rollout created with the commands it prints (to
    the second version the fleet offers) runs to its end; Ctrl-C stops everything."""
    name = f"demo_{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = cli_env(pg_server_url)
    demo = LoggedPopen(
        [str(VENV_BIN / "orchestrator"), "demo", "--serve", "--port", str(port),
         "--database-name", name, "--appliances", "20", "--sites", "2", "--profile", "none",
         "--install-seconds", "0.5", "--reboot-seconds", "0.3", "--report-dir", "",
         ], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while "Serving the demo at" not in demo.output()[0]:
            assert demo.poll() is None, demo.output()[1][-3000:]
            assert time.monotonic() < deadline, "the demo never started serving"
            await asyncio.sleep(0.3)
        out = demo.output()[0]
        assert "rollout 1: SUCCEEDED" in out
        assert f"http://127.0.0.1:{port}/api/docs" in out
        assert f"the console:                http://127.0.0.1:{port}/ " in out
        lines = {m.group(1): m.group(2).strip() for m in re.finditer(
            r"^\s+(a token|a second rollout|watch it)[^:]*:\s+(.*)$", out, re.M)}
        assert set(lines) == {"a token", "a second rollout", "watch it"}, out
        assert all(v.startswith(f"ORCHESTRATOR_DATABASE_NAME={name} .venv/bin/orchestrator ")
                   for v in lines.values()), lines
        created = shell(lines["a token"], env, ROOT)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        second = shell(lines["a second rollout"], env, ROOT)
        assert second.returncode == 0, second.stderr
        auth = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 120
            while True:
                async with session.get(f"http://127.0.0.1:{port}/api/v1/rollouts/2",
                                       headers=auth) as resp:
                    assert resp.status == 200
                    rollout = await resp.json()
                if rollout["finished_at"]:
                    break
                assert demo.poll() is None, demo.output()[1][-3000:]
                assert time.monotonic() < deadline, rollout
                await asyncio.sleep(0.5)
        assert (rollout["target_version"], rollout["state"]) == ("9.0.2-20030", "SUCCEEDED")
        watched = shell(lines["watch it"], env, ROOT)  # ends: the rollout has ended
        assert watched.returncode == 0 and "SUCCEEDED" in watched.stdout, watched.stderr
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
        await drop_database(pg_server_url, name)
    assert code == 0, demo.output()[1][-3000:]
