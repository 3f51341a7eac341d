"""How rollouts end against the simulator: a failed canary stops the rollout before the next
wave, a rollout whose every task failed is FAILED, one with some failures does not read as
a success."""

from __future__ import annotations

import asyncpg

from tests.fleet import create, engine, fleet, task_by_appliance, wait_until_terminal


async def test_a_failed_canary_of_one_stops_the_rollout(pool: asyncpg.Pool, db_url: str) -> None:
    """The README's waves with the default max_failures and min_executed: the canary (one
    appliance) fails, so no appliance of the next waves gets an install."""
    async with fleet(pool, db_url, appliances=12, sites=2) as f:
        rid = await create(pool, {"waves": [1, "10%", "50%", "100%"], "max_failures": "10%",
                                  "min_executed": 5, "order": "name"})
        canary = "sim-00001"  # plan order "name": the first appliance is the canary
        f.sim.set_faults(canary, ["install_error"])
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "FAILED"
        assert "canary" in (rollout.abort_reason or "")
        rows = await task_by_appliance(pool, rid)
        assert rows[canary]["state"] == "FAILED" and rows[canary]["wave"] == 0
        assert {r["state"] for n, r in rows.items() if n != canary} == {"CANCELLED"}
        assert f.sim.stats()["installs_accepted"] == 1  # nothing beyond the canary


async def test_canary_max_failures_lets_the_next_wave_go(pool: asyncpg.Pool,
                                                         db_url: str) -> None:
    async with fleet(pool, db_url, appliances=6, sites=1) as f:
        rid = await create(pool, {"waves": [1, "100%"], "order": "name",
                                  "canary_max_failures": 1, "max_failures": "50%"})
        f.sim.set_faults("sim-00001", ["install_error"])
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "COMPLETED_WITH_FAILURES"
        states = [r["state"] for r in (await task_by_appliance(pool, rid)).values()]
        assert sorted(states) == ["FAILED"] + ["SUCCEEDED"] * 5


async def test_a_rollout_whose_every_task_failed_is_failed(pool: asyncpg.Pool,
                                                           db_url: str) -> None:
    """Two appliances whose credentials are refused, one wave, min_executed 5: nothing
    could trip the percentage, and the rollout still does not end as a success."""
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        for name in f.sim.names:
            f.sim.set_faults(name, ["bad_credentials"])
        rid = await create(pool, {"waves": ["100%"], "max_failures": "10%",
                                  "min_executed": 5})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "FAILED"
        assert "every executed task failed" in (rollout.abort_reason or "")
