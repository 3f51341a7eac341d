"""Health gates after each install (issue 18), against the simulator and a real database:
required services, the HTTP probe (the simulator's health page, `GET /{name}/health`) with
its stabilisation period, and the per-task soak.

Runner-level tests use the harness of tests/integration/test_runner.py (one claimed task,
run to its end); the failure-policy test runs the engine. Timings come from the simulator's
configuration; every wait polls with a deadline, nothing asserts how long a step took.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from orchestrator.simulator import FaultProfile
from tests.fleet import TARGET, create, engine, events_of, fleet, wait_until_terminal
from tests.helpers import eventually
from tests.integration.test_runner import CLAIMED, NAME, _claim, _engine_side, _row, _run

pytestmark = pytest.mark.timeout(120)


def faults(*names: str, **params: Any) -> FaultProfile:
    return FaultProfile(appliances={NAME: names}, params=params)


def probe_url(url: str) -> str:
    """The probe template of the simulator at `url` (http://127.0.0.1:PORT)."""
    return url.replace("127.0.0.1", "{host}") + "/{name}/health"


async def last_detail(pool: asyncpg.Pool, task_id: int) -> dict[str, Any]:
    detail = await pool.fetchval(
        "SELECT detail FROM task_events WHERE task_id = $1 ORDER BY id DESC LIMIT 1", task_id)
    return dict(json.loads(detail) if isinstance(detail, str) else detail)


async def test_a_probe_gated_task_waits_out_a_flapping_probe(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    """The appliance comes back on the target, its probe answers 503 for a while, then 200
    with "ok": within probe_stabilisation_seconds, so the task SUCCEEDS."""
    async with fleet(pool, db_url, appliances=1, sites=1,
                     profile=faults("probe_flapping", probe_flap_seconds=2.0)) as f:
        rid = await create(pool, {"probe_url": probe_url(f.sim.url), "probe_body": "ok",
                                  "probe_stabilisation_seconds": 15, "task_timeout": 40})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "SUCCEEDED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["final_version"]) == (
            "SUCCEEDED", None, TARGET)
        assert await events_of(pool, task.id) == [
            *CLAIMED, ("DISPATCHING", "INSTALLING"), ("INSTALLING", "VERIFYING"),
            ("VERIFYING", "SUCCEEDED")]
        seen = (await last_detail(pool, task.id))["gates"]["probe"]
        assert seen["failed"] >= 1 and seen["tries"] == seen["failed"] + 1
        assert seen["last"] == "200" and seen["ok_after_s"] > 0
        stats = f.sim.stats()
        assert stats["probe_responses"]["503"] >= 1 and stats["probe_responses"]["200"] == 1
        assert stats["appliances"][NAME]["installs_accepted"] == 1


async def test_a_probe_that_keeps_failing_fails_the_task_probe_failed(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1, profile=faults("probe_failing")) as f:
        rid = await create(pool, {"probe_url": probe_url(f.sim.url),
                                  "probe_stabilisation_seconds": 2})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["final_version"]) == (
            "FAILED", "PROBE_FAILED", TARGET)
        message = row["error_message"]
        assert "did not succeed within probe_stabilisation_seconds 2 s" in message
        assert "answered 503, not 200" in message
        assert f"http://127.0.0.1:{f.sim.port}/{NAME}/health" in message
        detail = await last_detail(pool, task.id)
        assert detail["error_code"] == "PROBE_FAILED"
        assert detail["gates"]["probe"]["last"] == "503"
        assert "health check failing" in detail["gates"]["probe"]["last_body"]
        # installed all the same: the gate judges the appliance after the install
        assert f.sim.version_of(NAME) == TARGET


async def test_a_required_service_that_is_not_running_fails_service_not_running(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool, {"required_services": ["envoy", "vrms|vrms2"],
                                  "reboot_grace": 2})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"]) == ("FAILED", "SERVICE_NOT_RUNNING")
        assert f"{TARGET} is installed but vrms|vrms2 is not running" in row["error_message"]
        assert "envoy" not in row["error_message"]
        assert f.sim.stats()["probe_requests"] == 0


async def test_a_soak_that_sees_the_appliance_go_unhealthy_fails_soak_failed(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    """The checks pass and the soak starts; then the probe starts failing: SOAK_FAILED."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool, {"probe_url": probe_url(f.sim.url), "task_soak_seconds": 60,
                                  "probe_stabilisation_seconds": 10,
                                  "required_services": ["envoy"], "task_timeout": 120})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            run = asyncio.create_task(_run(h, task))

            async def probes() -> int:
                return int(f.sim.stats()["appliances"][NAME]["probe_requests"])

            # the first probe passed the checks (the appliance is healthy): a second one
            # is a look of the soak
            await eventually(probes, lambda n: n >= 2)
            assert not run.done()
            f.sim.set_faults(NAME, ["probe_failing"])
            assert await run == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["final_version"]) == (
            "FAILED", "SOAK_FAILED", TARGET)
        assert "into its task_soak_seconds 60 s: probe answered 503, not 200" in \
            row["error_message"]
        gates = (await last_detail(pool, task.id))["gates"]
        assert gates["probe"]["failed"] == 1 and gates["probe"]["tries"] >= 3
        assert gates["soak_from_s"] >= 0


async def test_a_soak_on_a_healthy_appliance_succeeds(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool, {"task_soak_seconds": 1.5, "required_services": ["envoy"]})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "SUCCEEDED"
        gates = (await last_detail(pool, task.id))["gates"]
        assert gates["looks"] >= 2 and "probe" not in gates
        assert f.sim.stats()["appliances"][NAME]["installs_accepted"] == 1


async def test_a_probe_url_the_policy_refuses_fails_before_any_install(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool, {"probe_url": "http://169.254.169.254/{name}?token=s3cret",
                                  "probe_stabilisation_seconds": 10})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"]) == ("FAILED", "TARGET_REFUSED")
        assert "cloud metadata address" in row["error_message"]
        assert "s3cret" not in row["error_message"]
        assert f.sim.stats()["install_requests"] == 0


async def test_failed_gates_count_toward_the_failure_policy(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    """Three appliances whose probe never succeeds, max_failures 1: the policy trips after
    the second failure, as for any other failed task."""
    profile = FaultProfile(rates={"probe_failing": 1.0})
    async with fleet(pool, db_url, appliances=3, sites=1, profile=profile) as f:
        rid = await create(pool, {"probe_url": probe_url(f.sim.url),
                                  "probe_stabilisation_seconds": 1, "max_concurrency": 1,
                                  "max_failures": 1, "min_executed": 0})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid, timeout=60)
        rows = await pool.fetch("SELECT state, error_code FROM tasks WHERE rollout_id = $1",
                                rid)
        failed = [r for r in rows if r["state"] == "FAILED"]
        assert len(failed) == 2 and {r["error_code"] for r in failed} == {"PROBE_FAILED"}
        assert rollout.state == "FAILED"
        assert f.sim.stats()["installs_accepted"] == 2
