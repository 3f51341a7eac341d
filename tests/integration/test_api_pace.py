"""The adaptive pace through the API (docs/pace.md): `GET /api/v1/rollouts/{id}` carries
`pace` (null while the pace is off or has not started; else the rollout row's concurrency,
reason and times), and so does every `event: progress` of the rollout's event stream, which
sends a new one after the task event that records a change of the pace."""

from __future__ import annotations

import asyncpg

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as appliance_store
from orchestrator.store import pace as pace_store
from tests.fleet import create
from tests.integration.test_api import _api
from tests.integration.test_api_events import read_events
from tests.integration.test_api_support import api_client, auth, tokens_by_role

ADAPTIVE = {"pace": "adaptive", "max_concurrency": 2, "pace_max_concurrency": 6,
            "pace_interval_seconds": 3600}


async def test_the_rollout_and_its_progress_events_show_the_pace(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(f"vr-{i}", f"https://vr-{i}.example.net/api", "ams") for i in range(3)])
    adaptive = await create(pool, ADAPTIVE)  # RUNNING, but no engine has ticked it
    fixed = await create(pool, {"after_overlapping": True}, start=False)  # pace off
    template = "/api/v1/rollouts/{id}"
    async with api_client(pool) as client:
        api = await _api(client, tokens["viewer"])

        async def detail_pace(rid: int) -> object:
            status, body = await api.call("GET", f"/api/v1/rollouts/{rid}", template)
            assert status == 200, body
            return body["pace"]

        async def progress_pace(rid: int) -> object:
            """The pace of every progress event of the stream (they agree: nothing moves)."""
            async with client.get(f"/api/v1/rollouts/{rid}/events?follow=false",
                                  headers=auth(tokens["viewer"])) as resp:
                assert resp.status == 200
                events = await read_events(resp, timeout=20)
            paces = [e["data"]["pace"] for e in events if e.get("event") == "progress"]
            assert paces and all(p == paces[0] for p in paces), paces
            return paces[0]

        assert await detail_pace(fixed) is None
        assert await progress_pace(fixed) is None
        assert await detail_pace(adaptive) is None  # not started: no engine ticked it
        assert await progress_pace(adaptive) is None

        # as the engine's first tick starts it, then as an interval changes it
        async with pool.acquire() as conn:
            await pace_store.start_pace(conn, adaptive, 2, "adaptive pace starts at 2")
        started = await pace_store.pace_state(pool, adaptive)
        assert started is not None
        body = await detail_pace(adaptive)
        assert body == started.to_dict()
        assert isinstance(body, dict)
        assert (body["concurrency"], body["reason"]) == (2, "adaptive pace starts at 2")
        assert body["changed_at"] is not None and body["evaluated_at"] is not None
        assert await progress_pace(adaptive) == started.to_dict()

        task_id = await pool.fetchval(
            "SELECT min(id) FROM tasks WHERE rollout_id = $1", adaptive)
        async with pool.acquire() as conn, conn.transaction():
            await pace_store.record_pace_change(
                conn, adaptive, previous=2, concurrency=3, reason="healthy (test)",
                task_id=task_id, task_state="PENDING", detail={}, owner="test")
        grown = await pace_store.pace_state(pool, adaptive)
        assert grown is not None and grown.concurrency == 3
        assert await detail_pace(adaptive) == grown.to_dict()
        assert await progress_pace(adaptive) == grown.to_dict()
        assert await detail_pace(fixed) is None
