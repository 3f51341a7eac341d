"""Server-sent events of a rollout: a client that disconnects mid-rollout and reconnects with
Last-Event-ID receives every task transition exactly once, in order (compared with the
task_events rows), and the reader never passes an id while a smaller one may still commit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
from aiohttp import ClientResponse

from orchestrator.store import events as event_store
from orchestrator.store import rollouts as rollout_store
from tests.fleet import ACTOR, create, engine, fleet, wait_until_terminal
from tests.helpers import eventually
from tests.integration.test_api_support import api_client, auth, tokens_by_role


async def read_events(resp: ClientResponse, *, stop_after_tasks: int | None = None,
                      timeout: float = 60.0) -> list[dict[str, Any]]:
    """SSE events as dicts {event, id, data}; comments are kept as {"comment": text}."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    tasks = 0

    async def run() -> None:
        nonlocal current, tasks
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if current:
                    if "data" in current:
                        current["data"] = json.loads(current["data"])
                    out.append(current)
                    if current.get("event") == "task":
                        tasks += 1
                    if current.get("event") == "end" or (
                            stop_after_tasks is not None and tasks >= stop_after_tasks):
                        return
                current = {}
                continue
            if line.startswith(":"):
                out.append({"comment": line[1:].strip()})
                continue
            key, _, value = line.partition(":")
            current[key] = value.removeprefix(" ")

    await asyncio.wait_for(run(), timeout)
    return out


async def test_reconnect_with_last_event_id_misses_nothing(pool: asyncpg.Pool,
                                                           db_url: str) -> None:
    tokens = await tokens_by_role(pool)
    headers = auth(tokens["viewer"])
    async with fleet(pool, db_url, appliances=24, sites=3, install_seconds=0.4) as f, \
            api_client(pool, sse_keepalive=0.3) as client:
        # the canary's gate waits for an approval: the stream is read up to it, the client
        # disconnects, and only then does the rest of the rollout happen
        rid = await create(pool, {"waves": [1, "100%"], "max_concurrency": 4,
                                  "approval": "after-canary"})
        url = f"/api/v1/rollouts/{rid}/events"
        async with engine(f):
            async with client.get(url, headers=headers) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                # 24 planned tasks, then the canary's four transitions
                first = await read_events(resp, stop_after_tasks=24 + 4)
            ids = [int(e["id"]) for e in first if e.get("event") == "task"]
            assert first[0] == {"retry": "2000"} and first[1]["event"] == "progress"
            assert first[-1]["event"] == "task" and first[-1]["data"]["to_state"] == "SUCCEEDED"
            assert (await rollout_store.get_rollout(pool, rid)).state == "RUNNING"
            # disconnected mid-rollout: transitions go on while nobody listens
            await rollout_store.approve_rollout(pool, rid, ACTOR)
            await eventually(
                lambda: pool.fetchval("SELECT count(*) FROM task_events WHERE rollout_id = $1",
                                      rid),
                lambda n: n >= 24 + 4 + 12)
            async with client.get(url, headers={**headers, "Last-Event-ID": str(ids[-1])}) \
                    as resp:
                second = await read_events(resp)
            await wait_until_terminal(pool, rid)
        rows = await pool.fetch(
            "SELECT id, task_id, from_state, to_state FROM task_events WHERE rollout_id = $1 "
            "ORDER BY id", rid)
    events = [e for e in first + second if e.get("event") == "task"]
    received = [(int(e["id"]), e["data"]["task_id"], e["data"]["from_state"],
                 e["data"]["to_state"]) for e in events]
    expected = [(r["id"], r["task_id"], r["from_state"], r["to_state"]) for r in rows]
    assert received == expected, "every transition exactly once, in id order"
    assert len(expected) == 24 * 5, "PENDING, DISPATCHING, INSTALLING, VERIFYING, SUCCEEDED"
    assert second[-1]["event"] == "end" and second[-1]["data"]["state"] == "SUCCEEDED"
    assert second[-1]["data"]["last_event_id"] == expected[-1][0]
    progress = [e["data"] for e in second if e.get("event") == "progress"]
    assert progress[-1]["counts"] == {"SUCCEEDED": 24} and progress[-1]["in_flight"] == 0
    # the id of each task event is the task_events id; progress events carry none
    assert all("id" not in e for e in first + second if e.get("event") == "progress")


async def test_a_quiet_stream_sends_keep_alive_comments(pool: asyncpg.Pool,
                                                        db_url: str) -> None:
    """A stream with nothing to say (a rollout not started) still writes a comment every
    sse_keepalive seconds, so that proxies keep the connection open."""
    tokens = await tokens_by_role(pool)
    async with fleet(pool, db_url, appliances=2, sites=1), \
            api_client(pool, sse_keepalive=0.3) as client:
        rid = await create(pool, start=False)
        async with client.get(f"/api/v1/rollouts/{rid}/events",
                              headers=auth(tokens["viewer"])) as resp:
            assert resp.status == 200

            async def first_comment() -> str:
                async for raw in resp.content:
                    if raw.startswith(b":"):
                        return raw.decode().strip()
                raise AssertionError("the stream ended without a keep-alive comment")

            assert (await asyncio.wait_for(first_comment(), 60)).startswith(":")


async def test_follow_false_and_unknown_rollout(pool: asyncpg.Pool, db_url: str) -> None:
    tokens = await tokens_by_role(pool)
    async with fleet(pool, db_url, appliances=3, sites=1) as _f, api_client(pool) as client:
        rid = await create(pool, start=False)
        async with client.get(f"/api/v1/rollouts/{rid}/events?follow=false&last_event_id=1",
                              headers=auth(tokens["viewer"])) as resp:
            events = await read_events(resp, timeout=10)
        tasks = [e for e in events if e.get("event") == "task"]
        assert [e["data"]["to_state"] for e in tasks] == ["PENDING", "PENDING"]
        async with client.get("/api/v1/rollouts/999/events",
                              headers=auth(tokens["viewer"])) as resp:
            assert resp.status == 404
        async with client.get(f"/api/v1/rollouts/{rid}/events",
                              headers={**auth(tokens["viewer"]), "Last-Event-ID": "x"}) as resp:
            assert resp.status == 400
            assert "Last-Event-ID" in (await resp.json(content_type=None))["detail"]


async def test_reader_waits_for_an_earlier_id_still_uncommitted(pool: asyncpg.Pool,
                                                                db_url: str) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1):
        rollout, _ = await rollout_store.create_rollout(
            pool, name="gap", target_version="9.0.1-20020", actor=ACTOR)
    rid = rollout.id
    task_ids = [r["id"] for r in await pool.fetch(
        "SELECT id FROM tasks WHERE rollout_id = $1 ORDER BY id", rid)]
    reader = event_store.EventReader(pool, rid, 0)
    # a generous settle: the reader waits for every older transaction on the server, and
    # other tests' transactions (other xdist workers on the same server) may be running
    planned = await reader.poll(settle=60)
    assert [e.to_state for e in planned.events] == ["PENDING", "PENDING"]

    insert = """WITH t AS (UPDATE tasks SET updated_at = now() WHERE id = $1
                           RETURNING id, rollout_id)
                INSERT INTO task_events (task_id, rollout_id, from_state, to_state)
                SELECT id, rollout_id, 'PENDING', 'PENDING' FROM t RETURNING id"""
    slow = await asyncpg.connect(db_url)
    try:
        tx = slow.transaction()
        await tx.start()
        earlier = await slow.fetchval(insert, task_ids[0])  # holds its id, not committed
        later = await pool.fetchval(insert, task_ids[1])  # a larger id, committed
        assert later > earlier
        batch = await reader.poll(settle=0.3)
        assert batch.events == [] and not batch.confirmed, "must not pass the open id"
        await tx.commit()
    finally:
        await slow.close()
    batch = await reader.poll(settle=60)
    assert [e.id for e in batch.events] == [earlier, later]
    assert await reader.settled(settle=60)
