"""`orchestrator rollout ...` against a database where no engine runs: start, create --start,
show and watch say so (issue 21, item 3), and stop saying so once an engine is live."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import asyncpg

from orchestrator.store import engines as engine_store
from tests.helpers import ROOT, VENV_BIN, cli_env, run_cli

CSV = "name,base_url,site\n" + "".join(
    f"vr-{i},https://vr-{i}.example.net/api/rest/configure/v1,ams\n" for i in range(4)
)
NEVER = "warning: no engine is running (none has ever run against this database): " \
        "nothing will progress until one runs"


async def test_cli_warns_while_no_engine_is_live(db_url: str, tmp_path: Path) -> None:
    env = cli_env(db_url)
    loop = asyncio.get_running_loop()

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await loop.run_in_executor(None, lambda: run_cli(*args, env=env))

    inventory = tmp_path / "fleet.csv"
    inventory.write_text(CSV)
    assert (await cli("appliances", "import", str(inventory))).returncode == 0

    # a DRAFT needs no engine: no warning
    draft = await cli("rollout", "create", "--name", "draft", "--version", "9.0.1-20020",
                      "--appliance", "vr-0")
    assert draft.returncode == 0, draft.stderr
    assert "warning" not in draft.stderr
    shown = await cli("rollout", "show", "1")
    assert shown.returncode == 0 and "warning" not in shown.stdout

    # `rollout start`: the warning on stderr, the message on stdout as before
    started = await cli("rollout", "start", "1")
    assert started.returncode == 0, started.stderr
    assert NEVER in started.stderr and "warning" not in started.stdout

    created = await cli("rollout", "create", "--name", "nightly", "--version", "9.0.1-20020",
                        "--appliance", "vr-1", "--appliance", "vr-2", "--waves", "1,100%",
                        "--start")
    assert created.returncode == 0, created.stderr
    assert "created rollout 2" in created.stdout
    assert NEVER in created.stderr
    as_json = await cli("rollout", "create", "--name", "json", "--version", "9.0.1-20020",
                        "--appliance", "vr-3", "--start", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["state"] == "RUNNING"  # stdout stays pure JSON
    assert NEVER in as_json.stderr

    # `rollout show`: the warning instead of an ETA; --json: engine and forecast.blocked
    shown = await cli("rollout", "show", "2")
    assert shown.returncode == 0, shown.stderr
    assert "RUNNING" in shown.stdout and NEVER in shown.stdout
    assert "eta: none" in shown.stdout and "UTC (" not in shown.stdout
    detail = json.loads((await cli("rollout", "show", "2", "--json")).stdout)
    assert detail["engine"] == {"live_engines": 0, "last_heartbeat_at": None}
    assert detail["forecast"]["blocked"].startswith("no engine is running")

    # `rollout watch`: the warning above the bars (output to a file, the watch ends when
    # the rollout is cancelled)
    out = tmp_path / "watch.out"
    with out.open("w") as sink:
        watch = subprocess.Popen([str(VENV_BIN / "orchestrator"), "rollout", "watch", "2"],
                                 env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                 text=True)
        try:
            deadline = time.monotonic() + 30
            while NEVER not in out.read_text():
                assert watch.poll() is None, out.read_text()
                assert time.monotonic() < deadline, out.read_text()
                await asyncio.sleep(0.1)
            assert (await cli("rollout", "cancel", "2")).returncode == 0
            await loop.run_in_executor(None, lambda: watch.wait(30))
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait()
    assert "CANCELLED" in out.read_text()

    # a live engine (a fresh heartbeat): no warning, an ETA again
    conn = await asyncpg.connect(db_url)
    try:
        await engine_store.register(conn, "e2e-engine")
        shown = await cli("rollout", "show", "3")
        assert shown.returncode == 0 and "warning" not in shown.stdout
        assert "eta: 20" in shown.stdout
        detail = json.loads((await cli("rollout", "show", "3", "--json")).stdout)
        assert detail["engine"]["live_engines"] == 1 and detail["forecast"]["blocked"] is None
        paused = await cli("rollout", "pause", "3")
        resumed = await cli("rollout", "resume", "3")
        assert "warning" not in paused.stderr + resumed.stderr

        # the engine stops: the warning names when it was last heard of
        await engine_store.stopped(conn, "e2e-engine")
        shown = await cli("rollout", "show", "3")
        assert "warning: no engine is running (none heard of since 20" in shown.stdout
    finally:
        await conn.close()
