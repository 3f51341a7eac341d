"""The rollout forecast (ETA) from the database: the remaining plan, limits and windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import windows as window_store
from orchestrator.store.audit import Actor
from orchestrator.store.forecast import rollout_forecast

ACTOR = Actor(name="t")


async def test_forecast_follows_plan_limits_and_windows(pool: asyncpg.Pool) -> None:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name=f"a{i}", base_url=f"https://a{i}/x", site="ams") for i in range(10)
    ])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="r", target_version="9", actor=ACTOR,
        strategy={"waves": ["100%"], "max_concurrency": 3},
    )
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    free = await rollout_forecast(pool, rollout.id, now, estimate_seconds=60)
    # 10 tasks, 3 at a time, 60 s each: 4 rounds
    assert free.eta == now + timedelta(seconds=240)
    assert "configured estimate" in free.basis
    await window_store.create_window(pool, {
        "name": "night", "cron": "0 22 * * *", "duration": "2h", "timezone": "UTC",
        "sites": ["ams"]}, ACTOR)
    bound = await rollout_forecast(pool, rollout.id, now, estimate_seconds=60)
    assert bound.eta == datetime(2026, 12, 1, 22, 4, tzinfo=UTC)
    await rollout_store.cancel_rollout(pool, rollout.id, ACTOR)
    done = await rollout_forecast(pool, rollout.id, now, estimate_seconds=60)
    assert done.basis == "rollout CANCELLED"
