"""Unauthenticated load (issue 14, finding 5) and streams that outlive their token (finding
10): /metrics reads the database once per cache period however many scrapes come (and
needs its token when one is set), event streams are capped per token and in all (429 with
Retry-After), a backlog is read and sent in pages, a stream ends once its token is revoked
or has expired, and a request that finds no free database connection is answered 503
instead of hanging.

Behaviour only: counts of queries and of answers, statuses and the end of a stream; no
timed assertions (the `timeout`s below only keep a broken build from hanging)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from orchestrator.api import openapi
from orchestrator.api.app import create_app
from orchestrator.api.events import STREAMS
from orchestrator.api.routing import STATE
from orchestrator.settings import Settings, SettingsError, load_settings
from orchestrator.store import events as event_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import Actor
from orchestrator.store.db import ACQUIRE_TIMEOUT, create_pool
from tests.integration.test_api_support import DocumentChecker, auth

ACTOR = Actor(name="test", via="cli")
BOUND = 30.0  # seconds: only against a hang, never asserted


@contextlib.asynccontextmanager
async def serve(pool: asyncpg.Pool, **settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(pool, Settings(**settings), sse_keepalive=0.2, sse_poll=0.05)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def checker(client: TestClient[Any, Any]) -> DocumentChecker:
    return DocumentChecker(client.app[openapi.DOCUMENT])


async def draft_rollout(pool: asyncpg.Pool, appliances: int = 2) -> int:
    """A DRAFT rollout (nothing moves: its stream stays open) with one PENDING event per
    appliance."""
    await pool.executemany(
        "INSERT INTO appliances (name, base_url, site) VALUES ($1, $2, 'ams')",
        [(f"vr-{i}", f"https://vr-{i}.example.net/api") for i in range(appliances)])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="load", target_version="9.0.1-20020", actor=ACTOR)
    return rollout.id


async def sse_until(resp: ClientResponse,
                    stop: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """The events of a stream (comments left out) until `stop` says so or the stream
    ends."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def run() -> None:
        nonlocal current
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(":")
                current[key] = value.removeprefix(" ")
                continue
            if current:
                if "data" in current:
                    current["data"] = json.loads(current["data"])
                out.append(current)
                if stop is not None and stop(current):
                    return
            current = {}

    await asyncio.wait_for(run(), BOUND)
    return out


def is_progress(event: dict[str, Any]) -> bool:
    return event.get("event") == "progress"


async def wait_for(condition: Callable[[], bool]) -> None:
    """Until `condition()` holds (bounded against a hang, not a measurement)."""
    async def loop() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), BOUND)


# ------------------------------------------------------------------ /metrics
READS = 6  # the statements of one reading of the database by /metrics


async def test_metrics_reads_the_database_once_per_cache_period(db_url: str) -> None:
    async with create_pool(db_url, min_size=1, max_size=1) as pool:
        queries: list[str] = []
        async with pool.acquire() as conn:  # the pool's only connection: every query
            conn.add_query_logger(lambda q: queries.append(q.query))
        async with serve(pool, api_metrics_cache_seconds=300) as client:
            async def scrape() -> str:
                async with client.get("/metrics") as resp:
                    assert resp.status == 200
                    return await resp.text()

            bodies = await asyncio.gather(*(scrape() for _ in range(20)))
            bodies += [await scrape() for _ in range(10)]
            metrics = client.app[STATE].metrics
        assert all("orchestrator_database_up 1.0" in b for b in bodies)
        assert metrics.database_reads == 1, "30 scrapes within the period: one reading"
        # tasks, in flight, held slots, rollouts, live engines, webhook deliveries
        assert len(queries) == READS, queries

        queries.clear()
        async with serve(pool, api_metrics_cache_seconds=0) as client:
            for _ in range(3):
                async with client.get("/metrics") as resp:
                    assert resp.status == 200
        assert len(queries) == 3 * READS, "no cache: every scrape reads"


async def test_metrics_token(pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "m3tr1cs-t0ken-for-the-scraper"
    monkeypatch.setenv("TEST_LOAD_METRICS_TOKEN", secret)
    for reference in ("env:TEST_LOAD_METRICS_TOKEN", secret):
        with capture_logs() as logs:
            async with serve(pool, api_metrics_token=reference) as client:
                check = checker(client)
                for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                                {"Authorization": secret}, auth(secret + "x")):
                    async with client.get("/metrics", headers=headers) as resp:
                        assert resp.status == 401
                        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                        body = await check.check(resp, "/metrics", "GET")
                        assert secret not in json.dumps(body)
                async with client.get("/metrics", headers=auth(secret)) as resp:
                    assert resp.status == 200
                    assert "orchestrator_tasks" in await resp.text()
        assert secret not in repr(logs)
    # a reference that cannot be resolved keeps /metrics closed
    monkeypatch.delenv("TEST_LOAD_METRICS_TOKEN")
    async with serve(pool, api_metrics_token="env:TEST_LOAD_METRICS_TOKEN") as client:
        async with client.get("/metrics", headers=auth(secret)) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"]
    # without the setting, no token is needed (the default)
    async with serve(pool) as client, client.get("/metrics") as resp:
        assert resp.status == 200


def test_metrics_token_setting_is_masked_and_checked() -> None:
    secret = "a-literal-metrics-token-1234"
    settings = load_settings(environ={"ORCHESTRATOR_API_METRICS_TOKEN": secret})
    assert settings.api_metrics_token == secret
    assert secret not in json.dumps(settings.masked())
    assert load_settings(environ={"ORCHESTRATOR_API_METRICS_TOKEN": "env:X"}).masked()[
        "api_metrics_token"] == "env:X"
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"ORCHESTRATOR_API_METRICS_TOKEN": "short-secret"})
    assert "api_metrics_token" in str(caught.value)
    assert "short-secret" not in str(caught.value)


# ------------------------------------------------------------------ event streams
async def test_event_streams_are_capped_per_token_and_in_all(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    tokens = {}
    for name in ("a", "b", "c"):
        _, tokens[name] = await token_store.create_token(pool, name, "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool, api_sse_max_streams_per_token=2, api_sse_max_streams=3) as client, \
            contextlib.AsyncExitStack() as streams:
        check = checker(client)
        limits = client.app[STREAMS]

        async def open_stream(token: str) -> ClientResponse:
            resp = await streams.enter_async_context(client.get(url, headers=auth(token)))
            assert resp.status == 200
            await sse_until(resp, is_progress)
            return resp

        async def refused(token: str, limit: int) -> None:
            async with client.get(url, headers=auth(token)) as resp:
                assert resp.status == 429
                assert int(resp.headers["Retry-After"]) > 0
                body = await check.check(resp, "/api/v1/rollouts/{id}/events", "GET")
                assert body["status"] == 429 and body["limit"] == limit
                assert body["type"].endswith("#problem-too-many-requests")

        first = await open_stream(tokens["a"])
        await open_stream(tokens["a"])
        await refused(tokens["a"], 2)  # per token
        await open_stream(tokens["b"])
        await refused(tokens["c"], 3)  # in all
        assert limits.open == 3

        first.close()  # a stream that ends gives its place back
        await wait_for(lambda: limits.open == 2)
        await open_stream(tokens["c"])
        await refused(tokens["a"], 3)
        assert limits.by_token == {t.id: 1 for t in await token_store.list_tokens(pool)}


async def test_backlog_is_read_and_sent_in_pages(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    task_id = await pool.fetchval("SELECT min(id) FROM tasks WHERE rollout_id = $1", rid)
    extra = 2 * event_store.PAGE + 100
    await pool.execute(
        """INSERT INTO task_events (task_id, rollout_id, from_state, to_state)
           SELECT $1, $2, 'PENDING', 'PENDING' FROM generate_series(1, $3)""",
        task_id, rid, extra)
    expected = [r["id"] for r in await pool.fetch(
        "SELECT id FROM task_events WHERE rollout_id = $1 ORDER BY id", rid)]
    assert len(expected) == extra + 2

    reader = event_store.EventReader(pool, rid, 0)
    pages = []
    while True:
        batch = await reader.poll()
        pages.append((len(batch.events), batch.more))
        if not batch.events:
            break
    assert pages == [(event_store.PAGE, True), (event_store.PAGE, True), (102, False),
                     (0, False)]

    _, token = await token_store.create_token(pool, "v", "viewer")
    async with serve(pool) as client, client.get(
            f"/api/v1/rollouts/{rid}/events?follow=false",
            headers={**auth(token), "Last-Event-ID": "0"}) as resp:
        assert resp.status == 200
        events = await sse_until(resp)
    assert [int(e["id"]) for e in events if e.get("event") == "task"] == expected
    progress = [e["data"] for e in events if is_progress(e)]
    assert len(progress) == 2, "one before the backlog, one after it: not one per page"
    assert progress[-1]["last_event_id"] == expected[-1]


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_stream_ends_when_its_token_is_revoked_or_expires(pool: asyncpg.Pool,
                                                                how: str) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "watcher", "viewer")
    _, other = await token_store.create_token(pool, "other", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool, api_sse_token_recheck_seconds=0.1,
                     api_token_cache_seconds=0) as client:
        async with client.get(url, headers=auth(token)) as mine, \
                client.get(url, headers=auth(other)) as theirs:
            assert mine.status == 200 and theirs.status == 200
            await sse_until(mine, is_progress)
            await sse_until(theirs, is_progress)
            if how == "revoked":
                await token_store.revoke_token(pool, "watcher")
            else:
                await pool.execute("UPDATE api_tokens SET expires_at = now() "
                                   "WHERE name = 'watcher'")
            rest = await sse_until(mine)  # to the end of the stream
            assert rest[-1]["event"] == "unauthorized"
            assert mine.content.at_eof()
            assert not theirs.content.at_eof(), "another token's stream goes on"
        async with client.get(url, headers=auth(token)) as again:
            assert again.status == 401


# ------------------------------------------------------------------ database connections
async def test_no_free_connection_is_a_503_not_a_hang(db_url: str) -> None:
    async with create_pool(db_url, min_size=1, max_size=1) as pool:
        rid = await draft_rollout(pool)
        _, token = await token_store.create_token(pool, "v", "viewer")
        async with serve(pool, api_db_acquire_timeout=0.2, api_token_cache_seconds=0,
                         api_metrics_cache_seconds=0) as client:
            check = checker(client)
            async with client.get(f"/api/v1/rollouts/{rid}/events",
                                  headers=auth(token)) as stream:
                await sse_until(stream, is_progress)
                async with pool.acquire(), asyncio.timeout(BOUND):  # the only connection
                    async with client.get("/api/v1/rollouts", headers=auth(token)) as resp:
                        assert resp.status == 503
                        assert int(resp.headers["Retry-After"]) > 0
                        body = await check.check(resp, "/api/v1/rollouts", "GET")
                        assert "no database connection" in body["detail"]
                    async with client.get("/metrics") as resp:
                        assert resp.status == 200
                        assert "orchestrator_database_up 0.0" in await resp.text()
                    await sse_until(stream)  # the stream ends instead of hanging
                    assert stream.content.at_eof()
            async with client.get("/api/v1/rollouts", headers=auth(token)) as resp:
                assert resp.status == 200, "served again once a connection is free"
    assert ACQUIRE_TIMEOUT.get() is None, "outside the API, acquires stay unbounded"
