"""Crashes, replicas and a database outage: nothing installed twice, nothing lost."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from orchestrator.simulator import SimulatorConfig, run_simulator
from orchestrator.store import migrations
from orchestrator.store.db import connect, create_pool
from orchestrator.store.embedded import EmbeddedPostgres
from tests import fleet as harness
from tests.helpers import ROOT, VENV_BIN, cli_env, run_cli

ENGINE_ENV = {
    "APPLIANCE_SIM_CREDENTIALS": "admin:admin",
    "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.3",
    "ORCHESTRATOR_ENGINE_LEASE_SECONDS": "3",
    "ORCHESTRATOR_APPLIANCE_REQUEST_TIMEOUT": "5",
    "ORCHESTRATOR_LOG_LEVEL": "warning",
}
IN_FLIGHT = ("PENDING", "DISPATCHING", "INSTALLING", "VERIFYING")


def test_chaos_kills_lose_nothing_and_install_nothing_twice(pg_server_url: str) -> None:
    """bench/chaos.py, smaller: SIGKILLs at random moments and right after installs."""
    result = subprocess.run(
        [str(VENV_BIN / "python"), "bench/chaos.py", "--appliances", "80", "--kills", "4",
         "--seed", "3", "--concurrency", "20", "--install-seconds", "1",
         "--reboot-seconds", "0.5", "--max-run-seconds", "4", "--timeout", "240"],
        cwd=ROOT, env=cli_env(None, TEST_DATABASE_URL=pg_server_url), capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["kills"] == 4
    assert report["duplicate_installs"] == 0
    assert report["lost_tasks"] == 0
    assert report["truth_mismatches"] == 0
    assert report["completed"] is True
    assert report["reclaimed_tasks"] > 0, "the killed engines' tasks were taken over"


async def test_three_replicas_limits_hold_and_survivors_finish_a_killed_ones_tasks(
    db_url: str, tmp_path: Path
) -> None:
    config = SimulatorConfig(appliances=200, sites=4, install_seconds=1.0, install_jitter=0.3,
                             reboot_seconds=0.4, services_starting_seconds=0.1,
                             duplicate_install="accept")
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        env = cli_env(db_url, **ENGINE_ENV)
        loop = asyncio.get_running_loop()
        strategy = tmp_path / "strategy.json"
        strategy.write_text(json.dumps({
            "waves": ["5%", "100%"], "max_concurrency": 30, "per_site_concurrency": 8,
            "reboot_grace": 20, "task_timeout": 120,
        }))
        for args in (("appliances", "import", str(inventory)),
                     ("rollout", "create", "--name", "replicas", "--version", harness.TARGET,
                      "--strategy", str(strategy), "--start")):
            done = await loop.run_in_executor(None, lambda a=args: run_cli(*a, env=env))
            assert done.returncode == 0, done.stderr
        engines = [
            subprocess.Popen([str(VENV_BIN / "orchestrator"), "run", "--until-idle"],
                             env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        victim = f":{engines[0].pid}:"
        conn = await asyncpg.connect(db_url)
        try:
            # kill the first replica while it drives installs of its own
            deadline = time.monotonic() + 120
            while not (sim.stats()["installs_accepted"] >= 40 and await conn.fetchval(
                """SELECT count(*) FROM tasks WHERE position($1 in lease_owner) > 0
                   AND state IN ('INSTALLING', 'VERIFYING')""", victim,
            )):
                assert time.monotonic() < deadline, "the first replica never took a task"
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        engines[0].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 180
        while any(p.poll() is None for p in engines[1:]):
            assert time.monotonic() < deadline, "the surviving replicas did not finish"
            await asyncio.sleep(0.2)
        assert engines[0].wait() == -signal.SIGKILL
        assert [p.returncode for p in engines[1:]] == [0, 0]
        stats = sim.stats()
        assert stats["duplicate_installs"] == 0
        assert stats["installs_accepted"] == 200
        assert stats["max_in_flight"] <= 30
        assert max(stats["max_in_flight_by_site"].values()) <= 8
        conn = await asyncpg.connect(db_url)
        try:
            states = dict(await conn.fetch("SELECT state, count(*) FROM tasks GROUP BY state"))
            reclaimed = await conn.fetchval(
                "SELECT count(*) FROM task_events WHERE detail ? 'previous_owner'"
            )
        finally:
            await conn.close()
        assert states == {"SUCCEEDED": 200}
        assert reclaimed > 0, "the killed replica's in-flight tasks were reclaimed"


@pytest.fixture
async def own_server() -> AsyncIterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL server this test may stop and start (always the embedded one)."""
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrator-outage-pg-"))
    server = EmbeddedPostgres(data_dir, announce=lambda _m: None)
    url = server.start()
    try:
        conn = await connect(url)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield server, url
    finally:
        server.release()
        shutil.rmtree(data_dir, ignore_errors=True)


async def _query_when_up(url: str, sql: str, timeout: float = 60) -> list[asyncpg.Record]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=2)
            try:
                return list(await conn.fetch(sql))
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_postgres_restart_mid_rollout(
    own_server: tuple[EmbeddedPostgres, str]
) -> None:
    """Two outages, one shorter and one longer than a lease: the engine keeps its tasks'
    state in memory, reconnects and finishes; every task's history is complete."""
    server, url = own_server
    async with create_pool(url, min_size=1, max_size=10) as pool:
        async with harness.fleet(pool, url, appliances=40, sites=4, install_seconds=1.0,
                                 reboot_seconds=0.5) as f:
            rid = await harness.create(pool, {"max_concurrency": 10, "reboot_grace": 30,
                                              "task_timeout": 120})
            async with harness.engine(f, lease_seconds=3.0):
                while f.sim.stats()["installs_accepted"] < 8:
                    await asyncio.sleep(0.05)
                for outage in (1.5, 5.0):  # shorter, then longer than the 3 s lease
                    server.stop()
                    await asyncio.sleep(outage)
                    server.restart_same_port()
                    await asyncio.sleep(2.0)
                deadline = time.monotonic() + 120
                while True:
                    rows = await _query_when_up(
                        url, f"SELECT state FROM rollouts WHERE id = {int(rid)}"
                    )
                    if rows[0]["state"] in ("SUCCEEDED", "FAILED"):
                        break
                    assert time.monotonic() < deadline, "rollout did not finish after outages"
                    await asyncio.sleep(0.2)
            stats = f.sim.stats()
    tasks = await _query_when_up(url, "SELECT id, state FROM tasks")
    events = await _query_when_up(
        url, "SELECT task_id, from_state, to_state FROM task_events ORDER BY id"
    )
    assert {r["state"] for r in tasks} == {"SUCCEEDED"}
    assert stats["duplicate_installs"] == 0
    assert stats["installs_accepted"] == 40
    chains: dict[int, list[tuple[str | None, str]]] = {}
    for e in events:
        chains.setdefault(e["task_id"], []).append((e["from_state"], e["to_state"]))
    for task_id, chain in chains.items():
        assert chain[0] == (None, "PENDING"), chain
        assert chain[-1][1] == "SUCCEEDED", chain
        for (_, to_state), (from_state, _) in itertools.pairwise(chain):
            assert from_state == to_state, f"task {task_id}: a transition is missing: {chain}"


def test_faults_at_scale_every_outcome_matches_the_truth(pg_server_url: str) -> None:
    """2,000 appliances under the simulator's mixed fault profile (5xx storms, hangs, lost
    tasks, session expiry, long reboots, silent failures, malformed bodies)."""
    result = subprocess.run(
        [str(VENV_BIN / "python"), "bench/chaos.py", "--appliances", "2000", "--kills", "0",
         "--profile", "mixed", "--concurrency", "250", "--install-seconds", "2",
         "--reboot-seconds", "1", "--reboot-grace", "8", "--task-timeout", "30",
         "--request-timeout", "3", "--appliance-retries", "1", "--dispatch-retries", "1",
         "--seed", "5", "--timeout", "420"],
        cwd=ROOT, env=cli_env(None, TEST_DATABASE_URL=pg_server_url), capture_output=True,
        text=True, timeout=480, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["completed"] is True
    assert report["lost_tasks"] == 0
    assert report["truth_mismatches"] == 0
    assert report["duplicate_installs"] == 0
    assert report["tasks_over_task_timeout"] == 0
    tasks = report["tasks"]
    assert tasks.get("FAILED", 0) > 0 and tasks.get("TIMED_OUT", 0) > 0, "faults had effect"
    # the engine's event loop never stalled (the lag of a 100 ms timer, worst case)
    assert report["max_loop_lag_ms"] is not None and report["max_loop_lag_ms"] < 500
