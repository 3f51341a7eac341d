"""Whether any engine is running: the engines' heartbeats in the database, and what the
forecast, the API's rollout resource and /readyz say about them (issue 21, item 3)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.engine.engine import Engine
from orchestrator.store import appliances as appliance_store
from orchestrator.store import engines as engine_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.audit import Actor
from orchestrator.store.forecast import rollout_forecast
from tests.fleet import engine as running_engine
from tests.fleet import fast_engine_config, fleet, http_client
from tests.integration.test_api import _api
from tests.integration.test_api_support import api_client, tokens_by_role

ACTOR = Actor(name="t")
VERSION = "9.0.1-20020"


async def _rollout(pool: asyncpg.Pool, *, start: bool = True) -> int:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name=f"vr-ams-{i}", base_url=f"https://vr-ams-{i}/api", site="ams")
        for i in range(3)
    ])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="liveness", target_version=VERSION, actor=ACTOR,
        strategy={"waves": ["100%"]},
    )
    if start:
        await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    return rollout.id


async def test_no_engine_fresh_stale_and_stopped(pool: asyncpg.Pool) -> None:
    status = await engine_store.engine_status(pool)
    assert not status.alive and status.live == 0 and status.last_heartbeat_at is None
    assert status.to_dict() == {"live_engines": 0, "last_heartbeat_at": None}
    assert "none has ever run against this database" in status.sentence()
    assert status.sentence().startswith("no engine is running")
    assert await engine_store.not_live_reason(pool, "e1") == \
        "engine e1 has not registered (yet)"

    await engine_store.register(pool, "e1")
    status = await engine_store.engine_status(pool)
    assert status.alive and status.live == 1 and status.sentence() == ""
    assert status.to_dict()["live_engines"] == 1 and status.to_dict()["last_heartbeat_at"]
    assert await engine_store.not_live_reason(pool, "e1") is None

    # a killed engine: its heartbeat ages out
    await pool.execute("UPDATE engines SET heartbeat_at = now() - interval '1 hour'")
    status = await engine_store.engine_status(pool)
    assert not status.alive and status.last_heartbeat_at is not None
    assert datetime.now(UTC) - status.last_heartbeat_at > timedelta(minutes=59)
    stamp = status.last_heartbeat_at.isoformat(timespec="seconds")
    assert f"none heard of since {stamp}" in status.sentence()
    reason = await engine_store.not_live_reason(pool, "e1")
    assert reason is not None and "has not sent a heartbeat since" in reason

    # a heartbeat brings it back; a clean stop ends it at once
    await engine_store.heartbeat(pool, "e1")
    assert (await engine_store.engine_status(pool)).alive
    await engine_store.stopped(pool, "e1")
    status = await engine_store.engine_status(pool)
    assert not status.alive and "none heard of since" in status.sentence()
    reason = await engine_store.not_live_reason(pool, "e1")
    assert reason is not None and reason.startswith("engine e1 stopped at ")


async def test_a_real_engine_registers_and_marks_its_stop(pool: asyncpg.Pool,
                                                          db_url: str) -> None:
    async with fleet(pool, db_url, appliances=2) as f, running_engine(f) as eng:
        deadline = asyncio.get_running_loop().time() + 10
        while not (await engine_store.engine_status(pool)).alive:
            assert asyncio.get_running_loop().time() < deadline, "never registered"
            await asyncio.sleep(0.05)
        assert await engine_store.not_live_reason(pool, eng.owner) is None
        owner = eng.owner
    row = await pool.fetchrow("SELECT stopped_at FROM engines WHERE owner = $1", owner)
    assert row is not None and row["stopped_at"] is not None
    status = await engine_store.engine_status(pool)
    assert not status.alive and status.last_heartbeat_at is not None
    reason = await engine_store.not_live_reason(pool, owner)
    assert reason is not None and "stopped at" in reason


async def test_forecast_is_blocked_while_no_engine_is_live(pool: asyncpg.Pool) -> None:
    draft = await _rollout(pool, start=False)
    now = datetime.now(UTC)
    assert (await rollout_forecast(pool, draft, now, 60)).blocked is None
    await pool.execute("DELETE FROM rollouts WHERE id = $1", draft)
    rid = await _rollout(pool)
    forecast = await rollout_forecast(pool, rid, now, 60)
    assert forecast.blocked is not None
    assert forecast.blocked.startswith("no engine is running (none has ever run")
    assert forecast.eta is not None  # what it would be if one started now
    assert forecast.to_dict()["blocked"] == forecast.blocked
    await engine_store.register(pool, "e1")
    forecast = await rollout_forecast(pool, rid, now, 60)
    assert forecast.blocked is None and forecast.to_dict()["blocked"] is None
    # a paused rollout waits for an operator, not for an engine
    await engine_store.stopped(pool, "e1")
    await rollout_store.pause_rollout(pool, rid, ACTOR)
    assert (await rollout_forecast(pool, rid, now, 60)).blocked is None


async def test_api_rollouts_carry_the_engine_status(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    rid = await _rollout(pool, start=False)
    async with api_client(pool) as client:
        api = await _api(client, tokens["operator"])  # every answer checked by the document
        base = f"/api/v1/rollouts/{rid}"
        status, result = await api.call("POST", f"{base}/start", "/api/v1/rollouts/{id}/start")
        assert status == 200 and result["rollout"]["state"] == "RUNNING"
        assert result["rollout"]["engine"] == {"live_engines": 0, "last_heartbeat_at": None}
        status, detail = await api.call("GET", f"{base}?forecast=true", "/api/v1/rollouts/{id}")
        assert status == 200
        assert detail["engine"] == {"live_engines": 0, "last_heartbeat_at": None}
        assert detail["forecast"]["blocked"].startswith("no engine is running")
        status, listed = await api.call("GET", "/api/v1/rollouts")
        assert [r["engine"]["live_engines"] for r in listed["items"]] == [0]

        await engine_store.register(pool, "e1")
        status, detail = await api.call("GET", f"{base}?forecast=true", "/api/v1/rollouts/{id}")
        assert detail["engine"]["live_engines"] == 1
        assert detail["engine"]["last_heartbeat_at"] is not None
        assert detail["forecast"]["blocked"] is None
        status, listed = await api.call("GET", "/api/v1/rollouts")
        assert listed["items"][0]["engine"]["live_engines"] == 1


async def test_readyz_without_an_engine_of_its_own(pool: asyncpg.Pool) -> None:
    """`serve --no-engine`: ready whatever the engines do, and it says how many are live."""
    async with api_client(pool) as client:
        api = await _api(client, "unused")
        status, body = await api.call("GET", "/readyz")
        assert status == 200 and body["status"] == "ready" and body["engine"] == "off"
        assert body["live_engines"] == 0 and body["last_heartbeat_at"] is None
        assert body["warning"].startswith("no engine is running (none has ever run")
        await engine_store.register(pool, "elsewhere")
        status, body = await api.call("GET", "/readyz")
        assert status == 200 and body["live_engines"] == 1 and body["warning"] is None
        await engine_store.stopped(pool, "elsewhere")
        status, body = await api.call("GET", "/readyz")
        assert status == 200 and body["live_engines"] == 0
        assert "none heard of since" in body["warning"]


async def test_readyz_with_its_own_engine(pool: asyncpg.Pool) -> None:
    """`serve` with its engine: not ready (503, with the reason) while that engine is not
    live, even when another one is."""
    async with http_client() as http:
        eng = Engine(pool, http, fast_engine_config())  # never run: its row is written here
        async with api_client(pool, engine=eng, http=http) as client:
            api = await _api(client, "unused")
            await engine_store.register(pool, "another")
            status, problem = await api.call("GET", "/readyz")
            assert status == 503 and problem["engine"] == "not live"
            assert f"engine {eng.owner} has not registered" in problem["detail"]
            assert problem["live_engines"] == 1
            await engine_store.register(pool, eng.owner)
            status, body = await api.call("GET", "/readyz")
            assert status == 200 and body["engine"] == "running"
            assert body["live_engines"] == 2 and body["warning"] is None
            await pool.execute("UPDATE engines SET heartbeat_at = now() - interval '1 hour'")
            status, problem = await api.call("GET", "/readyz")
            assert status == 503 and "has not sent a heartbeat since" in problem["detail"]
            assert problem["live_engines"] == 0
            assert problem["warning"].startswith("no engine is running (none heard of since")
            await engine_store.heartbeat(pool, eng.owner)
            await engine_store.stopped(pool, eng.owner)
            status, problem = await api.call("GET", "/readyz")
            assert status == 503 and f"engine {eng.owner} stopped at" in problem["detail"]
