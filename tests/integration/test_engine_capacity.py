"""The engine's own limit (`max_tasks`, setting `engine_max_tasks`): it counts the tasks in
flight here, not the runners that have recorded their outcome and only log out of their
appliance before they end. A burst of task ends must not wait for as many logouts before
the freed slots are claimed again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from orchestrator.appliance.client import ApplianceClient
from tests.fleet import create, engine, fleet, task_by_appliance, wait_until_terminal

LOGOUT_SECONDS = 4.0


async def test_a_slot_is_claimed_again_while_its_runner_logs_out(
    pool: asyncpg.Pool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_tasks 2, four appliances, the rollout allows four at once: every logout takes
    4 s (planted: the real one after a sleep). The third and fourth appliances are
    dispatched before the first logout ends, and never more than two installs run at once
    (the simulator's count): the engine's limit still bounds the tasks in flight."""
    logouts: dict[str, tuple[float, float]] = {}
    real_logout = ApplianceClient.logout

    async def slow_logout(self: ApplianceClient, **kwargs: Any) -> None:
        started = time.time()
        await asyncio.sleep(LOGOUT_SECONDS)
        await real_logout(self, **kwargs)
        logouts[self.name] = (started, time.time())

    monkeypatch.setattr(ApplianceClient, "logout", slow_logout)
    async with fleet(pool, db_url, appliances=4, sites=1, install_jitter=0.0) as f:
        # no pre-flight: its own clients would log out too
        rid = await create(pool, {"max_concurrency": 4, "preflight": "off"})
        # long leases: no renewal (which stops the runners of released leases) meanwhile
        async with engine(f, max_tasks=2, lease_seconds=60.0):
            rollout = await wait_until_terminal(pool, rid, timeout=60)
            deadline = time.monotonic() + 3 * LOGOUT_SECONDS
            while len(logouts) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # the last logouts end after the rollout
    assert len(logouts) == 4, f"logouts seen: {sorted(logouts)}"
    assert rollout.state == "SUCCEEDED"
    tasks = await task_by_appliance(pool, rid)
    assert {row["state"] for row in tasks.values()} == {"SUCCEEDED"}
    order = sorted(tasks.values(), key=lambda row: row["dispatched_at"])
    first, later = order[:2], order[2:]
    first_logout_end = min(logouts[row["name"]][1] for row in first)
    for row in later:
        assert row["dispatched_at"].timestamp() < first_logout_end, (
            f"{row['name']} waited for a logout: dispatched "
            f"{row['dispatched_at'].timestamp() - first_logout_end:+.1f} s after the first "
            "logout ended")
    stats = f.sim.stats()
    assert stats["max_in_flight"] <= 2
    assert stats["duplicate_installs"] == 0
