"""The rollout engine against the simulator and a real database: each scenario an operator
would meet, with the outcome checked against the simulator's ground truth."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from orchestrator.domain.states import OperationNotAllowed
from orchestrator.store import rollouts as rollout_store
from tests.fleet import (
    ACTOR,
    TARGET,
    create,
    engine,
    events_of,
    fleet,
    task_by_appliance,
    wait_for_state,
    wait_until_terminal,
)
from tests.helpers import eventually


async def test_happy_rollout_every_outcome_proven(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=8, sites=2) as f:
        rid = await create(pool, {"waves": [1, "50%", "100%"], "max_concurrency": 3})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        stats = f.sim.stats()
        assert stats["duplicate_installs"] == 0
        assert stats["max_in_flight"] <= 3
        tasks = await task_by_appliance(pool, rid)
        for name, row in tasks.items():
            assert row["state"] == "SUCCEEDED", (name, row["error_message"])
            assert row["final_version"] == TARGET == f.sim.version_of(name)
            assert row["from_version"] == "9.0.0-10010"
        one = next(iter(tasks.values()))
        assert await events_of(pool, one["id"]) == [
            (None, "PENDING"), ("PENDING", "DISPATCHING"), ("DISPATCHING", "INSTALLING"),
            ("INSTALLING", "VERIFYING"), ("VERIFYING", "SUCCEEDED"),
        ]
        # the appliance's last known version is recorded in the inventory
        assert await pool.fetchval(
            "SELECT count(*) FROM appliances WHERE current_version = $1", TARGET
        ) == 8


async def test_skip_when_already_at_target(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        first = await create(pool, {"waves": ["100%"]})
        async with engine(f):
            await wait_until_terminal(pool, first)
            second = await create(pool)
            rollout = await wait_until_terminal(pool, second)
        assert rollout.state == "SUCCEEDED"
        tasks = await task_by_appliance(pool, second)
        assert {r["state"] for r in tasks.values()} == {"SKIPPED"}
        assert f.sim.stats()["installs_accepted"] == 2  # only the first rollout installed


async def test_install_error_fails_with_the_appliance_message(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1) as f:
        f.sim.set_faults("sim-00002", ["install_error"])
        rid = await create(pool)
        async with engine(f):
            await wait_until_terminal(pool, rid)
        tasks = await task_by_appliance(pool, rid)
        bad = tasks["sim-00002"]
        assert bad["state"] == "FAILED"
        assert bad["error_code"] == "INSTALL_ERROR"
        assert bad["error_message"]
        assert f.sim.version_of("sim-00002") == "9.0.0-10010"
        assert tasks["sim-00001"]["state"] == "SUCCEEDED"


@pytest.mark.parametrize("task_after_reboot", ["lost", "kept"])
async def test_reboot_that_loses_or_keeps_the_task(
    pool: asyncpg.Pool, db_url: str, task_after_reboot: str
) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1,
                     task_after_reboot=task_after_reboot, reboot_seconds=0.6) as f:
        rid = await create(pool)
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        assert all(f.sim.version_of(n) == TARGET for n in f.sim.names)


@pytest.mark.parametrize("reboot_mode", ["drop", "503"])
async def test_reboot_longer_than_grace_times_out(
    pool: asyncpg.Pool, db_url: str, reboot_mode: str
) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1, reboot_mode=reboot_mode) as f:
        f.sim.set_faults("sim-00001", ["long_reboot"])
        rid = await create(pool, {"reboot_grace": 1.5})
        async with engine(f):
            await wait_until_terminal(pool, rid)
        tasks = await task_by_appliance(pool, rid)
        assert tasks["sim-00001"]["state"] == "TIMED_OUT"
        assert "reboot_grace" in tasks["sim-00001"]["error_message"]
        assert tasks["sim-00002"]["state"] == "SUCCEEDED"


async def test_silent_failure_back_on_old_version(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        f.sim.set_faults("sim-00001", ["silent_failure"])
        rid = await create(pool)
        async with engine(f):
            await wait_until_terminal(pool, rid)
        bad = (await task_by_appliance(pool, rid))["sim-00001"]
        assert bad["state"] == "FAILED"
        assert bad["error_code"] == "VERSION_MISMATCH"
        assert "came back on 9.0.0-10010" in bad["error_message"]
        assert bad["final_version"] == f.sim.version_of("sim-00001") == "9.0.0-10010"


@pytest.mark.parametrize(("fault", "code", "words"), [
    ("forbidden", None, "rights"),
    ("bad_credentials", "UNAUTHORIZED", "credentials"),
])
async def test_permanent_errors_fail_at_once_with_a_reason(
    pool: asyncpg.Pool, db_url: str, fault: str, code: str | None, words: str
) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        f.sim.set_faults("sim-00001", [fault])
        rid = await create(pool)
        async with engine(f):
            await wait_until_terminal(pool, rid)
        bad = (await task_by_appliance(pool, rid))["sim-00001"]
        assert bad["state"] == "FAILED"
        assert bad["attempt"] == 1, "a permanent error is not retried"
        if code:
            assert bad["error_code"] == code
        assert words in bad["error_message"]
        assert "admin" not in bad["error_message"].replace("admin user", "")
        assert f.sim.stats()["appliances"]["sim-00001"]["installs_accepted"] == 0


async def test_pause_then_resume(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=6, sites=2, install_seconds=0.6) as f:
        rid = await create(pool, {"max_concurrency": 2})
        async with engine(f):
            await wait_for_state(pool, rid, ("RUNNING",))
            await eventually(lambda: asyncio.sleep(0, f.sim.stats()["installs_accepted"]),
                             lambda n: n >= 1)
            result = await rollout_store.pause_rollout(pool, rid, ACTOR)
            assert "no new installs start" in result.message
            # in-flight installs finish (polled, however slow the machine); then nothing is
            # in flight, in the database or on the appliances
            await eventually(
                lambda: rollout_store.rollout_counts(pool, rid),
                lambda c: not any(c.by_state.get(s, 0)
                                  for s in ("DISPATCHING", "INSTALLING", "VERIFYING")),
                timeout=60)
            await eventually(lambda: asyncio.sleep(0, f.sim.stats()["in_flight"]),
                             lambda n: n == 0, timeout=60)
            accepted = f.sim.stats()["installs_accepted"]
            assert accepted < 6
            counts = await rollout_store.rollout_counts(pool, rid)
            assert counts.by_state.get("PENDING", 0) == 6 - accepted
            # nothing new starts while paused (a few engine poll intervals)
            await asyncio.sleep(0.5)
            assert f.sim.stats()["installs_accepted"] == accepted
            with pytest.raises(OperationNotAllowed, match="it is PAUSED"):
                await rollout_store.pause_rollout(pool, rid, ACTOR)
            await rollout_store.resume_rollout(pool, rid, ACTOR)
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        assert f.sim.stats()["installs_accepted"] == 6


async def test_cancel_stops_new_installs_and_follows_accepted_ones(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=6, sites=2, install_seconds=0.8) as f:
        rid = await create(pool, {"max_concurrency": 2})
        async with engine(f):
            await wait_for_state(pool, rid, ("RUNNING",))
            while f.sim.stats()["installs_accepted"] == 0:
                await asyncio.sleep(0.02)
            result = await rollout_store.cancel_rollout(pool, rid, ACTOR)
            assert "cannot be stopped" in result.message
            await wait_until_terminal(pool, rid)
        tasks = await task_by_appliance(pool, rid)
        states = [r["state"] for r in tasks.values()]
        accepted = f.sim.stats()["installs_accepted"]
        assert states.count("CANCELLED") == 6 - accepted
        assert states.count("SUCCEEDED") == accepted
        with pytest.raises(OperationNotAllowed, match="it is CANCELLED"):
            await rollout_store.start_rollout(pool, rid, ACTOR)


async def test_approval_gate(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=4, sites=2) as f:
        rid = await create(pool, {"waves": [1, "100%"], "approval": "after-canary"})
        async with engine(f):
            await eventually(lambda: rollout_store.rollout_counts(pool, rid),
                             lambda c: c.waves[0]["state"] == "AWAITING_APPROVAL", timeout=60)
            # nothing starts while the gate is closed (a few engine poll intervals)
            await asyncio.sleep(0.5)
            assert f.sim.stats()["installs_accepted"] == 1, "wave 1 must wait for approval"
            result = await rollout_store.approve_rollout(pool, rid, ACTOR)
            assert "wave 0 approved" in result.message
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        assert f.sim.stats()["installs_accepted"] == 4
        audit = await pool.fetch("SELECT action FROM audit_log ORDER BY id")
        assert "rollout.approve" in [r["action"] for r in audit]


async def test_policy_trip_in_canary_stops_later_waves(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=6, sites=2) as f:
        for name in ("sim-00001", "sim-00002"):
            f.sim.set_faults(name, ["install_error"])
        rid = await create(pool, {"waves": [2, "100%"], "max_failures": 0, "order": "name"})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "FAILED"
        assert rollout.abort_reason and "failure policy tripped" in rollout.abort_reason
        tasks = await task_by_appliance(pool, rid)
        assert {tasks[n]["state"] for n in ("sim-00001", "sim-00002")} == {"FAILED"}
        assert sum(1 for r in tasks.values() if r["state"] == "CANCELLED") == 4
        assert f.sim.stats()["installs_accepted"] == 2, "no later wave started"


async def test_retry_failed(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1) as f:
        f.sim.set_faults("sim-00003", ["install_error"])
        rid = await create(pool)
        async with engine(f):
            await wait_until_terminal(pool, rid)
            assert (await task_by_appliance(pool, rid))["sim-00003"]["state"] == "FAILED"
            f.sim.set_faults("sim-00003", [])
            result = await rollout_store.retry_failed(pool, rid, ACTOR)
            assert "1 task(s) will be retried" in result.message
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        row = (await task_by_appliance(pool, rid))["sim-00003"]
        # retry-failed starts the task afresh: its attempt counter begins again
        assert (row["state"], row["attempt"]) == ("SUCCEEDED", 1)
        assert f.sim.version_of("sim-00003") == TARGET
        assert f.sim.stats()["duplicate_installs"] == 0


async def test_per_site_and_global_limits_hold(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=24, sites=3, install_seconds=0.5) as f:
        rid = await create(pool, {"max_concurrency": 5, "per_site_concurrency": 2})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        stats = f.sim.stats()
        assert 0 < stats["max_in_flight"] <= 5
        assert all(n <= 2 for n in stats["max_in_flight_by_site"].values())
        assert stats["duplicate_installs"] == 0
