"""Crashes, replicas and a database outage: nothing installed twice, nothing lost."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from orchestrator.simulator import SimulatorConfig, run_simulator
from orchestrator.store import migrations
from orchestrator.store import rollouts as rollout_store
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


async def assert_truth(f: harness.Fleet, rollout_id: int, *, planted: dict[str, str],
                       expected_rollout: str | None = None, killed_mid_send: bool = False,
                       ) -> tuple[dict[str, Any], set[str]]:
    """Every outcome exactly as the simulator's ground truth says: the rollout ends
    `expected_rollout` (default: SUCCEEDED when every task should succeed, else
    COMPLETED_WITH_FAILURES); each task SUCCEEDED on the target version, or FAILED with the error
    code planted on its appliance (`planted`: appliance -> error code); every appliance
    accepted exactly one install (ours); each task's final_version is what the appliance
    runs.

    `killed_mid_send`: engines were SIGKILLed from outside at arbitrary moments, so some
    may have died after recording the intent to send an install (install_sent_at) and before
    the appliance received it. Such a reclaimed task is never sent again (docs/outcomes.md);
    its only truthful outcome is FAILED INSTALL_UNCONFIRMED on an appliance that accepted no
    install and still runs the old version. Returns the simulator's stats and those
    appliances."""
    stats = f.sim.stats(include_appliances=True)
    apps: dict[str, dict[str, Any]] = stats["appliances"]
    tasks = await harness.task_by_appliance(f.pool, rollout_id)
    assert set(tasks) == set(apps)
    reclaimed = {r["task_id"] for r in await f.pool.fetch(
        "SELECT DISTINCT task_id FROM task_events WHERE rollout_id = $1"
        " AND detail ? 'previous_owner'", rollout_id)}
    wrong = []
    unsent: set[str] = set()
    for name, task in sorted(tasks.items()):
        app = apps[name]
        assert app["version"] == f.sim.version_of(name)
        if (killed_mid_send and app["installs_accepted"] == 0
                and task["id"] in reclaimed and task["install_sent_at"] is not None):
            unsent.add(name)
            old_version = f.sim.config.initial_version
            expected = ("FAILED", "INSTALL_UNCONFIRMED", old_version, old_version)
            got = (task["state"], task["error_code"], task["final_version"], app["version"])
            if got != expected:
                wrong.append({"appliance": name, "expected": expected, "got": got,
                              "installs_accepted": 0})
            continue
        if name in planted:
            expected = ("FAILED", planted[name], None, app["version"])
        else:
            expected = ("SUCCEEDED", None, harness.TARGET, harness.TARGET)
        got = (task["state"], task["error_code"], task["final_version"], app["version"])
        if got != expected or app["installs_accepted"] != 1:
            wrong.append({"appliance": name, "expected": expected, "got": got,
                          "installs_accepted": app["installs_accepted"]})
    assert wrong == [], wrong[:10]
    rollout = await rollout_store.get_rollout(f.pool, rollout_id)
    if expected_rollout is None:
        expected_rollout = "COMPLETED_WITH_FAILURES" if planted or unsent else "SUCCEEDED"
    assert rollout.state == expected_rollout, (rollout.state, rollout.abort_reason, unsent)
    assert stats["installs_accepted"] == len(apps) - len(unsent)
    assert stats["duplicate_installs"] == 0
    return stats, unsent


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float, what: str) -> int:
    """The process's return code, polled (the test's event loop serves the simulator)."""
    deadline = time.monotonic() + timeout
    while (rc := proc.poll()) is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{what} did not exit within {timeout} s")
        await asyncio.sleep(0.1)
    return rc


def fired(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.timeout(240)
async def test_chaos_kills_lose_nothing_and_install_nothing_twice(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    """Engine processes SIGKILLed again and again mid-rollout, from outside and by the
    deterministic failpoint right after an install was accepted (the fired failpoints are
    read from their log); a last engine finishes. Every outcome is exactly the truth."""
    rng = random.Random(3)
    log = tmp_path / "failpoints.log"
    async with harness.fleet(pool, db_url, appliances=60, sites=4, install_seconds=1.0,
                             install_jitter=0.3, reboot_seconds=0.5,
                             services_starting_seconds=0.1) as f:
        planted = {sorted(f.sim.names)[7]: "INSTALL_ERROR"}
        for name in planted:
            f.sim.set_faults(name, ["install_error"])
        rid = await harness.create(pool, {"max_concurrency": 8, "reboot_grace": 30,
                                          "task_timeout": 120})
        env = cli_env(db_url, **ENGINE_ENV, ORCH_FAILPOINTS_LOG=str(log))
        self_kills: list[str] = []
        for k in range(4):
            run_env = dict(env)
            at_install = k % 2 == 1
            if at_install:
                nth = rng.randint(1, 4)
                run_env["ORCH_FAILPOINTS"] = f"after_install_sent=#{nth}"
            with open(tmp_path / f"engine-{k}.log", "wb") as out:
                proc = subprocess.Popen([str(VENV_BIN / "orchestrator"), "run"], env=run_env,
                                        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            if at_install:
                rc = await wait_exit(proc, 90, f"engine {k} (failpoint #{nth})")
                self_kills.append(f"after_install_sent hit={nth} pid={proc.pid}")
            else:
                # from outside, once this engine has had a few installs accepted
                base = f.sim.stats(include_appliances=False)["installs_accepted"]
                deadline = time.monotonic() + 90
                while f.sim.stats(include_appliances=False)["installs_accepted"] < base + 2:
                    assert proc.poll() is None, f"engine {k} exited early"
                    assert time.monotonic() < deadline, f"engine {k} installed nothing"
                    await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGKILL)
                rc = await wait_exit(proc, 30, f"engine {k}")
            assert rc == -signal.SIGKILL, (k, rc)
            assert fired(log) == self_kills, "each planted failpoint fired once, as planned"
        with open(tmp_path / "engine-last.log", "wb") as out:
            last = subprocess.Popen([str(VENV_BIN / "orchestrator"), "run", "--until-idle"],
                                    env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        rc = await wait_exit(last, 150, "the last engine")
        assert rc == 0, (tmp_path / "engine-last.log").read_text()[-3000:]
        await harness.wait_until_terminal(pool, rid, timeout=30)
        stats, unsent = await assert_truth(f, rid, planted=planted,
                                           expected_rollout="COMPLETED_WITH_FAILURES",
                                           killed_mid_send=True)
        # only the two kills from outside can cut a send short, each of at most a
        # dispatch batch (max_concurrency)
        assert len(unsent) <= 2 * 8, unsent
        assert stats["max_in_flight"] <= 8
        reclaimed = await pool.fetchval(
            "SELECT count(*) FROM task_events WHERE detail ? 'previous_owner'")
        assert reclaimed > 0, "the killed engines' tasks were taken over"
    assert len(self_kills) == 2


@pytest.mark.timeout(240)
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
        engines = []
        for n in range(3):
            with open(tmp_path / f"engine-{n}.log", "wb") as out:
                engines.append(subprocess.Popen(
                    [str(VENV_BIN / "orchestrator"), "run", "--until-idle"],
                    env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
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
        assert await wait_exit(engines[0], 30, "the killed replica") == -signal.SIGKILL
        assert [p.returncode for p in engines[1:]] == [0, 0], [
            (tmp_path / f"engine-{n}.log").read_text()[-2000:] for n in (1, 2)]
        async with create_pool(db_url, min_size=1, max_size=2) as pool:
            f = harness.Fleet(sim=sim, pool=pool, db_url=db_url)
            rid = await pool.fetchval("SELECT id FROM rollouts")
            # the replica killed from outside may die between recording an install's
            # intent and its arrival: that task's truthful end is INSTALL_UNCONFIRMED
            stats, unsent = await assert_truth(f, rid, planted={}, killed_mid_send=True)
            reclaimed = await pool.fetchval(
                "SELECT count(*) FROM task_events WHERE detail ? 'previous_owner'"
            )
        assert stats["installs_accepted"] == 200 - len(unsent)
        assert len(unsent) <= 30, unsent
        assert stats["max_in_flight"] <= 30
        assert max(stats["max_in_flight_by_site"].values()) <= 8
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


@pytest.mark.slow
@pytest.mark.timeout(500)  # bench/chaos.py is bounded by --timeout 420 and 480 s here
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
