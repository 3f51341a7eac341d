"""Rollouts driven through the `orchestrator` command, engines as real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from orchestrator.simulator import SimulatorConfig, run_simulator
from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, run_cli

ENGINE_ENV = {
    "APPLIANCE_SIM_CREDENTIALS": "admin:admin",
    "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.3",
    "ORCHESTRATOR_ENGINE_LEASE_SECONDS": "5",
    "ORCHESTRATOR_APPLIANCE_REQUEST_TIMEOUT": "5",
    "ORCHESTRATOR_LOG_LEVEL": "warning",
}


def engine_process(db_url: str, *extra: str) -> subprocess.Popen[str]:
    return LoggedPopen(
        [str(VENV_BIN / "orchestrator"), "run", *extra],
        env=cli_env(db_url, **ENGINE_ENV), cwd=ROOT,
    )


async def test_plan_create_start_show_and_refusals(db_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(appliances=12, sites=3, install_seconds=0.3, reboot_seconds=0.2,
                             services_starting_seconds=0.1,
                             duplicate_install="accept")
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        env = cli_env(db_url, **ENGINE_ENV)
        loop = asyncio.get_running_loop()

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return await loop.run_in_executor(None, lambda: run_cli(*args, env=env))

        assert (await cli("appliances", "import", str(inventory))).returncode == 0
        plan = await cli("rollout", "plan", "--version", "9.0.1-20020", "--waves", "1,50%,100%",
                         "--site", "site-01", "--site", "site-02", "--json")
        assert plan.returncode == 0, plan.stderr
        waves = json.loads(plan.stdout)["waves"]
        assert [w["size"] for w in waves] == [1, 4, 3]
        assert await _count(db_url, "rollouts") == 0, "a plan preview writes nothing"

        bad = await cli("rollout", "create", "--name", "x", "--version", "9.0.1-20020",
                        "--max-concurrency", "0")
        assert bad.returncode == 1
        assert "strategy.max_concurrency" in bad.stderr and "0" in bad.stderr

        created = await cli("rollout", "create", "--name", "cli", "--version", "9.0.1-20020",
                            "--waves", "1,100%", "--per-site-concurrency", "2", "--json")
        assert created.returncode == 0, created.stderr
        rid = str(json.loads(created.stdout)["id"])
        refused = await cli("rollout", "resume", rid)
        assert refused.returncode == 1
        assert "cannot resume rollout: it is DRAFT" in refused.stderr
        assert (await cli("rollout", "start", rid)).returncode == 0

        engine = await loop.run_in_executor(None, lambda: subprocess.run(
            [str(VENV_BIN / "orchestrator"), "run", "--until-idle"], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=120, check=False))
        assert engine.returncode == 0, engine.stderr[-2000:]
        shown = json.loads((await cli("rollout", "show", rid, "--json")).stdout)
        assert shown["state"] == "SUCCEEDED"
        assert shown["counts"]["by_state"] == {"SUCCEEDED": 12}
        text = (await cli("rollout", "show", rid)).stdout
        assert "SUCCEEDED" in text and "wave 1" in text
        watched = await cli("rollout", "watch", rid)
        assert watched.returncode == 0 and "11/11" in watched.stdout
        listed = await cli("rollout", "list", "--state", "succeeded")
        assert rid in listed.stdout
        assert sim.stats()["max_in_flight_by_site"]["site-01"] <= 2


async def _count(db_url: str, table: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.timeout(300)  # the engines' 240 s deadline below, the import and the checks
async def test_two_engine_processes_share_one_rollout(db_url: str, tmp_path: Path) -> None:
    """300 appliances, two `orchestrator run` processes: limits hold across both, nothing
    is installed twice (simulator ground truth), and both processes took part."""
    config = SimulatorConfig(appliances=300, sites=5, install_seconds=0.6, install_jitter=0.3,
                             reboot_seconds=0.3, services_starting_seconds=0.1,
                             duplicate_install="accept")
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        env = cli_env(db_url, **ENGINE_ENV)
        loop = asyncio.get_running_loop()
        assert (await loop.run_in_executor(
            None, lambda: run_cli("appliances", "import", str(inventory), env=env)
        )).returncode == 0
        strategy = tmp_path / "strategy.json"
        strategy.write_text(json.dumps({
            "waves": [1, "10%", "100%"], "max_concurrency": 24, "per_site_concurrency": 6,
            "reboot_grace": 10, "task_timeout": 60,
        }))
        created = await loop.run_in_executor(None, lambda: run_cli(
            "rollout", "create", "--name", "two engines", "--version", "9.0.1-20020",
            "--strategy", str(strategy), "--start", "--json", env=env))
        assert created.returncode == 0, created.stderr
        rid = json.loads(created.stdout)["id"]
        engines = [engine_process(db_url, "--until-idle") for _ in range(2)]
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in engines):
            assert time.monotonic() < deadline, "engines did not finish"
            await asyncio.sleep(0.2)
        outputs = [p.communicate() for p in engines]
        assert [p.returncode for p in engines] == [0, 0], [e[-1500:] for _, e in outputs]
        stats = sim.stats()
        assert stats["duplicate_installs"] == 0
        assert stats["installs_accepted"] == 300
        assert 0 < stats["max_in_flight"] <= 24
        assert max(stats["max_in_flight_by_site"].values()) <= 6
        conn = await asyncpg.connect(db_url)
        try:
            states = await conn.fetch(
                "SELECT state, count(*) AS n FROM tasks WHERE rollout_id = $1 GROUP BY state",
                rid,
            )
            owners = await conn.fetchval(
                """SELECT count(DISTINCT detail->>'owner') FROM task_events
                   WHERE rollout_id = $1 AND to_state = 'DISPATCHING'""", rid,
            )
        finally:
            await conn.close()
        assert {r["state"]: r["n"] for r in states} == {"SUCCEEDED": 300}
        assert owners == 2, "both engine processes claimed tasks"


async def test_sigterm_stops_the_engine_cleanly(db_url: str, tmp_path: Path) -> None:
    # installs that never end while the test runs: the engine must not wait for them
    config = SimulatorConfig(appliances=6, sites=2, install_seconds=3600, reboot_seconds=0.2)
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        env = cli_env(db_url, **ENGINE_ENV)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: run_cli("appliances", "import",
                                                         str(inventory), env=env))
        await loop.run_in_executor(None, lambda: run_cli(
            "rollout", "create", "--name", "long", "--version", "9.0.1-20020", "--waves",
            "100%", "--start", env=env))
        proc = engine_process(db_url)
        while sim.stats()["installs_accepted"] < 6:
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 60  # catches a hang, measures nothing
        proc.send_signal(signal.SIGTERM)
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the engine did not stop on SIGTERM"
            await asyncio.sleep(0.1)
        assert proc.returncode == 0, proc.output()[1][-2000:]
        # it stopped without waiting for the installs it had started
        assert sim.stats()["in_flight"] == 6
        conn = await asyncpg.connect(db_url)
        try:
            leases = await conn.fetch(
                "SELECT state, lease_owner, lease_expires_at < now() AS expired FROM tasks"
            )
        finally:
            await conn.close()
        # in-flight tasks stay INSTALLING with their lease handed over (expired at once)
        assert {r["state"] for r in leases} == {"INSTALLING"}
        assert all(r["expired"] for r in leases)
