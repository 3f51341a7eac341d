"""`Engine.run(until_idle=True)` (`orchestrator run --until-idle`): idle means no rollout is
SCHEDULED, RUNNING or WAITING_WINDOW and no task runs here. A rollout waiting for its
maintenance window or for its start time keeps the engine running until it has finished;
a PAUSED one does not (it waits for an operator)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from orchestrator.engine.engine import Engine
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import windows as window_store
from tests.fleet import (
    ACTOR,
    TARGET,
    Fleet,
    create,
    fast_engine_config,
    fleet,
    http_client,
    task_by_appliance,
)

# the engine, the fleet and the checks, well within the tests' timeout
DEADLINE = 90.0


async def run_until_idle(
    f: Fleet, rollout_id: int, *, clock: Callable[[], datetime] | None = None,
    notify_during_ticks: bool = False, **config: float,
) -> tuple[set[str], Engine]:
    """Run an engine with until_idle=True until it returns by itself (failing after
    DEADLINE): the rollout states seen while it ran, and the engine.

    notify_during_ticks: every reading of the engine's clock (one per rollout and tick)
    also does what a NOTIFY arriving then does (`refresh`), as the tick's own state
    changes may at any moment: the list of active rollouts is forgotten mid-tick."""
    states: set[str] = set()
    wall = clock or (lambda: datetime.now(UTC))

    def engine_clock() -> datetime:
        if notify_during_ticks:
            engine.refresh()
        return wall()

    async with http_client() as http:
        engine = Engine(f.pool, http, fast_engine_config(**config), database_url=f.db_url,
                        clock=engine_clock)
        run = asyncio.create_task(engine.run(until_idle=True))
        deadline = asyncio.get_running_loop().time() + DEADLINE
        try:
            while not run.done():
                rollout = await rollout_store.get_rollout(f.pool, rollout_id)
                if not run.done():  # seen while the engine still ran
                    states.add(str(rollout.state))
                assert asyncio.get_running_loop().time() < deadline, \
                    f"run(until_idle=True) still running, the rollout {rollout.state}"
                await asyncio.sleep(0.05)
            await run
        finally:
            if not run.done():
                engine.stop()
                await asyncio.wait_for(run, 30)
    return states, engine


async def assert_all_installed(f: Fleet, rollout_id: int) -> None:
    """The rollout SUCCEEDED, every task SUCCEEDED, and every appliance runs the target
    version by the simulator's own account."""
    rollout = await rollout_store.get_rollout(f.pool, rollout_id)
    assert rollout.state == "SUCCEEDED"
    assert rollout.finished_at is not None
    tasks = await task_by_appliance(f.pool, rollout_id)
    assert len(tasks) == f.sim.stats(include_appliances=False)["appliances_total"]
    for name, task in tasks.items():
        assert task["state"] == "SUCCEEDED", (name, task["state"])
        assert f.sim.version_of(name) == TARGET, name


@pytest.mark.timeout(150)
@pytest.mark.parametrize("notify_during_ticks", [False, True])
async def test_a_rollout_waiting_for_its_window_keeps_until_idle_running(
    pool: asyncpg.Pool, db_url: str, notify_during_ticks: bool
) -> None:
    async with fleet(pool, db_url, appliances=4, sites=1) as f:
        await window_store.create_window(pool, {
            "name": "every-minute", "cron": "* * * * *", "duration": 20, "cutoff": 2,
            "timezone": "UTC", "sites": ["site-01"],
        }, ACTOR)
        rid = await create(pool, {"max_concurrency": 2})
        # the engine's clock is shifted so that its window (open 20 s from every minute's
        # start) is closed when the engine starts and opens ~4 s later; durations stay real
        real = datetime.now(UTC)
        opening = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
        offset = opening - real - timedelta(seconds=4)

        def clock() -> datetime:
            return datetime.now(UTC) + offset

        states, _ = await run_until_idle(f, rid, clock=clock,
                                         notify_during_ticks=notify_during_ticks)
        assert "WAITING_WINDOW" in states, "the engine ran while the rollout waited"
        await assert_all_installed(f, rid)
        # every install started inside the window, in the engine's time
        for task in (await task_by_appliance(pool, rid)).values():
            started = task["dispatched_at"] + offset
            assert started.second < 20, started


@pytest.mark.timeout(150)
@pytest.mark.parametrize("notify_during_ticks", [False, True])
async def test_a_scheduled_rollout_keeps_until_idle_running(
    pool: asyncpg.Pool, db_url: str, notify_during_ticks: bool
) -> None:
    async with fleet(pool, db_url, appliances=4, sites=1) as f:
        rid = await create(pool, start=False)
        at = await pool.fetchval("SELECT now()") + timedelta(seconds=3)
        await rollout_store.start_rollout(pool, rid, ACTOR, schedule_at=at)
        assert (await rollout_store.get_rollout(pool, rid)).state == "SCHEDULED"
        poll_interval = 0.5
        states, engine = await run_until_idle(f, rid, poll_interval=poll_interval,
                                              notify_during_ticks=notify_during_ticks)
        assert "SCHEDULED" in states, "the engine ran while the rollout was scheduled"
        await assert_all_installed(f, rid)
        rollout = await rollout_store.get_rollout(pool, rid)
        assert rollout.started_at is not None and rollout.started_at >= at
        if notify_during_ticks:
            return  # every tick wakes the next one: the engine is meant to tick on
        # it waited by polling, not by spinning: the ticks of the whole run stay within
        # a few per poll interval (a busy loop makes thousands; a slow machine only fewer)
        assert rollout.finished_at is not None
        elapsed = (rollout.finished_at - rollout.created_at).total_seconds() + 5
        assert engine.ticks <= 5 * elapsed / poll_interval + 50, (engine.ticks, elapsed)


async def test_until_idle_returns_with_nothing_to_do_and_leaves_a_paused_rollout(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        draft = await create(pool, start=False)
        paused = await create(pool, selector={"names": ["sim-00001"]}, start=False)
        await rollout_store.start_rollout(pool, paused, ACTOR)
        await rollout_store.pause_rollout(pool, paused, ACTOR)
        states, _ = await run_until_idle(f, paused)
        assert states <= {"PAUSED"}
        assert (await rollout_store.get_rollout(pool, paused)).state == "PAUSED"
        assert (await rollout_store.get_rollout(pool, draft)).state == "DRAFT"
        tasks = await task_by_appliance(pool, paused)
        assert [t["state"] for t in tasks.values()] == ["PENDING"]
        assert f.sim.stats(include_appliances=False)["install_requests"] == 0
