"""An engine dies right after its installs were accepted, and the installs outlast its
lease several times over: the engine that reclaims the tasks finds the appliances still
installing and adopts those installs (never a second one)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests import fleet as harness
from tests.e2e.test_resilience import assert_truth, fired, wait_exit
from tests.helpers import ROOT, VENV_BIN, cli_env

APPLIANCES = 6
INSTALL_SECONDS = 10.0
LEASE_SECONDS = 2.0  # the killed engine's lease (the smallest allowed): 5 times shorter


@pytest.mark.timeout(150)
async def test_reclaimed_tasks_adopt_installs_still_running(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "failpoints.log"
    async with harness.fleet(pool, db_url, appliances=APPLIANCES, sites=2,
                             install_seconds=INSTALL_SECONDS, install_jitter=0.0,
                             reboot_seconds=0.5, services_starting_seconds=0.1) as f:
        rid = await harness.create(pool, {"max_concurrency": APPLIANCES, "reboot_grace": 30,
                                          "task_timeout": 120})
        env = cli_env(
            db_url, APPLIANCE_SIM_CREDENTIALS="admin:admin", ORCHESTRATOR_LOG_LEVEL="warning",
            ORCHESTRATOR_ENGINE_POLL_INTERVAL="0.3",
            ORCHESTRATOR_ENGINE_LEASE_SECONDS=str(LEASE_SECONDS),
            ORCHESTRATOR_APPLIANCE_REQUEST_TIMEOUT="5",
            # die right after the last appliance accepted its install, before INSTALLING
            # is recorded for it
            ORCH_FAILPOINTS=f"after_install_sent=#{APPLIANCES}", ORCH_FAILPOINTS_LOG=str(log),
        )
        with open(tmp_path / "engine.log", "wb") as out:
            victim = subprocess.Popen([str(VENV_BIN / "orchestrator"), "run"], env=env,
                                      cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        rc = await wait_exit(victim, 60, "the engine with the failpoint")
        assert rc == -signal.SIGKILL, (tmp_path / "engine.log").read_text()[-3000:]
        assert fired(log) == [f"after_install_sent hit={APPLIANCES} pid={victim.pid}"]
        apps = f.sim.stats(include_appliances=True)["appliances"]
        assert {n: (a["installs_accepted"], a["phase"]) for n, a in apps.items()} == {
            n: (1, "installing") for n in apps}, "every install accepted and still running"
        # the last accepted install was never recorded as INSTALLING: only the intent
        unrecorded = {r["name"] for r in await pool.fetch(
            """SELECT a.name FROM tasks t JOIN appliances a ON a.id = t.appliance_id
               WHERE t.rollout_id = $1 AND t.state = 'DISPATCHING'
               AND t.install_sent_at IS NOT NULL""", rid)}
        assert unrecorded, "the failpoint fired before INSTALLING was recorded"

        # another engine reclaims the tasks once the dead one's leases expire
        phase_at_reclaim: dict[str, str] = {}
        async with harness.engine(f):
            deadline = time.monotonic() + 30
            while len(phase_at_reclaim) < APPLIANCES:
                rows = await pool.fetch(
                    """SELECT DISTINCT a.name FROM task_events e
                       JOIN tasks t ON t.id = e.task_id
                       JOIN appliances a ON a.id = t.appliance_id
                       WHERE e.rollout_id = $1 AND e.detail ? 'previous_owner'""", rid)
                # the phase read after the reclaim was recorded: installing then means
                # installing at the reclaim (an install never goes back to running)
                apps = f.sim.stats(include_appliances=True)["appliances"]
                for r in rows:
                    phase_at_reclaim.setdefault(r["name"], apps[r["name"]]["phase"])
                assert time.monotonic() < deadline, f"reclaimed only {phase_at_reclaim}"
                await asyncio.sleep(0.05)
            await harness.wait_until_terminal(pool, rid, timeout=60)
        assert phase_at_reclaim == {n: "installing" for n in apps}, phase_at_reclaim

        await assert_truth(f, rid, planted={}, expected_rollout="SUCCEEDED")
        tasks = await harness.task_by_appliance(pool, rid)
        for name, task in tasks.items():
            events: list[dict[str, Any]] = [
                {"from": e["from_state"], "to": e["to_state"],
                 "detail": json.loads(e["detail"]) if e["detail"] else {}}
                for e in await pool.fetch(
                    "SELECT from_state, to_state, detail::text AS detail FROM task_events"
                    " WHERE task_id = $1 ORDER BY id", task["id"])
            ]
            reclaims = [e for e in events if "previous_owner" in e["detail"]]
            assert len(reclaims) == 1, events
            assert f":{victim.pid}:" in reclaims[0]["detail"]["previous_owner"], reclaims
            assert events[-1]["to"] == "SUCCEEDED", events
            if name in unrecorded:
                # no task id was recorded: the reclaiming engine found the running install
                # on the appliance and adopted it, by its id
                adopted = [e for e in events if e["from"] == "DISPATCHING"
                           and e["to"] == "INSTALLING" and "evidence" in e["detail"]]
                assert len(adopted) == 1, events
                assert adopted[0]["detail"]["evidence"] == "a task is running on the appliance"
                assert adopted[0]["detail"]["remote_task_id"], adopted
