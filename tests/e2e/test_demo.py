"""`orchestrator demo` as a user runs it (a real process).

The test does not trust the demo's own `truth_mismatches`: the process runs the demo through
the CLI's own main(), captures the simulator the demo starts, and writes the simulator's
ground truth (each appliance's final version) to a file; the test then compares it with the
outcome recorded in the demo's database, by its own rule, before the database is dropped.

Both scenarios run a whole demo (about a minute each on a quiet machine): `slow`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers import ROOT, VENV_BIN, cli_env, drop_database, url_with_database

TARGET = "9.0.1-20020"
# a demo's run may take minutes on a loaded 2-core machine; the test's timeout covers it
DEMO_DEADLINE = 420
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEMO_DEADLINE + 60)]

# `orchestrator demo ...` with the simulator captured: its truth goes to argv[1]
RUN_DEMO_AND_DUMP_TRUTH = """
import contextlib, json, sys
import orchestrator.cli.demo as demo
from orchestrator.cli import main

sims = []
real_run_simulator = demo.run_simulator

@contextlib.asynccontextmanager
async def capturing(*args, **kwargs):
    async with real_run_simulator(*args, **kwargs) as sim:
        sims.append(sim)
        yield sim

demo.run_simulator = capturing
code = main(sys.argv[2:])
(sim,) = sims
truth = {name: a["version"] for name, a in sim.stats()["appliances"].items()}
with open(sys.argv[1], "w") as out:
    json.dump(truth, out)
sys.exit(code)
"""


async def recorded_outcomes(db_url: str, rollout_id: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return await conn.fetch(
            """SELECT a.name, t.state, t.final_version FROM tasks t
               JOIN appliances a ON a.id = t.appliance_id WHERE t.rollout_id = $1""",
            rollout_id)
    finally:
        await conn.close()


def mismatches(rows: list[asyncpg.Record], truth: dict[str, str]) -> list[dict[str, Any]]:
    """Recorded outcomes the simulator's truth contradicts: a success (or skip) on an
    appliance not on the target, a failure or cancellation on one that is, a final version
    the appliance does not run (a timed-out task may have seen an older one)."""
    bad = []
    for r in rows:
        actual = truth[r["name"]]
        if ((r["state"] in ("SUCCEEDED", "SKIPPED") and actual != TARGET)
                or (r["state"] in ("FAILED", "CANCELLED") and actual == TARGET)
                or (r["final_version"] is not None and r["state"] != "TIMED_OUT"
                    and r["final_version"] != actual)):
            bad.append({**dict(r), "simulator_version": actual})
    return bad


def run_demo(pg_server_url: str, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run the demo; return its JSON summary, with `own_mismatches` (computed here from the
    simulator's truth and the demo's database) and `truth` added."""
    name = f"demo_{uuid.uuid4().hex[:8]}"
    truth_file = tmp_path / "truth.json"
    try:
        with (tmp_path / "demo.out").open("w+") as out, \
                (tmp_path / "demo.err").open("w+") as err:
            result = subprocess.run(
                [str(VENV_BIN / "python"), "-c", RUN_DEMO_AND_DUMP_TRUTH, str(truth_file),
                 "demo", "--json", "--database-name", name,
                 "--report-dir", str(tmp_path / "reports"), *args],
                env=cli_env(pg_server_url), cwd=ROOT, stdout=out, stderr=err,
                timeout=DEMO_DEADLINE, check=False)
        stdout = (tmp_path / "demo.out").read_text()
        stderr = (tmp_path / "demo.err").read_text()
        assert result.returncode == 0, stderr[-3000:]
        summary: dict[str, Any] = json.loads(stdout)
        truth: dict[str, str] = json.loads(truth_file.read_text())
        rows = asyncio.run(recorded_outcomes(url_with_database(pg_server_url, name),
                                             summary["rollout_id"]))
    finally:
        asyncio.run(drop_database(pg_server_url, name))
    assert {r["name"] for r in rows} == set(truth), "every appliance has one task"
    summary["own_mismatches"] = mismatches(rows, truth)
    summary["truth"] = truth
    return summary


def test_default_demo_holds_every_promise(pg_server_url: str, tmp_path: Path) -> None:
    """The demo exactly as `make demo` runs it: 300 appliances, 6 sites, the mixed faults."""
    r = run_demo(pg_server_url, tmp_path)
    tasks = r["tasks"]
    assert isinstance(tasks, dict)
    assert sum(tasks.values()) == 300
    assert not set(tasks) & {"PENDING", "DISPATCHING", "INSTALLING", "VERIFYING"}
    # the faults show: some tasks fail, so the rollout does not read as a full success
    assert r["state"] == "COMPLETED_WITH_FAILURES"
    assert tasks["SUCCEEDED"] > 200 and tasks.get("FAILED", 0) > 0
    assert r["duplicate_installs"] == 0
    # every recorded outcome agrees with what the appliances really run (checked here),
    # and the demo's own count says the same
    assert r["own_mismatches"] == [], r["own_mismatches"][:20]
    assert r["truth_mismatches"] == 0
    assert 0 < r["max_in_flight"] <= r["max_concurrency"]  # type: ignore[operator]
    by_site = r["max_in_flight_by_site"]
    assert isinstance(by_site, dict) and len(by_site) == 6
    assert max(by_site.values()) <= r["per_site_concurrency"]  # type: ignore[operator]
    assert r["waves"] == [5, 30, 120, 145]


def test_failing_canary_stops_the_rollout(pg_server_url: str, tmp_path: Path) -> None:
    r = run_demo(pg_server_url, tmp_path, "--appliances", "60", "--canary-fault", "install_error",
                 "--install-seconds", "0.5", "--reboot-seconds", "0.3")
    assert r["state"] == "FAILED"
    assert "canary wave failed" in str(r["abort_reason"])
    assert r["tasks"] == {"FAILED": 5, "CANCELLED": 55}
    assert r["installs_accepted"] == 5, "no later wave started"
    assert r["own_mismatches"] == [], r["own_mismatches"]
    assert r["truth_mismatches"] == 0
    assert TARGET not in r["truth"].values()
